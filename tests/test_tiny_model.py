"""The tiny LLaVA: builds in seconds, is deterministic, round-trips through a standard HF dir."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from PIL import Image

from mixlab.errors import UserError
from tests.tiny_vlm import COLOURS, QUESTION, build_test_model


def _loss(model, processor) -> float:
    import torch

    img = Image.new("RGB", (64, 64), COLOURS["red"])
    messages = [
        {"role": "user", "content": [{"type": "image", "image": img}, {"type": "text", "text": QUESTION}]},
        {"role": "assistant", "content": [{"type": "text", "text": "red"}]},
    ]
    batch = processor.apply_chat_template(messages, tokenize=True, return_dict=True, return_tensors="pt")
    with torch.no_grad():
        return float(model(**batch, labels=batch["input_ids"]).loss)


def _digest(path: Path) -> str:
    return hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest()


def test_build_save_reload_same_loss(tmp_path):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    path = build_test_model(tmp_path / "a")
    for name in ("model.safetensors", "config.json", "processor_config.json", "tokenizer.json", "chat_template.jinja"):
        assert (path / name).is_file(), name
    model = LlavaForConditionalGeneration.from_pretrained(path).eval()
    processor = AutoProcessor.from_pretrained(path)
    assert type(processor.image_processor).__name__ == "CLIPImageProcessorPil"
    before = _loss(model, processor)

    model.save_pretrained(tmp_path / "b")
    processor.save_pretrained(tmp_path / "b")
    after = _loss(
        LlavaForConditionalGeneration.from_pretrained(tmp_path / "b").eval(),
        AutoProcessor.from_pretrained(tmp_path / "b"),
    )
    assert after == pytest.approx(before, abs=1e-6)
    assert 3.0 < before < 12.0  # random init: about log(vocab)


def test_image_tokens_and_specials(tmp_path):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(build_test_model(tmp_path / "m"))
    img = Image.new("RGB", (64, 64), COLOURS["blue"])
    messages = [{"role": "user", "content": [{"type": "image", "image": img}, {"type": "text", "text": QUESTION}]}]
    batch = processor.apply_chat_template(messages, tokenize=True, return_dict=True, add_generation_prompt=True)
    ids = batch["input_ids"][0]
    tok = processor.tokenizer
    assert ids.count(tok.convert_tokens_to_ids("<image>")) == 16  # (64 / 16) ** 2
    assert tok.decode(ids).endswith("<|assistant|>")
    assert tok.eos_token == "<|end|>" and tok.pad_token == "<pad>"


def test_deterministic_for_seed_and_corpus(tmp_path):
    a, b, c = (build_test_model(tmp_path / n, seed=s) for n, s in (("a", 0), ("b", 0), ("c", 1)))
    assert _digest(a) == _digest(b)
    assert (a / "tokenizer.json").read_bytes() == (b / "tokenizer.json").read_bytes()
    assert _digest(a) != _digest(c)


def test_load_model_cpu_and_errors(tmp_path):
    import torch

    from mixlab.models.loading import device_kind, load_model, resolve_attn_implementation

    assert device_kind() == "cpu"
    assert resolve_attn_implementation("auto") == "sdpa"
    model, processor = load_model(build_test_model(tmp_path / "m"))
    assert model.dtype == torch.float32 and not model.training
    assert model.config.text_config._attn_implementation == "sdpa"
    assert processor.tokenizer.pad_token_id is not None
    model, _ = load_model(tmp_path / "m", for_training=True, attn_implementation="eager")
    assert model.training

    with pytest.raises(UserError, match="does not exist"):
        load_model(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="config.json"):
        load_model(tmp_path / "empty")
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is a file, not a model folder"):
        load_model(tmp_path / "file")
    (tmp_path / "empty" / "config.json").write_text("{}")
    with pytest.raises(UserError, match=r"has no weights \(\*.safetensors or \*.bin\)"):
        load_model(tmp_path / "empty")


def test_answer_words_are_the_question_words_tokens(tmp_path):
    """An answer after <|assistant|> tokenizes as the same word inside a question does (" red" both times), as Llama's
    tokenizer does after "ASSISTANT:"; without it a yes/no question's value and the answer word were unrelated ids."""
    from transformers import AutoTokenizer

    from mixlab.models.tiny import build_tiny_llava

    corpus = ["Is the circle red? Please answer yes or no.", "What color is the circle?", "red", "blue"] * 40
    tok = AutoTokenizer.from_pretrained(build_tiny_llava(tmp_path / "m", corpus, vocab_size=300))
    chat = [{"role": "user", "content": "Is the circle red?"}, {"role": "assistant", "content": "red"}]
    ids = tok.apply_chat_template(chat, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    answer = [t for t, m in zip(ids["input_ids"], ids["assistant_masks"], strict=True) if m]
    question = tok("Is the circle red?")["input_ids"]
    assert answer[0] in question and tok.convert_ids_to_tokens(answer[0]).endswith("red")
