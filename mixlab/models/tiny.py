"""A tiny LLaVA built from config with a locally trained tokenizer: no downloads, seconds on a CPU."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from mixlab.models.templates import TINY_CHAT_TEMPLATE

PAD, BOS, EOS, UNK, IMAGE = "<pad>", "<s>", "<|end|>", "<unk>", "<image>"
ROLE_TOKENS = ["<|user|>", "<|assistant|>", "<|system|>"]
SPECIALS = [PAD, BOS, EOS, UNK, IMAGE, *ROLE_TOKENS]


def _train_tokenizer(corpus: Iterable[str], vocab_size: int) -> Any:
    """Byte-level BPE trained on the corpus, wrapped as a fast HF tokenizer with the chat specials.

    Any, not PreTrainedTokenizerFast: transformers types ``convert_tokens_to_ids`` of one token as ``int | list[int]``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator((line for line in corpus), trainer)
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        additional_special_tokens=[IMAGE, *ROLE_TOKENS],
    )
    hf_tok.chat_template = TINY_CHAT_TEMPLATE
    return hf_tok


def build_tiny_llava(
    out_dir: Path,
    corpus: Iterable[str],
    *,
    seed: int = 0,
    image_size: int = 64,
    patch_size: int = 8,
    vision_hidden: int = 128,
    text_hidden: int = 128,
    layers: int = 2,
    heads: int = 4,
    vocab_size: int = 512,
    tie_embeddings: bool = False,
) -> Path:
    """Train a tokenizer on `corpus`, build a random-init LLaVA, save a standard HF dir in `out_dir`, return it.

    Deterministic for a given seed and corpus. `image_size // patch_size` squared image tokens per image.
    """
    import torch
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    if image_size % patch_size:
        raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    tokenizer = _train_tokenizer(corpus, vocab_size)
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=TINY_CHAT_TEMPLATE,
    )

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in (PAD, BOS, EOS, IMAGE)}
    vision = CLIPVisionConfig(
        image_size=image_size,
        patch_size=patch_size,
        hidden_size=vision_hidden,
        intermediate_size=2 * vision_hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        projection_dim=vision_hidden,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=text_hidden,
        intermediate_size=2 * text_hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=max(512, 4 * (image_size // patch_size) ** 2),
        pad_token_id=ids[PAD],
        bos_token_id=ids[BOS],
        eos_token_id=ids[EOS],
        tie_word_embeddings=tie_embeddings,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=ids[IMAGE],  # the field behind the image_token_id alias (typed; same config)
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        projector_hidden_act="gelu",
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    model.generation_config.pad_token_id = ids[PAD]
    model.generation_config.bos_token_id = ids[BOS]
    model.generation_config.eos_token_id = ids[EOS]
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir
