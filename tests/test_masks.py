"""Golden label masks: only assistant answers and their end-of-turn token are trained."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from mixlab.data import Sample, sample_to_row
from mixlab.models.collator import VisionCollator, mask_preview
from mixlab.models.templates import LLAVA15_TRAINING_TEMPLATE, TINY_CHAT_TEMPLATE, training_template
from tests.tiny_vlm import COLOURS, QUESTION, build_test_model

# llava-hf/llava-1.5-*-hf style: no {% generation %} markers
LLAVA_HF_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}{% endif %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' '}}"
    "{% endfor %}{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)


def _two_turn(image: str | None) -> Sample:
    return Sample(
        id="golden/1",
        source="golden",
        category=None,
        image=image,
        conversations=[
            {"from": "human", "value": f"<image>\n{QUESTION}"},
            {"from": "gpt", "value": "red"},
            {"from": "human", "value": "Are you sure?"},
            {"from": "gpt", "value": "Yes, it is red."},
        ],
        noisy=None,
    )


def _text_only() -> Sample:
    return Sample(
        id="golden/2",
        source="golden",
        category=None,
        image=None,
        conversations=[{"from": "human", "value": "Describe the picture."}, {"from": "gpt", "value": "one square"}],
        noisy=None,
    )


def _trained_runs(batch, row: int, tokenizer) -> list[str]:
    """The trained label spans of one row, each decoded as a string."""
    runs, current = [], []
    for label in batch["labels"][row].tolist() + [-100]:
        if label != -100:
            current.append(label)
        elif current:
            runs.append(tokenizer.decode(current))
            current = []
    return runs


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from transformers import AutoProcessor

    root = tmp_path_factory.mktemp("masks")
    Image.new("RGB", (64, 64), COLOURS["red"]).save(root / "red.png")
    return AutoProcessor.from_pretrained(build_test_model(root / "model")), str(root / "red.png")


@pytest.fixture(scope="module")
def llava15(tmp_path_factory):
    """A tiny tokenizer + processor with vicuna specials and the llava-hf template (no generation markers)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlavaProcessor, PreTrainedTokenizerFast
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(["A chat between a curious human USER: ASSISTANT: What color is the square? red"], trainer)
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        additional_special_tokens=["<image>"],
    )
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        tokenizer=hf_tok,
        patch_size=16,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=LLAVA_HF_TEMPLATE,
    )
    root = tmp_path_factory.mktemp("llava15")
    Image.new("RGB", (32, 32), COLOURS["red"]).save(root / "red.png")
    return processor, str(root / "red.png")


def test_training_template_choice(tiny, llava15):
    assert training_template(tiny[0]) == TINY_CHAT_TEMPLATE
    assert training_template(llava15[0]) == LLAVA15_TRAINING_TEMPLATE


def test_golden_mask_tiny_template(tiny):
    processor, image = tiny
    tok = processor.tokenizer
    batch = VisionCollator(processor)([sample_to_row(_two_turn(image))])
    assert tok.decode(batch["input_ids"][0]) == (
        "<s><|user|>" + "<image>" * 16 + "What color is the square?<|end|><|assistant|> red<|end|>"
        "<|user|>Are you sure?<|end|><|assistant|> Yes, it is red.<|end|>"
    )
    # the space before an answer is the tiny template's and is trained: " red" is one token, as in a question
    assert _trained_runs(batch, 0, tok) == [" red<|end|>", " Yes, it is red.<|end|>"]
    image_id = tok.convert_tokens_to_ids("<image>")
    labels, ids = batch["labels"][0], batch["input_ids"][0]
    assert (labels[ids == image_id] == -100).all() and int((ids == image_id).sum()) == 16
    assert batch["pixel_values"].shape == (1, 3, 64, 64)


def test_golden_mask_llava15_template(llava15):
    processor, image = llava15
    tok = processor.tokenizer
    batch = VisionCollator(processor)([sample_to_row(_two_turn(image))])
    assert tok.decode(batch["input_ids"][0]) == (
        "<s>A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, "
        "detailed, and polite answers to the human's questions. USER: " + "<image>" * 4 + "\nWhat color is the square?"
        " ASSISTANT: red</s>USER: Are you sure? ASSISTANT: Yes, it is red.</s>"
    )
    # The space after "ASSISTANT:" belongs to the prompt. It is trained only when the tokenizer merges it into the
    # answer's first token (" red" is one token here, as "▁Yes" is in Llama's); " Yes" is "Ġ" + "Yes" here.
    assert _trained_runs(batch, 0, tok) == [" red</s>", "Yes, it is red.</s>"]
    image_id = tok.convert_tokens_to_ids("<image>")
    assert (batch["labels"][0][batch["input_ids"][0] == image_id] == -100).all()
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
        chat_template=LLAVA15_TRAINING_TEMPLATE,
        add_generation_prompt=True,
    )
    assert prompt.endswith("questions. USER: Hi ASSISTANT:")


def test_mixed_batch_text_only_and_image(tiny):
    processor, image = tiny
    tok = processor.tokenizer
    batch = VisionCollator(processor)([sample_to_row(_text_only()), sample_to_row(_two_turn(image))])
    assert batch["input_ids"].shape[0] == 2 and batch["pixel_values"].shape[0] == 1
    assert _trained_runs(batch, 0, tok) == [" one square<|end|>"]
    assert _trained_runs(batch, 1, tok) == [" red<|end|>", " Yes, it is red.<|end|>"]
    pad = batch["attention_mask"][0] == 0
    assert pad.any() and (batch["labels"][0][pad] == -100).all()


def test_image_marker_reconciled():
    sample = _two_turn("/x/red.png")
    sample["conversations"][0]["value"] = QUESTION  # image but no <image> marker: one is added to the first turn
    row = sample_to_row(sample)
    assert row["images"] == ["/x/red.png"]
    assert row["messages"][0]["content"][0] == {"type": "image"}
    row = sample_to_row(_two_turn(None))  # marker without image: dropped
    assert row["images"] == [] and all(p["type"] == "text" for m in row["messages"] for p in m["content"])


def test_mask_preview(tiny):
    processor, image = tiny
    preview = mask_preview(_two_turn(image), processor)
    assert ("<image×16>", False) in preview
    assert "".join(t for t, trained in preview if trained) == " red<|end|> Yes, it is red.<|end|>"
    assert "".join(t for t, _ in preview) == (
        "<s><|user|><image×16>What color is the square?<|end|><|assistant|> red<|end|>"
        "<|user|>Are you sure?<|end|><|assistant|> Yes, it is red.<|end|>"
    )


def test_dataset_roundtrip_keeps_masks(tiny, tmp_path: Path):
    """Rows stored in a datasets.Dataset (Arrow adds text=None to image parts) collate the same."""
    from mixlab.training.sft import build_dataset

    processor, image = tiny
    samples = [_two_turn(image), _text_only()]
    direct = VisionCollator(processor)([sample_to_row(s) for s in samples])
    stored = VisionCollator(processor)(list(build_dataset(samples)))
    assert (direct["labels"] == stored["labels"]).all() and (direct["input_ids"] == stored["input_ids"]).all()
