"""Results of the community harnesses (lm-eval, lmms-eval) put on mixlab's 0-100 scale."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import Field

from mixlab.components import Metrics, Options
from mixlab.errors import UserError
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


def harness_metrics(
    results: dict[str, Any], prefix: str, *, score_metric: str | None = None, scale: float = 100.0
) -> Metrics:
    """A harness's ``results`` block ({task: {"acc,none": 0.5, "acc_stderr,none": …}}) as mixlab metrics.

    Each task becomes ``<prefix>/<task>`` with every numeric metric (filter suffix and stderr dropped) and a
    ``score``: ``scale`` × `score_metric`, or × the first of `MAIN_METRICS` the task reports.
    """
    metrics: Metrics = {}
    for task, values in results.items():
        clean = {
            key.split(",")[0]: float(v)
            for key, v in values.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and "_stderr" not in key
        }
        main = score_metric or next((m for m in MAIN_METRICS if m in clean), None)
        if main not in clean:
            wanted = repr(score_metric) if score_metric else f"any of {list(MAIN_METRICS)}"
            raise UserError(
                f"{prefix} task {task!r} reports {sorted(clean)}, not {wanted}: mixlab cannot put it on the 0-100 "
                "scale. Choose a task with such a metric (or, for lmms_eval, set `score_metric` and `score_scale`)."
            )
        metrics[f"{prefix}/{task}"] = {**clean, "score": scale * clean[main]}
    return metrics


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
