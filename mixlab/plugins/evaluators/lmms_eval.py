"""``lmms_eval``: a checkpoint on lmms-eval's tasks, answered in process by the ``mixlab`` lmms-eval model.

lmms-eval is an optional, separate install: its dependencies pull a CUDA torchvision that breaks transformers on a
CPU machine (docs/evaluators.md), so it is never a dependency of mixlab. Runs offline: built-in tasks need their
datasets in the local HF cache; local tasks are YAMLs in ``include_path``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pydantic import Field

from mixlab import hookimpl
from mixlab.components import Evaluation, RunContext
from mixlab.errors import UserError
from mixlab.evaluation.harness import (
    OFFLINE,
    HarnessEvaluator,
    HarnessOptions,
    checked_task_manager,
    harness_evaluation,
    task_data_errors,
)
from mixlab.hookspecs import Register

INSTALL = (
    "pip install 'lmms-eval==0.7.3' 'filelock<4' && pip uninstall -y torchvision timm, in a venv of its own "
    "(lmms-eval pulls a CUDA torchvision that breaks transformers on CPU machines; see docs/evaluators.md)"
)


class LmmsEvalOptions(HarnessOptions):
    score_metric: str | None = Field(
        None, description="The metric that becomes the 0-100 score; default: acc, exact_match, acc_norm, f1 or mcc."
    )
    score_scale: float = Field(100.0, gt=0, description="score = score_scale × score_metric (100 for a 0-1 rate).")


def lmms_eval_modules() -> tuple[Any, Any, Any]:
    """(simple_evaluate, TaskManager, MixlabLmms), or a UserError saying how to install lmms-eval."""
    try:
        from lmms_eval.evaluator import simple_evaluate
        from lmms_eval.tasks import TaskManager

        from mixlab.evaluation.lmms_model import MixlabLmms
    except ImportError as e:
        raise UserError(f"the lmms_eval evaluator needs lmms-eval ({e}): {INSTALL}") from None
    except RuntimeError as e:  # torchvision built for another torch: "operator torchvision::nms does not exist"
        raise UserError(
            f"lmms-eval is installed but cannot be imported ({e}): pip uninstall -y torchvision timm"
        ) from None
    return simple_evaluate, TaskManager, MixlabLmms


class LmmsEval(HarnessEvaluator):
    name = "lmms_eval"
    Options = LmmsEvalOptions
    options: LmmsEvalOptions
    module = "lmms_eval"
    install = INSTALL

    def evaluate(self, model_dir: Path, work_dir: Path, ctx: RunContext) -> Evaluation:
        simple_evaluate, task_manager_class, model_class = lmms_eval_modules()
        os.environ.update(OFFLINE)
        o = self.options
        manager = checked_task_manager(task_manager_class, o.tasks, self.include(), self.label, "lmms-eval")
        model = model_class(pretrained=str(model_dir), batch_size=o.batch_size)
        with task_data_errors(self.label, "lmms-eval"):
            out = simple_evaluate(
                model=model,
                tasks=list(o.tasks),
                task_manager=manager,
                limit=o.limit,
                log_samples=True,  # per-document results: the outcomes (the rest is dropped)
                bootstrap_iters=0,
                random_seed=ctx.seed,
            )
        (work_dir / "lmms_eval_results.json").write_text(json.dumps(out["results"], indent=1, default=str))
        return harness_evaluation(out, "lmms_eval", score_metric=o.score_metric, scale=o.score_scale)


@hookimpl
def register_evaluators(register: Register) -> None:
    register(LmmsEval)
