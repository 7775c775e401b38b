"""Broken inputs: each gets ONE clear message (the file with its line, key, field or record; what is wrong; what to
do), exit code 2 and no traceback, through the real command line run in-process.

Recipes go through `validate`; data files through `run`, which stops at the source stage before any model is built;
run folders through `report` and `export`; then `toyworld`, `init` and `data inspect`. Nothing here trains.
"""

from __future__ import annotations

import base64
import io
import json
import re
import sys
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

from mixlab.errors import UserError
from tests import fakes
from tests.test_commands import invoke

HINT = re.compile(  # what to do: an instruction that starts a clause, not a word of the key or of what is wrong
    r"(?:^|[.;:!?]\s+|\(\s*|\b(?:or|then|and|to)\s+|,\s+|—\s+)"
    r"(give|set|use|add|remove|fix|check|rerun|choose|drop|name|write|restore|create|delete|retype|save|convert|"
    r"keep|lower|raise|rename|list|did you mean|change|point|replace|put|run|install|pass)\b(?![.\[_-])",
    re.IGNORECASE | re.MULTILINE,
)

# ---- the world every case breaks one thing of ---------------------------------------------------------------------

RECIPE = """\
[run]
name = "broken"
seed = 0

[model]
path = "base"

[sources.data]
type = "llava_json"
path = "data.json"

[sources.toy]
type = "toyworld"
sources = ["color_clean", "color_noisy", "shape_clean"]

[scorers.ppl]
type = "perplexity"

[scorers.act]
type = "activations"

[selectors.low_ppl]
type = "fraction"
scorers = ["ppl"]
column = "ppl"
fraction = 0.5

[selectors.half]
type = "random"
fraction = 0.5

[selectors.isel]
type = "individual_select"
baseline = ["color_clean"]

[trainer]
type = "llava_sft"
batch_size = 8
learning_rate = 2e-5

[evaluators.bench]
type = "benchmarks"
paths = ["bench/*.tsv"]

[arms.full]
sources = ["data", "color_clean"]

[arms.filtered]
sources = ["data", "color_clean"]
selector = "low_ppl"

[arms.isel]
sources = ["color_clean", "color_noisy", "shape_clean"]
selector = "isel"

[soup]
type = "soup"
arms = ["full", "filtered"]
"""

GOOD = {
    "id": "a",
    "image": "ok.png",
    "conversations": [{"from": "human", "value": "<image>\nWhat colour?"}, {"from": "gpt", "value": "red"}],
}
TEXT = {"id": "t", "conversations": [{"from": "human", "value": "2+2?"}, {"from": "gpt", "value": "4"}]}


def png_bytes(colour: str = "red", size: int = 16) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buf, format="PNG")
    return buf.getvalue()


def mme_tsv(rows: list[dict[str, str]] | None = None) -> str:
    image = base64.b64encode(png_bytes()).decode()
    rows = rows or [
        {"index": "0", "image": image, "question": "Is it red?", "answer": "Yes"},
        {"index": "1", "image": "0", "question": "Is it blue?", "answer": "No"},
    ]
    header = ["index", "image", "question", "answer"]
    return "\n".join(["\t".join(header), *("\t".join(r.get(c, "") for c in header) for r in rows)]) + "\n"


def write_world(folder: Path, text: str = RECIPE) -> Path:
    """A recipe that validates, and the files it names: model folder, data, image, benchmark TSV."""
    (folder / "base").mkdir(parents=True, exist_ok=True)
    (folder / "base" / "config.json").write_text("{}")
    fakes.write_weights(folder / "base" / "model.safetensors")
    (folder / "ok.png").write_bytes(png_bytes())
    (folder / "data.json").write_text(json.dumps([GOOD, TEXT]))
    (folder / "bench").mkdir(exist_ok=True)
    (folder / "bench" / "MME_x.tsv").write_text(mme_tsv())
    (folder / "recipe.toml").write_text(text)
    return folder / "recipe.toml"


def assert_clear(code: int, text: str, expect: list[str], problems: int | None = 1) -> None:
    """Exit 2, no traceback, every expected piece (file, location, what, hint) present, and one problem."""
    flat = " ".join(text.split())
    assert code == 2, text
    assert "Traceback" not in text and 'File "' not in text, text
    for piece in expect:
        assert " ".join(piece.split()) in flat, f"{piece!r} not in:\n{text}"
    assert HINT.search(text), f"no hint of what to do in:\n{text}"
    assert not re.search(r"\w\.\.(\s|$)", text), f"a sentence ends in '..' in:\n{text}"
    if problems is not None and "problem" in text.split("\n")[0]:
        assert len(re.findall(rf"\b{problems} problems?\b", text.split("\n")[0])) == 1, text


@pytest.fixture
def world(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # runs/<name> is relative to the working directory
    write_world(tmp_path)
    return tmp_path


def test_the_base_world_is_valid(world, monkeypatch, capsys):
    code, text = invoke(monkeypatch, capsys, "validate", str(world / "recipe.toml"))
    assert code == 0, text


# ---- recipes: `mixlab validate` -----------------------------------------------------------------------------------


@dataclass
class R:
    """A recipe case: replace `old` by `new` in RECIPE (old "" appends), optionally prepare files, then validate.

    `at` is text on the line the message must point to (recipe.toml:<line>), `expect` the pieces it must say.
    """

    id: str
    old: str
    new: str
    at: str | None
    expect: list[str]
    setup: Callable[[Path], None] | None = None
    problems: int | None = 1


def _mkdir(*parts: str) -> Callable[[Path], None]:
    return lambda root: root.joinpath(*parts).mkdir(parents=True, exist_ok=True)


def _file(name: str, content: str | bytes = "x") -> Callable[[Path], None]:
    def make(root: Path) -> None:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)

    return make


TRAINER = 'type = "llava_sft"\nbatch_size = 8\n'
TINY = '[model]\npreset = "tiny"\n'

RECIPE_CASES = [
    # strict types: no value changes type
    R(
        "str-for-int",
        "batch_size = 8",
        'batch_size = "8"',
        "batch_size",
        ["trainer.batch_size", "must be an integer, not the string '8'", "without quotes"],
    ),
    R(
        "float-for-int",
        "batch_size = 8",
        "batch_size = 8.0",
        "batch_size",
        ["trainer.batch_size", "must be an integer"],
    ),
    R(
        "str-for-float",
        "learning_rate = 2e-5",
        'learning_rate = "2e-5"',
        "learning_rate",
        ["trainer.learning_rate", "must be a number"],
    ),
    R(
        "bool-for-float",
        "learning_rate = 2e-5",
        "learning_rate = true",
        "learning_rate",
        ["must be a number, not the boolean true"],
    ),
    R("str-for-seed", "seed = 0", 'seed = "1"', "seed =", ["run.seed", "must be an integer"]),
    R(
        "str-for-fraction",
        "fraction = 0.5\n\n[selectors.half]",
        'fraction = "0.5"\n\n[selectors.half]',
        'fraction = "0.5"',
        ["selectors.low_ppl.fraction", "must be a number"],
    ),
    R("str-for-seeds", "seed = 0", 'seed = 0\nseeds = "3"', "seeds", ["run.seeds", "must be an integer"]),
    R("int-for-name", 'name = "broken"', "name = 5", "name =", ["run.name", "valid string", "write text in quotes"]),
    # run names become folders
    R("empty-name", 'name = "broken"', 'name = ""', "name =", ["run.name", "the run name is empty"]),
    R("name-escapes", 'name = "broken"', 'name = "../../x"', "name =", ["run.name", "no '/'", "set `output_dir`"]),
    R("name-with-slash", 'name = "broken"', 'name = "a/b"', "name =", ["run.name", "no '/'"]),
    R("name-dotdot", 'name = "broken"', 'name = ".."', "name =", ["run.name", "not '.' or '..'"]),
    R(
        "name-too-long",
        'name = "broken"',
        f'name = "{"x" * 101}"',
        "name =",
        ["run.name", "101 characters", "at most 100"],
    ),
    R("name-nul", 'name = "broken"', 'name = "a\\u0000b"', "name =", ["run.name", "control character", "remove it"]),
    R("name-spaces", 'name = "broken"', 'name = " x "', "name =", ["run.name", "leading or trailing spaces"]),
    # seeds
    R("negative-seed", "seed = 0", "seed = -1", "seed =", ["run.seed", "out of range", "from 0 to 2**32 - 1"]),
    R("huge-seed", "seed = 0", "seed = 1099511627776", "seed =", ["run.seed", "out of range", "(got 1099511627776)"]),
    R(
        "toy-seed-huge",
        'type = "toyworld"',
        'type = "toyworld"\nseed = 99999999999',
        "seed = 99999999999",
        ["sources.toy.seed", "out of range", "from 0 to 2**32 - 1"],
    ),
    R("seeds-empty", "seed = 0", "seed = 0\nseeds = []", "seeds", ["run.seeds", "1 to 64"]),
    R("seeds-twice", "seed = 0", "seed = 0\nseeds = [1, 1]", "seeds", ["run.seeds", "seed 1 is listed twice"]),
    R("seeds-count", "seed = 0", "seed = 0\nseeds = 100", "seeds", ["run.seeds", "count from 1 to 64"]),
    R("seeds-huge", "seed = 0", "seed = 0\nseeds = [5000000000]", "seeds", ["run.seeds", "out of range"]),
    R("seeds-past-range", "seed = 0", "seed = 4294967295\nseeds = 3", "[run]", ["go past 2**32 - 1", "lower `seed`"]),
    R(
        "trainer-seed",
        "batch_size = 8",
        "batch_size = 8\nseed = 1099511627776",
        "seed = 1099511627776",
        ["trainer.seed", "out of range"],
    ),
    R(
        "random-seed",
        "fraction = 0.5\n\n[selectors.isel]",
        "fraction = 0.5\nseed = -5\n\n[selectors.isel]",
        "seed = -5",
        ["selectors.half.seed", "out of range"],
    ),
    R(
        "compare-to",
        "seed = 0",
        'seed = 0\ncompare_to = "ful"',
        "compare_to",
        ["run.compare_to", "unknown arm 'ful'", "Did you mean 'full'"],
    ),
    # decisions under noise
    R("select-on", "seed = 0", 'seed = 0\nselect_on = "test"', "select_on", ["run.select_on", "'all' or 'dev'"]),
    R("dev-fraction", "seed = 0", "seed = 0\ndev_fraction = 1.5", "dev_fraction", ["run.dev_fraction", "less than 1"]),
    R(
        "weights-str",
        "seed = 0",
        'seed = 0\nweights = { MME_x = "2" }',
        "weights",
        ["run.weights.MME_x", "not the string '2'"],
    ),
    R("exclude-str", "seed = 0", 'seed = 0\nexclude = "MME_x"', "exclude", ["run.exclude", "list"]),
    R(
        "weights-negative",
        "seed = 0",
        "seed = 0\nweights = { MME_x = -1.0 }",
        "weights",
        ["run.weights.MME_x", "greater than or equal to 0 (got -1.0)"],
    ),
    R("weights-nan", "seed = 0", "seed = 0\nweights = { MME_x = nan }", "weights", ["run.weights.MME_x", "finite"]),
    R(
        "isel-rule",
        'baseline = ["color_clean"]',
        'baseline = ["color_clean"]\nrule = "interval"',
        "rule",
        ["selectors.isel.rule", "'tolerance' or 'ci'"],
    ),
    R(
        "extraction",
        'paths = ["bench/*.tsv"]',
        'paths = ["bench/*.tsv"]\nextraction = "vlm"',
        "extraction",
        ["evaluators.bench.extraction", "'vlmevalkit' or 'extended'"],
    ),
    R(
        "column-int",
        'column = "ppl"',
        "column = 3",
        "column = 3",
        ["selectors.low_ppl.column", "should be a valid string (got 3)", "write text in quotes"],
    ),
    R(
        "packing-str",
        "learning_rate = 2e-5",
        'learning_rate = 2e-5\npacking = "yes"',
        "packing",
        ["trainer.packing", "not the string 'yes'", "write true or false (a TOML boolean: lower case, no quotes)"],
    ),
    R(
        "vision-cache-trained-tower",
        "learning_rate = 2e-5",
        "learning_rate = 2e-5\nvision_cache = true\nvision_lr = 1e-5",
        "trainer",
        ["trainer", "vision_cache = true needs a frozen vision tower", "drop vision_lr"],
    ),
    R(
        "freeze-lm-with-lora",
        "learning_rate = 2e-5",
        "learning_rate = 2e-5\nfreeze_language_model = true\nlora = { r = 8 }",
        "trainer",
        ["trainer", "freeze_language_model = true leaves no language model weights for LoRA", "drop one"],
    ),
    R(
        "freeze-lm-str",
        "learning_rate = 2e-5",
        'learning_rate = 2e-5\nfreeze_language_model = "yes"',
        "freeze_language_model",
        ["trainer.freeze_language_model", "not the string 'yes'"],
    ),
    # executor bounds
    R(
        "processes-huge",
        "seed = 0",
        "seed = 0\nexecutor = { processes = 100000 }",
        "executor",
        ["run.executor.processes", "less than or equal to 1024"],
    ),
    R(
        "devices-twice",
        "seed = 0",
        'seed = 0\nexecutor = { type = "local", devices = ["0", "0"] }',
        "executor",
        ["GPU 0 is listed twice", "disjoint"],
    ),
    R(
        "devices-overlap",
        "seed = 0",
        'seed = 0\nexecutor = { type = "local", devices = ["0,1", "1,2"] }',
        "executor",
        ["GPU 1 is listed twice"],
    ),
    R(
        "devices-garbage",
        "seed = 0",
        'seed = 0\nexecutor = { type = "local", devices = ["gpu0"] }',
        "executor",
        ["not a CUDA_VISIBLE_DEVICES value", '"0,1"'],
    ),
    R(
        "devices-empty",
        "seed = 0",
        'seed = 0\nexecutor = { type = "local", devices = [] }',
        "executor",
        ["`devices` is empty"],
    ),
    R(
        "workers-zero",
        "seed = 0",
        'seed = 0\nexecutor = { type = "local", workers = 0 }',
        "executor",
        ["run.executor.workers", "greater than or equal to 1"],
    ),
    R(
        "executor-type",
        "seed = 0",
        'seed = 0\nexecutor = { type = "slurm" }',
        "executor",
        ["run.executor.type", "'inline', 'local' or 'submitit'"],
    ),
    # the model
    R(
        "model-missing",
        'path = "base"',
        'path = "nowhere"',
        'path = "nowhere"',
        ["model.path", "nowhere does not exist", 'preset = "tiny"'],
    ),
    R(
        "model-is-file",
        'path = "base"',
        'path = "data.json"',
        'path = "data.json"\n\n[sources.data]',
        ["model.path", "is a file, not a model folder"],
    ),
    R("model-no-config", 'path = "base"', 'path = "bench"', 'path = "bench"', ["model.path", "no config.json"]),
    R("model-both", 'path = "base"', 'path = "base"\npreset = "tiny"', "[model]", ["give exactly one of"]),
    R(
        "tiny-zero-layers",
        '[model]\npath = "base"\n',
        TINY + "tiny = { layers = 0 }\n",
        "tiny =",
        ["model.tiny.layers", "greater than or equal to 1"],
    ),
    R(
        "tiny-patch",
        '[model]\npath = "base"\n',
        TINY + "tiny = { patch_size = 7 }\n",
        "tiny =",
        ["patch_size 7 does not divide image_size 64"],
    ),
    R(
        "tiny-language-steps",
        '[model]\npath = "base"\n',
        TINY + "tiny = { language_pretrain_steps = -1 }\n",
        "tiny =",
        ["model.tiny.language_pretrain_steps", "greater than or equal to 0"],
    ),
    R(
        "tiny-vocab",
        '[model]\npath = "base"\n',
        TINY + "tiny = { vocab_size = 1000000000 }\n",
        "tiny =",
        ["model.tiny.vocab_size", "less than or equal to 262144"],
    ),
    R(
        "tiny-heads",
        '[model]\npath = "base"\n',
        TINY + "tiny = { heads = 3 }\n",
        "tiny =",
        ["vision_hidden 128 is not a multiple of heads 3"],
    ),
    R(
        "tiny-image",
        '[model]\npath = "base"\n',
        TINY + "tiny = { image_size = 4096 }\n",
        "tiny =",
        ["model.tiny.image_size", "less than or equal to 1024"],
    ),
    R(
        "tiny-tokens",
        '[model]\npath = "base"\n',
        TINY + "tiny = { image_size = 1024, patch_size = 1 }\n",
        "tiny =",
        ["image tokens per image", "raise patch_size"],
    ),
    R(
        "align-unknown-source",
        '[model]\npath = "base"\n',
        '[model]\npath = "base"\nalign = { sources = ["colour_clean"] }\n',
        "align",
        ["model.align.sources.0", "unknown source 'colour_clean'", "Did you mean 'color_clean'"],
    ),
    # arms
    R(
        "arms-array",
        '[arms.full]\nsources = ["data", "color_clean"]',
        '[[arms]]\nsources = ["data", "color_clean"]',
        "[[arms]]",
        ["arms", "not an array of tables ([[arms]])", "give each arm a name"],
        problems=None,
    ),
    R(
        "arm-sources-string",
        'sources = ["data", "color_clean"]\n\n[arms.filtered]',
        'sources = "data"\n\n[arms.filtered]',
        'sources = "data"',
        ["arms.full.sources", "valid list", "write a list in brackets"],
    ),
    R(
        "arm-sources-empty",
        'sources = ["data", "color_clean"]\n\n[arms.filtered]',
        "sources = []\n\n[arms.filtered]",
        "sources = []",
        ["arms.full.sources", "at least 1 item", "add entries"],
    ),
    R(
        "arm-sources-twice",
        'sources = ["data", "color_clean"]\n\n[arms.filtered]',
        'sources = ["data", "data"]\n\n[arms.filtered]',
        'sources = ["data", "data"]',
        ["arms.full.sources", "lists source 'data' twice"],
    ),
    R(
        "arm-unknown-source",
        'sources = ["data", "color_clean"]\n\n[arms.filtered]',
        'sources = ["dta"]\n\n[arms.filtered]',
        'sources = ["dta"]',
        ["arms.full.sources.0", "unknown source 'dta'", "Did you mean 'data'"],
    ),
    R(
        "arm-unknown-selector",
        'selector = "low_ppl"',
        'selector = "low_pl"',
        'selector = "low_pl"',
        ["arms.filtered.selector", "unknown selector 'low_pl'", "Did you mean 'low_ppl'"],
    ),
    R(
        "arm-unknown-key",
        'selector = "low_ppl"',
        'selectr = "low_ppl"',
        "selectr",
        ["arms.filtered.selectr", "unknown key", "Did you mean 'selector'"],
    ),
    R(
        "arm-override-type",
        'selector = "low_ppl"',
        'selector = "low_ppl"\ntrainer = { batch_size = "4" }',
        "trainer = {",
        ["arms.filtered.trainer.batch_size", "must be an integer, not the string '4'"],
    ),
    R(
        "arm-override-key",
        'selector = "low_ppl"',
        'selector = "low_ppl"\ntrainer = { epoch = 2 }',
        "trainer = {",
        ["arms.filtered.trainer.epoch", "Did you mean 'epochs'"],
    ),
    R(
        "arm-override-deepspeed",
        'selector = "low_ppl"',
        'selector = "low_ppl"\ntrainer = { deepspeed = "ds.json" }',
        "trainer = {",
        ["arms.filtered.trainer.deepspeed", "ds.json does not exist"],
    ),
    # sources
    R(
        "data-missing",
        'path = "data.json"',
        'path = "dat.json"',
        'path = "dat.json"',
        ["sources.data.path", "dat.json does not exist", "check `path`"],
    ),
    R(
        "data-is-folder",
        'path = "data.json"',
        'path = "bench"',
        'path = "bench"',
        ["sources.data.path", "is a folder: give the data file itself"],
    ),
    R(
        "data-suffix",
        'path = "data.json"',
        'path = "ok.png"',
        'path = "ok.png"',
        ["sources.data.path", "unsupported suffix '.png'", ".json or .jsonl"],
    ),
    R(
        "image-root-missing",
        'path = "data.json"',
        'path = "data.json"\nimage_root = "imgs"',
        "image_root",
        ["sources.data.image_root", "imgs does not exist", "set `image_root`"],
    ),
    R(
        "image-root-file",
        'path = "data.json"',
        'path = "data.json"\nimage_root = "ok.png"',
        "image_root",
        ["sources.data.image_root", "is a file, not a folder"],
    ),
    R(
        "source-type-typo",
        'type = "llava_json"',
        'type = "llava_jsn"',
        'type = "llava_jsn"',
        ["sources.data.type", "no source plugin named 'llava_jsn'", "Did you mean 'llava_json'"],
    ),
    R(
        "source-unknown-key",
        'path = "data.json"',
        'path = "data.json"\nimage_rot = "x"',
        "image_rot",
        ["sources.data.image_rot", "unknown key", "Did you mean 'image_root'"],
    ),
    R(
        "toy-unknown-source",
        '"color_noisy", "shape_clean"]\n\n[scorers',
        '"color_noisy", "shape_clen"]\n\n[scorers',
        '"shape_clen"]',
        ["sources.toy.sources.2", "no toy-world source named 'shape_clen'", "Did you mean 'shape_clean'"],
    ),
    R(
        "toy-sources-empty",
        'sources = ["color_clean", "color_noisy", "shape_clean"]\n\n[scorers',
        "sources = []\n\n[scorers",
        "sources = []",
        ["sources.toy.sources", "is empty"],
    ),
    R(
        "toy-seed",
        'type = "toyworld"',
        'type = "toyworld"\nseed = -3',
        "seed = -3",
        ["sources.toy.seed", "out of range", "(got -3)"],
    ),
    R(
        "on-error",
        'path = "data.json"',
        'path = "data.json"\non_error = "skp"',
        "on_error",
        ["sources.data.on_error", "'raise' or 'skip'", "use one of those values"],
    ),
    R(
        "check-images",
        'path = "data.json"',
        'path = "data.json"\ncheck_images = "full"',
        "check_images",
        ["sources.data.check_images", "'open', 'exists' or 'none'"],
    ),
    R(
        "category-type",
        'path = "data.json"',
        'path = "data.json"\ncategory = 3',
        "category",
        ["sources.data.category", "must be a name (a string), not int 3"],
    ),
    R(
        "limit-zero",
        'path = "data.json"',
        'path = "data.json"\nlimit = 0',
        "limit",
        ["sources.data.limit", "greater than or equal to 1"],
    ),
    R(
        "hf-not-dataset",
        '[sources.data]\ntype = "llava_json"\npath = "data.json"',
        '[sources.data]\ntype = "hf_dataset"\npath = "bench"',
        'path = "bench"',
        ["sources.data.path", "not a saved dataset", "save_to_disk"],
    ),
    R(
        "hf-suffix",
        '[sources.data]\ntype = "llava_json"\npath = "data.json"',
        '[sources.data]\ntype = "hf_dataset"\npath = "ok.png"',
        'path = "ok.png"',
        ["sources.data.path", "unsupported suffix"],
    ),
    R(
        "provided-twice",
        "[scorers.ppl]",
        '[sources.color_clean]\ntype = "llava_json"\npath = "data.json"\n\n[scorers.ppl]',
        "[sources.color_clean]",
        ["source name 'color_clean' is provided twice", "rename one section"],
    ),
    R(
        "toyworld-twice",
        "[scorers.ppl]",
        '[sources.toy2]\ntype = "toyworld"\nsources = ["color_clean", "color_noisy", "shape_clean", "count_clean"]'
        "\n\n[scorers.ppl]",
        "[sources.toy2]",
        [
            "sources.toy2: source names 'color_clean', 'color_noisy', 'shape_clean' are provided twice "
            "(also by [sources.toy])",
            "rename one section",
        ],
    ),
    # scorers and selectors
    R(
        "scorers-string",
        'scorers = ["ppl"]',
        'scorers = "ppl"',
        'scorers = "ppl"',
        ["selectors.low_ppl.scorers", "must be a list of names, not the string 'ppl'", 'scorers = ["a", "b"]'],
    ),
    R(
        "scorer-unknown",
        'scorers = ["ppl"]',
        'scorers = ["pp"]',
        'scorers = ["pp"]',
        ["selectors.low_ppl.scorers.0", "unknown scorer 'pp'", "Did you mean 'ppl'"],
    ),
    R(
        "scorer-type",
        'type = "perplexity"',
        'type = "perplexty"',
        'type = "perplexty"',
        ["scorers.ppl.type", "Did you mean 'perplexity'"],
    ),
    R(
        "column-missing",
        'column = "ppl"',
        'column = "embedding"',
        'column = "embedding"',
        ["selectors.low_ppl.column", "no scorer in `scorers` writes column 'embedding'", "'ppl', 'nll'"],
    ),
    R(
        "coincide-wrong-scorer",
        "[selectors.half]",
        '[selectors.coin]\ntype = "coincide"\nscorers = ["ppl"]\n\n[selectors.half]',
        "[selectors.coin]",
        ["selectors.coin.column", "writes column 'embedding'", 'type = "activations"'],
    ),
    R(
        "coincide-1d-column",
        "[selectors.half]",
        '[selectors.coin]\ntype = "coincide"\nscorers = ["ppl"]\ncolumn = "ppl"\n\n[selectors.half]',
        'column = "ppl"\n\n[selectors.half]',
        ["selectors.coin.column", "column 'ppl' is 1-D", "needs a 2-D embedding"],
    ),
    R(
        "fraction-1d-needed",
        'scorers = ["ppl"]\ncolumn = "ppl"',
        'scorers = ["act"]\ncolumn = "embedding"',
        'column = "embedding"',
        ["column 'embedding' is 2-D", "needs a 1-D score"],
    ),
    R(
        "fraction-no-scorers",
        'scorers = ["ppl"]\ncolumn = "ppl"',
        'column = "ppl"',
        "[selectors.low_ppl]",
        ["selectors.low_ppl", "names no `scorers`", 'add scorers = ["<scorer>"]'],
    ),
    R(
        "fraction-zero",
        "fraction = 0.5\n\n[selectors.half]",
        "fraction = 0\n\n[selectors.half]",
        "fraction = 0\n",
        ["selectors.low_ppl.fraction", "greater than 0"],
    ),
    R(
        "fraction-both",
        "fraction = 0.5\n\n[selectors.half]",
        "fraction = 0.5\nthreshold = 3.0\n\n[selectors.half]",
        "[selectors.low_ppl]",
        ["give exactly one of `fraction` or `threshold`"],
    ),
    R(
        "reference-unknown",
        '[scorers.ppl]\ntype = "perplexity"',
        '[scorers.ppl]\ntype = "perplexity"\nreference_arm = "fll"',
        "reference_arm",
        ["scorers.ppl.reference_arm", "unknown arm 'fll'", "Did you mean 'full'"],
    ),
    R(
        "reference-cycle",
        '[scorers.ppl]\ntype = "perplexity"',
        '[scorers.ppl]\ntype = "perplexity"\nreference_arm = "filtered"',
        "reference_arm",
        ["scorers.ppl.reference_arm", "(itself: a cycle)", "Choose a reference arm without scored selection"],
    ),
    R(
        "reference-scored",
        '[scorers.act]\ntype = "activations"',
        '[scorers.act]\ntype = "activations"\nreference_arm = "filtered"',
        "reference_arm",
        ["scorers.act.reference_arm", "uses scorers ['ppl']"],
    ),
    R(
        "scorer-sources-unknown",
        '[scorers.act]\ntype = "activations"',
        '[scorers.act]\ntype = "activations"\nsources = ["daat"]',
        'sources = ["daat"]',
        ["scorers.act.sources.0", "unknown source 'daat'", "Did you mean 'data'"],
    ),
    R(
        "isel-baseline",
        'baseline = ["color_clean"]',
        'baseline = ["data"]',
        'baseline = ["data"]',
        ["selectors.isel.baseline", "baseline sources ['data'] are not among the sources of arm 'isel'"],
    ),
    R(
        "isel-categories-unknown",
        'baseline = ["color_clean"]',
        'baseline = ["color_clean"]\ncategories = ["colr", "shape"]',
        "categories",
        [
            "selectors.isel.categories.0",
            "no candidate source of arm 'isel' has category 'colr'",
            "Did you mean 'color'",
        ],
    ),
    R(
        "isel-categories-left-out",
        'baseline = ["color_clean"]',
        'baseline = ["color_clean"]\ncategories = ["color"]',
        "categories",
        ["selectors.isel.categories", "is missing ['shape'], candidate categories of arm 'isel'"],
    ),
    R(
        "isel-categories-twice",
        'baseline = ["color_clean"]',
        'baseline = ["color_clean"]\ncategories = ["color", "shape", "color"]',
        "categories",
        ["lists category 'color' twice"],
    ),
    R(
        "isel-category-items-unknown",
        'baseline = ["color_clean"]',
        'baseline = ["color_clean"]\ncategory_items = { colr = ["MME_x"] }',
        "category_items",
        [
            "selectors.isel.category_items.colr",
            "no candidate source of arm 'isel' has category 'colr'",
            "Did you mean 'color'",
        ],
    ),
    R(
        "isel-category-items-unknown-benchmark",
        'baseline = ["color_clean"]',
        'baseline = ["color_clean"]\ncategory_items = { color = ["MME_x", "MMEx"] }',
        "category_items",
        [
            "selectors.isel.category_items.color.1",
            "names benchmark 'MMEx', which the evaluators do not report",
            "Did you mean 'MME_x'",
            "They report: MME_x",
        ],
    ),
    R(
        "isel-category-items-unknown-category",  # found before the baseline trains, not after
        'baseline = ["color_clean"]',
        'baseline = ["color_clean"]\ncategory_items = { color = ["MME_x/colr"] }',
        "category_items",
        [
            "selectors.isel.category_items.color.0",
            "names category 'colr' of MME_x, which has no items of that category",
            "Did you mean 'color'",
            "Its categories: color, count",
        ],
        setup=lambda root: (root / "bench" / "MME_x.tsv").write_text(
            mme_tsv()
            .replace("\tanswer\n", "\tanswer\tcategory\n")
            .replace("\tYes\n", "\tYes\tcolor\n")
            .replace("\tNo\n", "\tNo\tcount\n")
        ),
    ),
    R(
        "isel-category-items-no-category-column",
        'baseline = ["color_clean"]',
        'baseline = ["color_clean"]\ncategory_items = { color = ["MME_x/color"] }',
        "category_items",
        [
            "selectors.isel.category_items.color.0",
            "names category 'color' of MME_x, whose items name no category (its TSV has no `category` column)",
            'name "MME_x" whole',
        ],
    ),
    R(
        "isel-category-items-entry",
        'baseline = ["color_clean"]',
        'baseline = ["color_clean"]\ncategory_items = { color = ["MME/"] }',
        "category_items",
        ["selectors.isel.category_items", '\'MME/\' is not "BENCH" or "BENCH/CATEGORY"'],
    ),
    R(
        "isel-baseline-empty",
        'baseline = ["color_clean"]',
        "baseline = []",
        "baseline = []",
        ["selectors.isel.baseline", "at least 1 item"],
    ),
    # evaluators
    R(
        "tsv-no-match",
        'paths = ["bench/*.tsv"]',
        'paths = ["bnch/*.tsv"]',
        "paths =",
        ["evaluators.bench.paths.0", "no file matches 'bnch/*.tsv'", "fix the path"],
    ),
    R(
        "tsv-folder",
        'paths = ["bench/*.tsv"]',
        'paths = ["bench"]',
        "paths =",
        ["evaluators.bench.paths.0", "is a folder", "*.tsv"],
    ),
    R(
        "tsv-suffix",
        'paths = ["bench/*.tsv"]',
        'paths = ["data.json"]',
        'paths = ["data.json"]',
        ["evaluators.bench.paths.0", "data.json is not a .tsv file"],
    ),
    R(
        "tsv-stem-twice",
        'paths = ["bench/*.tsv"]',
        'paths = ["bench/*.tsv", "bench/*.tsv", "more/*.tsv"]',
        "paths =",
        ["evaluators.bench.paths", "bench/MME_x.tsv and", "more/MME_x.tsv are both benchmark 'MME_x'", "rename one"],
        setup=lambda root: (root / "more").mkdir() or (root / "more" / "MME_x.tsv").write_text(mme_tsv()),
    ),
    R(
        "only-unknown",
        'paths = ["bench/*.tsv"]',
        'paths = ["bench/*.tsv"]\nonly = ["MME_y"]',
        "only",
        ["evaluators.bench.only.0", "no benchmark named 'MME_y'", "Did you mean 'MME_x'"],
    ),
    R(
        "only-empty",
        'paths = ["bench/*.tsv"]',
        'paths = ["bench/*.tsv"]\nonly = []',
        "only",
        ["evaluators.bench.only", "is empty"],
    ),
    R(
        "no-benchmarks",
        'paths = ["bench/*.tsv"]',
        'mode = "likelihood"',
        "[evaluators.bench]",
        ["evaluators.bench", "no benchmarks: set `paths`"],
    ),
    R(
        "no-evaluator",
        '[evaluators.bench]\ntype = "benchmarks"\npaths = ["bench/*.tsv"]\n',
        "",
        None,
        ["no evaluator: add an [evaluators.<name>] section"],
    ),
    R(
        "evaluator-type",
        'type = "benchmarks"',
        'type = "benchmark"',
        'type = "benchmark"',
        ["evaluators.bench.type", "Did you mean 'benchmarks'"],
    ),
    R(
        "mode-typo",
        'paths = ["bench/*.tsv"]',
        'paths = ["bench/*.tsv"]\nmode = "generation"',
        "mode =",
        ["evaluators.bench.mode", "'likelihood' or 'generate'"],
    ),
    # the trainer
    R(
        "deepspeed-missing",
        "batch_size = 8",
        'batch_size = 8\ndeepspeed = "ds/zero2.json"',
        "deepspeed",
        ["trainer.deepspeed", "ds/zero2.json does not exist"],
    ),
    R(
        "deepspeed-folder",
        "batch_size = 8",
        'batch_size = 8\ndeepspeed = "bench"',
        "deepspeed",
        ["trainer.deepspeed", "is a folder, not a DeepSpeed JSON config"],
    ),
    R(
        "deepspeed-not-json",
        "batch_size = 8",
        'batch_size = 8\ndeepspeed = "ds.json"',
        "deepspeed",
        ["trainer.deepspeed", "is not valid JSON (line 1"],
        setup=_file("ds.json", "{zero: 2"),
    ),
    R(
        "deepspeed-not-object",
        "batch_size = 8",
        'batch_size = 8\ndeepspeed = "ds.json"',
        "deepspeed",
        ["trainer.deepspeed", "is not a JSON object"],
        setup=_file("ds.json", "[1, 2]"),
    ),
    R(
        "trainer-key-typo",
        "batch_size = 8",
        "batch_size = 8\nlearning_rat = 1e-4",
        "learning_rat",
        ["trainer.learning_rat", "Did you mean 'learning_rate'"],
    ),
    R(
        "lora-rank",
        "batch_size = 8",
        "batch_size = 8\nlora = { r = 0 }",
        "lora",
        ["trainer.lora.r", "greater than or equal to 1"],
    ),
    R("batch-huge", "batch_size = 8", "batch_size = 100000", "batch_size", ["trainer.batch_size", "larger than 4096"]),
    R(
        "scorer-batches-at-once-zero",
        '[scorers.ppl]\ntype = "perplexity"\n',
        '[scorers.ppl]\ntype = "perplexity"\nbatches_at_once = 0\n',
        "batches_at_once",
        ["scorers.ppl.batches_at_once", "greater than or equal to 1"],
    ),
    R(
        "max-length-zero",
        "batch_size = 8",
        "batch_size = 8\nmax_length = 0",
        "max_length",
        ["trainer.max_length", "greater than or equal to 1"],
    ),
    R(
        "trainer-type",
        'type = "llava_sft"',
        'type = "llava_sf"',
        'type = "llava_sf"',
        ["trainer.type", "Did you mean 'llava_sft'"],
    ),
    # the soup
    R(
        "soup-arms-empty",
        'arms = ["full", "filtered"]',
        "arms = []",
        "arms = []",
        ["soup.arms", "is empty", "drop `arms` to soup every arm"],
    ),
    R(
        "soup-arm-unknown",
        'arms = ["full", "filtered"]',
        'arms = ["full", "filterd"]',
        'arms = ["full", "filterd"]',
        ["soup.arms.1", "unknown arm 'filterd'", "Did you mean 'filtered'"],
    ),
    R(
        "soup-arms-string",
        'arms = ["full", "filtered"]',
        'arms = "full"',
        'arms = "full"',
        ["soup.arms", "must be a list of names"],
    ),
    R(
        "soup-candidates",
        'arms = ["full", "filtered"]',
        'candidates = "full"',
        "candidates",
        ["soup.candidates", "does not use an individual_select selector"],
    ),
    R(
        "soup-candidates-unknown",
        'arms = ["full", "filtered"]',
        'candidates = "isl"',
        "candidates",
        ["soup.candidates", "unknown arm 'isl'", "Did you mean 'isel'"],
    ),
    R(
        "soup-method",
        'arms = ["full", "filtered"]',
        'arms = ["full", "filtered"]\nmethod = "average"',
        "method",
        ["soup.method", "'uniform' or 'greedy'"],
    ),
    # the run directory
    R(
        "output-dir-file",
        "seed = 0",
        'seed = 0\noutput_dir = "out"',
        "output_dir",
        ["run.output_dir", "is a file", "choose another `output_dir`"],
        setup=_file("out"),
    ),
    R(
        "output-parent-file",
        "seed = 0",
        'seed = 0\noutput_dir = "out/run"',
        "output_dir",
        ["run.output_dir", "is a file, but it would be a parent of the run directory"],
        setup=_file("out"),
    ),
    R("runs-is-file", "seed = 0", "seed = 0", 'name = "broken"', ["run.name", "runs is a file"], setup=_file("runs")),
    R(
        "output-dir-empty",
        "seed = 0",
        'seed = 0\noutput_dir = ""',
        "output_dir",
        ["run.output_dir", "must be a folder path"],
    ),
    # arm names
    R(
        "arm-file-name-clash",
        "[arms.filtered]",
        '[arms."full "]\nsources = ["data"]\n\n[arms.filtered]',
        '[arms."full "]',
        ["arms.full : is saved under the same file name (full) as arm 'full'", "rename one of them"],
    ),
    R(
        "arm-case-clash",
        "[arms.filtered]",
        '[arms.Full]\nsources = ["data"]\n\n[arms.filtered]',
        "[arms.Full]",
        ["arms.Full: is saved under the same file name (full) as arm 'full'"],
    ),
    R(
        "arm-named-soup",
        "[arms.filtered]",
        '[arms.soup]\nsources = ["data"]\n\n[arms.filtered]',
        "[arms.soup]",
        ["arms.soup: is the name the [soup] section's model goes by", "rename the arm"],
    ),
    R(
        "arm-empty-name",
        "[arms.filtered]",
        '[arms.""]\nsources = ["data"]\n\n[arms.filtered]',
        '[arms.""]',
        ["arms.: has an empty name", "give the arm a name"],
    ),
    # checked before any work, not found at the first training or selection (a review of run-time failures)
    R(
        "submitit-cluster",
        "seed = 0",
        'seed = 0\nexecutor = { type = "submitit", cluster = "kubernetes" }',
        "executor",
        ["run.executor.cluster", "'slurm', 'local' or 'debug'"],
    ),
    R(
        "submitit-parameter",
        "seed = 0",
        'seed = 0\nexecutor = { type = "submitit", cluster = "debug", parameters = { nonsense_key = 1 } }',
        "executor",
        ["run.executor.parameters", "submitit refuses them", "nonsense_key", "Fix or drop that parameter"],
    ),
    R(
        "vision-cache-dir-a-file",
        "learning_rate = 2e-5",
        'learning_rate = 2e-5\nvision_cache = true\nvision_cache_dir = "ok.png"',
        "vision_cache_dir",
        ["trainer.vision_cache_dir", "ok.png is a file, but it would be the vision cache folder", "choose another"],
    ),
    R(
        "vision-cache-dir-under-a-file",
        "learning_rate = 2e-5",
        'learning_rate = 2e-5\nvision_cache = true\nvision_cache_dir = "ok.png/features"',
        "vision_cache_dir",
        ["trainer.vision_cache_dir", "ok.png is a file, but it would be a parent of the vision cache folder"],
    ),
    R(
        "save-minutes-zero",
        "learning_rate = 2e-5",
        "learning_rate = 2e-5\nsave_minutes = 0",
        "save_minutes = 0",
        ["trainer.save_minutes", "greater than 0"],
    ),
    R(
        "save-minutes-as-text",
        "learning_rate = 2e-5",
        'learning_rate = 2e-5\nsave_minutes = "half an hour"',
        "save_minutes",
        ["trainer.save_minutes", "valid number"],
    ),
    R(
        "pack-length-without-packing",
        "learning_rate = 2e-5",
        "learning_rate = 2e-5\npack_length = 512",
        "trainer",
        ["trainer", "pack_length is set but packing is false", "set packing = true, or drop pack_length"],
    ),
    R(
        "scorer-sources-miss-the-pool",
        '[scorers.ppl]\ntype = "perplexity"',
        '[scorers.ppl]\ntype = "perplexity"\nsources = ["data"]',
        'sources = ["data"]',
        ["scorers.ppl.sources", "does not score ['color_clean'] of arm 'filtered'", "selector 'low_ppl' ranks"],
    ),
    R(
        "activations-layers-empty",
        '[scorers.act]\ntype = "activations"',
        '[scorers.act]\ntype = "activations"\nlayers = []',
        "layers",
        ["scorers.act.layers", "must list distinct decoder layers"],
    ),
    R(
        "activations-layers-twice",
        '[scorers.act]\ntype = "activations"',
        '[scorers.act]\ntype = "activations"\nlayers = [0, 0]',
        "layers",
        ["scorers.act.layers", "must list distinct decoder layers", "not [0, 0]"],
    ),
    R(
        "activations-layers-beyond-tiny",
        'path = "base"',
        'preset = "tiny"\ntiny = { layers = 2 }\n\n[scorers.deep]\ntype = "activations"\nlayers = [0, 2]',
        "layers = [0, 2]",
        ["scorers.deep.layers", "within 0..1, not [0, 2]"],
    ),
    R(
        "coincide-layout-blocks",
        '[scorers.act]\ntype = "activations"',
        '[scorers.act]\ntype = "activations"\nlayers = [0, 1]\n\n[selectors.cc]\ntype = "coincide"\n'
        'scorers = ["act"]\nfraction = 0.2\nlayout_blocks = 3',
        "layout_blocks",
        ["selectors.cc.layout_blocks", "is 3, but scorer 'act' embeds 2 layers", "set layout_blocks = 2"],
    ),
    R(
        "coincide-text-slices",
        '[scorers.act]\ntype = "activations"',
        '[scorers.act]\ntype = "activations"\n\n[selectors.cc]\ntype = "coincide"\nscorers = ["act"]\n'
        "fraction = 0.2\ntext_slices = [[5, 1]]",
        "[selectors.cc]",
        ["selectors.cc", "text_slices: [5, 1] is not a column range", "give [start, stop)"],
    ),
    R(
        "toy-world-dir-under-a-file",
        'type = "toyworld"',
        'type = "toyworld"\ndir = "ok.png/world"',
        "dir =",
        ["sources.toy.dir", "ok.png is a file, but it would be a parent of the toy world's folder"],
    ),
    R(
        "path-of-unknown-user",
        'path = "data.json"',
        'path = "~no_such_user_here/data.json"',
        'path = "~no_such_user_here',
        ["sources.data.path", "~no_such_user_here/data.json does not exist"],
    ),
    R(
        "source-name-with-slash",
        "[sources.data]",
        '[sources."data/x"]',
        '[sources."data/x"]',
        ["sources.data/x", "a name with '/'", "Rename the section"],
        problems=None,
    ),
    R(
        "toy-world-dir-not-a-world",
        'type = "toyworld"',
        'type = "toyworld"\ndir = "bench"',
        "dir =",
        ["sources.toy.dir", "bench is not empty and holds no toy world", "choose an empty or new folder"],
    ),
    R(
        "toy-source-twice",
        'sources = ["color_clean", "color_noisy", "shape_clean"]',
        'sources = ["color_clean", "color_noisy", "color_clean"]',
        'sources = ["color_clean", "color_noisy", "color_clean"]',
        ["sources.toy.sources.2", "lists 'color_clean' twice", "name each toy source once"],
    ),
    R(
        "model-without-weights",
        'path = "base"',
        'path = "noweights"',
        'path = "noweights"',
        ["model.path", "noweights has no weights (*.safetensors or *.bin)"],
        setup=_file("noweights/config.json", "{}"),
    ),
    R(
        "model-weights-corrupt",
        'path = "base"',
        'path = "badweights"',
        'path = "badweights"',
        ["model.path", "badweights has weights that cannot be read: model.safetensors", "header too small"],
        setup=lambda root: [
            _file(f"badweights/{n}", c)(root) for n, c in (("config.json", "{}"), ("model.safetensors", "junk"))
        ],
    ),
    R(
        "model-config-not-json",
        'path = "base"',
        'path = "badconfig"',
        'path = "badconfig"',
        ["model.path", "badconfig has a config.json that cannot be read as JSON"],
        setup=_file("badconfig/config.json", "{"),
    ),
    R(
        "weights-unknown-benchmark",
        "seed = 0",
        "seed = 0\nweights = { MME_y = 2.0 }",
        "weights",
        ["run.weights", "[run] weights names ['MME_y'], but the evaluators give the benchmarks ['MME_x']", "Fix"],
    ),
    R(
        "exclude-everything",
        "seed = 0",
        'seed = 0\nexclude = ["MME_x"]',
        "[run]",
        ["run: [run] weights and exclude leave none of the benchmarks ['MME_x']", "keep at least one"],
    ),
    # top level
    R("unknown-section", "[soup]", "[soupp]", "[soupp]", ["soupp: unknown section", "Did you mean 'soup'"]),
]


@pytest.mark.parametrize("case", RECIPE_CASES, ids=lambda c: c.id)
def test_broken_recipe(case: R, world, monkeypatch, capsys):
    assert case.old in RECIPE
    text = RECIPE.replace(case.old, case.new, 1) if case.old else RECIPE + case.new
    (world / "recipe.toml").write_text(text)
    if case.setup:
        case.setup(world)
    code, out = invoke(monkeypatch, capsys, "validate", "recipe.toml")
    expect = ["recipe.toml", *case.expect]
    if case.at is not None:
        expect.append(f"recipe.toml:{text[: text.index(case.at)].count(chr(10)) + 1}: ")
    assert_clear(code, out, expect, case.problems)


def test_flash_attention_by_name_needs_it_installed(world, monkeypatch, capsys):
    """attn_implementation = "flash_attention_2" without flash-attn (nor the `kernels` package transformers can load
    it through) failed at the first training; validate says so, and --no-path-checks (another machine) does not."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name in ("flash_attn", "kernels") else real(name, *a)
    )
    text = RECIPE.replace("batch_size = 8", 'batch_size = 8\nattn_implementation = "flash_attention_2"', 1)
    (world / "recipe.toml").write_text(text)
    code, out = invoke(monkeypatch, capsys, "validate", "recipe.toml")
    line = text[: text.index("attn_implementation")].count("\n") + 1
    expect = [f"recipe.toml:{line}: ", "trainer.attn_implementation", "flash-attn is not installed here", 'use "auto"']
    assert_clear(code, out, expect)
    code, out = invoke(monkeypatch, capsys, "validate", "--no-path-checks", "recipe.toml")
    assert code == 0, out


def test_a_bad_element_of_a_list_or_count_is_said_once(world, monkeypatch, capsys):
    """`seeds` is a list or a count: a list with a bad element gets that element's problem, not also "not a count"."""
    (world / "recipe.toml").write_text(RECIPE.replace("seed = 0", "seed = 0\nseeds = [0, 1.5]", 1))
    code, out = invoke(monkeypatch, capsys, "validate", "recipe.toml")
    assert_clear(code, out, ["run.seeds", "fractional part (got 1.5)", "write a whole number"])
    assert "Or:" not in out and "valid integer: " not in out, out


def _validate(world: Path, text: str | bytes, monkeypatch, capsys, name: str = "recipe.toml") -> tuple[int, str]:
    path = world / name
    (path.write_bytes if isinstance(text, bytes) else path.write_text)(text)
    return invoke(monkeypatch, capsys, "validate", name)


def test_a_toy_world_dir_is_relative_to_the_recipe(world, monkeypatch, capsys, tmp_path_factory):
    """Like every path in a recipe, whatever the working directory."""
    (world / "blocker").write_text("a file")
    text = RECIPE.replace('type = "toyworld"', 'type = "toyworld"\ndir = "blocker/w"')
    (world / "recipe.toml").write_text(text)
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))
    code, out = invoke(monkeypatch, capsys, "validate", str(world / "recipe.toml"))
    assert_clear(code, out, ["sources.toy.dir", f"{world / 'blocker'} is a file"])


def test_weights_and_exclude_both_wrong_are_two_problems_also_without_path_checks(world, monkeypatch, capsys):
    """Every problem at once; names known without files (the toy world's) are checked for another machine too."""
    text = RECIPE.replace("seed = 0", 'seed = 0\nweights = { MME_y = 2.0 }\nexclude = ["MME_z"]', 1)
    code, out = _validate(world, text, monkeypatch, capsys)
    assert_clear(code, out, ["run.weights", "['MME_y']", "run.exclude", "['MME_z']"], problems=2)
    toy = text.replace('paths = ["bench/*.tsv"]', "paths = []\ntoyworld = { seed = 0 }").replace("MME_y", "MMEtoy")
    (world / "recipe.toml").write_text(toy)
    code, out = invoke(monkeypatch, capsys, "validate", "recipe.toml", "--no-path-checks")
    assert_clear(code, out, ["run.weights", "['MMEtoy']", "Did you mean 'MME_toy'"], problems=2)


def test_sources_as_an_array_of_tables_is_one_problem(world, monkeypatch, capsys):
    """[[sources]] is reported once; the arms' references to the sources it meant stay quiet."""
    text = RECIPE.replace("[sources.data]", "[[sources]]").replace('[sources.toy]\ntype = "toyworld"\n', "")
    text = text.replace('sources = ["color_clean", "color_noisy", "shape_clean"]\n', "", 1)
    code, out = _validate(world, text, monkeypatch, capsys)
    assert_clear(code, out, ["sources: must be named tables like [sources.<name>]", "give each section a name"])
    assert "unknown source" not in out


def test_two_scorers_that_write_one_column(world, monkeypatch, capsys):
    text = RECIPE.replace('scorers = ["ppl"]', 'scorers = ["ppl", "ppl2"]').replace(
        "[scorers.act]", '[scorers.ppl2]\ntype = "perplexity"\n\n[scorers.act]'
    )
    code, out = _validate(world, text, monkeypatch, capsys)
    line = text[: text.index('scorers = ["ppl", "ppl2"]')].count("\n") + 1
    expect = [f"recipe.toml:{line}: selectors.low_ppl.scorers", "scorers 'ppl' and 'ppl2' both write column 'ppl'"]
    assert_clear(code, out, [*expect, "name only one of them"])


def test_one_toy_world_folder_for_two_different_worlds(world, monkeypatch, capsys):
    """The evaluator would regenerate the folder under the samples the source already loaded."""
    text = RECIPE.replace('type = "toyworld"', 'type = "toyworld"\ndir = "w1"').replace(
        'paths = ["bench/*.tsv"]', 'paths = ["bench/*.tsv"]\ntoyworld = { seed = 3, dir = "w1" }'
    )
    code, out = _validate(world, text, monkeypatch, capsys)
    line = text[: text.index("toyworld = {")].count("\n") + 1
    expect = [f"recipe.toml:{line}: evaluators.bench.toyworld.dir", "w1 is also sources.toy.dir, with other world"]
    assert_clear(code, out, [*expect, "or another dir"])
    same = text.replace("toyworld = { seed = 3,", "toyworld = {")  # the same world in one folder is fine
    code, out = _validate(world, same, monkeypatch, capsys)
    assert code == 0, out


def test_deepspeed_config_without_deepspeed_installed(world, monkeypatch, capsys):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "deepspeed" else find_spec(name, *a)
    )
    (world / "ds.json").write_text("{}")
    text = RECIPE.replace("batch_size = 8", 'batch_size = 8\ndeepspeed = "ds.json"')
    code, out = _validate(world, text, monkeypatch, capsys)
    assert_clear(code, out, ["trainer.deepspeed", "DeepSpeed is not installed", 'pip install -e ".[deepspeed]"'])


@pytest.mark.parametrize("harness, module", [("lm_eval", "lm_eval"), ("lmms_eval", "lmms_eval")])
def test_a_harness_that_is_not_installed_is_found_by_validate(harness, module, world, monkeypatch, capsys):
    """Before any training; a recipe for another machine (--no-path-checks) passes."""
    monkeypatch.setitem(sys.modules, module, None)
    text = RECIPE + f'\n[evaluators.text]\ntype = "{harness}"\ntasks = ["arc_easy"]\n'
    code, out = _validate(world, text, monkeypatch, capsys)
    assert_clear(code, out, ["evaluators.text.tasks", f"these tasks need {module}, which is not installed", "pip"])
    code, out = invoke(monkeypatch, capsys, "validate", "recipe.toml", "--no-path-checks")
    assert code == 0, out


def test_coincide_layout_blocks_against_the_default_layers(world, monkeypatch, capsys):
    """A scorer without `layers` embeds the tiny preset's default ones (3 of 4 layers): layout_blocks must match."""
    text = RECIPE.replace('path = "base"', 'preset = "tiny"\ntiny = { layers = 4 }').replace(
        '[scorers.act]\ntype = "activations"',
        '[scorers.act]\ntype = "activations"\n\n[selectors.cc]\ntype = "coincide"\nscorers = ["act"]\n'
        "fraction = 0.2\nlayout_blocks = 5",
    )
    code, out = _validate(world, text, monkeypatch, capsys)
    assert_clear(code, out, ["selectors.cc.layout_blocks", "is 5, but scorer 'act' embeds 3 layers ([0, 1, 2])"])
    code, out = _validate(world, text.replace("layout_blocks = 5", "layout_blocks = 3"), monkeypatch, capsys)
    assert code == 0, out


def test_validate_without_path_checks_still_checks_the_options(world, monkeypatch, capsys):
    """--no-path-checks leaves out what concerns files and folders, not a plugin's other checks."""
    text = RECIPE.replace("batch_size = 8", "batch_size = 100000").replace('path = "data.json"', 'path = "gone.json"')
    (world / "recipe.toml").write_text(text)
    code, out = invoke(monkeypatch, capsys, "validate", "recipe.toml", "--no-path-checks")
    assert_clear(code, out, ["trainer.batch_size", "batch_size = 100000 is larger than 4096"])
    assert "gone.json" not in out


ARMS = """
[arms.full]
sources = ["data", "color_clean"]

[arms.filtered]
sources = ["data", "color_clean"]
selector = "low_ppl"

[arms.isel]
sources = ["color_clean", "color_noisy", "shape_clean"]
selector = "isel"
"""


def test_arms_as_a_number(world, monkeypatch, capsys):
    text = "arms = 3\n" + RECIPE.replace(ARMS, "\n").replace('arms = ["full", "filtered"]', "")
    code, out = _validate(world, text, monkeypatch, capsys)
    assert_clear(code, out, ["recipe.toml:1: arms: must be named tables like [arms.<name>], not int 3"], None)
    assert "0 arms" not in out


def test_empty_arms_table(world, monkeypatch, capsys):
    text = RECIPE.replace(ARMS, "\n[arms]\n").replace('arms = ["full", "filtered"]', "")
    code, out = _validate(world, text, monkeypatch, capsys)
    line = text.splitlines().index("[arms]") + 1
    assert_clear(code, out, [f"recipe.toml:{line}: arms: no arms", "add at least one [arms.<name>]"], None)


def test_missing_arms_section(world, monkeypatch, capsys):
    text = RECIPE.replace(ARMS, "\n").replace('arms = ["full", "filtered"]', "")
    code, out = _validate(world, text, monkeypatch, capsys)
    assert_clear(code, out, ["recipe.toml: (top level): missing the [arms] section"], None)


def test_a_broken_source_section_is_one_problem_not_one_per_arm(world, monkeypatch, capsys):
    text = RECIPE.replace('type = "toyworld"', 'type = "toyworld"\nn_trian = 10')
    code, out = _validate(world, text, monkeypatch, capsys)
    assert_clear(code, out, ["sources.toy.n_trian: unknown key", "Did you mean 'n_train'"])
    assert "unknown source" not in out


def test_a_name_that_differs_only_in_unicode_normalisation(world, monkeypatch, capsys):
    nfc, nfd = unicodedata.normalize("NFC", "café"), unicodedata.normalize("NFD", "café")
    text = RECIPE.replace("[sources.data]", f'[sources."{nfc}"]').replace('["data", "color_clean"]', f'["{nfd}"]')
    code, out = _validate(world, text, monkeypatch, capsys)
    assert_clear(code, out, ["unknown source", "look the same but are written with different Unicode characters"], None)
    assert "Did you mean" not in out


def test_recipe_not_utf8(world, monkeypatch, capsys):
    text = RECIPE.replace('name = "broken"', 'name = "caf\xe9"').encode("latin-1")
    code, out = _validate(world, text, monkeypatch, capsys)
    assert_clear(code, out, ["recipe.toml:2: not UTF-8 text (byte 0xe9)", "Save the recipe as UTF-8"])


def test_recipe_toml_syntax(world, monkeypatch, capsys):
    code, out = _validate(world, RECIPE.replace("seed = 0", "seed = "), monkeypatch, capsys)
    assert_clear(code, out, ["recipe.toml:3: TOML syntax error", "Fix the syntax at that line"])


def test_recipe_missing(world, monkeypatch, capsys):
    code, out = invoke(monkeypatch, capsys, "validate", "nope.toml")
    assert_clear(code, out, ["recipe nope.toml not found", "Give the path of a .toml recipe"])


def test_recipe_is_a_folder(world, monkeypatch, capsys):
    code, out = invoke(monkeypatch, capsys, "validate", "bench")
    assert_clear(code, out, ["bench is a folder, not a recipe", "give the path of the file itself"])


def test_recipe_is_a_device(world, monkeypatch, capsys):
    code, out = invoke(monkeypatch, capsys, "validate", "/dev/null")
    assert_clear(code, out, ["/dev/null is not a regular file", "not a recipe", "give the path of the file itself"])


def test_recipe_empty(world, monkeypatch, capsys):
    code, out = _validate(world, "", monkeypatch, capsys)
    assert_clear(code, out, ["missing the [run] section", "missing the [model] section", "no evaluator"], None)


def test_recipe_binary(world, monkeypatch, capsys):
    code, out = _validate(world, png_bytes(), monkeypatch, capsys)
    assert_clear(code, out, ["recipe.toml:1: not UTF-8 text"])


def test_validate_without_path_checks_accepts_a_recipe_for_another_machine(world, monkeypatch, capsys):
    text = RECIPE.replace('path = "base"', 'path = "/models/llava-1.5-7b-hf"')
    (world / "recipe.toml").write_text(text)
    code, out = invoke(monkeypatch, capsys, "validate", "recipe.toml", "--no-path-checks")
    assert code == 0, out
    code, out = invoke(monkeypatch, capsys, "validate", "recipe.toml")
    assert_clear(code, out, ["model.path", "/models/llava-1.5-7b-hf does not exist"])


# ---- data files: `mixlab run` stops at the source stage, before any model is built ------------------------------

DATA_RECIPE = """\
[run]
name = "data"

[model]
path = "base"

[sources.data]
type = "{type}"
path = "{path}"
{extra}

[trainer]
type = "llava_sft"

[evaluators.bench]
type = "benchmarks"
paths = ["bench/*.tsv"]

[arms.all]
sources = ["data"]
"""


def truncated_png() -> bytes:
    """A PNG whose header reads but whose pixel data stops half way: passes a header check, fails decoding."""
    data = png_bytes(size=64)
    noisy = Image.effect_noise((64, 64), 80).convert("RGB")
    buf = io.BytesIO()
    noisy.save(buf, format="PNG")
    data = buf.getvalue()
    return data[: len(data) // 2]


def record(**changes) -> dict:
    return {**GOOD, **changes}


@dataclass
class D:
    """A data case: the data file's content (records, text or bytes), the source's options, files to prepare."""

    id: str
    content: object
    expect: list[str]
    name: str = "data.json"
    type: str = "llava_json"
    extra: str = ""
    setup: Callable[[Path], None] | None = None


def _parquet(rows: list[dict]) -> Callable[[Path], None]:
    def make(root: Path) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), root / "data.parquet")

    return make


def _image_row(image: dict) -> dict:
    """An hf_dataset row whose one image is `image` ({bytes, path}), asked about in the user's message."""
    user = [{"type": "image", "text": None}, {"type": "text", "text": "?"}]
    messages = [{"role": "user", "content": user}, {"role": "assistant", "content": [{"type": "text", "text": "x"}]}]
    return {"messages": messages, "images": [image]}


HF_ROW = {"messages": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}], "images": []}
TURNS = [{"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "red"}]

DATA_CASES = [
    D(
        "corrupt-pixels",
        [record(image="bad.png")],
        ["data.json: record 0 (id 'a')", "bad.png is not a readable image", 'set on_error = "skip" in [sources.data]'],
        setup=_file("bad.png", truncated_png()),
    ),
    D(
        "corrupt-header",
        [record(image="bad.png")],
        ["record 0 (id 'a')", "not a readable image"],
        setup=_file("bad.png", b"not a png"),
    ),
    D(
        "missing-image-exists",
        [GOOD, record(id="b", image="gone.png")],
        ["data.json: record 1 (id 'b')", "gone.png does not exist"],
        extra='check_images = "exists"',
    ),
    D(
        "image-escapes-root",
        [record(image="../data.json")],
        ["record 0 (id 'a')", "leaves the image root", "set `image_root`"],
        extra='image_root = "imgs"\ncheck_images = "exists"',
        setup=_mkdir("imgs"),
    ),
    D(
        "image-escapes-unchecked",
        [record(image="../../../etc/hostname")],
        ["record 0", "leaves the image root"],
        extra='check_images = "none"',
    ),
    D("image-is-folder", [record(image="bench")], ["record 0 (id 'a')", "bench is a folder, not an image file"]),
    D("image-not-string", [record(image=["ok.png"])], ["record 0 (id 'a')", "`image` must be a relative path string"]),
    D(
        "not-utf8",
        '[{"id": "a",\n "conversations": [{"from": "human", "value": "caf\xe9"}]}]'.encode("latin-1"),
        ["data.json:2: not UTF-8 text (byte 0xe9)", "convert the file"],
    ),
    D(
        "invalid-json",
        '[{"id": "a",\n "conversations": [}]',
        ["data.json:2: invalid JSON", "Fix the file at that line"],
    ),
    D(
        "jsonl-named-json",
        json.dumps(GOOD) + "\n" + json.dumps(TEXT) + "\n",
        ["data.json:2: invalid JSON (Extra data)", "name the file .jsonl"],
    ),
    D(
        "json-object",
        json.dumps({"records": [GOOD]}),
        ["data.json: expected a JSON list of LLaVA records", "got a JSON dict"],
    ),
    D(
        "jsonl-bad-line",
        json.dumps(GOOD) + "\n{oops\n",
        ["data.jsonl:2: invalid JSON", "Fix that line"],
        name="data.jsonl",
    ),
    D(
        "jsonl-bad-record-line",
        json.dumps(GOOD) + "\n\n" + json.dumps(record(id="b", conversations=[])) + "\n",
        ["data.jsonl:3: record 1 (id 'b')", "`conversations` must be a non-empty list"],
        name="data.jsonl",
    ),
    D(
        "jsonl-duplicate-ids",
        json.dumps(GOOD) + "\n\n" + json.dumps(TEXT) + "\n" + json.dumps(record(conversations=TURNS)) + "\n",
        ["data.jsonl:4: record 2 (id 'a')", "duplicate id 'a' (record 0 (line 1) has it too)"],
        name="data.jsonl",
    ),
    D(
        "duplicate-ids",
        [GOOD, TEXT, record(conversations=TURNS)],
        ["data.json: record 2 (id 'a')", "duplicate id 'a' (record 0 has it too)", "give every record its own id"],
    ),
    D("empty-list", [], ["data.json: no records", "[sources.data] has nothing to train on", "Give a file with data"]),
    D(
        "all-skipped",
        [record(image="gone.png"), record(id="b", image="gone.png")],
        ["data.json: all 2 records were skipped", "nothing to train on", "gone.png does not exist"],
        extra='on_error = "skip"',
    ),
    D(
        "no-conversations",
        [{"id": "a", "image": "ok.png"}],
        ["record 0 (id 'a')", "`conversations` must be a non-empty list"],
    ),
    D("id-object", [record(id={"x": 1})], ["record 0", "`id` must be a string or an integer"]),
    D("record-string", ["just text"], ["record 0 (id '?')", "expected an object, got str"]),
    D("bad-role", [record(conversations=[{"from": "robot", "value": "?"}])], ["record 0 (id 'a')", "turn 0 must be"]),
    D(
        "no-answer",
        [record(conversations=[{"from": "human", "value": "<image> hi"}])],
        ["record 0 (id 'a')", "no `gpt` turn"],
    ),
    D(
        "image-token-no-image",
        [{"id": "t", "conversations": TURNS}],
        ["record 0 (id 't')", "text mentions <image> but the record has no `image`"],
    ),
    D(
        "hf-fake-dataset",
        None,
        ["is not a dataset folder written by `Dataset.save_to_disk`", "Check `path`"],
        name="ds",
        type="hf_dataset",
        setup=_file("ds/dataset_info.json", "{not json"),
    ),
    D(
        "hf-not-parquet",
        b"hello, not parquet",
        ["data.parquet is not a readable parquet file", "Check `path`"],
        name="data.parquet",
        type="hf_dataset",
    ),
    D(
        "hf-not-jsonl",
        json.dumps(HF_ROW) + "\nnot json\n",
        ["data.jsonl:2: invalid JSON", "Fix that line"],
        name="data.jsonl",
        type="hf_dataset",
    ),
    D(
        "hf-not-utf8",
        b'{"messages": "caf\xe9"}\n',
        ["data.jsonl:1: not UTF-8 text"],
        name="data.jsonl",
        type="hf_dataset",
    ),
    D(
        "hf-no-messages",
        json.dumps({"text": "hi"}) + "\n",
        ["data.jsonl: no `messages` column (columns: text)", "give rows with `messages`"],
        name="data.jsonl",
        type="hf_dataset",
    ),
    D(
        "image-in-a-gpt-turn",
        [record(conversations=[{"from": "human", "value": "What?"}, {"from": "gpt", "value": "<image>\nred"}])],
        ["data.json: record 0 (id 'a')", "a `gpt` turn mentions <image>", "goes in a `human` turn"],
    ),
    D(
        "image-record-without-a-human-turn",
        [record(conversations=[{"from": "gpt", "value": "red"}])],
        ["data.json: record 0 (id 'a')", "has an image but no `human` turn to show it in", "add the question"],
    ),
    D(
        "category-not-text",
        [record(category=["color"])],
        ["data.json: record 0 (id 'a')", "`category` must be a string", "['color']"],
    ),
    D(
        "number-too-long",
        '[{"id": ' + "1" * 5000 + "}]",
        ["data.json: cannot read this JSON", "Exceeds the limit (4300 digits)", "Check the file"],
    ),
    D(
        "jsonl-number-too-long",
        '{"id": 1}\n{"id": ' + "1" * 5000 + "}\n",
        ["data.JSONL:2: cannot read this JSON", "Exceeds the limit (4300 digits)", "Fix that line"],
        name="data.JSONL",
    ),
    D(
        "hf-first-row-not-object",
        "5\n" + json.dumps(HF_ROW) + "\n",
        ["data.jsonl:1: row 0 is not a JSON object", "give each row as an object with `messages`"],
        name="data.jsonl",
        type="hf_dataset",
    ),
    D(
        "hf-row-not-object",
        "[1, 2]\n",
        ["data.jsonl:1: row 0 is not a JSON object", "give each row as an object with `messages`"],
        name="data.jsonl",
        type="hf_dataset",
    ),
    D(
        "hf-unknown-role",
        json.dumps({**HF_ROW, "messages": [{"role": "robot", "content": "x"}]}) + "\n",
        ["data.jsonl:1: record 0", "unknown role 'robot'", "use user, assistant or system"],
        name="data.jsonl",
        type="hf_dataset",
    ),
    D(
        "hf-content-number",
        json.dumps({**HF_ROW, "messages": [{"role": "user", "content": 3}]}) + "\n",
        ["record 0", "message content must be a string or a list of parts"],
        name="data.jsonl",
        type="hf_dataset",
    ),
    D(
        "hf-messages-string",
        json.dumps({"messages": "hello"}) + "\n",
        ["record 0", "`messages` must be a list"],
        name="data.jsonl",
        type="hf_dataset",
    ),
    D(
        "hf-corrupt-image-bytes",
        None,
        ["data.parquet: record 0", "the image bytes are not a readable image"],
        name="data.parquet",
        type="hf_dataset",
        setup=_parquet([_image_row({"bytes": b"junk", "path": None})]),
    ),
    D(
        "hf-empty-image",
        None,
        ["data.parquet: record 0", "the image's `bytes` and `path` are both empty", "give the image"],
        name="data.parquet",
        type="hf_dataset",
        setup=_parquet([_image_row({"bytes": None, "path": None})]),
    ),
    D(
        "hf-image-escapes",
        json.dumps({**HF_ROW, "images": ["../../x.png"]}) + "\n",
        ["data.jsonl:1: record 0", "leaves the image root"],
        name="data.jsonl",
        type="hf_dataset",
    ),
    D(
        "hf-two-images",
        json.dumps({**HF_ROW, "images": ["ok.png", "ok.png"]}) + "\n",
        ["record 0", "more than one image per sample"],
        name="data.jsonl",
        type="hf_dataset",
    ),
    D("hf-empty", "", ["data.jsonl: no records", "Give a file with data"], name="data.jsonl", type="hf_dataset"),
]


@pytest.mark.parametrize("case", DATA_CASES, ids=lambda c: c.id)
def test_broken_data(case: D, world, monkeypatch, capsys):
    if case.content is not None:
        content = case.content if isinstance(case.content, (str, bytes)) else json.dumps(case.content)
        path = world / case.name
        (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
    if case.setup:
        case.setup(world)
    (world / "recipe.toml").write_text(DATA_RECIPE.format(type=case.type, path=case.name, extra=case.extra))
    code, out = invoke(monkeypatch, capsys, "run", "--no-progress", "recipe.toml")
    assert_clear(code, out, [case.name, *case.expect])
    assert not list(world.glob("runs/data/stages/model-*")), "a model was built for broken data"


def test_duplicate_ids_are_skipped_with_on_error_skip(world, monkeypatch, capsys):
    from mixlab.records import collect

    records = [GOOD, TEXT, record(conversations=TURNS)]
    samples, skipped = collect(records, world / "data.json", world, "open", "skip", "data")
    assert [s["id"] for s in samples] == ["a", "t"] and len(skipped) == 1 and "duplicate id 'a'" in skipped[0]
    (world / "dup.json").write_text(json.dumps(records))
    code, out = invoke(monkeypatch, capsys, "data", "inspect", "dup.json")
    assert code == 0 and "record 2 (id 'a'): duplicate id 'a'" in " ".join(out.split())


# ---- what training needs, checked before it starts ----------------------------------------------------------------


class WordTokenizer:
    """Stands in for a processor's tokenizer: one token per word."""

    def __call__(self, texts, add_special_tokens=False):
        return {"input_ids": [t.split() for t in texts]}


class FakeProcessor:
    tokenizer = WordTokenizer()


def sample(sid: str, words: int, image: str | None = None) -> dict:
    return {
        "id": sid,
        "source": sid.split("/")[0],
        "image": image,
        "conversations": [{"from": "human", "value": "q " * words}, {"from": "gpt", "value": "a"}],
    }


def test_a_conversation_longer_than_the_context_is_named_before_training():
    from mixlab.training.sft import check_before_training

    samples = [sample("chat/ok", 10), sample("chat/huge", 50_000), sample("chat/long", 600)]
    with pytest.raises(UserError) as info:
        check_before_training(samples, FakeProcessor(), None, 512)
    message = str(info.value)
    assert "sample 'chat/huge' is about 50" in message and "(2 samples are; this is the longest)" in message
    assert "context of 512 tokens" in message and "Set max_length = 512" in message
    check_before_training(samples, FakeProcessor(), 256, 512)  # with max_length, long samples are truncated
    check_before_training(samples[:1], FakeProcessor(), None, 512)


def test_max_length_beyond_the_context():
    from mixlab.training.sft import check_before_training

    with pytest.raises(UserError, match=r"max_length = 9000 is more than the model's context of 4096 tokens: set"):
        check_before_training([sample("s/1", 3)], FakeProcessor(), 9000, 4096)


def test_max_length_that_would_cut_every_image_is_refused_before_training(tmp_path, monkeypatch):
    """Truncation below an image's tokens crashed the collator at the first batch ("Mismatch in image token count")."""
    import mixlab.models.sample_scores as sample_scores
    from mixlab.training.sft import check_before_training

    monkeypatch.setattr(sample_scores, "image_token_count", lambda processor, samples: 64)
    (tmp_path / "i.png").write_bytes(png_bytes())
    with_image = [sample("s/1", 3, str(tmp_path / "i.png"))]
    with pytest.raises(UserError, match=r"max_length = 64 is not more than the 64 tokens each image takes.*drop it"):
        check_before_training(with_image, FakeProcessor(), 64, 4096)
    check_before_training(with_image, FakeProcessor(), 65, 4096)
    check_before_training([sample("s/1", 3)], FakeProcessor(), 16, 4096)  # no image: nothing to cut


def test_an_image_gone_since_loading_is_named_before_training(tmp_path):
    from mixlab.training.sft import check_before_training

    with pytest.raises(UserError, match=r"sample 's/1': image file .*gone.png does not exist.*check_images = \"open\""):
        check_before_training([sample("s/1", 3, str(tmp_path / "gone.png"))], FakeProcessor(), None, 512)


# ---- run folders: `mixlab report` and `mixlab export` -------------------------------------------------------------


@pytest.fixture
def run_dir(world):
    """A run folder as `mixlab run` leaves it: the recipe copy, arm a's selection, a report."""
    from mixlab.store import Store, save_samples

    folder = world / "runs" / "r"
    folder.mkdir(parents=True)
    (folder / "recipe.toml").write_text('[arms.a]\nsources = ["s"]\n\n[arms.b]\nsources = ["s"]\n')
    image = str(world / "ok.png")
    row = {"id": "s/1", "source": "s", "category": None, "image": image, "conversations": TURNS, "noisy": None}
    save_samples(Store(folder).selection_file("a"), [row])
    (folder / "report.json").write_text(json.dumps({"recipe": "recipe.toml", "arms": {}, "stages": []}))
    return folder


def _write(path: Path, content: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)


REPORT_CASES = [
    # (id, how to break the run folder, the folder to give, expected pieces)
    ("missing-folder", None, "runs/nope", ["runs/nope does not exist", "give the run directory"]),
    (
        "folder-is-file",
        lambda d: _write(d.parent / "file", "x"),
        "runs/file",
        ["runs/file is a file", "give the run directory"],
    ),
    (
        "no-report",
        lambda d: (d / "report.json").unlink(),
        "runs/r",
        ["runs/r/report.json does not exist", "rerun the recipe"],
    ),
    (
        "report-is-folder",
        lambda d: ((d / "report.json").unlink(), (d / "report.json").mkdir()),
        "runs/r",
        ["report.json is a folder", "rerun `mixlab run`"],
    ),
    (
        "empty-report",
        lambda d: _write(d / "report.json", ""),
        "runs/r",
        ["runs/r/report.json is empty", "Rerun `mixlab run`"],
    ),
    (
        "truncated-report",
        lambda d: _write(d / "report.json", '{"arms": {"a": {"metrics": {'),
        "runs/r",
        ["runs/r/report.json:1: not valid JSON", "Rerun `mixlab run`"],
    ),
    (
        "report-not-utf8",
        lambda d: _write(d / "report.json", b'{"recipe": "caf\xe9"}'),
        "runs/r",
        ["runs/r/report.json: cannot be read as UTF-8", "Rerun"],
    ),
    (
        "report-a-list",
        lambda d: _write(d / "report.json", "[1, 2]"),
        "runs/r",
        ["runs/r/report.json: not a mixlab report (no `arms` table)", "rerun"],
    ),
    ("report-no-arms", lambda d: _write(d / "report.json", '{"recipe": "x"}'), "runs/r", ["not a mixlab report"]),
    (
        "partial-report",
        lambda d: _write(d / "report.json", '{"arms": {"a": {"n_samples": 3}}}'),
        "runs/r",
        ["runs/r/report.json: incomplete or malformed report", "Rerun `mixlab run`"],
    ),
]


@pytest.mark.parametrize(
    ("break_it", "folder", "expect"), [c[1:] for c in REPORT_CASES], ids=[c[0] for c in REPORT_CASES]
)
def test_broken_report(break_it, folder, expect, run_dir, monkeypatch, capsys):
    if break_it:
        break_it(run_dir)
    code, out = invoke(monkeypatch, capsys, "report", folder)
    assert_clear(code, out, expect)


def _corrupt_selection(d: Path) -> None:
    path = d / "selections" / "a.parquet"
    path.write_bytes(path.read_bytes()[:40])


def _wrong_schema(d: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([{"x": 1}]), d / "selections" / "a.parquet")


EXPORT_CASES = [
    # (id, how to break it, arguments after `export`, expected pieces)
    ("missing-folder", None, ["runs/nope", "a", "out.json"], ["runs/nope does not exist", "give the run directory"]),
    (
        "folder-is-file",
        lambda d: _write(d.parent / "file", "x"),
        ["runs/file", "a", "out.json"],
        ["runs/file is a file"],
    ),
    (
        "no-recipe",
        lambda d: (d / "recipe.toml").unlink(),
        ["runs/r", "a", "out.json"],
        ["runs/r is not a mixlab run directory (no recipe.toml)", "Give the folder"],
    ),
    (
        "broken-recipe",
        lambda d: _write(d / "recipe.toml", "[arms.a\n"),
        ["runs/r", "a", "out.json"],
        ["runs/r/recipe.toml: the run's recipe copy is not valid TOML", "line 1", "Restore it"],
    ),
    (
        "recipe-not-utf8",
        lambda d: _write(d / "recipe.toml", b"[arms.caf\xe9]\n"),
        ["runs/r", "a", "out.json"],
        ["runs/r/recipe.toml: not UTF-8 text", "Restore"],
    ),
    (
        "recipe-arms-number",
        lambda d: _write(d / "recipe.toml", "arms = 3\n"),
        ["runs/r", "a", "out.json"],
        ["runs/r/recipe.toml: `arms` is not a table", "restore"],
    ),
    ("unknown-arm", None, ["runs/r", "aa", "out.json"], ["runs/r has no arm 'aa'", "Did you mean 'a'"]),
    ("unknown-arm-far", None, ["runs/r", "zzzz", "out.json"], ["runs/r has no arm 'zzzz'. Known: a, b. Give one"]),
    (
        "not-selected",
        None,
        ["runs/r", "b", "out.json"],
        ["arm 'b' has not been selected yet in runs/r", "rerun the recipe"],
    ),
    (
        "corrupt-parquet",
        _corrupt_selection,
        ["runs/r", "a", "out.json"],
        ["runs/r/selections/a.parquet: the arm's saved selection cannot be read", "rerun `mixlab run`"],
    ),
    (
        "wrong-schema",
        _wrong_schema,
        ["runs/r", "a", "out.json"],
        ["a.parquet: the arm's saved selection cannot be read", "Delete it"],
    ),
    ("out-is-folder", None, ["runs/r", "a", "bench"], ["bench is a folder: give the JSON file to write"]),
    (
        "out-inside-run",
        None,
        ["runs/r", "a", "runs/r/report.json"],
        ["runs/r/report.json is inside the run directory runs/r", "give a path outside it"],
    ),
    (
        "out-parent-file",
        None,
        ["runs/r", "a", "ok.png/out.json"],
        ["cannot write ok.png/out.json: ok.png is a file", "Give another OUT path"],
    ),
    (
        "image-root-missing",
        None,
        ["runs/r", "a", "out.json", "--image-root", "imgs"],
        ["--image-root imgs does not exist", "give the folder"],
    ),
    (
        "image-root-not-above",
        None,
        ["runs/r", "a", "out.json", "--image-root", "bench"],
        ["is not under --image-root", "Give a folder that holds every image"],
    ),
]


@pytest.mark.parametrize(
    ("break_it", "args", "expect"), [c[1:] for c in EXPORT_CASES], ids=[c[0] for c in EXPORT_CASES]
)
def test_broken_export(break_it, args, expect, run_dir, monkeypatch, capsys):
    if break_it:
        break_it(run_dir)
    code, out = invoke(monkeypatch, capsys, "export", *args)
    assert_clear(code, out, expect)


# ---- the other commands: `toyworld`, `init`, `data inspect`, `run` ---------------------------------------------------

COMMAND_CASES = [
    # (id, arguments, expected pieces)
    ("toyworld-into-file", ["toyworld", "ok.png"], ["ok.png is a file: give a folder"]),
    (
        "toyworld-parent-file",
        ["toyworld", "ok.png/world"],
        ["cannot write the toy world to ok.png/world: ok.png is a file"],
    ),
    (
        "toyworld-non-empty",
        ["toyworld", "bench", "--n-train", "10", "--n-bench", "4"],
        ["bench is not empty and holds no toy world", "choose an empty or new folder"],
    ),
    (
        "toyworld-small",
        ["toyworld", "w", "--n-train", "5"],
        ["--n-train 5 / --n-bench 60: give --n-train from 10 to 100000"],
    ),
    (
        "toyworld-huge",
        ["toyworld", "w", "--n-bench", "100000"],
        ["give --n-train from 10 to 100000 and --n-bench from 4 to 10000"],
    ),
    ("toyworld-seed", ["toyworld", "w", "--seed", "-1"], ["--seed -1 is out of range: give an integer"]),
    ("init-missing-folder", ["init", "no/such/recipe.toml"], ["the folder no/such does not exist: create it first"]),
    ("init-into-folder", ["init", "bench"], ["bench is a folder: give the recipe file to write"]),
    ("init-exists", ["init", "recipe.toml"], ["recipe.toml already exists; give another path"]),
    ("init-parent-file", ["init", "ok.png/recipe.toml"], ["the folder ok.png is a file: create it first"]),
    ("inspect-missing", ["data", "inspect", "nope.json"], ["nope.json not found", "Give a recipe"]),
    (
        "inspect-unknown-source",
        ["data", "inspect", "data.json", "--source", "dta"],
        ["--source dta: no such source in the data", "Did you mean 'data'", "Name one of: data"],
    ),
    ("inspect-folder", ["data", "inspect", "bench"], ["bench is a folder: give a recipe (.toml) or a LLaVA JSON"]),
    (
        "inspect-suffix",
        ["data", "inspect", "ok.png"],
        ["ok.png: give a recipe (.toml) or a LLaVA JSON (.json, .jsonl) file, not '.png'"],
    ),
    (
        "inspect-image-root",
        ["data", "inspect", "data.json", "--image-root", "imgs"],
        ["--image-root imgs does not exist", "give the folder"],
    ),
    (
        "inspect-broken-recipe",
        ["data", "inspect", "recipe.toml"],
        ["recipe.toml:3: TOML syntax error", "Fix the syntax"],
    ),
    ("run-broken-recipe", ["run", "--no-progress", "recipe.toml"], ["recipe.toml:3: TOML syntax error"]),
    (
        "run-into-other-files",
        ["run", "--no-progress", "--output-dir", "bench", "recipe.toml"],
        ["--output-dir bench", "holds other files and is not a mixlab run directory", "choose a new or empty folder"],
    ),
    ("validate-folder", ["validate", "runs"], ["runs is a folder, not a recipe"]),
]


@pytest.mark.parametrize(("args", "expect"), [c[1:] for c in COMMAND_CASES], ids=[c[0] for c in COMMAND_CASES])
def test_broken_command_input(args, expect, world, monkeypatch, capsys):
    (world / "recipe.toml").write_text(RECIPE.replace("seed = 0", "seed = "))
    (world / "runs").mkdir(exist_ok=True)
    code, out = invoke(monkeypatch, capsys, *args)
    assert_clear(code, out, expect)


def test_run_directory_that_cannot_be_created(world, fake_plugins, monkeypatch, capsys):
    (world / "recipe.toml").write_text(KEEP_RECIPE)
    long = "x" * 300  # longer than any file system allows a name to be
    code, out = invoke(monkeypatch, capsys, "run", "--no-progress", "--output-dir", long, "recipe.toml")
    assert_clear(code, out, [long, "choose another output directory"])  # seen by the check or when created
    assert "cannot use" in out or "cannot create the run directory" in out


def test_store_names_a_run_directory_it_cannot_create(tmp_path, monkeypatch):
    from mixlab.store import Store

    def refuse(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "mkdir", refuse)
    with pytest.raises(UserError, match=r"cannot create the run directory .*run \(Permission denied\): choose another"):
        Store(tmp_path / "run")


def test_run_directory_rule_accepts_runs_and_hidden_files(world, fake_plugins, monkeypatch, capsys):
    """A folder with only hidden files, or one a run wrote (any of its files), is a run directory to (re)use; the
    recipe's own run directory is not checked when --output-dir sends the run elsewhere."""
    from mixlab.run_folder import run_dir_problem

    (world / "hidden").mkdir()
    (world / "hidden" / ".gitkeep").write_text("")
    (world / "old_run" / "stages").mkdir(parents=True)  # a run whose event log was lost: its report and stages
    (world / "old_run" / "report.json").write_text("{}")
    (world / "old_run" / "notes.txt").write_text("mine")
    assert run_dir_problem(world / "hidden") is None and run_dir_problem(world / "old_run") is None
    (world / "project").mkdir()
    (world / "project" / "recipe.toml").write_text(KEEP_RECIPE)  # a recipe is no run
    assert "is not a mixlab run directory" in (run_dir_problem(world / "project") or "")
    (world / "recipe.toml").write_text(KEEP_RECIPE)
    (world / "runs" / "keep").mkdir(parents=True)
    (world / "runs" / "keep" / "notes.txt").write_text("not a run")  # the recipe's own run directory
    code, out = invoke(monkeypatch, capsys, "validate", "recipe.toml")
    assert_clear(code, out, ["runs/keep holds other files and is not a mixlab run directory"])
    code, out = invoke(monkeypatch, capsys, "run", "--no-progress", "--output-dir", "hidden", "recipe.toml")
    assert code == 0, out


@pytest.mark.parametrize(
    ("content", "expect"),
    [
        (b'[{"id": "caf\xe9"}]', ["data.json:1: not UTF-8 text"]),
        ('[{"id": 1,\n', ["data.json:2: invalid JSON"]),
        ('{"id": 1}', ["data.json: expected a JSON list of LLaVA records"]),
    ],
    ids=["not-utf8", "invalid", "not-a-list"],
)
def test_broken_json_for_inspect(content, expect, world, monkeypatch, capsys):
    _write(world / "data.json", content)
    code, out = invoke(monkeypatch, capsys, "data", "inspect", "data.json")
    assert_clear(code, out, expect)


# ---- benchmark TSVs: `validate` reads them, so a broken one is named before any training ---------------------------

IMG = base64.b64encode(png_bytes()).decode()
MCQ_HEADER = "index\timage\tquestion\tA\tB\tC\tanswer"
MME_HEADER = "index\timage\tquestion\tanswer"


def _tsv(*lines: str) -> str:
    return "\n".join(lines) + "\n"


TSV_CASES = [
    # (id, file name under bench/, content, expected pieces: the TSV, its line, what, what to do)
    (
        "missing-question",
        "MME_x.tsv",
        _tsv(MME_HEADER, f"0\t{IMG}\tIs it red?\tYes", f"1\t{IMG}\t\tNo"),
        ["bench/MME_x.tsv:3: row index 1: no question", "Fill in the question"],
    ),
    (
        "no-question-column",
        "MME_x.tsv",
        _tsv("index\timage\tanswer", f"0\t{IMG}\tYes"),
        ["bench/MME_x.tsv:1: no 'question' column"],
    ),
    (
        "dangling-image",
        "MME_x.tsv",
        _tsv(MME_HEADER, f"0\t{IMG}\tRed?\tYes", "1\t7\tBlue?\tNo"),
        ["bench/MME_x.tsv:3: row index 1: image '7' is neither a base64 image nor the index of another row"],
    ),
    (
        "answer-not-option",
        "SEED_x.tsv",
        _tsv(MCQ_HEADER, f"0\t{IMG}\tColour?\tred\tblue\t\tC"),
        ["bench/SEED_x.tsv:2: row index 0: answer 'C' is not one of the row's option letters (A, B)", "Fix the answer"],
    ),
    (
        "answer-word",
        "SEED_x.tsv",
        _tsv(MCQ_HEADER, f"0\t{IMG}\tColour?\tred\tblue\tgreen\tred"),
        ["SEED_x.tsv:2: row index 0: answer 'red' is not one of the row's option letters (A, B, C)"],
    ),
    (
        "no-answer",
        "SEED_x.tsv",
        _tsv(MCQ_HEADER, f"0\t{IMG}\tColour?\tred\tblue\tgreen\t"),
        ["SEED_x.tsv:2: row index 0: no answer", "Fill in the answer"],
    ),
    (
        "duplicate-index",
        "MME_x.tsv",
        _tsv(MME_HEADER, f"0\t{IMG}\tRed?\tYes", f"0\t{IMG}\tBlue?\tNo"),
        ["bench/MME_x.tsv:3: row index 0 appears twice (also on line 2)", "give every row its own index"],
    ),
    (
        "mme-not-yes-no",
        "MME_x.tsv",
        _tsv(MME_HEADER, f"0\t{IMG}\tRed?\tYes", f"1\t{IMG}\tBlue?\tMaybe"),
        ["bench/MME_x.tsv:3: row index 1: answer 'Maybe' is not Yes or No, as MME_x needs"],
    ),
    (
        "pope-not-yes-no",
        "POPE_x.tsv",
        _tsv(MME_HEADER, f"0\t{IMG}\tRed?\ty"),
        ["bench/POPE_x.tsv:2: row index 0: answer 'y' is not Yes or No"],
    ),
    (
        "index-not-int",
        "MME_x.tsv",
        _tsv(MME_HEADER, f"zero\t{IMG}\tRed?\tYes"),
        ["bench/MME_x.tsv:2: index 'zero' is not an integer"],
    ),
    (
        "extra-field",
        "MME_x.tsv",
        _tsv(MME_HEADER, f"0\t{IMG}\tRed?\tYes\textra"),
        ["bench/MME_x.tsv:2: 5 tab-separated fields, expected 4", "must be quoted"],
    ),
    (
        "no-index-column",
        "MME_x.tsv",
        _tsv("id\timage\tquestion\tanswer", f"0\t{IMG}\tRed?\tYes"),
        ["bench/MME_x.tsv:1: no 'index' column", "give a VLMEvalKit TSV"],
    ),
    ("empty-tsv", "MME_x.tsv", "", ["bench/MME_x.tsv:1: empty file, expected a header row"]),
    (
        "kind-unknown",
        "Custom_x.tsv",
        _tsv(MME_HEADER, f"0\t{IMG}\tWhat colour?\tred"),
        ["bench/Custom_x.tsv: benchmark 'Custom_x': cannot tell its kind", "Add the option columns"],
    ),
    (
        "header-only",
        "MME_x.tsv",
        _tsv(MME_HEADER),
        ["bench/MME_x.tsv: no rows below the header", "add the benchmark's questions"],
    ),
    (
        "tsv-not-utf8",
        "MME_x.tsv",
        _tsv(MME_HEADER, f"0\t{IMG}\tRouge?\tYes").encode() + "1\tx\tcaf\xe9?\tNo\n".encode("latin-1"),
        ["bench/MME_x.tsv:3: not UTF-8 text (byte 0xe9)", "Save the TSV as UTF-8"],
    ),
    (
        "image-not-base64",
        "MME_x.tsv",
        _tsv(MME_HEADER, f"0\t{'@' * 80}\tRed?\tYes"),
        ["bench/MME_x.tsv: row index 0: the base64 image cannot be decoded"],
    ),
    (
        "image-not-an-image",
        "MME_x.tsv",
        _tsv(MME_HEADER, f"0\t{base64.b64encode(b'not a picture' * 8).decode()}\tRed?\tYes"),
        ["bench/MME_x.tsv: row index 0: the base64 image cannot be decoded (not an image format PIL reads)"],
    ),
    (
        "no-answer-column",
        "SEED_x.tsv",
        _tsv("index\timage\tquestion\tA\tB", f"0\t{IMG}\tColour?\tred\tblue"),
        ["bench/SEED_x.tsv: multiple-choice benchmark: no 'answer' column", "use a split with answers"],
    ),
    (
        "no-image-at-all",
        "MME_x.tsv",
        _tsv(MME_HEADER, "0\t\tRed?\tYes", "1\t\tBlue?\tNo"),
        ["bench/MME_x.tsv: MME: no rows to score (2 rows without an image skipped)", "add the images"],
    ),
    (
        "image-refers-to-a-row-without-one",
        "MME_x.tsv",
        _tsv(MME_HEADER, f"0\t{IMG}\tRed?\tYes", "1\t2\tBlue?\tNo", "2\t1\tGreen?\tNo"),
        ["bench/MME_x.tsv:3: row index 1: image '2' refers to row index 2, which has no base64 image of its own"],
    ),
    (
        "circular-copies-only",
        "MMBench_x.tsv",
        _tsv(MCQ_HEADER, f"1000000\t{IMG}\tColour?\tred\tblue\tgreen\tA"),
        ["bench/MMBench_x.tsv: MMBench: no original questions (index below 1000000)", "add them"],
    ),
    (
        "question-nan",
        "MME_x.tsv",
        _tsv(MME_HEADER, f"0\t{IMG}\tNA\tYes"),
        ["bench/MME_x.tsv:2: row index 0: no question"],
    ),
    (
        "image-cut-short",  # its header reads: found by decoding, since the file does not end as a PNG ends
        "MME_x.tsv",
        _tsv(MME_HEADER, f"0\t{IMG}\tRed?\tYes", f"1\t{base64.b64encode(truncated_png()).decode()}\tBlue?\tNo"),
        ["bench/MME_x.tsv: row index 1: the base64 image cannot be decoded", "truncated", "fix the image cell"],
    ),
]


def test_only_images_without_their_end_are_decoded_in_full(monkeypatch):
    """A complete PNG or JPEG (trailing bytes after a JPEG's end marker included) is checked by its header and its
    end; a JPEG cut short is decoded, and fails."""
    from mixlab.evaluation.tsv import check_image

    jpeg = io.BytesIO()
    Image.effect_noise((64, 64), 80).convert("RGB").save(jpeg, format="JPEG")
    complete = [png_bytes(), jpeg.getvalue(), jpeg.getvalue() + b"\x00\x00\n"]
    with monkeypatch.context() as m:
        m.setattr(Image.Image, "load", lambda self: pytest.fail("decoded a complete image"))
        for data in complete:
            check_image(base64.b64encode(data).decode(), 0)
    check_image(base64.b64encode(jpeg.getvalue() + b"trailing data some writers add").decode(), 0)  # decodes: fine
    with pytest.raises(UserError, match=r"row index 3: the base64 image cannot be decoded \(image file is truncated"):
        check_image(base64.b64encode(jpeg.getvalue()[:-300]).decode(), 3)


@pytest.mark.parametrize(("name", "content", "expect"), [c[1:] for c in TSV_CASES], ids=[c[0] for c in TSV_CASES])
def test_broken_benchmark_tsv(name, content, expect, world, monkeypatch, capsys):
    (world / "bench" / "MME_x.tsv").unlink()
    _write(world / "bench" / name, content)
    text = RECIPE
    code, out = invoke(monkeypatch, capsys, "validate", "recipe.toml")
    line = text[: text.index('paths = ["bench/*.tsv"]')].count("\n") + 1
    assert_clear(code, out, [f"recipe.toml:{line}: evaluators.bench.paths.0: ", *expect])


# ---- nothing already computed is lost -----------------------------------------------------------------------------

KEEP_RECIPE = """\
[run]
name = "keep"

[model]
path = "base"

[sources.data]
type = "llava_json"
path = "data.json"

[trainer]
type = "fake_trainer"

[evaluators.bench]
type = "fake_bench"

[arms.all]
sources = ["data"]
"""


def test_a_failed_run_keeps_the_earlier_finished_report(world, fake_plugins, monkeypatch, capsys):
    (world / "recipe.toml").write_text(KEEP_RECIPE)
    code, out = invoke(monkeypatch, capsys, "run", "--no-progress", "recipe.toml")
    assert code == 0, out
    report = world / "runs" / "keep" / "report.json"
    before = report.read_bytes()
    (world / "data.json").write_text('[{"id": "a",\n "conversations": [}]')
    code, out = invoke(monkeypatch, capsys, "run", "--no-progress", "recipe.toml")
    assert_clear(code, out, ["data.json:2: invalid JSON", "Fix the file at that line"])
    assert report.read_bytes() == before  # the finished run's report stays; the failure is reported beside it
    assert (world / "runs" / "keep" / "report-failed.json").is_file()


def test_fresh_pattern_naming_no_stage_kind(world, monkeypatch, capsys):
    code, text = invoke(monkeypatch, capsys, "run", str(world / "recipe.toml"), "--fresh", "scor:ppl")
    assert_clear(code, text, ["--fresh scor:ppl", "no stage is named like that", "Did you mean 'score'"])


@pytest.mark.parametrize(
    "stage, expect",
    [
        (
            "score",
            [
                "scorer 'quality' ran out of memory",
                "CUDA out of memory",
                "lower batch_size in [scorers.quality] (now 8)",
            ],
        ),
        ("train", ["the trainer (fake_trainer) ran out of memory", "CUDA out of memory", "more memory"]),
        ("eval", ["evaluator 'bench' ran out of memory", "more memory", "its options in [evaluators.bench]"]),
    ],
)
def test_running_out_of_memory_says_what_to_lower(stage, expect, fake_recipe, monkeypatch, capsys):
    monkeypatch.setenv("FAKE_OUT_OF_MEMORY", stage)
    code, out = invoke(monkeypatch, capsys, "run", "--no-progress", str(fake_recipe))
    assert_clear(code, out, [*expect, "then rerun"])
    monkeypatch.delenv("FAKE_OUT_OF_MEMORY")
    code, out = invoke(monkeypatch, capsys, "run", "--no-progress", str(fake_recipe))
    assert code == 0, out  # nothing left behind that a rerun trips on


def test_the_training_advice_on_memory_names_the_options_llava_sft_has():
    from mixlab.engine.bodies import train_body
    from mixlab.registry import get_registry
    from mixlab.testing import build

    trainer = build(get_registry().get("trainer", "llava_sft"), batch_size=16)

    def out_of_memory(*args):
        import torch

        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    trainer.train = out_of_memory
    with pytest.raises(UserError) as caught:
        train_body(trainer, [], Path("base"), Path("stage"), None, {"batch_size": 32})
    message = str(caught.value)
    for piece in ("batch_size (now 32", "grad_accum", "gradient_checkpointing = true", "then rerun"):
        assert piece in message, message
