"""Join a vision encoder and a language model into an unaligned LLaVA: the starting point of LLaVA's first stage.

LLaVA-1.5 trains in two stages: alignment (captions such as LLaVA-558K; only the projector learns) and instruction
tuning. Published llava-hf checkpoints are past both. To compare alignment data (POINTS' perplexity filtering of
pre-training captions), start from the two parts and a projector that has learned nothing: this writes such a
model in llava-hf format (the encoder's and the language model's weights, a freshly initialised projector, the
language model's tokenizer with an `<image>` token, the encoder's image processor, LLaVA-1.5's chat template).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mixlab.errors import UserError
from mixlab.models.templates import LLAVA15_TRAINING_TEMPLATE

IMAGE_TOKEN = "<image>"
PAD_TOKEN = "<pad>"


def _config_dir(path: Path, what: str) -> Path:
    if not (path / "config.json").is_file():
        raise UserError(f"{what} {path} is not a model directory (no config.json). Give a local Hugging Face download.")
    return path


def compose_llava(vision_dir: Path, language_dir: Path, out_dir: Path, seed: int = 0, dtype: str = "float32") -> Path:
    """Write vision encoder + language model + an untrained two-layer projector as a llava-hf model in out_dir."""
    import torch
    from transformers import (
        AutoConfig,
        AutoImageProcessor,
        AutoModelForCausalLM,
        AutoTokenizer,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    vision_dir = _config_dir(Path(vision_dir), "vision encoder")
    language_dir = _config_dir(Path(language_dir), "language model")
    torch_dtype = getattr(torch, dtype)
    tokenizer = AutoTokenizer.from_pretrained(language_dir)
    added = [t for t in (IMAGE_TOKEN,) if t not in tokenizer.get_vocab()]
    if added:
        tokenizer.add_special_tokens({"additional_special_tokens": added})
    if tokenizer.pad_token is None:
        tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})

    vision_config = AutoConfig.from_pretrained(vision_dir)
    vision_config = getattr(vision_config, "vision_config", vision_config)  # a full CLIP/SigLIP config holds one
    language = AutoModelForCausalLM.from_pretrained(language_dir, dtype=torch_dtype)
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    assert isinstance(image_token_id, int)  # one token in, one id out
    config = LlavaConfig(
        vision_config=vision_config,
        text_config=language.config,
        image_token_index=image_token_id,
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,  # LLaVA-1.5: the penultimate layer's patch features
        projector_hidden_act="gelu",
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).to(torch_dtype)
    tower: Any = model.model.vision_tower
    tower.load_state_dict(type(tower).from_pretrained(vision_dir, dtype=torch_dtype).state_dict())
    model.model.language_model.load_state_dict(language.model.state_dict())
    model.lm_head.load_state_dict(language.lm_head.state_dict())
    model.resize_token_embeddings(len(tokenizer))
    pad_id = tokenizer.pad_token_id
    model.config.get_text_config().pad_token_id = pad_id
    model.generation_config.pad_token_id = pad_id

    processor = LlavaProcessor(
        image_processor=AutoImageProcessor.from_pretrained(vision_dir),
        tokenizer=tokenizer,
        patch_size=vision_config.patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1 if getattr(vision_config, "model_type", "") == "clip_vision_model" else 0,
        chat_template=LLAVA15_TRAINING_TEMPLATE,
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir
