"""The toy world: layout, determinism, caching, known quality and the benchmark formats."""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import os
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mixlab.errors import UserError
from mixlab.toyworld import GENERATOR_VERSION, MC_SUFFIX, YES_NO_SUFFIX, generate, load_manifest
from mixlab.toyworld import sources as sources_mod
from mixlab.toyworld.sources import SOURCES, build_source
from mixlab.toyworld.vocab import COLOR_NAMES, COUNTS, DIGITS, FOODS, LETTERS, POSITIONS, SHAPES

SPECS = {spec.name: spec for spec in SOURCES}
REQUIRED_CATEGORIES = {"caption", "color", "shape", "count", "spatial", "ocr", "chart", "science", "text"}
VALUES = {  # every well-formed short answer, per category
    "color": set(COLOR_NAMES) | {"light", "dark"},
    "shape": set(SHAPES),
    "count": set(COUNTS),
    "spatial": set(POSITIONS),
    "ocr": set(LETTERS),
    "chart": set(COLOR_NAMES),
    "text": set(DIGITS),
}


def read_tsv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def all_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def records(world: Path, manifest: dict, name: str) -> list[dict]:
    return json.loads((world / manifest["sources"][name]["json"]).read_text())


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("tw") / "world"
    return out, generate(out)  # defaults: what the quickstart uses


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("tw") / "small"
    return out, generate(out, seed=3, n_train=30, n_bench=8)


def test_manifest_matches_files(world: tuple[Path, dict]) -> None:
    root, m = world
    assert json.loads((root / "manifest.json").read_text()) == m
    params = (m["generator_version"], m["seed"], m["n_train"], m["n_bench"], m["image_size"])
    assert params == (GENERATOR_VERSION, 0, 400, 60, 64)
    assert set(m["categories"]) >= REQUIRED_CATEGORIES
    for name, src in m["sources"].items():
        recs = records(root, m, name)
        assert src["json"] == f"train/{name}.json" and src["image_root"] == "images"
        assert src["n"] == len(recs) == round(SPECS[name].size * 400)
        assert src["quality"] in {"clean", "noisy", "duplicate", "offtask"}
        if src["category"] == "general":  # a pool source mixing several tasks
            assert {r["category"] for r in recs} < set(m["categories"])
        else:
            assert src["category"] in m["categories"] and {r["category"] for r in recs} == {src["category"]}
        assert {r["source"] for r in recs} == {name}
        assert src["description"]
    kinds = {b["kind"] for b in m["benchmarks"].values()}
    assert kinds == {"mme", "mmbench", "seed", "scienceqa"}
    for name, bench in m["benchmarks"].items():
        assert bench["tsv"] == f"bench/{name}.tsv"
        rows = read_tsv(root / bench["tsv"])
        assert bench["n_rows"] == len(rows) and 0 < len(rows) <= 400
        assert {r["category"] for r in rows} == set(bench["categories"])
        assert set(bench["categories"].values()) <= set(m["categories"])
    assert (root / "corpus.txt").is_file()


def test_required_sources(world: tuple[Path, dict]) -> None:
    srcs = world[1]["sources"]
    clean = {s["category"] for s in srcs.values() if s["quality"] == "clean"}
    assert clean >= REQUIRED_CATEGORIES
    noisy = {s["category"] for s in srcs.values() if s["quality"] == "noisy"}
    assert {"color", "count", "ocr", "chart"} <= noisy
    assert sum(s["quality"] == "duplicate" for s in srcs.values()) >= 2
    assert sum(s["quality"] == "offtask" for s in srcs.values()) >= 2
    assert "caption_clean" in srcs and srcs["caption_clean"]["category"] == "caption"


def test_baseline_mix_covers_every_category(world: tuple[Path, dict]) -> None:
    """A little clean data per category: the baseline Individual Select starts from (LLaVA-665K's role)."""
    root, m = world
    base = {n: s for n, s in m["sources"].items() if n.endswith("_base")}
    assert {s["category"] for s in base.values()} == REQUIRED_CATEGORIES - {"caption"}
    for name, src in base.items():
        assert src["quality"] == "clean" and src["n"] == 100
        assert not any(r["noisy"] for r in records(root, m, name))


def test_web_captions_carry_known_noise(world: tuple[Path, dict]) -> None:
    root, m = world
    recs = records(root, m, "caption_web")
    assert len(recs) == 800 and m["sources"]["caption_web"]["noise_rate"] == 0.4
    noisy = [r for r in recs if r["noisy"]]
    assert len(noisy) == 320 and all("noise" not in r for r in recs if not r["noisy"])
    kinds = Counter(r["noise"] for r in noisy)
    assert set(kinds) == {"mismatched", "truncated", "boilerplate"} and min(kinds.values()) > 60
    truths = {r["truth"] for r in recs}
    for r in noisy:
        answer = r["conversations"][1]["value"]
        assert answer != r["truth"]
        if r["noise"] == "mismatched":
            assert answer in truths  # another image's caption
        elif r["noise"] == "truncated":
            assert r["truth"].startswith(answer + " ")
        else:
            assert answer in sources_mod.BOILERPLATE
    assert all(r["conversations"][1]["value"] == r["truth"] for r in recs if not r["noisy"])


def test_pool_is_imbalanced_with_near_duplicates(world: tuple[Path, dict]) -> None:
    """Sizes as uneven as LLaVA-665K's (largest/smallest ≥ 10), near-duplicate scenes inside the large sources."""
    root, m = world
    pool = {n: s for n, s in m["sources"].items() if n.startswith("pool_")}
    sizes = sorted(s["n"] for s in pool.values())
    assert sizes[-1] / sizes[0] >= 10 and len(pool) >= 6
    recs = records(root, m, "pool_vqa")
    assert {r["category"] for r in recs} == {"color", "shape", "spatial"}
    near = 0
    arrays = [np.asarray(Image.open(root / "images" / r["image"]), dtype=np.int16) for r in recs[:300]]
    for i, a in enumerate(arrays):
        for b in arrays[:i]:
            diff = np.abs(a - b).max()
            if diff <= 4:
                assert diff > 0  # re-noised, never a byte-identical copy
                near += 1
                break
    assert near >= 0.3 * len(arrays)


def test_every_record_is_valid_llava(world: tuple[Path, dict]) -> None:
    root, m = world
    ids = set()
    for name in m["sources"]:
        for r in records(root, m, name):
            assert r["id"] not in ids
            ids.add(r["id"])
            human, gpt = r["conversations"]
            assert (human["from"], gpt["from"]) == ("human", "gpt")
            assert isinstance(r["noisy"], bool) and gpt["value"]
            has_image = "image" in r
            assert ("<image>" in human["value"]) == has_image
            assert "<image>" not in gpt["value"]
            if has_image:
                assert human["value"].startswith("<image>\n") and human["value"].count("<image>") == 1
                with Image.open(root / "images" / r["image"]) as img:
                    assert img.size == (64, 64) and img.mode == "RGB"


def test_text_source_is_text_only(world: tuple[Path, dict]) -> None:
    root, m = world
    for r in records(root, m, "text_clean"):
        assert "image" not in r and "<image>" not in r["conversations"][0]["value"]


def test_formats_are_mixed_and_well_formed(world: tuple[Path, dict]) -> None:
    root, m = world
    for name, src in m["sources"].items():
        recs = records(root, m, name)
        fmts = Counter(r["format"] for r in recs)
        if src["category"] == "caption":
            assert set(fmts) == {"caption"}
            continue
        assert {"short", "yes_no", "mc"} <= set(fmts), name
        if src["quality"] != "duplicate":
            assert all(n >= 0.1 * len(recs) for n in fmts.values()), (name, fmts)
        for r in recs:
            prompt = r["conversations"][0]["value"]
            if r["format"] == "yes_no":
                assert prompt.endswith(" " + YES_NO_SUFFIX) and r["truth"] in {"Yes", "No"}
            elif r["format"] == "mc":
                assert prompt.endswith("\n" + MC_SUFFIX) and f"\n{r['truth']}. " in prompt
            elif src["category"] in VALUES:
                assert r["truth"] in VALUES[src["category"]], (name, r["truth"])


def test_clean_and_duplicate_labels_are_true(world: tuple[Path, dict]) -> None:
    root, m = world
    for name, src in m["sources"].items():
        if src["quality"] in {"clean", "duplicate"}:
            assert src["noise_rate"] == 0
            for r in records(root, m, name):
                assert r["noisy"] is False and r["conversations"][1]["value"] == r["truth"]


def test_noisy_sources_have_flagged_wrong_but_valid_labels(world: tuple[Path, dict]) -> None:
    root, m = world
    noisy_sources = [n for n, s in m["sources"].items() if s["quality"] == "noisy" and n != "caption_web"]
    assert noisy_sources  # caption_web's web-like noise: test_web_captions_carry_known_noise
    for name in noisy_sources:
        src, recs = m["sources"][name], records(root, m, name)
        assert src["noise_rate"] > 0
        assert abs(sum(r["noisy"] for r in recs) / len(recs) - src["noise_rate"]) <= 0.1
        for r in recs:
            answer, prompt = r["conversations"][1]["value"], r["conversations"][0]["value"]
            if not r["noisy"]:
                assert answer == r["truth"]
                continue
            assert answer != r["truth"]
            if r["format"] == "yes_no":
                assert answer in {"Yes", "No"}
            elif r["format"] == "mc":
                assert f"\n{answer}. " in prompt  # another option's letter
            else:
                assert answer in VALUES[src["category"]]


def test_duplicate_sources_repeat_few_samples(world: tuple[Path, dict]) -> None:
    root, m = world
    for name, src in m["sources"].items():
        if src["quality"] != "duplicate":
            continue
        recs = records(root, m, name)
        unique = {(r.get("image"), json.dumps(r["conversations"])) for r in recs}
        assert len(unique) == src["n_unique"] <= 10
        assert len({r["id"] for r in recs}) == len(recs)


def test_offtask_sources(world: tuple[Path, dict]) -> None:
    root, m = world
    off = {n: s for n, s in m["sources"].items() if s["quality"] == "offtask"}
    for name in off:
        assert all(r["noisy"] is False for r in records(root, m, name))
    verbose = records(root, m, "offtask_verbose")
    assert all(r["conversations"][1]["value"] != r["truth"] for r in verbose)
    bright = records(root, m, "offtask_brightness")
    assert any("background" in r["conversations"][0]["value"] for r in bright)


def test_the_benchmarks_evaluator_knows_the_toy_benchmark_names(world: tuple[Path, dict]) -> None:
    """`validate` checks `[run] weights` against these names before the world exists."""
    from mixlab.plugins.evaluators.benchmarks import TOY_BENCHMARKS

    assert sorted(world[1]["benchmarks"]) == sorted(TOY_BENCHMARKS)


@pytest.mark.parametrize("which", ["world", "small"])
def test_the_toy_benchmarks_item_categories_are_known_before_they_exist(which, request) -> None:
    """`validate` checks Individual Select's `category_items` against these, before the world is written."""
    from mixlab.evaluation.tsv import tsv_categories
    from mixlab.toyworld.benchmarks import CATEGORIES

    root, m = request.getfixturevalue(which)
    written = {name: tsv_categories(root / b["tsv"]) for name, b in m["benchmarks"].items()}
    assert written == CATEGORIES


def test_mmbench_circular_copies(world: tuple[Path, dict]) -> None:
    root, m = world
    rows = read_tsv(root / "bench" / "MMBench_toy.tsv")
    groups: dict[int, list[dict[str, str]]] = defaultdict(list)
    for r in rows:
        groups[int(r["index"]) % 1_000_000].append(r)
    assert len(groups) == m["benchmarks"]["MMBench_toy"]["n_questions"]
    for g, copies in groups.items():
        assert sorted(int(r["index"]) for r in copies) == [g + k * 1_000_000 for k in range(4)]
        opts = [[r[c] for c in "ABCD"] for r in copies]
        assert all(sorted(o) == sorted(opts[0]) and len(set(o)) == 4 and all(o) for o in opts)
        correct = {r[r["answer"]] for r in copies}
        assert len(correct) == 1  # the answer letter tracks the same option text
        assert len({r["question"] for r in copies}) == 1 and len({r["image"] for r in copies}) == 1
        assert all(r["split"] == "dev" and r["l2-category"] for r in copies)


def test_mme_pairs(world: tuple[Path, dict]) -> None:
    root, _ = world
    rows = read_tsv(root / "bench" / "MME_toy.tsv")
    assert list(rows[0]) == ["index", "image", "question", "answer", "category", "image_path"]
    pairs: dict[str, list[dict[str, str]]] = defaultdict(list)
    for r in rows:
        assert r["question"].endswith(" Please answer yes or no.")
        pairs[r["image_path"]].append(r)
    for path, pair in pairs.items():
        assert sorted(r["answer"] for r in pair) == ["No", "Yes"], path
        assert len({r["image"] for r in pair}) == 1 and len({r["category"] for r in pair}) == 1
        assert pair[0]["question"] != pair[1]["question"]
    cats = {r["category"] for r in rows}
    assert {"existence", "count", "position", "color", "OCR", "numerical_calculation"} <= cats


def test_seed_and_scienceqa_columns(world: tuple[Path, dict]) -> None:
    root, _ = world
    seed = read_tsv(root / "bench" / "SEED_toy.tsv")
    assert list(seed[0]) == ["index", "question", "A", "B", "C", "D", "answer", "category", "image"]
    for r in seed:
        assert all(r[c] for c in "ABCD") and r["answer"] in "ABCD"
    sqa = read_tsv(root / "bench" / "ScienceQA_toy.tsv")
    assert list(sqa[0]) == ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "image"]
    n_opts = Counter()
    for r in sqa:
        opts = [r[c] for c in "ABCD"]
        n = sum(bool(o) for o in opts)
        assert 2 <= n <= 4 and all(opts[:n]) and not any(opts[n:])
        assert r["answer"] in "ABCD"[:n] and r["hint"]
        n_opts[n] += 1
        if r["category"] == "fact_recall":  # the context holds the answer
            assert r[r["answer"]] in r["hint"] and r[r["answer"]] in FOODS
    assert n_opts[2] and (n_opts[3] or n_opts[4])


def test_benchmark_images_decode_and_are_held_out(world: tuple[Path, dict]) -> None:
    root, m = world
    train = {hashlib.sha256(p.read_bytes()).hexdigest() for p in (root / "images").rglob("*.png")}
    for bench in m["benchmarks"].values():
        for r in read_tsv(root / bench["tsv"]):
            data = base64.b64decode(r["image"])
            assert hashlib.sha256(data).hexdigest() not in train
            with Image.open(io.BytesIO(data)) as img:
                assert img.format == "PNG" and img.size == (64, 64)


def test_corpus_covers_all_text(world: tuple[Path, dict]) -> None:
    root, m = world
    lines = set((root / "corpus.txt").read_text().splitlines())
    assert "<image>" not in lines
    for name in m["sources"]:
        for r in records(root, m, name):
            for turn in r["conversations"]:
                for line in turn["value"].replace("<image>", "").splitlines():
                    assert not line.strip() or line.strip() in lines
    for bench in m["benchmarks"].values():
        for r in read_tsv(root / bench["tsv"]):
            for c in ("question", "hint", "A", "B", "C", "D"):
                assert not r.get(c) or r[c] in lines


def test_same_seed_same_bytes(tmp_path: Path, small: tuple[Path, dict]) -> None:
    again = tmp_path / "again"
    generate(again, seed=3, n_train=30, n_bench=8)
    assert all_files(again) == all_files(small[0])


def test_different_seed_differs(tmp_path: Path, small: tuple[Path, dict]) -> None:
    other = tmp_path / "other"
    generate(other, seed=4, n_train=30, n_bench=8)
    a, b = all_files(small[0]), all_files(other)
    for rel in ("train/color_clean.json", "bench/MMBench_toy.tsv", "images/shape_clean/0.png"):
        assert a[rel] != b[rel]


def test_sources_are_independent_streams(tmp_path: Path, small: tuple[Path, dict]) -> None:
    root, m = small
    spec = next(s for s in SOURCES if s.name == "ocr_noisy")
    alone = build_source(spec, 3, 30, 64, tmp_path / "images")  # built without any other source
    assert alone == records(root, m, "ocr_noisy")


def test_cached_second_call_does_not_rewrite(tmp_path: Path) -> None:
    out = tmp_path / "w"
    first = generate(out, seed=1, n_train=20, n_bench=4)
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    assert generate(out, seed=1, n_train=20, n_bench=4) == first
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == stamps
    changed = generate(out, seed=1, n_train=24, n_bench=4)  # other parameters: rebuilt in place
    assert changed["n_train"] == 24 and json.loads((out / "manifest.json").read_text()) == changed
    assert len(records(out, changed, "color_clean")) == 24
    assert [p.name for p in tmp_path.iterdir()] == ["w"]  # no temp folders left


def test_an_edit_of_the_generator_rebuilds_the_world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A world on disk is keyed by the generator's source files, not only by GENERATOR_VERSION, which an edit can
    forget to bump."""
    from mixlab.toyworld import world

    out = tmp_path / "w"
    first = generate(out, seed=1, n_train=20, n_bench=4)
    assert first["generator_code"] == world.generator_code()
    monkeypatch.setattr(world, "generator_code", lambda: "edited")
    stamp = (out / "manifest.json").stat().st_mtime_ns
    rebuilt = generate(out, seed=1, n_train=20, n_bench=4)
    assert rebuilt["generator_code"] == "edited" and (out / "manifest.json").stat().st_mtime_ns != stamp
    assert generate(out, seed=1, n_train=20, n_bench=4) == rebuilt  # and reused after that


def test_crash_leaves_no_half_world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def boom(*args: object, **kwargs: object) -> list:
        calls.append(1)
        if len(calls) > 3:
            raise RuntimeError("crash")
        return real(*args, **kwargs)

    from mixlab.toyworld import world as world_mod

    real = sources_mod.build_source
    monkeypatch.setattr(world_mod, "build_source", boom)
    with pytest.raises(RuntimeError, match="crash"):
        generate(tmp_path / "w", n_train=10, n_bench=4)
    assert len(calls) == 4  # three sources written, the fourth crashed
    assert list(tmp_path.iterdir()) == []


def test_refuses_to_replace_other_folders(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(UserError):
        generate(tmp_path, n_train=10, n_bench=4)
    assert os.listdir(tmp_path) == ["notes.txt"]
    with pytest.raises(UserError):
        generate(tmp_path / "x", n_train=0)


def test_a_world_beside_someone_elses_files_is_never_replaced(tmp_path: Path) -> None:
    """Another world's parameters would replace the folder: refused while it holds files the world did not write;
    the same parameters reuse it, files and all."""
    folder = tmp_path / "w"
    generate(folder, n_train=10, n_bench=4)
    (folder / "notes.txt").write_text("mine")
    assert generate(folder, n_train=10, n_bench=4)["seed"] == 0
    with pytest.raises(UserError, match=r"other files too \(notes.txt\).*Move them out"):
        generate(folder, seed=3, n_train=10, n_bench=4)
    assert (folder / "notes.txt").read_text() == "mine" and load_manifest(folder)["seed"] == 0
    (folder / "notes.txt").unlink()
    assert generate(folder, seed=3, n_train=10, n_bench=4)["seed"] == 3
