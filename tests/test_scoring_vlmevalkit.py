"""Scoring as VLMEvalKit's exact matching scores (POPE F1, kind detection, skipped text-only rows, extraction), and
the per-item outcomes of every rule, each checked on a table worked out by hand."""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from mixlab.components import Evaluation
from mixlab.errors import UserError
from mixlab.evaluation.extract import extract_option, extract_yes_no
from mixlab.evaluation.rules import order_blind, outcomes, rate, score
from mixlab.evaluation.tsv import detect_kind, options
from mixlab.outcomes import ItemOutcomes
from mixlab.plugins.evaluators.benchmarks import Benchmarks, BenchmarksOptions
from mixlab.stats import chance_level
from tests.test_scoring import _mcq_rows, _mmbench_rows, _mme_rows


def _headline(o: ItemOutcomes) -> float:
    """The headline recomputed from outcomes alone, by the rule they name (what mixlab.stats will do)."""
    if o.rule == "mean":
        return 100.0 * float(np.mean(o.correct))
    if o.rule == "circular":
        clusters = {c: all(o.correct[i] for i, x in enumerate(o.clusters) if x == c) for c in o.clusters}
        return 100.0 * float(np.mean(list(clusters.values())))
    if o.rule == "mme":
        halves = []
        for stratum in dict.fromkeys(o.strata):
            members = [i for i, s in enumerate(o.strata) if s == stratum]
            images = {o.clusters[i] for i in members}
            acc = np.mean([o.correct[i] for i in members])
            acc_plus = np.mean([all(o.correct[i] for i in members if o.clusters[i] == c) for c in images])
            halves.append((acc + acc_plus) / 2)
        return 100.0 * float(np.mean(halves))
    assert o.predicted is not None and o.truth is not None
    tp = int(np.sum(o.predicted & o.truth))
    fp, fn = int(np.sum(o.predicted & ~o.truth)), int(np.sum(~o.predicted & o.truth))
    return 100.0 * 2 * tp / (2 * tp + fp + fn) if tp else 0.0


# ---- 1. POPE: F1 of "yes" is the headline ---------------------------------------------------


def _pope_rows() -> list[dict]:
    """7 questions, row 2 in two categories: 8 entries once split (VLMEvalKit counts it in each, overall too).

    idx category             answer said     outcome (yes = positive)
    0   adversarial          Yes    Yes      TP, right
    1   adversarial          No     Yes      FP, wrong
    2   adversarial,popular  Yes    No       FN x2, wrong x2
    3   popular              No     No       TN, right
    4   popular              Yes    Unknown  FN (Unknown is not yes), wrong
    5   random               No     Unknown  TN, wrong (Unknown is never right)
    6   random               Yes    Yes      TP, right
    overall: TP 2, FP 1, FN 3, TN 2 -> precision 2/3, recall 2/5, F1 = 50; acc = 3/8 = 37.5
    adversarial: TP 1 FP 1 FN 1 -> P = R = F1 = 50, acc 1/3; popular: TP 0 -> F1 0, acc 1/3;
    random: TP 1 TN 1 -> F1 100, acc 50. (Before: accuracy over the 7 rows, 3/7 = 42.86, as the score.)
    """
    table = [
        (0, "adversarial", "Yes", "Yes"),
        (1, "adversarial", "No", "Yes"),
        (2, "adversarial,popular", "Yes", "No"),
        (3, "popular", "No", "No"),
        (4, "popular", "Yes", "yes and no"),
        (5, "random", "No", "I don't know"),
        (6, "random", "Yes", "Yes, there is."),
    ]
    return [
        {"index": i, "image": "iVBOR", "category": c, "answer": a, "prediction": p, "question": "Is there a cat?"}
        for i, c, a, p in table
    ]


def test_pope_headline_is_f1() -> None:
    assert detect_kind("POPE", list(_pope_rows()[0]), [r["answer"] for r in _pope_rows()]) == "pope"
    m = score("pope", _pope_rows())
    assert m["score"] == m["f1"] == pytest.approx(50.0)
    assert m["acc"] == pytest.approx(37.5)
    assert (m["precision"], m["recall"]) == (pytest.approx(200 / 3), pytest.approx(40.0))
    assert (m["cat/adversarial"], m["cat/adversarial/acc"]) == (pytest.approx(50.0), pytest.approx(100 / 3))
    assert (m["cat/popular"], m["cat/popular/precision"], m["cat/popular/recall"]) == (0.0, 0.0, 0.0)
    assert (m["cat/random"], m["cat/random/acc"]) == (pytest.approx(100.0), pytest.approx(50.0))
    assert score("yorn", _pope_rows())["score"] == pytest.approx(300 / 7)  # the old headline: plain accuracy


def test_pope_outcomes_reproduce_f1() -> None:
    o = outcomes("pope", _pope_rows())
    assert o.rule == "f1"
    assert o.items == ["0", "1", "2/adversarial", "2/popular", "3", "4", "5", "6"]
    assert o.clusters == ["0", "1", "2", "2", "3", "4", "5", "6"]  # the split row stays one cluster
    assert list(o.correct) == [True, False, False, False, True, False, False, True]
    assert list(o.chance) == [0.5] * 8
    assert _headline(o) == pytest.approx(score("pope", _pope_rows())["score"])
    assert o.categories == ["adversarial"] * 3 + ["popular"] * 3 + ["random"] * 2  # the split row in each


# ---- 2. kinds from columns and answers, then names as VLMEvalKit reads them ---------------


def _five_option_rows() -> list[dict]:
    """An MME-RealWorld-like table: options A-E, every prediction right -> 100 (before: scored as MME, 0.0)."""
    base = {"question": "Which?", "A": "one", "B": "two", "C": "three", "D": "four", "E": "five", "image": "iVBOR"}
    return [dict(base, index=i, answer=a, prediction=a) for i, a in enumerate("AEC")]


def test_mme_named_multiple_choice_is_multiple_choice() -> None:
    rows = _five_option_rows()
    kind = detect_kind("MME-RealWorld", list(rows[0]), [r["answer"] for r in rows])
    assert kind == "mcq"
    assert score(kind, rows)["score"] == 100.0
    assert score("mme", rows)["score"] == 0.0  # what the name-first detection scored


def test_circular_names_follow_vlmevalkit() -> None:
    for name in ("MMBench_DEV_EN", "mmbench_v11", "CCBench", "MMCR", "BLINK_circular"):
        assert detect_kind(name, ["index", "A", "B", "answer"]) == "mmbench", name
    assert detect_kind("SEEDBench_IMG", ["index", "A", "B", "answer"]) == "seed"
    # MMCR was single-pass before: 7 of 8 rows right = 87.5; circular: 1 of 2 questions = 50
    assert score("mcq", _mmbench_rows())["score"] == 87.5
    assert score(detect_kind("MMCR", list(_mmbench_rows()[0])), _mmbench_rows())["score"] == 50.0


def test_yes_no_kinds_need_yes_no_answers() -> None:
    assert detect_kind("MME", ["index", "answer"], ["Yes", "No"]) == "mme"
    assert detect_kind("my_POPE_subset", ["index", "answer"], ["Yes", "No"]) == "pope"
    assert detect_kind("mme_lowercase", ["index", "answer"], ["Yes", "No"]) == "yorn"  # VLMEvalKit matches "MME"
    with pytest.raises(UserError, match="cannot tell"):
        detect_kind("MME_open", ["index", "answer"], ["a sign", "Yes"])


# ---- 3. rows without an image are skipped -------------------------------------------------


def test_missing_image_spellings_are_skipped_like_pandas_nan() -> None:
    rows = _mcq_rows()
    rows[2]["image"], rows[3]["image"] = "NA", "None"  # pandas reads both as NaN, as it reads ""
    m = score("mcq", rows)
    assert m["score"] == 50.0 and m["skipped_no_image"] == 2.0
    assert outcomes("mcq", rows).items == ["0", "1"]


def test_nan_spelled_option_is_not_an_option() -> None:
    row = {"A": "red", "B": "None", "C": "green", "D": ""}
    assert options(row) == {"A": "red", "C": "green"}


# ---- 4. extraction: VLMEvalKit's by default, mixlab's extended only on request -------------

COLOURS = {"A": "red", "B": "blue", "C": "black"}
FIVE = {"A": "red", "B": "blue", "C": "green", "D": "black", "E": "white"}


@pytest.mark.parametrize(
    ("prediction", "choices", "vlmevalkit", "extended"),
    [
        ("Answer: B, not A", COLOURS, None, "B"),  # two letters; only extended reads "Answer: X"
        ("The answer is (B) because the sky is blue", COLOURS, None, "B"),  # letter early; "(B)" only extended
        ("The answer is E and not A", FIVE, None, "E"),  # VLMEvalKit's "answer is X" knows A-D only
        ("The answer is b", COLOURS, "B", None),  # VLMEvalKit's phrase is case-insensitive, the letter too
        ("The answer is black", COLOURS, "B", "C"),  # VLMEvalKit reads the b of "black"; extended: its text
        ("Failed to obtain answer via API. B", COLOURS, None, None),  # no letter reading after an API failure
        ("The correct answer is **C**, since A and B are wrong", COLOURS, "C", "C"),
        ("So it is B", COLOURS, "B", "B"),  # one letter among the last four tokens
        ("Z", COLOURS, None, None),
    ],
)
def test_extraction_modes(prediction: str, choices: dict, vlmevalkit: str | None, extended: str | None) -> None:
    assert extract_option(prediction, dict(choices)) == vlmevalkit
    assert extract_option(prediction, dict(choices), "extended") == extended


def test_yes_no_keeps_vlmevalkits_32_period_limit() -> None:
    # VLMEvalKit removes only the first 32 lone periods: the 33rd stays glued to "no", which is then not a word
    assert extract_yes_no("." * 32 + " no.") == "Unknown"
    assert extract_yes_no("." * 31 + " no.") == "No"
    assert extract_yes_no("." * 32 + " no.", "extended") == "No"


def test_extraction_reaches_scoring() -> None:
    rows = [dict(_five_option_rows()[0], answer="B", prediction="The answer is (B) as the second option fits")]
    assert score("mcq", rows)["score"] == 0.0
    assert score("mcq", rows, extraction="extended")["score"] == 100.0
    assert outcomes("mcq", rows, extraction="extended").correct.tolist() == [True]


# ---- outcomes of every rule reproduce its headline -------------------------------------------


def test_mcq_outcomes_mean() -> None:
    rows = _mcq_rows()
    o = outcomes("seed", rows)
    assert (o.rule, o.items, o.clusters) == ("mean", ["0", "1"], ["0", "1"])
    assert list(o.correct) == [True, False] and list(o.chance) == [pytest.approx(1 / 3)] * 2
    assert _headline(o) == score("seed", rows)["score"] == 50.0
    assert o.categories == ["bio", "bio"]  # each item's category, for per-category comparisons
    uncategorised = [{k: v for k, v in r.items() if k != "category"} for r in rows]
    assert outcomes("seed", uncategorised).categories == []


def test_yes_no_outcomes_mean() -> None:
    rows = _pope_rows()
    o = outcomes("yorn", rows)
    assert o.rule == "mean" and o.items == [str(i) for i in range(7)] and list(o.chance) == [0.5] * 7
    assert _headline(o) == pytest.approx(score("yorn", rows)["score"])


def test_circular_outcomes() -> None:
    orphan = dict(_mmbench_rows()[0], index=2_000_002)  # a copy whose original (index 2) is absent: not scored
    rows = [*_mmbench_rows(), orphan]
    o = outcomes("mmbench", rows)
    assert o.rule == "circular"
    assert o.clusters == ["0"] * 4 + ["1"] * 4
    assert o.items == ["0", "1000000", "2000000", "3000000", "1", "1000001", "2000001", "3000001"]
    assert list(o.correct) == [True] * 4 + [True, True, False, True]
    assert list(o.chance) == [0.25] * 8
    assert _headline(o) == score("mmbench", rows)["score"] == 50.0
    assert o.categories == ["animals"] * 4 + ["colours"] * 4
    for category, expected in (("animals", 100.0), ("colours", 0.0)):  # each category's items give its cat/ score
        assert _headline(o.subset(np.array(o.categories) == category)) == expected


def test_order_blind_circular_chance() -> None:
    """Scored by option text after the bare question, a question's copies are asked alike: a model that knows nothing
    gets all four right with chance 1/4, not (1/4)^4; outcomes and score unchanged; other rules untouched."""
    o = outcomes("mmbench", _mmbench_rows())
    blind = order_blind(o)
    assert chance_level(o) == pytest.approx(100 * 0.25**4) and chance_level(blind) == pytest.approx(25.0)
    assert list(blind.chance) == [0.25, 1.0, 1.0, 1.0] * 2
    assert list(blind.correct) == list(o.correct) and _headline(blind) == _headline(o)
    mcq = outcomes("mcq", _mcq_rows())
    assert order_blind(mcq) is mcq


@pytest.mark.parametrize(("options_as", "chance"), [("text", 25.0), ("letters", 100 * 0.25**4)])
def test_evaluator_chance_follows_the_scoring(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, options_as, chance):
    """The benchmarks evaluator gives CircularEval's chance for lettered prompts, 1/k a question for text scoring."""
    rows = _mmbench_rows()
    _write_tsv(tmp_path / "MMBench_DEV_EN.tsv", [{k: v for k, v in r.items() if k != "prediction"} for r in rows])

    def predict(self, loaded, kind, asked, cache, ctx, name):
        said = {r["index"]: r["prediction"] for r in rows}
        cache.add([(str(r["index"]), said[int(r["index"])]) for r in asked])

    monkeypatch.setattr(Benchmarks, "predict", predict)
    monkeypatch.setattr("mixlab.models.loading.load_model", lambda model_dir: (None, None))
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    options = BenchmarksOptions(paths=["*.tsv"], mode="likelihood", options_as=options_as)
    work = tmp_path / "work"
    work.mkdir()
    result = Benchmarks(options, "bench", tmp_path).evaluate(model, work, _Ctx(tmp_path / "cache"))
    assert result.metrics["MMBench_DEV_EN"]["score"] == 50.0
    assert chance_level(result.outcomes["MMBench_DEV_EN"]) == pytest.approx(chance)


@pytest.mark.parametrize("with_image_path", [True, False])
def test_mme_outcomes(with_image_path: bool) -> None:
    rows = _mme_rows(with_image_path)
    o = outcomes("mme", rows)
    assert o.rule == "mme" and o.strata == o.categories == ["color"] * 4 + ["code_reasoning"] * 4
    expected = ["c1.jpg", "c1.jpg", "c2.jpg", "c2.jpg", "r1.png", "r1.png", "r2.png", "r2.png"]
    assert o.clusters == (expected if with_image_path else ["0+1", "0+1", "2+3", "2+3", "4+5", "4+5", "6+7", "6+7"])
    assert list(o.chance) == [0.5] * 8
    # color (75 + 50) / 2 = 62.5, code_reasoning (50 + 50) / 2 = 50 -> 56.25
    assert _headline(o) == pytest.approx(score("mme", rows)["score"]) == pytest.approx(56.25)


def test_rate_gives_both_at_once() -> None:
    """One pass gives the metrics and the per-item outcomes, each with the hand-worked values of ``_pope_rows``."""
    scored = rate("pope", _pope_rows())
    assert scored.metrics["score"] == scored.metrics["f1"] == pytest.approx(50.0)
    assert scored.metrics["acc"] == pytest.approx(37.5)
    assert scored.outcomes.rule == "f1"
    assert list(scored.outcomes.correct) == [True, False, False, False, True, False, False, True]
    assert _headline(scored.outcomes) == pytest.approx(50.0)


# ---- the evaluator: skips, passes the extraction on, returns Evaluation ----------------------


def _png_b64() -> str:
    buf = io.BytesIO()
    Image.new("RGB", (2, 2), (255, 0, 0)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _write_tsv(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter="\t", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


class _Ctx:
    """The two context methods ``Benchmarks.evaluate`` uses when predictions come from a stand-in."""

    def __init__(self, root: Path):
        self.root = root

    def cache_dir(self, kind: str, key: Any) -> Path:
        folder = self.root / kind / hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
        folder.mkdir(parents=True, exist_ok=True)
        return folder


def _run_evaluator(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **settings: Any) -> tuple[Evaluation, list]:
    """Benchmarks.evaluate on a ScienceQA-like TSV (one text-only row) and a POPE TSV, answers from a table."""
    image = _png_b64()
    sqa = [
        {"index": 0, "image": image, "question": "q", "A": "one", "B": "two", "answer": "B"},
        {"index": 1, "image": image, "question": "q", "A": "one", "B": "two", "answer": "A"},
        {"index": 2, "image": "", "question": "q", "A": "one", "B": "two", "answer": "A"},
    ]
    pope = [dict(r, index=i, image=image) for i, r in enumerate(_pope_rows())]
    for row in pope:
        row.pop("prediction")
    _write_tsv(tmp_path / "ScienceQA_TEST.tsv", sqa)
    _write_tsv(tmp_path / "POPE.tsv", pope)
    said = {"ScienceQA_TEST": {0: "The answer is (B) because it is two", 1: "A"}}
    said["POPE"] = {r["index"]: r["prediction"] for r in _pope_rows()}
    asked: list = []

    def predict(self, loaded, kind, rows, cache, ctx, name):
        asked.append((name, [r["index"] for r in rows]))
        cache.add([(str(r["index"]), said[name][r["index"]]) for r in rows])

    monkeypatch.setattr(Benchmarks, "predict", predict)
    monkeypatch.setattr("mixlab.models.loading.load_model", lambda model_dir: (None, None))
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    options = BenchmarksOptions(paths=["*.tsv"], mode="generate", **settings)
    work = tmp_path / "work"
    work.mkdir()
    result = Benchmarks(options, "bench", tmp_path).evaluate(model, work, _Ctx(tmp_path / "cache"))
    return result, asked


def test_evaluator_returns_metrics_and_outcomes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    result, asked = _run_evaluator(tmp_path, monkeypatch)
    assert isinstance(result, Evaluation)
    assert sorted(asked) == [("POPE", list(range(7))), ("ScienceQA_TEST", [0, 1])]  # row 2 has no image: not asked
    sqa = result.metrics["ScienceQA_TEST"]
    assert sqa["score"] == 50.0 and sqa["skipped_no_image"] == 1.0  # "(B) because ..." is not read by VLMEvalKit
    assert result.metrics["POPE"]["score"] == pytest.approx(50.0)
    assert set(result.outcomes) == {"ScienceQA_TEST", "POPE"}
    assert result.outcomes["POPE"].rule == "f1" and result.outcomes["ScienceQA_TEST"].items == ["0", "1"]
    for name, o in result.outcomes.items():
        assert _headline(o) == pytest.approx(result.metrics[name]["score"])


def test_evaluator_passes_extraction_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    result, _ = _run_evaluator(tmp_path, monkeypatch, extraction="extended")
    assert result.metrics["ScienceQA_TEST"]["score"] == 100.0
    with pytest.raises(ValueError, match="extraction"):
        BenchmarksOptions(extraction="lenient")


def test_benchmark_files_are_each_evaluated_once(tmp_path: Path) -> None:
    """A file two patterns match is one benchmark; two files with one name stem would share a name: an error."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for folder in ("a", "b"):
        (tmp_path / folder / "MME.tsv").write_text("index\tquestion\tanswer\n0\tRed?\tYes\n")
    twice = Benchmarks(BenchmarksOptions(paths=["a/*.tsv", "a/MME.tsv"]), "bench", tmp_path)
    assert twice.tsv_files(_Ctx(tmp_path / "cache")) == [tmp_path / "a" / "MME.tsv"]
    clash = Benchmarks(BenchmarksOptions(paths=["a/*.tsv", "b/*.tsv"]), "bench", tmp_path)
    with pytest.raises(UserError, match="are both benchmark 'MME'"):
        clash.tsv_files(_Ctx(tmp_path / "cache"))
