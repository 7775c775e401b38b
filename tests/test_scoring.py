"""Benchmark TSV loading, answer extraction and scoring, checked against hand-worked tables."""

from __future__ import annotations

import base64
import csv
import io
from pathlib import Path

import pytest
from PIL import Image

from mixlab.errors import UserError
from mixlab.evaluation.extract import extract_option, extract_yes_no
from mixlab.evaluation.rules import first_rows, score
from mixlab.evaluation.tsv import (
    build_prompt,
    decode_image,
    detect_kind,
    load_tsv,
    options,
)

# ---- extraction ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prediction", "expected"),
    [
        ("Yes, it is.", "Yes"),
        ("yes and no", "Unknown"),
        ("No.", "No"),
        ("The answer is no", "No"),
        ("I don't know", "Unknown"),  # "know" is not the word "no"
        ("", "Unknown"),
        ("YES!", "Yes"),
        ("yes/no", "Unknown"),  # the slash splits into two words
    ],
)
def test_extract_yes_no(prediction: str, expected: str) -> None:
    assert extract_yes_no(prediction) == expected


COLOURS = {"A": "red", "B": "blue", "C": "green"}


@pytest.mark.parametrize(
    ("prediction", "expected"),
    [
        ("B", "B"),
        ("(C)", "C"),
        ("The answer is B.", "B"),
        ("B. blue", "B"),
        ("blue", "B"),  # no letter: the one option whose text is contained
        ("Blue.", "B"),  # text match is case-insensitive
        ("A or B", None),  # two letters: ambiguous
        ("red or blue", None),  # two option texts: ambiguous
        ("Answer: B, not A", None),  # two letters and no "answer is X": VLMEvalKit cannot tell
        ("The correct answer is **C**, since A and B are wrong", "C"),
        ("B is right because the sky looks so very blue", None),  # letter too early, text too long
        ("Z", None),  # VLMEvalKit's "none of the options"
        ("Cannot determine the answer", None),
        ("purple", None),
    ],
)
def test_extract_option(prediction: str, expected: str | None) -> None:
    assert extract_option(prediction, dict(COLOURS)) == expected
    assert extract_option(prediction, dict(COLOURS), "vlmevalkit") == expected


# ---- MME ----------------------------------------------------------------------------------


def _mme_rows(with_image_path: bool = True) -> list[dict]:
    """2 subtasks x 2 images x 2 questions.

    color (perception):  img c1: right, right; img c2: right, WRONG
        acc  = 3/4 = 75, acc+ = 1/2 (only c1 fully right) = 50, subtask = 125
    code_reasoning (cognition): img r1: right, right; img r2: WRONG, UNKNOWN ("yes and no")
        acc  = 2/4 = 50, acc+ = 1/2 = 50, subtask = 100
    perception = 125, cognition = 100, total = 225
    score = 225 / (200 * 2 subtasks) * 100 = 56.25
    """
    table = [
        (0, "color", "c1.jpg", "Yes", "Yes, it is red."),
        (1, "color", "c1.jpg", "No", "No."),
        (2, "color", "c2.jpg", "Yes", "yes"),
        (3, "color", "c2.jpg", "No", "Yes"),
        (4, "code_reasoning", "r1.png", "Yes", "YES"),
        (5, "code_reasoning", "r1.png", "No", "no, it prints 3"),
        (6, "code_reasoning", "r2.png", "Yes", "No"),
        (7, "code_reasoning", "r2.png", "No", "yes and no"),
    ]
    rows = []
    for index, category, image_path, answer, prediction in table:
        row = {"index": index, "category": category, "answer": answer, "prediction": prediction}
        if with_image_path:
            row["image_path"] = image_path
        rows.append(row)
    return rows


@pytest.mark.parametrize("with_image_path", [True, False])
def test_score_mme(with_image_path: bool) -> None:
    # Without image_path, consecutive index pairs (0,1), (2,3), ... form the images: same result.
    m = score("mme", _mme_rows(with_image_path))
    assert m["color/acc"] == 75.0 and m["color/acc+"] == 50.0 and m["color"] == 125.0
    assert m["code_reasoning/acc"] == 50.0 and m["code_reasoning/acc+"] == 50.0
    assert m["code_reasoning"] == 100.0
    assert (m["perception"], m["cognition"], m["total"]) == (125.0, 100.0, 225.0)
    assert m["score"] == pytest.approx(56.25)
    assert "skipped_no_image" not in m  # no image column: nothing skipped


def test_score_mme_perfect_is_100() -> None:
    rows = _mme_rows()
    for row in rows:
        row["prediction"] = row["answer"]
    m = score("mme", rows)
    assert (m["color"], m["total"], m["score"]) == (200.0, 400.0, 100.0)


# ---- MMBench (CircularEval) ---------------------------------------------------------------


def _circular_copies(index: int, texts: list[str], answer: int, category: str) -> list[dict]:
    """The original question and its rotations: copy k has index + k*10**6, options shifted by k."""
    n = len(texts)
    rows = []
    for k in range(n):
        rotated = [texts[(i + k) % n] for i in range(n)]
        letter = "ABCD"[(answer - k) % n]
        row = {
            "index": index + k * 1_000_000,
            "question": "What animal?",
            "category": category,
            "answer": letter,
            "prediction": letter,
        }
        row.update(zip("ABCD", rotated, strict=True))
        rows.append(row)
    return rows


def _mmbench_rows() -> list[dict]:
    """2 questions x 4 circular copies.

    q0 (category "animals"): all 4 copies right -> hit
    q1 (category "colours"): the original right, copy 2 (index 2000001) WRONG -> miss
    overall (circular) = 1/2 = 50; vanilla (originals only: both right) = 100
    cat/animals = 100, cat/colours = 0
    """
    q0 = _circular_copies(0, ["cat", "dog", "fish", "bird"], 1, "animals")
    q1 = _circular_copies(1, ["red", "blue", "green", "black"], 0, "colours")
    q0[1]["prediction"] = f"The answer is {q0[1]['answer']}."
    q0[2]["prediction"] = "dog"  # text of the right option
    q1[2]["prediction"] = "A" if q1[2]["answer"] != "A" else "B"
    return q0 + q1


def test_score_mmbench_circular() -> None:
    m = score("mmbench", _mmbench_rows())
    assert m["overall"] == 50.0 and m["score"] == 50.0
    assert m["vanilla"] == 100.0
    assert m["cat/animals"] == 100.0 and m["cat/colours"] == 0.0


def test_score_mmbench_without_copies_equals_vanilla() -> None:
    originals = [r for r in _mmbench_rows() if r["index"] < 1_000_000]
    originals[1]["prediction"] = "blue or green"  # ambiguous text -> wrong
    m = score("mmbench", originals)
    assert m["overall"] == m["vanilla"] == 50.0


def test_limit_keeps_whole_circular_questions() -> None:
    """`limit` on a circular set keeps the first N questions with all their copies, wherever the file lists them (the
    originals first, then the copies, as in MMBench's TSVs); other kinds keep the first N rows."""
    rows = _mmbench_rows()
    in_file_order = sorted(rows, key=lambda r: r["index"] // 1_000_000)  # q0, q1, then each copy of both
    kept = first_rows("mmbench", in_file_order, 1)
    assert sorted(r["index"] for r in kept) == [0, 1_000_000, 2_000_000, 3_000_000]
    assert score("mmbench", first_rows("mmbench", in_file_order, 2))["overall"] == 50.0  # q1's copy 2 still counts
    assert first_rows("seed", in_file_order, 3) == in_file_order[:3]
    assert first_rows("mmbench", in_file_order, None) == in_file_order


# ---- single-pass MCQ (SEED, ScienceQA) ----------------------------------------------------


def _mcq_rows() -> list[dict]:
    """4 questions, 2 with an image; VLMEvalKit skips the 2 without.

    row 0 (image, "bio"):  right      row 1 (image, "bio"):  WRONG
    row 2 (no image, "phys"): right   row 3 (no image, "phys"): right ("green" names C)
    scored: rows 0-1 -> overall = 1/2 = 50, cat/bio = 50, no cat/phys; skipped_no_image = 2
    (before the skip, mixlab scored all four: 75)
    """
    base = {"question": "Which colour?", "A": "red", "B": "blue", "C": "green"}
    table = [
        ("iVBOR", "bio", "A", "A"),
        ("iVBOR", "bio", "B", "C"),
        ("", "phys", "B", "Answer: B"),
        ("", "phys", "C", "green"),
    ]
    return [
        dict(base, index=i, image=img, category=cat, answer=ans, prediction=pred)
        for i, (img, cat, ans, pred) in enumerate(table)
    ]


def test_score_scienceqa_skips_rows_without_image() -> None:
    m = score("scienceqa", _mcq_rows())
    assert m["overall"] == m["score"] == 50.0
    assert m["skipped_no_image"] == 2.0
    assert m["cat/bio"] == 50.0 and "cat/phys" not in m and "img_accuracy" not in m


def test_score_single_pass_kinds_share_one_rule() -> None:
    assert score("seed", _mcq_rows()) == score("scienceqa", _mcq_rows()) == score("mcq", _mcq_rows())
    text_only = [{k: v for k, v in r.items() if k != "image"} for r in _mcq_rows()]
    m = score("mcq", text_only)  # no image column (a text-only table): nothing is skipped
    assert m["score"] == 75.0 and "skipped_no_image" not in m


def test_score_rejects_bad_input() -> None:
    with pytest.raises(UserError, match="unknown benchmark kind 'nope'; expected one of mme"):
        score("nope", _mcq_rows())
    with pytest.raises(UserError, match="no rows to score"):
        score("seed", [])
    with pytest.raises(UserError, match="prediction"):
        score("seed", [{"index": 0, "answer": "A"}])
    with pytest.raises(UserError, match="2 rows without an image"):
        score("seed", _mcq_rows()[2:])
    with pytest.raises(UserError, match="extraction"):
        score("seed", _mcq_rows(), extraction="lenient")  # type: ignore[arg-type]


# ---- TSV ----------------------------------------------------------------------------------


def _png_b64(colour: tuple[int, int, int] = (255, 0, 0)) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (4, 3), colour).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _write_tsv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


HEADER = ["index", "image", "question", "hint", "A", "B", "C", "answer", "category"]


def test_tsv_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "MMBench_DEV_EN.tsv"
    image = _png_b64((0, 128, 255))
    _write_tsv(
        path,
        HEADER,
        [
            ["0", image, "What colour?\nLook closely.", "", "red", "blue", "", "B", "colours"],
            ["1000000", "0", "What colour?\nLook closely.", "", "blue", "red", "", "A", "colours"],
            ["1", image, "Tab\there", "A hint.", "x", "y", "z", "C", "misc"],
        ],
    )
    rows = load_tsv(path)
    assert [r["index"] for r in rows] == [0, 1000000, 1]
    assert rows[0]["question"] == "What colour?\nLook closely." and rows[0]["hint"] == ""
    assert rows[1]["image"] == image  # "0" referred to row 0's image
    decoded = decode_image(rows[1]["image"], rows[1]["index"])
    assert decoded.mode == "RGB" and decoded.size == (4, 3)
    assert decoded.getpixel((0, 0)) == (0, 128, 255)
    assert options(rows[0]) == {"A": "red", "B": "blue"}
    assert detect_kind(path.stem, list(rows[0])) == "mmbench"


def test_tsv_malformed_row_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.tsv"
    path.write_text("index\tquestion\tanswer\n0\tq?\tYes\n1\tq?\tNo\textra\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"bad\.tsv:3"):
        load_tsv(path)


def test_tsv_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"missing\.tsv"):
        load_tsv(tmp_path / "missing.tsv")
    path = tmp_path / "idx.tsv"
    path.write_text("index\tquestion\nabc\tq?\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"idx\.tsv:2"):
        load_tsv(path)
    with pytest.raises(UserError, match="row index 7"):
        decode_image("bm90IGFuIGltYWdl", 7)  # base64 of "not an image"


def test_detect_kind() -> None:
    assert detect_kind("MME", ["index", "question", "answer"]) == "mme"
    assert detect_kind("CCBench", ["A", "B"]) == "mmbench"
    assert detect_kind("SEEDBench_IMG", ["A", "B"]) == "seed"
    assert detect_kind("ScienceQA_TEST", ["A", "B"]) == "scienceqa"
    assert detect_kind("toy_mcq", ["index", "A", "B", "answer"]) == "mcq"
    assert detect_kind("POPE", ["index", "answer"], ["Yes", "no"]) == "pope"
    assert detect_kind("HallusionBench", ["index", "answer"], ["Yes", "no"]) == "yorn"
    with pytest.raises(UserError):
        detect_kind("TextVQA", ["index", "answer"], ["a sign"])


def test_build_prompt() -> None:
    row = {"question": "Which colour?", "hint": "A flag.", "A": "red", "B": "blue", "C": ""}
    assert build_prompt(row, "mmbench") == (
        "Context: A flag.\nWhich colour?\nA. red\nB. blue\n"
        "Answer with the option's letter from the given choices directly."
    )
    assert build_prompt(dict(row, hint=""), "seed").startswith("Which colour?\nA. red")
    mme = {"question": "Is there a dog in the image? Please answer yes or no."}
    assert build_prompt(mme, "mme") == mme["question"]
