"""``lm_eval``: the language model inside a VLM checkpoint on EleutherAI's lm-evaluation-harness, offline.

Does visual instruction tuning hurt text skills? The checkpoint's language model is taken out into a plain HF causal
LM (same weights), wrapped in lm-eval's ``HFLM`` in memory and run through ``lm_eval.simple_evaluate`` on built-in
tasks whose data is cached locally or on local task YAMLs (``include_path``). Nothing is downloaded.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pydantic import Field

from mixlab import hookimpl
from mixlab.components import Evaluator, Metrics, Options
from mixlab.errors import UserError
from mixlab.registry import did_you_mean

MAIN_METRICS = ("acc", "exact_match", "acc_norm", "f1", "mcc")
"""The metric that becomes a task's 0-100 ``score``: the first of these the task reports."""

OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


class LmEvalOptions(Options):
    tasks: list[str] = Field(min_length=1, description="lm-eval task (or group) names.")
    include_path: str | None = Field(
        None, description="A folder of local task YAMLs (and their JSONL data), relative to the recipe."
    )
    batch_size: int = Field(16, ge=1, description="Requests per forward pass (set on the HFLM wrapper).")
    limit: int | None = Field(None, ge=1, description="Evaluate only the first N documents of each task.")
    num_fewshot: int | None = Field(None, ge=0, description="Few-shot examples; None = each task's default.")


def language_model(model_dir: Path) -> tuple[Any, Any]:
    """(causal LM, tokenizer): the VLM's language model and head as a plain HF model with the same weights."""
    from transformers import AutoModelForCausalLM

    from mixlab.models.loading import load_model

    vlm, processor = load_model(model_dir)
    lm = AutoModelForCausalLM.from_config(vlm.config.text_config).to(dtype=vlm.dtype, device=vlm.device)
    state = {f"model.{k}": v for k, v in vlm.model.language_model.state_dict().items()}
    state |= {f"lm_head.{k}": v for k, v in vlm.lm_head.state_dict().items()}
    lm.load_state_dict(state, strict=True)
    return lm.eval(), processor.tokenizer


def task_metrics(results: dict[str, Any]) -> Metrics:
    """lm-eval's ``results`` block ({task: {"acc,none": 0.5, "acc_stderr,none": …}}) as mixlab metrics."""
    metrics: Metrics = {}
    for task, values in results.items():
        clean = {
            key.split(",")[0]: float(v)
            for key, v in values.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and "_stderr" not in key
        }
        main = next((m for m in MAIN_METRICS if m in clean), None)
        if main is None:
            raise UserError(
                f"lm-eval task {task!r} reports {sorted(clean)}, none of {list(MAIN_METRICS)}: "
                "mixlab cannot put it on the 0-100 scale. Choose a task with one of those metrics."
            )
        metrics[f"lm_eval/{task}"] = {**clean, "score": 100.0 * clean[main]}
    return metrics


class LmEval(Evaluator):
    name = "lm_eval"
    Options = LmEvalOptions

    def task_manager(self) -> Any:
        from lm_eval.tasks import TaskManager

        include = None
        if self.options.include_path:
            include = self.resolve(self.options.include_path)
            if not include.is_dir():
                raise UserError(f"evaluator {self.label!r}: include_path {include} is not a folder. Fix the path.")
        manager = TaskManager(include_path=str(include) if include else None)
        known = set(manager.all_tasks)
        for task in self.options.tasks:
            if task not in known:
                raise UserError(
                    f"evaluator {self.label!r}: lm-eval has no task {task!r}.{did_you_mean(task, known)} "
                    "Local tasks need a YAML in `include_path`."
                )
        return manager

    def evaluate(self, model_dir: Path, work_dir: Path, ctx) -> Metrics:
        try:
            import lm_eval
            from lm_eval.models.huggingface import HFLM
        except ImportError:
            raise UserError(
                f'evaluator {self.label!r} needs lm-eval: pip install -e ".[eval]" (or pip install lm-eval).'
            ) from None
        os.environ.update(OFFLINE)
        o = self.options
        manager = self.task_manager()
        lm, tokenizer = language_model(model_dir)
        wrapper = HFLM(pretrained=lm, tokenizer=tokenizer, batch_size=o.batch_size)
        out = lm_eval.simple_evaluate(
            model=wrapper,
            tasks=list(o.tasks),
            task_manager=manager,
            limit=o.limit,
            num_fewshot=o.num_fewshot,
            log_samples=False,
            bootstrap_iters=0,
            random_seed=ctx.seed,
        )
        (work_dir / "lm_eval_results.json").write_text(json.dumps(out["results"], indent=1, default=str))
        return task_metrics(out["results"])


@hookimpl
def register_evaluators(register):
    register(LmEval)
