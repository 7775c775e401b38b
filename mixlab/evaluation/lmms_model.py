"""The ``mixlab`` model for lmms-eval: a mixlab checkpoint answering lmms-eval's requests in process.

Imported only where lmms-eval is installed: by the ``lmms_eval`` evaluator, and by lmms-eval itself through the
entry point ``[project.entry-points."lmms_eval.models"] mixlab = "…lmms_model:manifest"``, so that
``lmms-eval --model mixlab --model_args pretrained=runs/<run>/stages/train-…/model --tasks …`` works too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lmms_eval.api import instance
from lmms_eval.api.model import lmms
from lmms_eval.models.registry_v2 import ModelManifest

from mixlab.evaluation.lmms_requests import MixlabRequests
from mixlab.models.loading import load_model

MODEL_ID = "mixlab"


def _loglikelihoods_get_stringified() -> bool:
    """lmms-eval 0.7.3 passes every response through ``unwrap_generation_output``, which turns a (log-likelihood,
    is greedy) pair into its ``str()`` and so breaks every loglikelihood / multiple_choice task."""
    unwrap = getattr(instance, "unwrap_generation_output", None)
    return unwrap is not None and unwrap((-1.0, True))[0] != (-1.0, True)


class MixlabLmms(MixlabRequests, lmms):
    """A mixlab checkpoint (any local LLaVA-format dir) as an lmms-eval "simple" model."""

    is_simple = True

    def __init__(
        self,
        pretrained: str = "",
        batch_size: int | str | None = 8,
        device: str | None = None,
        model: Any = None,
        processor: Any = None,
        **_unused: Any,
    ) -> None:
        lmms.__init__(self)
        if model is None:
            model, processor = load_model(pretrained, device=device or None)
        size = int(str(batch_size)) if str(batch_size).isdigit() else 8  # lmms-eval's CLI may pass None or "auto"
        MixlabRequests.__init__(self, model, processor, size)

    def loglikelihood(self, requests: Sequence[Any]) -> list[Any]:
        """(loss, is greedy) per request, as lmms-eval's own models answer: lmms-eval picks a multiple-choice option
        by the *smallest* first value (argmin), so it gets the continuation's negative log-likelihood, not mixlab's
        log-likelihood (with which it would pick the least likely option)."""
        pairs = [(-ll, greedy) for ll, greedy in MixlabRequests.loglikelihood(self, requests)]
        if _loglikelihoods_get_stringified():  # wrapped so that the pair reaches the task's metrics intact
            return [instance.GenerationResult(text=pair) for pair in pairs]
        return pairs


def manifest() -> ModelManifest:
    """The registry entry lmms-eval loads from the ``lmms_eval.models`` entry point."""
    return ModelManifest(model_id=MODEL_ID, simple_class_path=f"{__name__}.{MixlabLmms.__name__}")
