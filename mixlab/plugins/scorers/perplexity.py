"""``perplexity``: image-conditioned perplexity of each sample's answer tokens under a reference model (POINTS).

The scored tokens are exactly the trained ones: every assistant answer plus its end-of-turn token, under the
training chat template and masks (``mixlab.models.collator``), conditioned on the image and all earlier turns.
``nll`` is their mean negative log-likelihood and ``ppl = exp(nll)``; both are NaN for a sample without trained
tokens. Batches group samples of similar length; results are cached per sample in the run folder and reused by its
reruns.
"""

from __future__ import annotations

import numpy as np

from mixlab import hookimpl
from mixlab.caches import JsonlCache, sample_key
from mixlab.components import RunContext
from mixlab.data import Sample
from mixlab.hookspecs import Register
from mixlab.models.scorer import ModelScorer, ModelScorerOptions, model_settings


class PerplexityOptions(ModelScorerOptions):
    pass


class PerplexityScorer(ModelScorer):
    """Columns ``ppl`` and ``nll`` (float64), row-aligned with the samples."""

    name = "perplexity"
    Options = PerplexityOptions
    options: PerplexityOptions

    def score(self, samples: list[Sample], ctx: RunContext) -> dict[str, np.ndarray]:
        model_dir = self.model_dir(ctx)
        cache = JsonlCache(
            ctx.cache_dir("perplexity", {"scorer": "perplexity", **model_settings(model_dir)}) / "nll.jsonl"
        )
        keys = [sample_key(s) for s in samples]
        todo = sorted({k: i for i, k in reversed(list(enumerate(keys))) if k not in cache.items}.values())
        with ctx.progress("perplexity", len(samples)) as advance:
            advance(len(samples) - len(todo))
            if todo:
                from mixlab.models.loading import load_model
                from mixlab.models.sample_scores import answer_nll_batches

                ctx.log(f"perplexity: {len(samples) - len(todo)} samples cached, scoring {len(todo)} with {model_dir}")
                model, processor = load_model(model_dir)
                pending = [samples[i] for i in todo]
                batches = self.batches(processor, pending)
                at_once = self.options.batches_at_once
                for batch, nll in answer_nll_batches(model, processor, pending, batches, at_once=at_once):
                    cache.add(
                        (keys[todo[j]], None if np.isnan(v) else float(v)) for j, v in zip(batch, nll, strict=True)
                    )
                    advance(len(batch))
        nll = np.array([np.nan if cache.items[k] is None else cache.items[k] for k in keys], dtype=np.float64)
        with np.errstate(over="ignore"):
            ppl = np.exp(nll)
        return {"ppl": ppl, "nll": nll}


@hookimpl
def register_scorers(register: Register) -> None:
    register(PerplexityScorer)
