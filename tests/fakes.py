"""Small plugins for the core's tests: real pipeline, registry and store; trivial data, training and scoring.

The fake world: sources "good" and "bad" of 10 samples each. A fake "model" is a JSON file listing the ids
it was trained on; the fake benchmark scores 100 × the share of samples from sources without "bad" in their name,
so selection visibly matters.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from pydantic import Field

from mixlab import hookimpl
from mixlab.caches import files_fingerprint
from mixlab.components import (
    Evaluator,
    Merger,
    MergeResult,
    Options,
    Scorer,
    Selection,
    Selector,
    Source,
    Trainer,
    TrainResult,
)


class FakeSourceOptions(Options):
    n: int = Field(10, ge=1)
    quality: str = "good"


class FakeSource(Source):
    name = "fake_source"
    Options = FakeSourceOptions

    def load(self, ctx):
        return [
            {
                "id": str(i),
                "image": None,
                "category": "fake",
                "noisy": self.options.quality == "bad",
                "conversations": [{"from": "human", "value": f"q{i}"}, {"from": "gpt", "value": self.options.quality}],
            }
            for i in range(self.options.n)
        ]


def _run_out_of_memory_if_asked(stage: str) -> None:
    """Raise torch's out-of-memory error where FAKE_OUT_OF_MEMORY names this kind of stage."""
    if os.environ.get("FAKE_OUT_OF_MEMORY") == stage:
        import torch

        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


class FakeScorerOptions(Options):
    model: str | None = None
    batch_size: int = 8  # unused: named in the out-of-memory advice


class FakeScorer(Scorer):
    """badness = the noise flag; with a reference model, also how many of its training ids each sample is."""

    name = "fake_quality"
    Options = FakeScorerOptions

    def score(self, samples, ctx):
        import numpy as np

        _run_out_of_memory_if_asked("score")

        columns = {"badness": np.array([1.0 if s["noisy"] else 0.0 for s in samples])}
        if self.options.model:
            trained = set(json.loads((Path(self.options.model) / "ids.json").read_text()))
            columns["seen"] = np.array([1.0 if s["id"] in trained else 0.0 for s in samples])
        return columns


class FakeTopOptions(Options):
    column: str = "badness"
    count: int = 5


class FakeTop(Selector):
    name = "fake_lowest"
    Options = FakeTopOptions

    def select(self, samples, scores, ctx):
        order = sorted(range(len(samples)), key=lambda i: (scores[self.options.column][i], i))
        return Selection(ids=[samples[i]["id"] for i in order[: self.options.count]], info={"rule": "lowest"})


class FakeTrainerOptions(Options):
    epochs: int = 1
    sleep: float = 0.0


class FakeTrainer(Trainer):
    name = "fake_trainer"
    Options = FakeTrainerOptions

    def train(self, samples, base_model, work_dir, ctx, overrides=None):
        _run_out_of_memory_if_asked("train")
        sleep = float(os.environ.get("FAKE_TRAIN_SLEEP", "0")) or self.options.sleep
        (work_dir / "partial.txt").write_text("half-written")
        started = time.time()
        with ctx.progress("fake training", len(samples)) as advance:
            for _ in samples:
                time.sleep(sleep / max(1, len(samples)))
                advance()
        model = work_dir / "model"
        model.mkdir(exist_ok=True)
        (model / "trained.json").write_text(json.dumps({"start": started, "end": time.time()}))  # when it slept
        (model / "ids.json").write_text(json.dumps(sorted(s["id"] for s in samples)))
        (model / "seed.json").write_text(json.dumps(ctx.seed))
        (model / "base.txt").write_text(str(base_model))  # the model this training started from
        return TrainResult(model, {"samples": len(samples)})


class FakeEvaluatorOptions(Options):
    bonus_file: str | None = None  # a file holding a number added to the score (an input file, like a benchmark's)


class FakeEvaluator(Evaluator):
    name = "fake_bench"
    Options = FakeEvaluatorOptions
    options: FakeEvaluatorOptions

    def fingerprint(self) -> str:
        return files_fingerprint([self.resolve(self.options.bonus_file)]) if self.options.bonus_file else ""

    def evaluate(self, model_dir, work_dir, ctx):
        _run_out_of_memory_if_asked("eval")
        ids = json.loads((Path(model_dir) / "ids.json").read_text())
        good = 100 * sum(1 for i in ids if "bad" not in i.split("/")[0]) / max(1, len(ids))
        if self.options.bonus_file:
            good += float(self.resolve(self.options.bonus_file).read_text())
        return {"fakebench": {"acc": good, "score": good}}


class NoisyBenchOptions(Options):
    items: int = 400
    seed_sd: float = 0.03  # training-seed noise of the success probability
    bad_penalty: float = 0.5  # success probability lost per share of "bad" samples
    x_share: float = 0.0  # > 0: this share of the items has category "x" and only they pay the penalty (others "y")


class NoisyBench(Evaluator):
    """A benchmark of known noise: per-item outcomes (clusters of two) whose success probability is 0.6 minus a
    penalty for "bad" training samples (on the items of category "x" only, with ``x_share``), shifted per training
    seed; the same model and seed give the same items."""

    name = "fake_noisy_bench"
    Options = NoisyBenchOptions

    def evaluate(self, model_dir, work_dir, ctx):
        import hashlib

        import numpy as np

        from mixlab.components import Evaluation
        from mixlab.outcomes import ItemOutcomes

        o = self.options
        ids = json.loads((Path(model_dir) / "ids.json").read_text())
        seed = json.loads((Path(model_dir) / "seed.json").read_text())
        bad = sum(1 for i in ids if "bad" in i.split("/")[0]) / max(1, len(ids))
        seed_effect = np.random.default_rng(1000 + seed).normal(0.0, o.seed_sd)
        is_x = np.arange(o.items) < round(o.x_share * o.items) if o.x_share else np.ones(o.items, dtype=bool)
        p = 0.6 - o.bad_penalty * bad * is_x + seed_effect
        digest = hashlib.sha256(json.dumps([ids, seed]).encode()).digest()
        rng = np.random.default_rng(int.from_bytes(digest[:8], "big"))
        correct = rng.random(o.items) < p
        outcomes = ItemOutcomes(
            rule="mean",
            items=[str(i) for i in range(o.items)],
            clusters=[str(i // 2) for i in range(o.items)],
            correct=correct,
            chance=np.full(o.items, 0.25),
            categories=["x" if x else "y" for x in is_x] if o.x_share else [],
        )
        score = 100.0 * float(correct.mean())
        return Evaluation({"noisybench": {"acc": score, "score": score}}, {"noisybench": outcomes})


class FakeMergerOptions(Options):
    judges: bool = Field(True, description="Whether the merge counts as judging models (its key: evaluators, rules).")


class FakeMerger(Merger):
    name = "fake_soup"
    Options = FakeMergerOptions
    options: FakeMergerOptions

    def evaluates_models(self) -> bool:
        return self.options.judges

    def merge(self, ingredients, work_dir, ctx):
        ids = sorted({i for p in ingredients.values() for i in json.loads((p / "ids.json").read_text())})
        model = work_dir / "model"
        model.mkdir(exist_ok=True)
        (model / "ids.json").write_text(json.dumps(ids))
        (model / "seed.json").write_text(json.dumps(ctx.seed))
        return MergeResult(model, kept=list(ingredients), info={"method": "union"})


@hookimpl
def register_sources(register):
    register(FakeSource)


@hookimpl
def register_scorers(register):
    register(FakeScorer)


@hookimpl
def register_selectors(register):
    register(FakeTop)


@hookimpl
def register_trainers(register):
    register(FakeTrainer)


@hookimpl
def register_evaluators(register):
    register(FakeEvaluator)
    register(NoisyBench)


@hookimpl
def register_mergers(register):
    register(FakeMerger)


RECIPE = """\
[run]
name = "fake"
seed = 1

[model]
path = "base"

[sources.good]
type = "fake_source"
quality = "good"

[sources.bad]
type = "fake_source"
quality = "bad"

[scorers.quality]
type = "fake_quality"

[selectors.best]
type = "fake_lowest"
scorers = ["quality"]
count = 10

[trainer]
type = "fake_trainer"

[evaluators.bench]
type = "fake_bench"

[arms.full]
sources = ["good", "bad"]

[arms.curated]
sources = ["good", "bad"]
selector = "best"

[soup]
type = "fake_soup"
arms = ["full", "curated"]
"""


def write_weights(path: Path, value: float = 0.0) -> None:
    """A valid safetensors file of one tiny tensor (validation reads weights' headers); `value` changes its bytes."""
    import numpy as np
    from safetensors.numpy import save_file

    save_file({"w": np.array([value], dtype=np.float32)}, str(path))


def write_recipe(folder: Path, text: str = RECIPE) -> Path:
    """A recipe plus the 'base' model folder it points at (a config and a weights file, neither ever loaded)."""
    (folder / "base").mkdir(parents=True, exist_ok=True)
    (folder / "base" / "config.json").write_text("{}")
    write_weights(folder / "base" / "model.safetensors")
    path = folder / "recipe.toml"
    path.write_text(text)
    return path
