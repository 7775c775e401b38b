"""Stage bodies that run the same in the pipeline's process or in a worker: a training, an evaluation, a scoring."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from mixlab.components import Evaluation, reported_name
from mixlab.errors import UserError, memory_advice
from mixlab.outcomes import OUTCOMES_FILE, ItemOutcomes, write_outcomes
from mixlab.store import slug

if TYPE_CHECKING:
    import numpy as np

    from mixlab.components import Evaluator, Metrics, RunContext, Trainer
    from mixlab.data import Sample
    from mixlab.sections import Section

SCORES_FILE = "scores.npz"
IDS_COLUMN = "__ids__"


def train_body(
    trainer: Trainer,
    samples: list[Sample],
    base_model: Path,
    stage_dir: Path,
    ctx: RunContext,
    overrides: dict[str, Any] | None,
) -> dict[str, Any]:
    """Train and describe the result as a training stage's result.json does."""
    with memory_advice(f"the trainer ({trainer.name})", _training_remedy(trainer, overrides or {})):
        result = trainer.train(samples, base_model, stage_dir, ctx, overrides)
    ctx.record(**{k: v for k, v in result.stats.items() if isinstance(v, (int, float, str))})
    return {"model_dir": str(Path(result.model_dir).relative_to(stage_dir)), "stats": result.stats}


def eval_body(evaluators: dict[str, Evaluator], model_dir: Path, ctx: RunContext, stage_dir: Path) -> dict[str, Any]:
    """Every evaluator on one model: metrics per benchmark (a name two evaluators share is prefixed with the
    evaluator's label) and per-item outcomes in outcomes.json; the score recorded as arms are averaged."""
    metrics: Metrics = {}
    outcomes: dict[str, ItemOutcomes] = {}
    for label, evaluator in evaluators.items():
        work = stage_dir / slug(label)  # a label is any TOML key: "a/b", "..", "/abs" must not become paths
        work.mkdir(exist_ok=True)
        with memory_advice(f"evaluator {label!r}", _lower_batch_size(f"[evaluators.{label}]", evaluator)):
            returned = evaluator.evaluate(model_dir, work, ctx)
        found = returned if isinstance(returned, Evaluation) else Evaluation(returned)
        for bench, values in found.metrics.items():
            name = reported_name(bench, label, metrics)
            metrics[name] = values
            if bench in found.outcomes:
                outcomes[name] = found.outcomes[bench]
    write_outcomes(stage_dir / OUTCOMES_FILE, outcomes)
    return {"metrics": metrics}


def score_body(
    section: Section, samples: list[Sample], reference_dir: Path | None, ctx: RunContext
) -> dict[str, np.ndarray]:
    """Run a scorer section on samples (an arm's model as its reference model, if given); columns checked."""
    scorer = section.build()
    if reference_dir is not None:
        if "model" not in type(scorer.options).model_fields:
            raise UserError(f"scorer {section.label!r} ({section.type}) has no model option: drop reference_arm.")
        scorer.options = scorer.options.model_copy(update={"model": str(reference_dir)})
    with memory_advice(f"scorer {section.label!r}", _lower_batch_size(f"[scorers.{section.label}]", scorer)):
        columns = scorer.score(samples, ctx)
    for col, values in columns.items():
        if len(values) != len(samples):
            raise RuntimeError(
                f"scorer {section.type!r} returned {len(values)} rows for column {col!r}, expected {len(samples)}"
            )
    return columns


def _training_remedy(trainer: Trainer, overrides: dict[str, Any]) -> str:
    """What to do when a training runs out of memory, in the options this trainer has."""
    fields = type(trainer.options).model_fields
    if "batch_size" not in fields:
        return "train on a machine with more memory or with lighter trainer settings"
    batch = overrides.get("batch_size", getattr(trainer.options, "batch_size", None))
    remedy = (
        f"lower the trainer's batch_size (now {batch}; in [trainer], or in the trainer = {{...}} that overrides it)"
    )
    if "grad_accum" in fields:
        remedy += " and raise grad_accum to keep the batch the optimizer sees"
    if "gradient_checkpointing" in fields:
        remedy += ", or set gradient_checkpointing = true"
    return remedy


def _lower_batch_size(where: str, component: Any) -> str:
    """What to do when a scorer or an evaluator runs out of memory."""
    batch = getattr(component.options, "batch_size", None)
    if batch is None:
        return f"run it on a machine with more memory or change its options in {where}"
    return f"lower batch_size in {where} (now {batch})"


def save_scores(path: Path, ids: list[str] | None, columns: dict[str, np.ndarray]) -> None:
    """A scorer's columns as one .npz (with the sample ids in ``__ids__`` when given)."""
    import numpy as np

    extra = {IDS_COLUMN: np.array(ids)} if ids is not None else {}
    arrays: dict[str, Any] = dict(**extra, **columns)  # Any: else mypy matches them to savez's allow_pickle
    np.savez(path, **arrays)
