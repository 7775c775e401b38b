"""Benchmark metrics from rows that carry the TSV columns plus the model's ``prediction``.

Each rule returns a flat dict of metrics on a 0-100 scale (MME totals in points) with a key
``score``: the headline on a 0-100 scale, for averaging across benchmarks. The rules restate
VLMEvalKit's exact-matching evaluation (no LLM judge): an answer that cannot be extracted is wrong.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Hashable, Iterable
from typing import Any

from mixlab.errors import UserError
from mixlab.evaluation.extract import extract_option, extract_yes_no
from mixlab.evaluation.tsv import options

Row = dict[str, Any]
Metrics = dict[str, float]

MME_PERCEPTION = (
    "existence",
    "count",
    "position",
    "color",
    "posters",
    "celebrity",
    "scene",
    "landmark",
    "artwork",
    "ocr",
)
MME_COGNITION = (
    "commonsense_reasoning",
    "numerical_calculation",
    "text_translation",
    "code_reasoning",
)
MME_SUBTASK_MAX = 200.0  # acc + acc+, each at most 100
CIRCULAR_STRIDE = 1_000_000  # MMBench copies: index = original index + k * 10**6


def _pct(hits: Iterable[bool]) -> float:
    """100 times the fraction of true values."""
    values = list(hits)
    return 100.0 * sum(values) / len(values) if values else 0.0


def _group(rows: Iterable[Row], key: Callable[[Row], Hashable]) -> dict[Hashable, list[Row]]:
    """Rows grouped by ``key``, groups and members in first-seen order."""
    groups: dict[Hashable, list[Row]] = defaultdict(list)
    for row in rows:
        groups[key(row)].append(row)
    return dict(groups)


def _check(rows: list[Row], benchmark: str) -> None:
    """Refuse an empty table or rows without a prediction or answer."""
    if not rows:
        raise UserError(f"{benchmark}: no rows to score.")
    for row in rows:
        missing = [k for k in ("prediction", "answer") if k not in row]
        if missing:
            raise UserError(f"{benchmark}: row index {row.get('index')} lacks {', '.join(missing)}.")


def _index(row: Row) -> int:
    """The row's integer index."""
    return int(row["index"])


# ---- yes/no (MME) -------------------------------------------------------------------------


def yes_no_correct(row: Row) -> bool:
    """Extracted yes/no equals the answer (case-insensitive); "Unknown" is always wrong."""
    return extract_yes_no(str(row["prediction"])).lower() == str(row["answer"]).strip().lower()


def _mme_images(rows: list[Row]) -> list[list[Row]]:
    """A subtask's questions per image: by ``image_path``, else consecutive index pairs."""
    if all(str(r.get("image_path", "")).strip() for r in rows):
        return list(_group(rows, lambda r: str(r["image_path"])).values())
    ordered = sorted(rows, key=_index)
    return [ordered[i : i + 2] for i in range(0, len(ordered), 2)]


def _mme_subtask(rows: list[Row]) -> tuple[float, float]:
    """(acc, acc+) of one subtask: per question, and per image with every question right."""
    acc = _pct(yes_no_correct(r) for r in rows)
    acc_plus = _pct(all(yes_no_correct(r) for r in image) for image in _mme_images(rows))
    return acc, acc_plus


def score_mme(rows: list[Row]) -> Metrics:
    """MME: per subtask acc + acc+ (max 200), perception/cognition/total sums in points.

    ``score`` = total / (200 * subtasks present) * 100, which is total / 2800 * 100 on the
    full 14-subtask MME. Subtasks are matched to perception/cognition case-insensitively.
    """
    _check(rows, "MME")
    out: Metrics = {}
    subtasks: Metrics = {}
    for category, members in _group(rows, lambda r: str(r.get("category", ""))).items():
        acc, acc_plus = _mme_subtask(members)
        out[f"{category}/acc"], out[f"{category}/acc+"] = acc, acc_plus
        subtasks[str(category)] = acc + acc_plus
    out.update(subtasks)
    out["perception"] = sum(v for k, v in subtasks.items() if k.lower() in MME_PERCEPTION)
    out["cognition"] = sum(v for k, v in subtasks.items() if k.lower() in MME_COGNITION)
    out["total"] = sum(subtasks.values())
    out["score"] = 100.0 * out["total"] / (MME_SUBTASK_MAX * len(subtasks))
    return out


def score_yorn(rows: list[Row]) -> Metrics:
    """Generic yes/no benchmark: accuracy overall and per ``category``."""
    _check(rows, "yes/no benchmark")
    out: Metrics = {"overall": _pct(yes_no_correct(r) for r in rows)}
    out.update(_per_category(rows, yes_no_correct))
    out["score"] = out["overall"]
    return out


# ---- multiple choice ----------------------------------------------------------------------


def option_correct(row: Row) -> bool:
    """The option extracted from the prediction equals the answer letter."""
    return extract_option(str(row["prediction"]), options(row)) == str(row["answer"]).strip()


def _per_category(rows: list[Row], correct: Callable[[Row], bool]) -> Metrics:
    """Accuracy per ``category`` ("cat/<name>") and per ``l2-category`` ("l2/<name>")."""
    out: Metrics = {}
    for column, prefix in (("category", "cat"), ("l2-category", "l2")):
        present = [r for r in rows if str(r.get(column, "")).strip()]
        for name, members in sorted(_group(present, lambda r, c=column: str(r[c])).items()):
            out[f"{prefix}/{name}"] = _pct(correct(r) for r in members)
    return out


def score_mmbench(rows: list[Row]) -> Metrics:
    """MMBench CircularEval: a question counts only if every rotated copy is answered right.

    Copies are grouped by ``index % 10**6``; a group is scored when its original (index below
    10**6) is present. ``vanilla`` is the accuracy on the originals alone; without copies the
    circular accuracy equals it.
    """
    _check(rows, "MMBench")
    groups = _group(rows, lambda r: _index(r) % CIRCULAR_STRIDE)
    originals = [r for r in rows if _index(r) < CIRCULAR_STRIDE]
    if not originals:
        raise UserError("MMBench: no original questions (index below 1000000) to score.")
    hit = {_index(r): all(option_correct(c) for c in groups[_index(r)]) for r in originals}
    out: Metrics = {"overall": _pct(hit.values())}
    out.update(_per_category(originals, lambda r: hit[_index(r)]))
    out["vanilla"] = _pct(option_correct(r) for r in originals)
    out["score"] = out["overall"]
    return out


def score_mcq(rows: list[Row], img_accuracy: bool = False) -> Metrics:
    """Single-pass multiple choice (SEED, ScienceQA, generic): accuracy overall and per category.

    With ``img_accuracy`` (ScienceQA) also the accuracy over rows with a non-empty ``image``.
    """
    _check(rows, "multiple-choice benchmark")
    out: Metrics = {"overall": _pct(option_correct(r) for r in rows)}
    out.update(_per_category(rows, option_correct))
    if img_accuracy:
        with_image = [r for r in rows if str(r.get("image", "")).strip()]
        out["img_accuracy"] = _pct(option_correct(r) for r in with_image)
    out["score"] = out["overall"]
    return out


def score(kind: str, rows: list[Row]) -> Metrics:
    """Score rows with the rule for a benchmark kind from ``tsv.detect_kind``."""
    rules: dict[str, Callable[[list[Row]], Metrics]] = {
        "mme": score_mme,
        "mmbench": score_mmbench,
        "seed": score_mcq,
        "mcq": score_mcq,
        "scienceqa": lambda r: score_mcq(r, img_accuracy=True),
        "yorn": score_yorn,
    }
    if kind not in rules:
        raise UserError(f"unknown benchmark kind {kind!r}; expected one of {', '.join(rules)}.")
    return rules[kind](rows)
