"""Rows to model inputs without TRL's collator: the same ids, labels and pixel values as `VisionCollator`, less
work.

`VisionCollator` runs the processor once per batch on every row: chat template, tokenizer, image processing and
text expansion. `Collate` gets the same ids and labels from one batched `tokenizer.apply_chat_template` call with
each image left as its placeholder token, expanded afterwards into the image's tokens (computed once per image
size), and the pixel values from the batch's images at once (`mixlab.models.pixels`). It is checked against
`VisionCollator` on the first row of each kind (without / with an image) for each processor and template, and not
used where it differs. `TrainingCollator`: `VisionCollator` for training (token count, image keys, packing) encoding
with `Collate`. Also here: `PromptItem`, a question for generation and option scoring, and its row.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mixlab.data import IMAGE_TOKEN
from mixlab.models.collator import IGNORE, VisionCollator, clean_messages, row_images, row_pictures
from mixlab.models.pixels import image_inputs
from mixlab.models.templates import training_template

if TYPE_CHECKING:
    from PIL import Image


@dataclass
class PromptItem:
    """One question: its text (an "<image>" marker in it is dropped) and an optional image."""

    text: str
    image: Image.Image | None = None


def _user_message(item: PromptItem) -> dict[str, Any]:
    content: list[dict[str, Any]] = [{"type": "image"}] if item.image is not None else []
    content.append({"type": "text", "text": item.text.replace(IMAGE_TOKEN, "").strip()})
    return {"role": "user", "content": content}


def prompt_row(item: PromptItem, answer: str | None = None) -> dict[str, Any]:
    """The item as a training row (`VisionCollator`'s input), with `answer` as the assistant's turn if given."""
    messages = [_user_message(item)]
    if answer is not None:
        messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return {"messages": messages, "images": [item.image] if item.image is not None else []}


class Unsupported(Exception):
    """The processor does not encode the way `_collate` reproduces."""


def image_token_of(processor: Any) -> tuple[str | None, int | None]:
    """(the processor's image token, its id), or (None, None) for a processor that names no image token."""
    token = getattr(processor, "image_token", None)
    if not isinstance(token, str):
        return None, None
    return token, processor.tokenizer.convert_tokens_to_ids(token)


def tokenize_chats(
    processor: Any, template: str, chats: list[list[dict[str, Any]]]
) -> list[tuple[list[int], list[int]]]:
    """(ids, labels) of each chat, as the chat template and the tokenizer make them; an image is one placeholder id."""
    enc = processor.tokenizer.apply_chat_template(
        chats, chat_template=template, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    return [
        (list(ids), [t if m else IGNORE for t, m in zip(ids, mask, strict=True)])
        for ids, mask in zip(enc["input_ids"], enc["assistant_masks"], strict=True)
    ]


class Images:
    """Image-token expansions (per image size) and pixel inputs, from the processor's own image processing.

    Holds no reference to the processor, so that `_IMAGES` can keep one per processor without keeping it alive."""

    def __init__(self, processor: Any) -> None:
        self.token, self.token_id = image_token_of(processor)
        tokenizer = processor.tokenizer
        self.special = set(tokenizer.all_special_ids) | {
            i for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items() if getattr(t, "special", False)
        }
        self.expansions: dict[tuple[int, int], list[int]] = {}

    def expansion(self, processor: Any, image: Any) -> list[int]:
        """The ids that the placeholder of `image` expands to, by image size (the processors' rule).

        Only expansions made of special tokens are accepted: those tokenize the same in any context, so expanding
        the placeholder after tokenizing equals tokenizing the expanded text."""
        if image.size not in self.expansions:
            if self.token is None:
                raise Unsupported("the processor names no image token")
            enc = processor(text=[self.token], images=[[image]], add_special_tokens=False)
            ids = list(enc["input_ids"][0])
            if not ids or not set(ids) <= self.special:
                raise Unsupported("the image expands to non-special tokens")
            self.expansions[image.size] = ids
        return self.expansions[image.size]

    def expand(
        self, processor: Any, ids: list[int], labels: list[int], pictures: Sequence[Any]
    ) -> tuple[list[int], list[int]]:
        """ids and labels with the image placeholders replaced, in order, by their images' (untrained) tokens."""
        at = [t for t, i in enumerate(ids) if i == self.token_id] if self.token_id is not None else []
        if len(at) != len(pictures):
            raise Unsupported(f"{len(at)} image placeholders for {len(pictures)} images")
        out_ids: list[int] = []
        out_labels: list[int] = []
        last = 0
        for t, picture in zip(at, pictures, strict=True):
            extra = self.expansion(processor, picture)
            out_ids += ids[last:t] + extra
            out_labels += labels[last:t] + [IGNORE] * len(extra)
            last = t + 1
        return out_ids + ids[last:], out_labels + labels[last:]


def pad(rows: Sequence[Sequence[int]], value: int, *, left: bool) -> tuple[Any, Any]:
    """(ids, mask) of id lists padded with `value` to the longest, on the left or on the right."""
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), value, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        span = slice(width - len(r), width) if left else slice(0, len(r))
        ids[i, span] = torch.tensor(r, dtype=torch.long)
        mask[i, span] = 1
    return ids, mask


def pad_id(processor: Any) -> int:
    pad = processor.tokenizer.pad_token_id
    return int(pad) if pad is not None else 0


def _collate(processor: Any, template: str, images: Images, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """What `VisionCollator(processor)(rows)` returns (right padding, labels -100 where untrained)."""
    pictures = [row_pictures(row) for row in rows]
    chats = tokenize_chats(processor, template, [clean_messages(row["messages"]) for row in rows])
    encoded = [images.expand(processor, ids, labels, pics) for (ids, labels), pics in zip(chats, pictures, strict=True)]
    ids, mask = pad([e[0] for e in encoded], pad_id(processor), left=False)
    labels, _ = pad([e[1] for e in encoded], IGNORE, left=False)
    return {"input_ids": ids, "attention_mask": mask, **image_inputs(processor, pictures), "labels": labels}


def _matches_reference(processor: Any, template: str, row: dict[str, Any]) -> bool:
    """Whether `_collate` gives `VisionCollator`'s tensors for one row."""
    import torch

    try:
        fast = _collate(processor, template, Images(processor), [row])
    except Exception:  # a processor this encoding cannot drive (any error): the collator's own way
        return False
    reference = dict(VisionCollator(processor, chat_template=template)([row]))
    return set(fast) == set(reference) and all(
        torch.equal(torch.as_tensor(fast[k]), torch.as_tensor(reference[k])) for k in reference
    )


_VERDICTS: weakref.WeakKeyDictionary[Any, dict[tuple[str, int], bool]] = weakref.WeakKeyDictionary()


def fast_encoding_ok(processor: Any, template: str, row: dict[str, Any]) -> bool:
    """`_matches_reference`, remembered per processor, template and number of images in the row."""
    key = (template, len(row_images(row)))
    try:
        known = _VERDICTS.setdefault(processor, {})
    except TypeError:  # a processor that cannot be weakly referenced: checked on every call
        known = {}
    if key not in known:
        known[key] = _matches_reference(processor, template, row)
    return known[key]


_IMAGES: weakref.WeakKeyDictionary[Any, Images] = weakref.WeakKeyDictionary()


def images_of(processor: Any) -> Images:
    """The processor's `Images`, kept while the processor lives (its expansions are computed once per size)."""
    try:
        images = _IMAGES.get(processor)
    except TypeError:  # a processor that cannot be weakly referenced
        return Images(processor)
    if images is None:
        images = _IMAGES[processor] = Images(processor)
    return images


class Collate:
    """Rows to model inputs: `_collate` where it matches `VisionCollator` for the row kinds of a batch, else the
    collator itself."""

    def __init__(self, processor: Any, template: str | None = None) -> None:
        self.processor = processor
        self.template = template or training_template(processor)
        self.images = images_of(processor)
        self.reference = VisionCollator(processor, chat_template=self.template)

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        kinds = {len(row_images(row)): row for row in rows}
        if all(fast_encoding_ok(self.processor, self.template, row) for row in kinds.values()):
            try:
                return _collate(self.processor, self.template, self.images, rows)
            except Unsupported:
                pass
        return dict(self.reference(rows))


class TrainingCollator(VisionCollator):
    """`VisionCollator` (token count, image keys, packing) that encodes its rows with `Collate`: the same tensors,
    without the processor's per-batch work. A batch with a row longer than `max_length` is encoded by TRL's collator,
    which truncates it."""

    def __init__(self, processor: Any, **options: Any) -> None:
        super().__init__(processor, **options)
        self.fast = Collate(processor, self.chat_template)

    def encode(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.fast(rows)
        if self.max_length is not None and batch["input_ids"].shape[1] > self.max_length:
            return super().encode(rows)
        return batch
