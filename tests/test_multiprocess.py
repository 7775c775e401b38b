"""Several processes on a CPU (gloo): scoring in data-parallel shards and DDP training under torchrun give the same
score table, selection and benchmark scores as one process."""

from __future__ import annotations

import numpy as np
import pytest

from mixlab.pipeline import Run
from mixlab.recipe import load_recipe
from mixlab.store import load_samples

RECIPE = """\
[run]
name = "mp"
seed = 0
executor = {{ processes = {processes} }}

[model]
preset = "tiny"
tiny = {{ vision_pretrain_steps = 0, language_pretrain_steps = 0, vision_hidden = 32, text_hidden = 32 }}

[sources.toy]
type = "toyworld"
seed = 0
n_train = 24
n_bench = 4
sources = ["color_clean", "color_noisy", "shape_clean"]

[trainer]
type = "llava_sft"
epochs = 2
learning_rate = 2e-3
batch_size = {batch_size}

[evaluators.bench]
type = "benchmarks"
toyworld = {{ seed = 0, n_train = 24, n_bench = 4 }}
only = ["SEED_toy", "MMBench_toy"]
options_as = "text"

[scorers.ppl]
type = "perplexity"
reference_arm = "reference"
batch_size = 4

[selectors.low_half]
type = "fraction"
scorers = ["ppl"]
column = "ppl"
fraction = 0.5

[arms.reference]
sources = ["color_clean", "shape_clean"]

[arms.ppl_half]
sources = ["color_clean", "color_noisy", "shape_clean"]
selector = "low_half"
"""


def run(folder, processes: int, batch_size: int) -> tuple[dict, Run]:
    folder.mkdir()
    path = folder / "recipe.toml"
    path.write_text(RECIPE.format(processes=processes, batch_size=batch_size))
    runner = Run(load_recipe(path), folder / "run", show_progress=False)
    return runner.execute(), runner


@pytest.mark.slow
def test_two_processes_give_the_same_scores_selection_and_metrics(tmp_path):
    one, run_one = run(tmp_path / "one", processes=1, batch_size=8)
    two, run_two = run(tmp_path / "two", processes=2, batch_size=4)  # the same global batch: 2 × 4
    # scoring: two shards merged back into one table, equal to the single process's
    table_one = np.load(next((tmp_path / "one" / "run" / "stages").glob("score_ppl-*/scores.npz")))
    table_two = np.load(next((tmp_path / "two" / "run" / "stages").glob("score_ppl-*/scores.npz")))
    assert list(table_two["__ids__"]) == list(table_one["__ids__"])
    np.testing.assert_allclose(table_two["ppl"], table_one["ppl"], rtol=1e-4)
    assert len(list((tmp_path / "two" / "run" / "stages").glob("score_ppl-*/shard-*/DONE"))) == 2
    # the same selection, trained by two DDP processes (4 + 4 samples a step) into the same scores
    assert two["arms"]["ppl_half"]["sources"] == one["arms"]["ppl_half"]["sources"]
    assert two["arms"]["ppl_half"]["n_samples"] == one["arms"]["ppl_half"]["n_samples"] == 36
    chosen = [sorted(s["id"] for s in load_samples(r.store.selection_file("ppl_half"))) for r in (run_one, run_two)]
    assert len(chosen[0]) == 36 and chosen[0] == chosen[1]  # the same samples, not just as many from each source
    for arm in ("reference", "ppl_half"):
        assert two["arms"][arm]["metrics"] == one["arms"][arm]["metrics"]
    trained = [s for s in two["stages"] if s["name"].startswith("train:")]
    assert trained and all(s.get("processes") == 2 for s in trained)
