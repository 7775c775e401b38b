"""scripts/compose_llava.py: a vision encoder and a language model joined into an unaligned llava-hf model that
mixlab loads, trains and scores, with both parts' weights intact."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from PIL import Image

from mixlab.models.compose import compose_llava
from mixlab.models.loading import load_model
from mixlab.models.predict import PromptItem, choose
from mixlab.training.sft import SFTSettings, train_llava
from tests.tiny_vlm import CORPUS, NAMES, colour_samples

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "compose_llava.py"


def write_parts(root: Path) -> tuple[Path, Path]:
    """A tiny CLIP vision encoder and a tiny Llama whose tokenizer has no <image> and no pad token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        CLIPVisionModel,
        LlamaConfig,
        LlamaForCausalLM,
        PreTrainedTokenizerFast,
    )

    torch.manual_seed(0)
    vision = root / "clip"
    CLIPVisionModel(
        CLIPVisionConfig(
            image_size=32,
            patch_size=16,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
        )
    ).save_pretrained(vision)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(vision)

    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(
        CORPUS,
        trainers.BpeTrainer(
            vocab_size=300,
            special_tokens=["<unk>", "<s>", "</s>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        ),
    )
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    language = root / "llama"
    LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            max_position_embeddings=1024,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    ).save_pretrained(language)
    tokenizer.save_pretrained(language)
    return vision, language


def test_composed_model_keeps_both_parts_and_trains(tmp_path):
    from transformers import CLIPVisionModel, LlamaForCausalLM

    vision, language = write_parts(tmp_path)
    out = compose_llava(vision, language, tmp_path / "llava")
    model, processor = load_model(out)
    tokenizer = processor.tokenizer
    assert model.config.image_token_index == tokenizer.convert_tokens_to_ids("<image>")
    assert tokenizer.pad_token is not None and model.config.get_text_config().pad_token_id == tokenizer.pad_token_id

    clip = CLIPVisionModel.from_pretrained(vision).state_dict()
    tower = model.model.vision_tower.state_dict()
    assert clip.keys() == tower.keys() and all(torch.equal(clip[k], tower[k]) for k in clip)
    llama = LlamaForCausalLM.from_pretrained(language)
    n = llama.config.vocab_size
    layer = model.model.language_model.layers[1]
    assert torch.equal(layer.mlp.up_proj.weight, llama.model.layers[1].mlp.up_proj.weight)
    assert torch.equal(model.get_input_embeddings().weight[:n], llama.get_input_embeddings().weight)
    assert torch.equal(model.lm_head.weight[:n], llama.lm_head.weight)
    assert model.get_input_embeddings().weight.shape[0] == len(tokenizer) == n + 2  # <image> and <pad> added

    samples = colour_samples(16, tmp_path / "data", seed=0)
    settings = SFTSettings(epochs=1, batch_size=8, projector_lr=1e-3, freeze_language_model=True)
    result = train_llava(samples, out, tmp_path / "aligned", settings)
    assert result["steps"] == 2
    aligned, aligned_processor = load_model(tmp_path / "aligned" / "model")
    before, after = model.state_dict(), aligned.state_dict()
    projector = [k for k in before if "multi_modal_projector" in k]
    assert projector and all(not torch.equal(before[k], after[k]) for k in projector)  # the projector trained
    assert torch.equal(before["lm_head.weight"], after["lm_head.weight"])  # the frozen language model did not
    items = [PromptItem("What color is the square?", Image.open(s["image"]).convert("RGB")) for s in samples[:4]]
    assert all(pick in range(len(NAMES)) for pick in choose(aligned, aligned_processor, items, [NAMES] * 4))


def test_script_says_what_is_missing(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("compose_llava", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    args = ["--vision", str(tmp_path / "none"), "--language", str(tmp_path), "--out", str(tmp_path / "o")]
    assert module.main(args) == 2
    err = capsys.readouterr().err
    assert "vision encoder" in err and "no config.json" in err
