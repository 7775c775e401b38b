"""SFT with TRL: the tiny model learns colours; resume, per-part learning rates and LoRA work."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from mixlab.errors import UserError
from mixlab.models.loading import load_model
from mixlab.models.predict import PromptItem, choose, generate
from mixlab.training.sft import LoraSettings, SFTSettings, make_trainer, param_part, train_llava
from tests.tiny_vlm import NAMES, build_test_model, colour_samples


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("sft")
    base = build_test_model(root / "base")
    return (
        base,
        colour_samples(256, root / "train", seed=1, prefix="t"),
        colour_samples(60, root / "test", seed=2, prefix="h"),
    )


def _accuracy(model_dir: Path, test) -> tuple[float, list[str]]:
    model, processor = load_model(model_dir)
    items = [PromptItem(s["conversations"][0]["value"], Image.open(s["image"]).convert("RGB")) for s in test]
    picks = choose(model, processor, items, [NAMES] * len(items))
    truth = [s["conversations"][1]["value"] for s in test]
    answers = generate(model, processor, items[:12], max_new_tokens=4)
    return sum(NAMES[k] == t for k, t in zip(picks, truth, strict=True)) / len(test), answers


def _plain_hf_answers(model_dir: Path, test) -> int:
    """Load with transformers alone (no mixlab code) and answer with the checkpoint's own chat template; returns the
    number of right colours."""
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(model_dir).eval()
    processor = AutoProcessor.from_pretrained(model_dir)
    right = 0
    for s in test:
        question = s["conversations"][0]["value"].replace("<image>", "").strip()
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
        inputs = processor(images=Image.open(s["image"]).convert("RGB"), text=prompt, return_tensors="pt")
        out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
        answer = processor.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()
        right += answer == s["conversations"][1]["value"]
    return right


def _weights(model_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(model_dir / "model.safetensors")


def test_short_sft_learns_colours(data, tmp_path):
    base, train, test = data
    before, _ = _accuracy(base, test)
    steps = []
    settings = SFTSettings(epochs=4, learning_rate=2e-3, batch_size=16, warmup_ratio=0.1, logging_steps=8)
    result = train_llava(train, base, tmp_path, settings, progress=lambda s, t: steps.append((s, t)))
    after, answers = _accuracy(tmp_path / "model", test)
    print(f"colour accuracy {before:.2f} -> {after:.2f}; {result}")
    assert before <= 0.35
    assert after >= 0.6
    assert result["steps"] == 64 and result["samples"] == 256 and result["resumed_from"] is None
    assert result["train_loss"] > 0 and result["seconds"] > 0 and result["tokens_per_second"] > 0
    assert steps[0] == (0, 64) and steps[-1] == (64, 64)
    assert sum(a in NAMES for a in answers) >= 8  # greedy answers are colour words, not garbage
    assert _plain_hf_answers(tmp_path / "model", test[:12]) >= 8
    assert not (tmp_path / "checkpoints").exists()
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == [
        "chat_template.jinja",
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "processor_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ]


def _crash_at_step_4(step: int, total: int) -> None:
    """A progress callback that stops the training as a crash would, after step 4."""
    if step == 4:
        raise KeyboardInterrupt("simulated crash")


def test_resume_after_crash(data, tmp_path):
    """A run killed after a checkpoint resumes from it and ends with the weights of an uninterrupted run."""
    base, train, _ = data
    settings = SFTSettings(epochs=2, learning_rate=1e-3, batch_size=16, save_steps=3, logging_steps=2)

    with pytest.raises(KeyboardInterrupt):
        train_llava(train[:64], base, tmp_path / "run", settings, progress=_crash_at_step_4)
    assert (tmp_path / "run" / "checkpoints" / "checkpoint-3").is_dir()
    assert not (tmp_path / "run" / "model").exists()

    seen = []
    result = train_llava(train[:64], base, tmp_path / "run", settings, progress=lambda s, t: seen.append(s))
    assert result["resumed_from"].endswith("checkpoint-3")
    assert result["steps"] == 8 and seen[0] == 3  # continued from step 3, not from 0
    assert not (tmp_path / "run" / "checkpoints").exists()

    train_llava(train[:64], base, tmp_path / "straight", settings)
    resumed, straight = _weights(tmp_path / "run" / "model"), _weights(tmp_path / "straight" / "model")
    assert max(float((resumed[k] - straight[k]).abs().max()) for k in straight) < 1e-5


def _saves(trainer) -> list[int]:
    """The steps at which `trainer` writes checkpoints, as it trains."""
    from transformers import TrainerCallback

    steps: list[int] = []

    class Saves(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            steps.append(state.global_step)

    trainer.add_callback(Saves())
    return steps


def test_checkpoints_by_the_clock(data, tmp_path):
    """Without save_steps a training shorter than save_minutes writes no checkpoint; once the time has passed a
    checkpoint is written at each step end but the last (the model is saved right after); a crash resumes from it."""
    base, train, _ = data
    trainer, _, _ = make_trainer(train[:64], base, tmp_path / "short", SFTSettings(epochs=2, batch_size=16))
    saves = _saves(trainer)
    trainer.train()
    assert saves == []

    every_step = SFTSettings(epochs=2, batch_size=16, save_minutes=1e-9)
    trainer, _, _ = make_trainer(train[:64], base, tmp_path / "clock", every_step)
    saves = _saves(trainer)
    trainer.train()
    assert saves == list(range(1, 8))  # 8 steps, none at the last

    with pytest.raises(KeyboardInterrupt):
        train_llava(train[:64], base, tmp_path / "run", every_step, progress=_crash_at_step_4)
    assert (tmp_path / "run" / "checkpoints" / "checkpoint-3").is_dir()
    assert train_llava(train[:64], base, tmp_path / "run", every_step)["resumed_from"].endswith("checkpoint-3")


def _share_flags(rank: int, world: int, init: str, out: str) -> None:
    import torch.distributed as dist

    from mixlab.training.checkpoints import _same_everywhere

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        Path(out, str(rank)).write_text(str(_same_everywhere(rank == 0, torch.device("cpu"))))
    finally:
        dist.destroy_process_group()


def test_processes_checkpoint_at_the_same_step(tmp_path):
    """The clock's verdict is the first process's in every process (a sharded save is collective)."""
    import torch.multiprocessing as mp

    init = f"file://{tmp_path / 'rendezvous'}"
    mp.spawn(_share_flags, args=(2, init, str(tmp_path)), nprocs=2)
    assert [(tmp_path / str(r)).read_text() for r in (0, 1)] == ["True", "True"]


def test_param_groups_have_part_lrs(data, tmp_path):
    base, train, _ = data
    settings = SFTSettings(learning_rate=1e-3, projector_lr=3e-4, batch_size=16)
    trainer, _, _ = make_trainer(train[:32], base, tmp_path, settings)
    optimizer = trainer.create_optimizer()
    lrs = {g["part"]: g["lr"] for g in optimizer.param_groups}
    assert lrs == {"lm": 1e-3, "projector": 3e-4}  # vision frozen: no group
    assert all(not p.requires_grad for n, p in trainer.model.named_parameters() if param_part(n) == "vision")
    n_trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    assert sum(p.numel() for g in optimizer.param_groups for p in g["params"]) == n_trainable

    settings = SFTSettings(learning_rate=1e-3, vision_lr=5e-5, batch_size=16, weight_decay=0.1)
    trainer, _, _ = make_trainer(train[:32], base, tmp_path, settings)
    groups = trainer.create_optimizer().param_groups
    assert {(g["part"], g["lr"]) for g in groups} == {("lm", 1e-3), ("projector", 1e-3), ("vision", 5e-5)}
    assert {g["weight_decay"] for g in groups} == {0.0, 0.1}  # no decay on biases and norms


def test_part_lrs_really_apply(data, tmp_path):
    """Frozen vision tower stays bit-identical; a near-zero projector lr barely moves it; the LM moves."""
    base, train, _ = data
    settings = SFTSettings(epochs=1, learning_rate=1e-3, projector_lr=1e-9, batch_size=16, warmup_ratio=0.0)
    train_llava(train[:64], base, tmp_path, settings)
    before, after = _weights(base), _weights(tmp_path / "model")
    assert before.keys() == after.keys()

    def max_change(part: str) -> float:
        return max(float((after[k] - before[k]).abs().max()) for k in before if param_part(k) == part)

    assert max_change("vision") == 0.0
    assert max_change("projector") < 1e-7
    assert max_change("lm") > 1e-4


def test_freeze_language_model_trains_only_the_projector(data, tmp_path):
    """LLaVA's alignment stage: the language model and the tower stay bit-identical, the projector moves."""
    base, train, _ = data
    settings = SFTSettings(epochs=1, learning_rate=1e-3, batch_size=16, warmup_ratio=0.0, freeze_language_model=True)
    trainer, _, _ = make_trainer(train[:32], base, tmp_path / "groups", settings)
    assert {g["part"] for g in trainer.create_optimizer().param_groups} == {"projector"}
    train_llava(train[:64], base, tmp_path, settings)
    before, after = _weights(base), _weights(tmp_path / "model")
    change = {
        part: max(float((after[k] - before[k]).abs().max()) for k in before if param_part(k) == part)
        for part in ("vision", "projector", "lm")
    }
    assert change["vision"] == 0.0 and change["lm"] == 0.0
    assert change["projector"] > 1e-4
    with pytest.raises(ValueError, match="no language model weights for LoRA"):
        SFTSettings(freeze_language_model=True, lora=LoraSettings())


def test_lora_gives_merged_plain_dir(data, tmp_path):
    from transformers import LlavaForConditionalGeneration

    base, train, _ = data
    settings = SFTSettings(epochs=1, learning_rate=1e-3, batch_size=16, lora=LoraSettings(r=8, alpha=16))
    result = train_llava(train[:64], base, tmp_path, settings)
    assert result["steps"] == 4
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    model = LlavaForConditionalGeneration.from_pretrained(tmp_path / "model")
    assert not any("lora" in k or "modules_to_save" in k or "base_layer" in k for k in model.state_dict())
    before, after = _weights(base), _weights(tmp_path / "model")
    assert before.keys() == after.keys()
    changed = {param_part(k) for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"lm", "projector"}  # LoRA merged into the LM's projections, projector fully trained
    assert all(torch.equal(before[k], after[k]) for k in before if "embed_tokens" in k or "lm_head" in k)
    load_model(tmp_path / "model")


def test_lora_target_that_is_no_linear_layer_is_a_user_error(data, tmp_path):
    base, train, _ = data
    settings = SFTSettings(batch_size=16, lora=LoraSettings(r=4, alpha=8, target_modules=["q_proj", "qproj"]))
    with pytest.raises(UserError, match=r"target_modules: the language model has no linear layer named 'qproj'"):
        train_llava(train[:16], base, tmp_path, settings)


def test_scheduler_and_attention_are_checked_names():
    from typing import get_args

    from transformers.trainer_utils import SchedulerType

    from mixlab.training.sft import Scheduler

    assert set(get_args(Scheduler)) <= {s.value for s in SchedulerType}  # each one transformers knows
    with pytest.raises(ValueError, match="cosine"):
        SFTSettings(scheduler="cosin")
    with pytest.raises(ValueError, match="flash_attention_2"):
        SFTSettings(attn_implementation="flash")


def test_empty_selection_is_a_user_error(data, tmp_path):
    with pytest.raises(UserError, match="no samples"):
        train_llava([], data[0], tmp_path, SFTSettings())


def test_deepspeed_config_must_exist(data, tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        train_llava(data[1][:8], data[0], tmp_path, SFTSettings(deepspeed=str(tmp_path / "nope.json")))


def test_settings_reject_unknown_keys():
    with pytest.raises(ValueError, match="extra"):
        SFTSettings(epoch=3)
    assert SFTSettings().model_json_schema()["properties"]["vision_lr"]["description"]
