"""Batches for training and scoring: chat template + image pixels, with assistant-only label masks.

Labels are -100 everywhere except the assistant answers and their end-of-turn token: the system prompt, the user
turns, the image tokens and the padding are never trained. The masks come from the `{% generation %}` markers of
`training_template(processor)` through TRL's `DataCollatorForVisionLanguageModeling(assistant_only_loss=True)`.
"""

from __future__ import annotations

from typing import Any

from mixlab.caches import file_digest
from mixlab.data import IMAGE_TOKEN, Sample, sample_to_row
from mixlab.errors import UserError
from mixlab.models.templates import training_template

IGNORE = -100


def load_image(image: Any) -> Any:
    """A PIL image in RGB from a PIL image or a path; an unreadable file is a UserError naming it."""
    from PIL import Image

    if isinstance(image, Image.Image):
        return image if image.mode == "RGB" else image.convert("RGB")
    try:
        with Image.open(image) as im:
            return im.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise UserError(
            f"image {image} cannot be read ({type(e).__name__}: {e}). Fix or remove the file, or load the source "
            'with check_images = "open" (the default) so bad images are found before training.'
        ) from None


def row_images(row: dict[str, Any]) -> list[Any]:
    """A row's images as it gives them (paths or PIL images), missing ones (None) left out."""
    return [im for im in (row.get("images") or []) if im is not None]


def row_pictures(row: dict[str, Any]) -> list[Any]:
    """A row's images opened (`load_image`)."""
    return [load_image(im) for im in row_images(row)]


def clean_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Drop the None keys that Arrow adds to typed content parts (an image part comes back with text=None)."""
    out = []
    for m in messages:
        content = m["content"]
        if isinstance(content, list):
            content = [{k: v for k, v in part.items() if v is not None} for part in content]
        out.append({"role": m["role"], "content": content})
    return out


class VisionCollator:
    """Collate rows {"messages", "images"} into model inputs with assistant-only labels; counts the tokens it emits.

    `packing`: padding-free rows with per-sample position ids and no attention_mask (mixlab.models.packing), at
    most `pack_length` tokens each (None: the batch's longest sample); `last_spans` says where each sample went.
    `image_keys`: add each image's content key (a hash of the file's bytes, or of a PIL image's pixels) as
    batch["image_keys"], in the order of pixel_values, for the vision feature cache (mixlab.training.vision_cache).
    """

    def __init__(
        self,
        processor: Any,
        *,
        max_length: int | None = None,
        chat_template: str | None = None,
        packing: bool = False,
        pack_length: int | None = None,
        image_keys: bool = False,
    ) -> None:
        from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

        self.processor = processor
        self.chat_template = chat_template or training_template(processor)
        self.inner = DataCollatorForVisionLanguageModeling(
            processor=processor, max_length=max_length, assistant_only_loss=True, chat_template=self.chat_template
        )
        self.max_length = max_length
        self.packing = packing
        self.pack_length = pack_length
        self.image_keys = image_keys
        self.last_spans: list[Any] = []
        """Where each sample of the last packed batch went (mixlab.models.packing.Span)."""
        self.tokens_seen = 0

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        sources = [row_images(row) for row in rows]
        batch = self.encode(rows)
        self.tokens_seen += int(batch["attention_mask"].sum())
        if self.image_keys and "pixel_values" in batch:
            batch["image_keys"] = [self._image_key(im) for images in sources for im in images]
        if self.packing:
            from mixlab.models.packing import pack_batch

            pad = self.processor.tokenizer.pad_token_id
            batch, self.last_spans = pack_batch(dict(batch), [len(images) for images in sources], pad, self.pack_length)
        return batch

    def encode(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        """The rows as right-padded ids, attention mask, assistant-only labels and image inputs (TRL's collator)."""
        return self.inner([{"messages": clean_messages(row["messages"]), "images": row_pictures(row)} for row in rows])

    def _image_key(self, image: Any) -> str:
        """A content hash of an image: of the file's bytes (remembered by path, size and mtime), or of the pixels."""
        import hashlib

        from PIL import Image

        if isinstance(image, Image.Image):
            material = f"{image.mode}:{image.size}:".encode() + image.tobytes()
            return "pixels:" + hashlib.blake2b(material, digest_size=16).hexdigest()
        return "file:" + file_digest(image)


def image_token_id(processor: Any) -> int:
    """The id of the processor's image token (the LLaVA "<image>" where it names none)."""
    return processor.tokenizer.convert_tokens_to_ids(getattr(processor, "image_token", IMAGE_TOKEN))


def mask_preview(sample: Sample, processor: Any) -> list[tuple[str, bool]]:
    """(token text, trained?) for each token of the sample; a run of image tokens is shown as one "<image×N>"."""
    batch = VisionCollator(processor)([sample_to_row(sample)])
    tokenizer = processor.tokenizer
    image_id = image_token_id(processor)
    out: list[tuple[str, bool]] = []
    run = 0
    for token_id, label in zip(batch["input_ids"][0].tolist(), batch["labels"][0].tolist(), strict=True):
        if token_id == image_id:
            run += 1
            continue
        if run:
            out.append((f"<image×{run}>", False))
            run = 0
        out.append((tokenizer.decode([token_id]), label != IGNORE))
    if run:
        out.append((f"<image×{run}>", False))
    return out
