"""Results of the community harnesses (lm-eval, lmms-eval) on mixlab's 0-100 scale, with per-document outcomes."""

from __future__ import annotations

import importlib.util
import math
import numbers
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import Field

from mixlab.caches import files_fingerprint
from mixlab.components import Evaluation, Evaluator, Metrics, Options
from mixlab.errors import UserError
from mixlab.outcomes import ItemOutcomes, Outcomes
from mixlab.registry import did_you_mean

MAIN_METRICS = ("acc", "exact_match", "acc_norm", "f1", "mcc")
"""The metric that becomes a task's ``score`` by default: the first of these the task reports (a 0-1 rate)."""

OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
"""Environment that keeps the harnesses (and the HF libraries under them) off the network."""


class HarnessOptions(Options):
    """Options every harness evaluator takes."""

    tasks: list[str] = Field(min_length=1, description="The harness's task (or group) names.")
    include_path: str | None = Field(
        None, description="A folder of local task YAMLs (with their data and utils.py), relative to the recipe."
    )
    batch_size: int = Field(8, ge=1, description="Requests per forward pass (set on the model wrapper itself).")
    limit: int | None = Field(None, ge=1, description="Evaluate only the first N documents of each task.")


class HarnessEvaluator(Evaluator):
    """Base of the harness adapters: few-shot sampling draws from the run's seed, and local task YAMLs (with their
    data) are part of the evaluation's cache key. A subclass names the harness's ``module`` and how to ``install``
    it; validate then says when it is missing (a problem with `tasks`, so ``--no-path-checks`` leaves it out)."""

    options: HarnessOptions
    uses_seed = True  # the harness's random_seed (few-shot sampling)
    path_options = frozenset({"include_path", "tasks"})  # both depend on this machine
    module: ClassVar[str]
    install: ClassVar[str]

    def include(self) -> Path | None:
        return self.resolve(self.options.include_path) if self.options.include_path else None

    def fingerprint(self) -> str:
        include = self.include()
        return files_fingerprint([include]) if include else ""

    def check(self) -> list[tuple[tuple, str]]:
        problems: list[tuple[tuple, str]] = []
        if importlib.util.find_spec(self.module) is None:
            problems.append(
                (("tasks",), f"these tasks need {self.module}, which is not installed: install it with {self.install}.")
            )
        include = self.include()
        if include is not None and not include.is_dir():
            problems.append((("include_path",), f"{include} is not a folder: give the folder of task YAMLs."))
        return problems


def _numeric(values: Mapping[str, Any]) -> dict[str, tuple[str, float]]:
    """metric → (its key in the results block, its value): numeric metrics only, stderr dropped; where a metric is
    reported under several filters ("exact_match,strict", "exact_match,flexible"), the last one."""
    return {
        key.split(",")[0]: (key, float(v))
        for key, v in values.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and "_stderr" not in key
    }


def _main_metric(values: Mapping[str, Any], score_metric: str | None) -> str | None:
    """The metric that becomes the score: `score_metric`, or the first of `MAIN_METRICS` reported (None if absent)."""
    clean = _numeric(values)
    main = score_metric or next((m for m in MAIN_METRICS if m in clean), None)
    return main if main in clean else None


def harness_metrics(
    results: dict[str, Any], prefix: str, *, score_metric: str | None = None, scale: float = 100.0
) -> Metrics:
    """A harness's ``results`` block ({task: {"acc,none": 0.5, "acc_stderr,none": …}}) as mixlab metrics.

    Each task becomes ``<prefix>/<task>`` with every numeric metric (filter suffix and stderr dropped) and a
    ``score``: ``scale`` × `score_metric`, or × the first of `MAIN_METRICS` the task reports.
    """
    metrics: Metrics = {}
    for task, values in results.items():
        clean = {name: v for name, (_, v) in _numeric(values).items()}
        main = _main_metric(values, score_metric)
        if main is None:
            wanted = repr(score_metric) if score_metric else f"any of {list(MAIN_METRICS)}"
            raise UserError(
                f"{prefix} task {task!r} reports {sorted(clean)}, not {wanted}: mixlab cannot put it on the 0-100 "
                "scale. Choose a task with such a metric (or, for lmms_eval, set `score_metric` and `score_scale`)."
            )
        metrics[f"{prefix}/{task}"] = {**clean, "score": scale * clean[main]}
    return metrics


def harness_evaluation(
    out: Mapping[str, Any], prefix: str, *, score_metric: str | None = None, scale: float = 100.0
) -> Evaluation:
    """The metrics of a ``simple_evaluate(..., log_samples=True)`` result, and per-item outcomes where its samples
    give them: a task (or a group, from its subtasks) whose samples carry the score metric as 0/1 per document and
    whose score is 100 × the share of documents right. Other tasks (perplexity, BLEU, F1, …) get none."""
    metrics = harness_metrics(out["results"], prefix, score_metric=score_metric, scale=scale)
    outcomes: Outcomes = {}
    for task, values in out["results"].items():
        bench = f"{prefix}/{task}"
        main = _main_metric(values, score_metric)
        found = None if main is None else _outcomes(out, task, main)
        if found is not None and math.isclose(100 * found.correct.mean(), metrics[bench]["score"], abs_tol=1e-9):
            outcomes[bench] = found
    return Evaluation(metrics, outcomes)


def _outcomes(out: Mapping[str, Any], task: str, metric: str) -> ItemOutcomes | None:
    """A task's (or a group's) outcomes on `metric`, if its samples give them and their mean is the reported value."""
    reported = _numeric(out["results"].get(task, {})).get(metric)
    if reported is None:
        return None
    key, value = reported
    records = (out.get("samples") or {}).get(task)
    found: ItemOutcomes | None
    if records:
        config = (out.get("configs") or {}).get(task) or {}
        choices = config.get("output_type") == "multiple_choice"
        found = _task_outcomes(records, metric, key.partition(",")[2], choices)
    else:  # a group: its subtasks' documents together (as a group weighted by size scores them)
        subtasks = (out.get("group_subtasks") or {}).get(task) or []
        parts: list[tuple[str, ItemOutcomes]] = []
        for sub in subtasks:
            part = _outcomes(out, sub, metric) if sub != task else None
            if part is None:
                return None
            parts.append((sub, part))
        if not parts:
            return None
        found = ItemOutcomes(
            rule="mean",
            items=[f"{sub}/{i}" for sub, p in parts for i in p.items],
            clusters=[f"{sub}/{c}" for sub, p in parts for c in p.clusters],
            correct=np.concatenate([p.correct for _, p in parts]),
            chance=np.concatenate([p.chance for _, p in parts]),
            categories=[sub for sub, p in parts for _ in p.items],  # per-subtask comparisons (mixlab compare)
        )
    if found is None or not len(found) or not math.isclose(float(found.correct.mean()), value, abs_tol=1e-9):
        return None
    return found


def _task_outcomes(records: list[dict[str, Any]], metric: str, filter_name: str, choices: bool) -> ItemOutcomes | None:
    """One task's samples as outcomes: each document right when its `metric` is 1 (None unless every one is 0 or 1).

    lm-eval logs each document once per filter (``"filter"`` says which); lmms-eval logs no filter name, so
    documents logged twice there (several filters) give none. The chance of a multiple-choice document is 1 / its
    number of choices (one log-likelihood request, and so one response, per choice; twice that with
    ``acc_mutual_info``); a generated answer has none.
    """
    rows = [r for r in records if r.get("filter", filter_name) == filter_name]
    ids = [str(r.get("doc_id")) for r in rows]
    values: list[Any] = [r.get(metric) for r in rows]
    if len(set(ids)) != len(ids) or not all(_zero_or_one(v) for v in values):
        return None
    correct = np.array([float(v) > 0.5 for v in values], dtype=np.bool_)
    chance = np.array([_chance(r) if choices else 0.0 for r in rows], dtype=float)
    return ItemOutcomes(rule="mean", items=ids, clusters=list(ids), correct=correct, chance=chance)


def _zero_or_one(value: Any) -> bool:
    return isinstance(value, (numbers.Real, np.bool_)) and float(value) in (0.0, 1.0)


def _chance(record: Mapping[str, Any]) -> float:
    """1 / the number of choices of a multiple-choice sample (0 where the sample does not say)."""
    n = len(record.get("resps") or [])
    if "acc_mutual_info" in record and n % 2 == 0:
        n //= 2  # the unconditional log-likelihood of each choice, after the conditional ones
    return 1.0 / n if n else 0.0


def checked_task_manager(manager_class: Any, tasks: list[str], include: Path | None, label: str, harness: str) -> Any:
    """The harness's TaskManager over its own tasks and `include` (a folder of local task YAMLs), every task known."""
    if include is not None and not include.is_dir():
        raise UserError(f"evaluator {label!r}: include_path {include} is not a folder. Fix the path.")
    manager = manager_class(include_path=str(include) if include else None)
    known = set(manager.all_tasks)
    for task in tasks:
        if task not in known:
            raise UserError(
                f"evaluator {label!r}: {harness} has no task {task!r}.{did_you_mean(task, known)} "
                "Local tasks need a YAML in `include_path`."
            )
    return manager


DATA_ERRORS = {"ConnectionError", "DatasetNotFoundError", "OfflineModeIsEnabled", "LocalEntryNotFoundError"}
"""Names of the exceptions by which datasets / huggingface_hub say that a task's data cannot be had offline."""


def _missing_data(exc: BaseException | None) -> BaseException | None:
    """The data-loading failure inside `exc` (through causes and a tenacity retry's last attempt), if any."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, FileNotFoundError) or DATA_ERRORS & {c.__name__ for c in type(exc).__mro__}:
            return exc
        last = getattr(exc, "last_attempt", None)
        exc = exc.__cause__ or exc.__context__ or (last.exception() if last is not None else None)
    return None


@contextmanager
def task_data_errors(label: str, harness: str) -> Iterator[None]:
    """A task whose data cannot be loaded (offline, or a wrong local path) becomes one clear UserError."""
    try:
        yield
    except UserError:
        raise
    except Exception as exc:
        cause = _missing_data(exc)
        if cause is None:
            raise
        raise UserError(
            f"evaluator {label!r}: {harness} could not load a task's data ({type(cause).__name__}: "
            f"{str(cause)[:300]}). Runs are offline: put the dataset in the local HF cache, or point a local task "
            "YAML in `include_path` at files that exist."
        ) from None
