"""The real-checkpoint recipes (7B paths, LLaVA-665K JSON, VLMEvalKit TSVs) validate as shipped and run end to end
on tiny stand-ins written in the real formats at the same relative layout: a llava-hf model directory, LLaVA JSON
files whose records carry no category (the source section gives it) and VLMEvalKit TSVs with their real names."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from mixlab.models.compose import compose_llava
from mixlab.recipe import load_recipe
from tests.test_compose import write_parts
from tests.test_pipeline import run_recipe

RECIPES = Path(__file__).resolve().parent.parent / "recipes"
REAL = sorted(RECIPES.glob("llava15_*.toml"))
CANDIDATES = {  # stand-in for each candidate dataset of the Individual Select recipe
    "sharegpt4v": "caption_clean",
    "docvqa": "ocr_clean",
    "chartqa": "chart_noisy",
    "ai2d": "science_clean",
}
BASELINE = ["color_clean", "shape_clean", "count_clean", "spatial_clean"]
TSV_NAMES = {
    "MME_toy": "MME",
    "MMBench_toy": "MMBench_DEV_EN",
    "SEED_toy": "SEEDBench_IMG",
    "ScienceQA_toy": "ScienceQA_TEST",
}


def test_real_recipes_exist_and_validate():
    assert {p.name for p in REAL} == {
        "llava15_7b_individual_select.toml",
        "llava15_7b_coincide.toml",
        "llava15_7b_points_ppl.toml",
    }
    for path in REAL:
        recipe = load_recipe(path, check_paths=False)
        assert recipe.model.path and recipe.model.path.startswith("/models/")
        assert all(s.options.path.startswith("/data/") for s in recipe.sources.values())


def _plain_records(world: Path, source: str) -> list[dict]:
    """A toy source as a user's LLaVA JSON: only id, image and conversations (no category or truth)."""
    records = json.loads((world / "train" / f"{source}.json").read_text())
    return [{k: r[k] for k in ("id", "image", "conversations") if k in r} for r in records]


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory) -> Path:
    """/models and /data as the real recipes expect them, under one root, from the toy world and the tiny model."""
    from mixlab.models.base import corpus_of
    from mixlab.models.tiny import build_tiny_llava
    from mixlab.toyworld import generate

    root = tmp_path_factory.mktemp("real")
    world = root / "world"
    generate(world, seed=0, n_train=16, n_bench=4)
    data = root / "data"
    shutil.copytree(world / "images", data / "llava_images")
    mix = [r for s in BASELINE for r in _plain_records(world, s)]
    (data / "llava_v1_5_mix665k.json").write_text(json.dumps(mix))
    (data / "candidates").mkdir()
    for name, source in CANDIDATES.items():
        (data / "candidates" / f"{name}.json").write_text(json.dumps(_plain_records(world, source)))
    (data / "eval").mkdir()
    for stem, name in TSV_NAMES.items():
        shutil.copy(world / "bench" / f"{stem}.tsv", data / "eval" / f"{name}.tsv")
    captions = _plain_records(world, "caption_web")
    (data / "blip_laion_cc_sbu_558k.json").write_text(json.dumps(captions))
    shutil.copytree(world / "images", data / "llava_pretrain_images")
    samples = [{"conversations": r["conversations"]} for r in mix + captions]
    model = build_tiny_llava(root / "models" / "llava-1.5-7b-hf", corpus_of(samples), vision_hidden=32, text_hidden=32)
    shutil.copytree(model, root / "models" / "reference-vlm-hf")
    vision, language = write_parts(root / "parts")
    compose_llava(vision, language, root / "models" / "llava-1.5-7b-stage0-hf")
    return root


def _localise(recipe: Path, root: Path, out: Path) -> Path:
    """The recipe with /models and /data under root; DeepSpeed kept only where it is installed (a GPU extra)."""
    text = recipe.read_text().replace('"/models/', f'"{root}/models/').replace('"/data/', f'"{root}/data/')
    deepspeed = str(RECIPES / "deepspeed") + "/"
    if importlib.util.find_spec("deepspeed") is None:
        text = "\n".join(line for line in text.splitlines() if not line.startswith("deepspeed ="))
    text = text.replace('"deepspeed/', f'"{deepspeed}')
    text = text.replace("max_length = 2048", "max_length = 512")  # the stand-in LM's context (LLaVA-1.5's is 4096)
    text = text.replace("layout_blocks = 5", "layout_blocks = 2")  # the stand-in reference's 2 layers, each embedded
    out.mkdir(parents=True, exist_ok=True)
    path = out / recipe.name
    path.write_text(text)
    return path


@pytest.mark.slow
def test_individual_select_recipe_runs_on_stand_ins(stand_in, tmp_path):
    report = run_recipe(_localise(RECIPES / "llava15_7b_individual_select.toml", stand_in, tmp_path))
    assert set(report["arms"]) >= {"llava15", "all_data", "individual_select"}
    assert report["arms"]["llava15"]["n_samples"] == 16 * len(BASELINE)
    assert set(report["arms"]["llava15"]["metrics"]) == set(TSV_NAMES.values())
    rounds = report["individual_select"]["rounds"]  # the starting baseline, then one round per category
    assert [r["category"] for r in rounds] == ["baseline", "caption", "ocr", "knowledge"]  # from the source sections
    assert [c["source"] for c in rounds[2]["candidates"]] == ["docvqa", "chartqa"]
    assert report["soup"]["method"] == "greedy"


@pytest.mark.slow
def test_coincide_recipe_runs_on_stand_ins(stand_in, tmp_path):
    report = run_recipe(_localise(RECIPES / "llava15_7b_coincide.toml", stand_in, tmp_path))
    full = report["arms"]["full"]["n_samples"]
    assert full == 16 * len(BASELINE)
    assert report["arms"]["coincide_20"]["n_samples"] == report["arms"]["random_20"]["n_samples"] == int(0.2 * full)
    assert all(arm["metrics"] for arm in report["arms"].values())


@pytest.mark.slow
def test_points_recipe_filters_the_alignment_captions_on_stand_ins(stand_in, tmp_path):
    """The unaligned model (composed from its parts) aligned on each arm's captions, then instruction-tuned."""
    report = run_recipe(_localise(RECIPES / "llava15_7b_points_ppl.toml", stand_in, tmp_path))
    arms = report["arms"]
    n_captions = 32  # caption_web at n_train = 16
    assert {a: arms[a]["align_selection"]["n_selected"] for a in ("ppl_20", "random_20")} == {
        "ppl_20": int(0.2 * n_captions),
        "random_20": int(0.2 * n_captions),
    }
    assert arms["all"]["align_selection"]["n_selected"] == n_captions
    assert all(arm["n_samples"] == 16 * len(BASELINE) and arm["metrics"] for arm in arms.values())
    assert report["soup"]["method"] == "greedy"
