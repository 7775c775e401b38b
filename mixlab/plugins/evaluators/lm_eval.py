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


class LmEvalOptions(HarnessOptions):
    batch_size: int = Field(16, ge=1, description="Requests per forward pass (set on the HFLM wrapper).")
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


INSTALL = 'pip install -e ".[eval]" (or pip install lm-eval)'


class LmEval(HarnessEvaluator):
    name = "lm_eval"
    Options = LmEvalOptions
    options: LmEvalOptions
    module = "lm_eval"
    install = INSTALL

    def task_manager(self) -> Any:
        from lm_eval.tasks import TaskManager

        return checked_task_manager(TaskManager, self.options.tasks, self.include(), self.label, "lm-eval")

    def evaluate(self, model_dir: Path, work_dir: Path, ctx: RunContext) -> Evaluation:
        try:
            import lm_eval
            from lm_eval.models.huggingface import HFLM
        except ImportError:
            raise UserError(f"evaluator {self.label!r} needs lm-eval: {INSTALL}.") from None
        os.environ.update(OFFLINE)
        o = self.options
        manager = self.task_manager()
        lm, tokenizer = language_model(model_dir)
        wrapper = HFLM(pretrained=lm, tokenizer=tokenizer, batch_size=o.batch_size)
        with task_data_errors(self.label, "lm-eval"):
            out = lm_eval.simple_evaluate(
                model=wrapper,
                tasks=list(o.tasks),
                task_manager=manager,
                limit=o.limit,
                num_fewshot=o.num_fewshot,
                log_samples=True,  # per-document results: the outcomes (the rest is dropped)
                bootstrap_iters=0,
                random_seed=ctx.seed,
            )
        (work_dir / "lm_eval_results.json").write_text(json.dumps(out["results"], indent=1, default=str))
        return harness_evaluation(out, "lm_eval")


@hookimpl
def register_evaluators(register: Register) -> None:
    register(LmEval)
