"""The `soup` merger: streamed averaging, compatibility checks, LoRA ingredients, greedy accept/reject."""

from __future__ import annotations

import functools
import json
import random
import shutil
from pathlib import Path

import pytest

from mixlab.errors import UserError
from mixlab.testing import StubContext
from tests.tiny_vlm import COLOURS, CORPUS, QUESTION, build_test_model

PROBE = "language_model.lm_head.weight"  # a tensor the fake evaluator fingerprints (as transformers saves it)


def _noisy(base: Path, out: Path, seed: int, scale: float = 0.002, **save_kw) -> Path:
    """A 'fine-tuned' ingredient: the base plus seeded Gaussian noise, saved with the base's other files."""
    import torch
    from transformers import LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(base)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale)
    shutil.copytree(base, out, ignore=shutil.ignore_patterns("*.safetensors", "*.index.json"))
    model.save_pretrained(out, **save_kw)
    return out


def _state(path: Path) -> dict:
    """All tensors of a model folder (sharded or not), for reference computations in the tests."""
    return dict(_cached_state(path))


@functools.cache
def _cached_state(path: Path) -> dict:
    from safetensors.torch import load_file

    return {k: v.clone() for f in sorted(path.glob("*.safetensors")) for k, v in load_file(f).items()}


def _mean(*states: dict) -> dict:
    import torch

    return {k: torch.stack([s[k].float() for s in states]).mean(0) for k in states[0]}


def _assert_close(actual: dict, expected: dict, atol: float = 1e-6) -> None:
    import torch

    assert actual.keys() == expected.keys()
    for k in expected:
        torch.testing.assert_close(actual[k].float(), expected[k].float(), atol=atol, rtol=0, msg=k)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("soup")
    base = build_test_model(root / "base")
    return {"base": base, **{n: _noisy(base, root / n, seed) for n, seed in (("a", 1), ("b", 2), ("c", 3))}}


class FakeCtx(StubContext):
    """Scores come from a table keyed by tag; records what each evaluated folder held (a probe tensor)."""

    def __init__(self, scores: dict[str, float], base_model: Path | None = None):
        super().__init__(base_model=base_model, evaluate=self._score)
        self.scores = scores
        self.seen: dict[str, object] = {}

    def _score(self, model_dir: Path, tag: str) -> dict[str, dict[str, float]]:
        from mixlab.merging import Checkpoint

        self.seen[tag] = Checkpoint.open(model_dir).read(PROBE)
        return {"dev_a": {"score": self.scores[tag]}, "dev_b": {"score": self.scores[tag]}}


def _merger(tmp_path, **options):
    from mixlab.plugins.mergers.soup import SoupMerger

    return SoupMerger(SoupMerger.Options(**options), "soup", tmp_path)


# ---- averaging ----------------------------------------------------------------------------------------------


def test_uniform_equals_mean_loads_and_generates(models, tmp_path):
    import torch
    from PIL import Image
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from mixlab.merging import average

    out = average([models["a"], models["b"], models["c"]], tmp_path / "soup")
    _assert_close(_state(out), _mean(_state(models["a"]), _state(models["b"]), _state(models["c"])))
    for name in ("config.json", "tokenizer.json", "processor_config.json", "chat_template.jinja"):
        assert (out / name).read_bytes() == (models["a"] / name).read_bytes(), name
    assert not (out / "model.safetensors.index.json").exists()

    model = LlavaForConditionalGeneration.from_pretrained(out).eval()
    processor = AutoProcessor.from_pretrained(out)
    image = Image.new("RGB", (64, 64), COLOURS["red"])
    messages = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": QUESTION}]}]
    batch = processor.apply_chat_template(
        messages, tokenize=True, return_dict=True, add_generation_prompt=True, return_tensors="pt"
    )
    with torch.no_grad():
        generated = model.generate(**batch, max_new_tokens=3, do_sample=False)
    assert generated.shape[1] > batch["input_ids"].shape[1]


def test_sharded_input_and_output_chunked_rows(models, tmp_path):
    from transformers import LlavaForConditionalGeneration

    from mixlab.merging import average

    sharded = _noisy(models["base"], tmp_path / "sharded", seed=7, max_shard_size="200KB")
    assert (sharded / "model.safetensors.index.json").is_file() and len(list(sharded.glob("*.safetensors"))) > 1
    out = average([sharded, models["a"]], tmp_path / "soup", max_shard_bytes=500_000, chunk_elements=1000)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(out.glob("model-*.safetensors"))
    assert len(shards) > 1 and set(index["weight_map"].values()) == {p.name for p in shards}
    assert index["metadata"]["total_size"] == sum(v.numel() * v.element_size() for v in _state(out).values())
    _assert_close(_state(out), _mean(_state(sharded), _state(models["a"])))
    LlavaForConditionalGeneration.from_pretrained(out)  # loads the sharded soup


def test_running_mean_and_weights(models, tmp_path):
    from mixlab.merging import average, running_mean

    two = average([models["a"], models["b"]], tmp_path / "two")
    three = running_mean(two, 2, models["c"], tmp_path / "three")
    _assert_close(_state(three), _mean(_state(models["a"]), _state(models["b"]), _state(models["c"])))
    with pytest.raises(UserError, match="already exists"):
        average([models["a"]], tmp_path / "two")


# ---- compatibility ------------------------------------------------------------------------------------------


def test_same_base_passes_with_high_cosine(models):
    from mixlab.merging import check_compatible

    report = check_compatible({n: models[n] for n in "abc"}, base=models["base"])
    assert report["tensors"] and min(report["cosine"].values()) > 0.9


def test_different_architecture_is_refused(models, tmp_path):
    from mixlab.merging import check_compatible
    from mixlab.models.tiny import build_tiny_llava

    wide = build_tiny_llava(tmp_path / "wide", CORPUS, seed=0, patch_size=16, vision_hidden=64, text_hidden=64)
    field = r"config.json field `text_config\.(head_dim|hidden_size)`"
    with pytest.raises(UserError, match=rf"'a' and 'wide' differ in {field}"):
        check_compatible({"a": models["a"], "wide": wide})
    with pytest.raises(UserError, match="'wide'"):
        _merger(tmp_path, method="uniform").merge({"a": models["a"], "wide": wide}, tmp_path / "work", FakeCtx({}))


def test_different_tensors_or_dtypes_are_refused(models, tmp_path):
    import torch
    from safetensors.torch import save_file

    from mixlab.merging import check_compatible

    pruned = shutil.copytree(models["b"], tmp_path / "pruned")
    state = _state(pruned)
    dropped = next(k for k in sorted(state) if k.endswith("linear_2.bias"))
    state.pop(dropped)
    save_file(state, pruned / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(UserError, match=rf"'a' has tensor `{dropped}`, which 'pruned' lacks"):
        check_compatible({"a": models["a"], "pruned": pruned})

    half = shutil.copytree(models["b"], tmp_path / "half")
    save_file({k: v.to(torch.bfloat16) for k, v in _state(half).items()}, half / "model.safetensors")
    with pytest.raises(UserError, match=r"is F32 in 'a' but BF16 in 'half'"):
        check_compatible({"a": models["a"], "half": half})


def test_different_initialisation_is_refused(models, tmp_path):
    from mixlab.merging import check_compatible

    other = build_test_model(tmp_path / "seed1", seed=1)
    with pytest.raises(UserError, match=r"'a' and 'other' look like different initialisations"):
        check_compatible({"a": models["a"], "other": other})
    with pytest.raises(UserError, match=r"ingredient 'a' does not look fine-tuned from base"):
        check_compatible({"a": models["a"], "b": models["b"]}, base=other)
    check_compatible({"a": models["a"], "other": other}, min_cosine=-1)  # the check can be turned off
    # the merger uses the recipe's base model when the context has one
    with pytest.raises(UserError, match="does not look fine-tuned from base"):
        _merger(tmp_path, method="uniform").merge(
            {"a": models["a"], "b": models["b"]}, tmp_path / "work", FakeCtx({}, base_model=other)
        )


# ---- LoRA ---------------------------------------------------------------------------------------------------


def test_lora_adapter_is_merged_before_averaging(models, tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlavaForConditionalGeneration

    from mixlab.merging import is_adapter

    torch.manual_seed(5)
    model = LlavaForConditionalGeneration.from_pretrained(models["base"])
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    peft_model = get_peft_model(model, config)
    peft_model.save_pretrained(tmp_path / "adapter")
    assert is_adapter(tmp_path / "adapter") and not is_adapter(models["a"])
    peft_model.merge_and_unload().save_pretrained(tmp_path / "reference")
    merged = _state(tmp_path / "reference")
    base = _state(models["base"])
    q = next(k for k in base if k.endswith("q_proj.weight"))
    assert (merged[q] - base[q]).abs().max() > 1e-3  # the adapter changes the weights

    ctx = FakeCtx({})
    result = _merger(tmp_path, method="uniform").merge(
        {"lora": tmp_path / "adapter", "b": models["b"]}, tmp_path / "work", ctx
    )
    assert result.kept == ["lora", "b"]
    _assert_close(_state(result.model_dir), _mean(merged, _state(models["b"])))
    assert (result.model_dir / "tokenizer.json").is_file()  # the base's files, not the adapter folder's
    assert not (tmp_path / "work" / "lora_merged").exists()


# ---- the merger ---------------------------------------------------------------------------------------------


def test_uniform_merger_keeps_all_without_evaluating(models, tmp_path):
    ctx = FakeCtx({})
    result = _merger(tmp_path, method="uniform").merge({n: models[n] for n in "cab"}, tmp_path / "work", ctx)
    assert result.kept == ["c", "a", "b"] and result.model_dir == tmp_path / "work" / "model"
    assert result.info["method"] == "uniform" and not ctx.seen
    _assert_close(_state(result.model_dir), _mean(*(_state(models[n]) for n in "abc")))


@pytest.mark.parametrize(
    ("strict", "tries", "kept", "probes"),
    [
        # order b (60), a (50), c (40); try1 ties the best, try2 beats it
        (False, {"soup/try1": 60, "soup/try2": 61}, ["b", "a", "c"], {"soup/try1": "ba", "soup/try2": "bac"}),
        (True, {"soup/try1": 60, "soup/try2": 59}, ["b"], {"soup/try1": "ba", "soup/try2": "bc"}),
        (True, {"soup/try1": 60.5, "soup/try2": 60.5}, ["b", "a"], {"soup/try2": "bac"}),
    ],
)
def test_greedy_accepts_and_rejects(models, tmp_path, strict, tries, kept, probes):
    import torch

    scores = {"soup/a": 50, "soup/b": 60, "soup/c": 40, "soup/uniform": 55, **tries}
    ctx = FakeCtx(scores)
    result = _merger(tmp_path, method="greedy", strict=strict).merge(
        {n: models[n] for n in "abc"}, tmp_path / "work", ctx
    )
    assert result.kept == kept
    info = result.info
    assert info["method"] == "greedy" and info["strict"] is strict and info["order"] == ["b", "a", "c"]
    assert info["ingredient_scores"] == {"a": 50, "b": 60, "c": 40}
    assert [s["ingredient"] for s in info["steps"]] == ["a", "c"]
    assert info["score"] >= max(info["ingredient_scores"].values())
    for tag, members in probes.items():  # each candidate was the uniform average of the soup plus the newcomer
        expected = torch.stack([_state(models[m])[PROBE] for m in members]).mean(0)
        torch.testing.assert_close(ctx.seen[tag], expected, atol=1e-6, rtol=0)
    _assert_close(_state(result.model_dir), _mean(*(_state(models[m]) for m in kept)))
    # the uniform soup of all three is scored beside the greedy one
    assert info["uniform"]["score"] == 55
    expected = torch.stack([_state(models[m])[PROBE] for m in "abc"]).mean(0)
    torch.testing.assert_close(ctx.seen["soup/uniform"], expected, atol=1e-6, rtol=0)
    assert sorted(p.name for p in (tmp_path / "work").iterdir()) == ["model", "uniform"]
    assert any("kept" in line for line in ctx.logs)


def test_greedy_never_below_best_ingredient(models, tmp_path):
    rng = random.Random(0)
    for trial in range(3):
        scores = {f"soup/{n}": rng.choice([40, 50, 60]) for n in "abc"}
        scores |= {f"soup/try{i}": rng.choice([45, 55, 60, 65]) for i in (1, 2)}
        strict = bool(trial % 2)
        result = _merger(tmp_path, strict=strict, compare_uniform=False).merge(
            {n: models[n] for n in "abc"}, tmp_path / f"w{trial}", FakeCtx(scores)
        )
        order = sorted("abc", key=lambda n: (-scores[f"soup/{n}"], n))
        best, kept = scores[f"soup/{order[0]}"], [order[0]]
        for i, name in enumerate(order[1:], start=1):
            s = scores[f"soup/try{i}"]
            if (s > best) if strict else (s >= best):
                best, kept = s, [*kept, name]
        assert result.info["order"] == order and result.kept == kept
        assert result.info["score"] == best >= max(scores[f"soup/{n}"] for n in "abc")


def test_single_ingredient_is_copied(models, tmp_path):
    import torch

    for method in ("greedy", "uniform"):
        result = _merger(tmp_path, method=method).merge({"a": models["a"]}, tmp_path / method, FakeCtx({"soup/a": 1}))
        assert result.kept == ["a"] and result.info.get("steps", []) == []
        state, expected = _state(result.model_dir), _state(models["a"])
        assert all(torch.equal(state[k], expected[k]) for k in expected)


def test_options_and_registration():
    from pydantic import ValidationError

    from mixlab.plugins.mergers import soup

    o = soup.SoupMerger.Options()
    assert (o.method, o.strict, o.min_cosine) == ("greedy", False, 0.2)
    for bad in ({"method": "max"}, {"min_cosine": 2}, {"unknown": 1}):
        with pytest.raises(ValidationError):
            soup.SoupMerger.Options(**bad)
    # only the greedy soup judges models, so only its stage key covers the evaluators and decision rules
    assert soup.SoupMerger(o, "soup").evaluates_models()
    assert not soup.SoupMerger(soup.SoupMerger.Options(method="uniform"), "soup").evaluates_models()
    registered: list[type] = []
    soup.register_mergers(registered.append)
    assert registered == [soup.SoupMerger] and soup.SoupMerger.name == "soup"
