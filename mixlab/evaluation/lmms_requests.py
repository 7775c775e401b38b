"""lmms-eval's request protocol for "simple" models, answered by a mixlab model; imports nothing from lmms-eval.

lmms-eval hands a model lists of requests whose ``args`` are tuples; the model reads each document from
``self.task_dict[task][split][doc_id]`` (filled in by lmms-eval) to get its images:

- ``loglikelihood``: ``(context, continuation or doc_to_target, doc_to_visual, doc_id, task, split)``
  → ``(log-likelihood, is greedy)``;
- ``generate_until``: ``(context, gen_kwargs, doc_to_visual, doc_id, task, split)`` → the answer;
- ``generate_until_multi_round``: ``(context, gen_kwargs, doc_to_visual, doc_to_text, doc_id, task, split)`` → the
  answers of every round, ``doc_to_text(doc, previous_output=…, round_idx=…, previous_round_info=…)`` giving the
  next round's ``(visuals, context, terminal, round answers, round info)``.

Questions are rendered with the model's training template (`mixlab.models.predict`), the continuation being the
assistant's answer, so the harness's target delimiter (a leading space) is dropped. Answers are greedy.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

from mixlab.errors import UserError
from mixlab.models.predict import PromptItem, continuation_logprobs, generate

DEFAULT_MAX_NEW_TOKENS = 32
"""Answer length when a task's generation_kwargs give no ``max_new_tokens``."""


def truncate_at(text: str, until: Sequence[str]) -> str:
    """`text` cut before the first of the stop strings `until` (empty ones ignored)."""
    cut = min((text.find(s) for s in until if s and s in text), default=len(text))
    return text[:cut]


def stop_strings(gen_kwargs: dict[str, Any]) -> tuple[str, ...]:
    """The ``until`` of lmms-eval's generation_kwargs as a tuple (it may be one string or a list)."""
    until = gen_kwargs.get("until") or ()
    return (until,) if isinstance(until, str) else tuple(until)


class MixlabRequests:
    """Answers lmms-eval requests with a mixlab (model, processor); mixed into the `lmms` subclass."""

    def __init__(self, model: Any, processor: Any, batch_size: int = 8) -> None:
        self.model, self.processor, self.batch_size = model, processor, int(batch_size)
        if not hasattr(self, "task_dict"):
            self.task_dict: dict[str, Any] = {}

    def _doc(self, doc_id: int, task: str, split: str) -> Any:
        return self.task_dict[task][split][doc_id]

    def _item(self, context: str, visuals: Any, task: str) -> PromptItem:
        """One question with at most one image: mixlab's models (LLaVA-1.5 style) answer on a single image."""
        images = [v for v in (visuals or []) if v is not None]
        if len(images) > 1 or any(isinstance(v, str) for v in images):
            raise UserError(
                f"lmms-eval task {task!r} gives {len(images)} visuals ({type(images[0]).__name__}); mixlab's adapter "
                "answers on one image per question. Choose a single-image task."
            )
        image = images[0].convert("RGB") if images else None
        return PromptItem(text=context, image=image)

    def loglikelihood(self, requests: Sequence[Any]) -> list[tuple[float, bool]]:
        """(log-likelihood of the continuation as the answer, whether greedy decoding would produce it)."""
        items, continuations = [], []
        for context, target, doc_to_visual, doc_id, task, split in (r.args for r in requests):
            doc = self._doc(doc_id, task, split)
            continuation = target if isinstance(target, str) else target(doc)
            items.append(self._item(context, doc_to_visual(doc), task))
            continuations.append(str(continuation).lstrip())
        return continuation_logprobs(self.model, self.processor, items, continuations, batch_size=self.batch_size)

    def _answer(self, items: list[PromptItem], gen_kwargs: dict[str, Any]) -> list[str]:
        if gen_kwargs.get("do_sample") or gen_kwargs.get("num_beams", 1) > 1:
            warnings.warn("mixlab's lmms-eval adapter answers greedily: do_sample / num_beams ignored", stacklevel=2)
        tokens = int(gen_kwargs.get("max_new_tokens") or DEFAULT_MAX_NEW_TOKENS)
        answers = generate(self.model, self.processor, items, max_new_tokens=tokens, batch_size=self.batch_size)
        return [truncate_at(a, stop_strings(gen_kwargs)).strip() for a in answers]

    def generate_until(self, requests: Sequence[Any]) -> list[str]:
        """Greedy answers, requests with the same generation_kwargs batched together, in the requests' order."""
        groups: dict[str, list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault(repr(sorted(r.args[1].items())), []).append(i)
        out = [""] * len(requests)
        for indices in groups.values():
            gen_kwargs = requests[indices[0]].args[1]
            items = []
            for i in indices:
                context, _, doc_to_visual, doc_id, task, split = requests[i].args
                items.append(self._item(context, doc_to_visual(self._doc(doc_id, task, split)), task))
            for i, answer in zip(indices, self._answer(items, gen_kwargs), strict=True):
                out[i] = answer
        return out

    def generate_until_multi_round(self, requests: Sequence[Any]) -> list[list[str]]:
        """Each document's rounds, answered one after another until its doc_to_text says the dialogue is over."""
        out = []
        for r in requests:
            context, gen_kwargs, doc_to_visual, doc_to_text, doc_id, task, split = r.args
            doc = self._doc(doc_id, task, split)
            answers = self._answer([self._item(context, doc_to_visual(doc), task)], gen_kwargs)
            out.append(self._rounds(doc, answers, doc_to_text, gen_kwargs, task))
        return out

    def _rounds(
        self, doc: Any, answers: list[str], doc_to_text: Callable[..., Any], gen_kwargs: dict[str, Any], task: str
    ) -> list[str]:
        info, round_idx = None, 1
        while True:
            visuals, context, terminal, answers, info = doc_to_text(
                doc, previous_output=answers, round_idx=round_idx, previous_round_info=info
            )
            answers = list(answers)
            if terminal:
                return answers
            answers += self._answer([self._item(context, visuals, task)], gen_kwargs)
            round_idx += 1
