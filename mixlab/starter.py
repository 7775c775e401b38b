"""`mixlab init`: a starter recipe that runs as it is (toy world, tiny LLaVA) and says where real paths go."""

from __future__ import annotations

from pathlib import Path

from mixlab.errors import UserError

STARTER = """\
# A mixlab recipe: two arms trained and compared on the same benchmarks.
#   mixlab validate {name}     # every problem at once, with file:line
#   mixlab run {name}          # rerun to resume; finished stages are reused
# As it is, it runs on a CPU in a few minutes on the embedded toy world. For real data, see the comments and
# docs/recipes.md (every key), docs/plugins.md (writing your own source, scorer, selector, ...).

[run]
name = "{stem}"
seed = 0

[model]
preset = "tiny"                         # or: path = "/models/llava-1.5-7b-hf" (a local llava-hf checkpoint)

[model.align]                           # train the tiny model once on captions first (cached); drop for real models
sources = ["caption_clean"]
trainer = {{ epochs = 12, batch_size = 16 }}

[sources.toy]                           # or one section per dataset:
type = "toyworld"                       #   [sources.llava665k]
n_train = 200                           #   type = "llava_json"
n_bench = 40                            #   path = "/data/llava_v1_5_mix665k.json"
                                        #   image_root = "/data/images"

[trainer]
type = "llava_sft"
epochs = 3
learning_rate = 2e-3                    # real LLaVA-1.5 fine-tuning: 2e-5, epochs = 1
batch_size = 16

[evaluators.bench]
type = "benchmarks"
toyworld = {{ n_train = 200, n_bench = 40 }}   # or: paths = ["/data/eval/*.tsv"] (VLMEvalKit TSVs)
options_as = "text"                     # real checkpoints: "letters" (the LLaVA protocol)

[selectors.random_half]
type = "random"
fraction = 0.5

[arms.full]
sources = ["color_clean", "shape_clean", "count_clean", "color_noisy"]

[arms.random_half]
sources = ["color_clean", "shape_clean", "count_clean", "color_noisy"]
selector = "random_half"
"""


def run_name(stem: str) -> str:
    """A safe run name from a file stem: letters, digits, '-', '_' and '.', at most 100 characters."""
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in stem).strip("._")[:100]
    return name or "run"


def starter_recipe(file_name: str, stem: str) -> str:
    return STARTER.format(name=file_name, stem=run_name(stem))


def write_starter(path: Path) -> None:
    """Write the starter recipe to path; UserError if it exists or its folder cannot take it."""
    if path.is_dir():
        raise UserError(f"{path} is a folder: give the recipe file to write, e.g. mixlab init {path / 'recipe.toml'}.")
    if path.exists():
        raise UserError(f"{path} already exists; give another path (mixlab init other.toml).")
    folder = path.parent
    if not folder.is_dir():
        what = "is a file" if folder.exists() else "does not exist"
        raise UserError(f"the folder {folder} {what}: create it first (mkdir -p {folder}) or give another path.")
    try:
        path.write_text(starter_recipe(path.name, path.stem), encoding="utf-8")
    except OSError as e:
        raise UserError(f"cannot write {path} ({e.strerror}): give a path in a folder you can write to.") from None
