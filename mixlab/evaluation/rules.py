"""Benchmark metrics and per-item outcomes from rows that carry the TSV columns plus the model's ``prediction``.

Each rule gives a flat dict of metrics on a 0-100 scale (MME totals in points) with a key ``score``: the headline
on a 0-100 scale, for averaging across benchmarks; and an ``ItemOutcomes`` (mixlab.outcomes) from which that
headline can be recomputed. The rules restate VLMEvalKit's exact-matching evaluation (no LLM judge): an answer that
cannot be extracted is wrong, and rows of a table with an ``image`` column whose image is empty are skipped (their
count is the metric ``skipped_no_image``), as VLMEvalKit drops them when it loads the table.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import numpy as np

from mixlab.errors import UserError
from mixlab.evaluation.extract import Extraction, check_extraction, extract_option, extract_yes_no
from mixlab.evaluation.tsv import lacks_image, options
from mixlab.outcomes import ItemOutcomes

Row = dict[str, Any]
Metrics = dict[str, float]
T = TypeVar("T")

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
YES_NO_CHANCE = 0.5


@dataclass(frozen=True)
class Scored:
    """One benchmark's metrics and the per-item outcomes they were computed from."""

    metrics: Metrics
    outcomes: ItemOutcomes


# ---- helpers ------------------------------------------------------------------------------


def _pct(hits: Iterable[bool]) -> float:
    """100 times the fraction of true values."""
    values = list(hits)
    return 100.0 * sum(values) / len(values) if values else 0.0


def _group(items: Iterable[T], key: Callable[[T], Hashable]) -> dict[Hashable, list[T]]:
    """Items grouped by ``key``, groups and members in first-seen order."""
    groups: dict[Hashable, list[T]] = defaultdict(list)
    for item in items:
        groups[key(item)].append(item)
    return dict(groups)


def _check(rows: list[Row], benchmark: str) -> None:
    """Refuse rows without a prediction or answer."""
    for row in rows:
        missing = [k for k in ("prediction", "answer") if k not in row]
        if missing:
            raise UserError(f"{benchmark}: row index {row.get('index')} lacks {', '.join(missing)}.")


def _index(row: Row) -> int:
    """The row's integer index."""
    return int(row["index"])


def _category(row: Row) -> str:
    """The row's ``category`` ("" when it has none)."""
    return str(row.get("category", ""))


def _categories(rows: list[Row]) -> list[str]:
    """Each row's ``category`` for per-category comparisons; empty when no row has one."""
    return _named([_category(r) for r in rows])


def _named(categories: list[str]) -> list[str]:
    """The categories of an outcome's items, or none when no item names one."""
    return categories if any(categories) else []


def _per_category(rows: list[Row], hits: list[bool]) -> Metrics:
    """Accuracy per ``category`` ("cat/<name>") and per ``l2-category`` ("l2/<name>"); ``hits`` align with rows."""
    out: Metrics = {}
    for column, prefix in (("category", "cat"), ("l2-category", "l2")):
        present = [i for i, r in enumerate(rows) if str(r.get(column, "")).strip()]
        value = {i: str(rows[i][column]) for i in present}
        for name, members in sorted(_group(present, value.__getitem__).items()):
            out[f"{prefix}/{name}"] = _pct(hits[i] for i in members)
    return out


def _mean_outcomes(rows: list[Row], hits: list[bool], chance: list[float]) -> ItemOutcomes:
    """Outcomes scored as a plain mean: each row its own item and cluster."""
    items = [str(r["index"]) for r in rows]
    return ItemOutcomes(
        rule="mean",
        items=items,
        clusters=list(items),
        correct=np.asarray(hits),
        chance=np.asarray(chance),
        categories=_categories(rows),
    )


# ---- answers ------------------------------------------------------------------------------


def said_yes_no(row: Row, extraction: Extraction = "vlmevalkit") -> str:
    """What the prediction says: "Yes", "No" or "Unknown"."""
    return extract_yes_no(str(row["prediction"]), extraction)


def yes_no_correct(row: Row, extraction: Extraction = "vlmevalkit") -> bool:
    """Extracted yes/no equals the answer (case-insensitive); "Unknown" is always wrong."""
    return said_yes_no(row, extraction).lower() == str(row["answer"]).strip().lower()


def option_correct(row: Row, extraction: Extraction = "vlmevalkit") -> bool:
    """The option extracted from the prediction equals the answer letter."""
    return extract_option(str(row["prediction"]), options(row), extraction) == str(row["answer"]).strip()


def _option_chance(row: Row) -> float:
    """A uniform guesser's chance on a multiple-choice row: 1 / number of options."""
    return 1.0 / max(1, len(options(row)))


# ---- MME ----------------------------------------------------------------------------------


def _mme_clusters(rows: list[Row]) -> list[str]:
    """Each row's image: its ``image_path``; in a subtask lacking paths, its consecutive index pair ("i+j")."""
    clusters = [""] * len(rows)
    for members in _group(range(len(rows)), lambda i: _category(rows[i])).values():
        if all(str(rows[i].get("image_path", "")).strip() for i in members):
            for i in members:
                clusters[i] = str(rows[i]["image_path"])
            continue
        ordered = sorted(members, key=lambda i: _index(rows[i]))
        for start in range(0, len(ordered), 2):
            pair = ordered[start : start + 2]
            for i in pair:
                clusters[i] = "+".join(str(_index(rows[j])) for j in pair)
    return clusters


def _mme_metrics(rows: list[Row], hits: list[bool], clusters: list[str]) -> Metrics:
    """Per subtask acc, acc+ and their sum (max 200); perception/cognition/total sums; ``score`` in %.

    ``score`` = total / (200 * subtasks present) * 100, which is total / 2800 * 100 on the full 14-subtask MME.
    Subtasks are matched to perception/cognition case-insensitively.
    """
    out: Metrics = {}
    subtasks: Metrics = {}
    for category, members in _group(range(len(rows)), lambda i: _category(rows[i])).items():
        acc = _pct(hits[i] for i in members)
        images = _group(members, lambda i: clusters[i]).values()
        acc_plus = _pct(all(hits[i] for i in image) for image in images)
        out[f"{category}/acc"], out[f"{category}/acc+"] = acc, acc_plus
        subtasks[str(category)] = acc + acc_plus
    out.update(subtasks)
    out["perception"] = sum(v for k, v in subtasks.items() if k.lower() in MME_PERCEPTION)
    out["cognition"] = sum(v for k, v in subtasks.items() if k.lower() in MME_COGNITION)
    out["total"] = sum(subtasks.values())
    out["score"] = 100.0 * out["total"] / (MME_SUBTASK_MAX * len(subtasks))
    return out


def _rate_mme(rows: list[Row], extraction: Extraction) -> Scored:
    """MME: acc + acc+ per subtask; outcomes clustered by image, stratified by subtask."""
    hits = [yes_no_correct(r, extraction) for r in rows]
    clusters = _mme_clusters(rows)
    outcomes = ItemOutcomes(
        rule="mme",
        items=[str(r["index"]) for r in rows],
        clusters=clusters,
        correct=np.asarray(hits),
        chance=np.full(len(rows), YES_NO_CHANCE),
        strata=[_category(r) for r in rows],
        categories=_categories(rows),
    )
    return Scored(_mme_metrics(rows, hits, clusters), outcomes)


# ---- generic yes/no -----------------------------------------------------------------------


def _rate_yes_no(rows: list[Row], extraction: Extraction) -> Scored:
    """Generic yes/no benchmark: accuracy overall and per ``category``."""
    hits = [yes_no_correct(r, extraction) for r in rows]
    metrics: Metrics = {"overall": _pct(hits), **_per_category(rows, hits)}
    metrics["score"] = metrics["overall"]
    return Scored(metrics, _mean_outcomes(rows, hits, [YES_NO_CHANCE] * len(rows)))


# ---- POPE ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _PopeEntry:
    """One POPE entry: a row once per category it names (VLMEvalKit splits "a,b" on commas)."""

    row: Row
    category: str
    copies: int  # how many entries the row became
    said_yes: bool
    truth: bool
    correct: bool


def _pope_entries(rows: list[Row], extraction: Extraction) -> list[_PopeEntry]:
    """Each row once per comma-separated category (not trimmed, as VLMEvalKit splits); once if it has none."""
    entries: list[_PopeEntry] = []
    for row in rows:
        said, answer = said_yes_no(row, extraction).lower(), str(row["answer"]).strip().lower()
        categories = _category(row).split(",") if _category(row) else [""]
        for category in categories:
            entries.append(_PopeEntry(row, category, len(categories), said == "yes", answer == "yes", said == answer))
    return entries


def _f1(entries: list[_PopeEntry]) -> Metrics:
    """F1 of the "yes" class with its precision and recall, and the accuracy, all in % (0 where undefined)."""
    tp = sum(e.said_yes and e.truth for e in entries)
    fp = sum(e.said_yes and not e.truth for e in entries)
    fn = sum(e.truth and not e.said_yes for e in entries)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    accuracy = _pct(e.correct for e in entries)
    return {"f1": 100.0 * f1, "acc": accuracy, "precision": 100.0 * precision, "recall": 100.0 * recall}


def _pope_metrics(entries: list[_PopeEntry]) -> Metrics:
    """Overall F1/acc/precision/recall (``score`` = F1), then per category ("cat/<c>" = F1, "cat/<c>/acc", ...)."""
    out: Metrics = _f1(entries)
    out["score"] = out["f1"]
    for category, members in sorted(_group((e for e in entries if e.category), lambda e: e.category).items()):
        values = _f1(members)
        out[f"cat/{category}"] = values.pop("f1")
        out.update({f"cat/{category}/{k}": v for k, v in values.items()})
    return out


def _pope_outcomes(entries: list[_PopeEntry]) -> ItemOutcomes:
    """F1 outcomes over the entries; a row split into several categories is one cluster of items "index/category"."""
    items = [str(e.row["index"]) if e.copies == 1 else f"{e.row['index']}/{e.category}" for e in entries]
    return ItemOutcomes(
        rule="f1",
        items=items,
        clusters=[str(e.row["index"]) for e in entries],
        correct=np.array([e.correct for e in entries], dtype=bool),
        chance=np.full(len(entries), YES_NO_CHANCE),
        predicted=np.array([e.said_yes for e in entries], dtype=bool),
        truth=np.array([e.truth for e in entries], dtype=bool),
        categories=_named([e.category for e in entries]),
    )


def _rate_pope(rows: list[Row], extraction: Extraction) -> Scored:
    """POPE: F1 of "yes" as ``score``, with accuracy, precision and recall, overall and per category."""
    entries = _pope_entries(rows, extraction)
    return Scored(_pope_metrics(entries), _pope_outcomes(entries))


# ---- multiple choice ----------------------------------------------------------------------


def _rate_circular(rows: list[Row], extraction: Extraction) -> Scored:
    """CircularEval (MMBench and the others VLMEvalKit runs circularly): a question counts only if every copy is right.

    Copies are grouped by ``index % 10**6``; a group is scored when its original (0 <= index < 10**6) is present
    (``check_rateable`` has made sure there is one).
    ``vanilla`` is the accuracy on the originals alone; without copies the circular accuracy equals it.
    """
    hits = [option_correct(r, extraction) for r in rows]
    groups = _group(range(len(rows)), lambda i: _index(rows[i]) % CIRCULAR_STRIDE)
    originals = [i for i, r in enumerate(rows) if 0 <= _index(r) < CIRCULAR_STRIDE]
    group_hit = {i: all(hits[j] for j in groups[_index(rows[i])]) for i in originals}
    original_rows = [rows[i] for i in originals]
    metrics: Metrics = {"overall": _pct(group_hit.values())}
    metrics.update(_per_category(original_rows, [group_hit[i] for i in originals]))
    metrics["vanilla"] = _pct(hits[i] for i in originals)
    metrics["score"] = metrics["overall"]
    scored = [j for i in originals for j in groups[_index(rows[i])]]
    outcomes = ItemOutcomes(
        rule="circular",
        items=[str(rows[j]["index"]) for j in scored],
        clusters=[str(_index(rows[j]) % CIRCULAR_STRIDE) for j in scored],
        correct=np.array([hits[j] for j in scored], dtype=bool),
        chance=np.array([_option_chance(rows[j]) for j in scored], dtype=float),
        categories=_categories([rows[i] for i in originals for _ in groups[_index(rows[i])]]),
    )
    return Scored(metrics, outcomes)


def order_blind(o: ItemOutcomes) -> ItemOutcomes:
    """Circular outcomes for a scoring that cannot see the options' order (each option's text scored after the bare
    question): every copy of a question is asked alike, so a model that knows nothing gets all copies right with the
    chance of one, 1/k, not with the product of the copies' chances. Each cluster's copies after its first get chance
    1 (right whenever the first is), so ``stats.chance_level`` gives 1/k per question. Other rules: unchanged."""
    if o.rule != "circular":
        return o
    chance, seen = o.chance.copy(), set[str]()
    for i, cluster in enumerate(o.clusters):
        if cluster in seen:
            chance[i] = 1.0
        seen.add(cluster)
    return replace(o, chance=chance)


def _rate_mcq(rows: list[Row], extraction: Extraction) -> Scored:
    """Single-pass multiple choice (SEED, ScienceQA, generic): accuracy overall and per category."""
    hits = [option_correct(r, extraction) for r in rows]
    metrics: Metrics = {"overall": _pct(hits), **_per_category(rows, hits)}
    metrics["score"] = metrics["overall"]
    return Scored(metrics, _mean_outcomes(rows, hits, [_option_chance(r) for r in rows]))


# ---- entry points -------------------------------------------------------------------------

_RULES: dict[str, tuple[str, Callable[[list[Row], Extraction], Scored]]] = {
    "mme": ("MME", _rate_mme),
    "pope": ("POPE", _rate_pope),
    "yorn": ("yes/no benchmark", _rate_yes_no),
    "mmbench": ("MMBench", _rate_circular),
    "seed": ("multiple-choice benchmark", _rate_mcq),
    "scienceqa": ("multiple-choice benchmark", _rate_mcq),
    "mcq": ("multiple-choice benchmark", _rate_mcq),
}


def first_rows(kind: str, rows: list[Row], limit: int | None) -> list[Row]:
    """The first ``limit`` rows (all without a limit); of a circular set, the first ``limit`` questions with every
    copy of each, wherever the file lists them, so that a limited run is still scored circularly."""
    if limit is None:
        return rows
    circular = kind in _RULES and _RULES[kind][1] is _rate_circular
    if not circular:
        return rows[:limit]
    questions = set(list(dict.fromkeys(_index(r) % CIRCULAR_STRIDE for r in rows))[:limit])
    return [r for r in rows if _index(r) % CIRCULAR_STRIDE in questions]


def rate(kind: str, rows: list[Row], extraction: Extraction = "vlmevalkit") -> Scored:
    """Metrics and outcomes of rows, by the rule for a benchmark kind from ``tsv.detect_kind``.

    Rows lacking an image (in a table with an ``image`` column) are skipped first and counted in
    ``skipped_no_image`` (present only when some were).
    """
    if kind not in _RULES:
        raise UserError(f"unknown benchmark kind {kind!r}; expected one of {', '.join(_RULES)}.")
    check_extraction(extraction)
    check_rateable(kind, rows)
    label, rule = _RULES[kind]
    kept = [r for r in rows if not lacks_image(r)]
    skipped = len(rows) - len(kept)
    _check(kept, label)
    scored = rule(kept, extraction)
    if skipped:
        scored.metrics["skipped_no_image"] = float(skipped)
    return scored


def check_rateable(kind: str, rows: list[Row]) -> None:
    """What ``rate`` needs of a whole benchmark that its rows alone do not show, checked before any model answers:
    an ``answer`` column, a row with an image, and a circular set's originals. Raises UserError."""
    label, rule = _RULES[kind]
    kept = [r for r in rows if not lacks_image(r)]
    if not kept:
        why = f" ({len(rows)} rows without an image skipped): add the images" if rows else ": add the questions"
        raise UserError(f"{label}: no rows to score{why}.")
    if "answer" not in kept[0]:
        raise UserError(
            f"{label}: no 'answer' column, so nothing can be scored: use a split with answers (a DEV split, not TEST)."
        )
    if rule is _rate_circular and not any(0 <= _index(r) < CIRCULAR_STRIDE for r in kept):
        raise UserError(f"{label}: no original questions (index below 1000000), only circular copies: add them.")


def score(kind: str, rows: list[Row], extraction: Extraction = "vlmevalkit") -> Metrics:
    """The metrics of rows, by the rule for a benchmark kind (see ``rate``)."""
    return rate(kind, rows, extraction).metrics


def outcomes(kind: str, rows: list[Row], **settings: Any) -> ItemOutcomes:
    """The per-item outcomes of rows, by the rule for a benchmark kind; ``settings`` as ``rate`` takes them."""
    return rate(kind, rows, **settings).outcomes
