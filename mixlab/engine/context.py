"""The run context the pipeline hands to plugins (``mixlab.components.RunContext``): cached trainings and
evaluations through the engine, dispatched to workers where [run.executor] says, progress, logs and caches."""

from __future__ import annotations

import copy
from collections.abc import Callable
from contextlib import AbstractContextManager
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mixlab.components import Evaluation, Metrics, Trial
from mixlab.decisions import Decisions
from mixlab.engine.bodies import SCORES_FILE, eval_body, save_scores, score_body, train_body
from mixlab.engine.keys import cache_key, plugin_code, seed_tag
from mixlab.engine.remote import Remote
from mixlab.engine.stages import Engine
from mixlab.errors import UserError
from mixlab.outcomes import OUTCOMES_FILE, read_outcomes
from mixlab.progress import ProgressBoard
from mixlab.store import Store, content_hash

if TYPE_CHECKING:
    from mixlab.data import Sample
    from mixlab.recipe import Recipe
    from mixlab.sections import Section
    from mixlab.stats import Comparison


class PipelineContext:
    """What plugins may ask of a run: train, evaluate, progress, caches. Every training and evaluation is a stage."""

    def __init__(self, recipe: Recipe, run_dir: Path, engine: Engine, board: ProgressBoard):
        self.recipe = recipe
        self.run_dir = run_dir
        self.seeds = recipe.run.seed_list  # every training runs once per seed (replicates)
        self.seed = recipe.run.seed  # random choices (tiny model, sampling, single trainings); a seed view's own
        self.decisions = Decisions(recipe.run)
        self.engine = engine
        self.store: Store = engine.store
        self.board = board
        self.executor = recipe.run.executor
        self.source_keys: dict[str, str] = {}  # source name → key of the stage that loaded it
        self._base_model: Path | None = None
        self._base_key = ""
        self._trainer = recipe.trainer.build()
        self._evaluators = {label: s.build() for label, s in recipe.evaluators.items()}
        self.remote = Remote(recipe, run_dir, engine, board)

    # ---- the base model ------------------------------------------------------------------------------------
    @property
    def base_model(self) -> Path:
        if self._base_model is None:
            raise RuntimeError("the base model is not built yet")
        return self._base_model

    def set_base_model(self, path: Path, key: str) -> None:
        """The model every training starts from, and the stage key that produced it."""
        self._base_model, self._base_key = path, key

    def with_base(self, path: Path, key: str) -> PipelineContext:
        """A view of this context whose trainings start from ``path`` (made by the stage of key ``key``)."""
        view = copy.copy(self)
        view.set_base_model(path, key)
        return view

    # ---- RunContext ----------------------------------------------------------------------------------------
    def progress(self, description: str, total: int | None) -> AbstractContextManager[Callable[..., None]]:
        return self.board.task(description, total)

    def record(self, **info: Any) -> None:
        self.engine.record(**info)

    def log(self, message: str) -> None:
        self.board.log(message)
        self.store.event(event="log", message=message)

    def cache_dir(self, kind: str, key: Any) -> Path:
        return self.store.cache_dir(kind, cache_key(key))

    def aggregate(self, metrics: Metrics) -> float:
        return self.decisions.aggregate(metrics)

    def train(self, samples: list[Sample], tag: str, overrides: dict[str, Any] | None = None) -> Path:
        return self.train_many([(samples, tag)], overrides)[0]

    def train_many(self, jobs: list[tuple[list[Sample], str]], overrides: dict[str, Any] | None = None) -> list[Path]:
        """Train several independent mixtures once each, with this context's seed, under the tags given; with a
        parallel executor the unfinished ones run at once."""
        trained = self._train([(s, t, [self.seed]) for s, t in jobs], overrides, per_seed_tags=False)
        return [by_seed[self.seed] for by_seed in trained]

    def replicates(
        self, jobs: list[tuple[list[Sample], str]], overrides: dict[str, Any] | None = None
    ) -> list[dict[int, Path]]:
        """Each mixture trained once per seed of the run (``seeds``); every unfinished training at once where the
        executor allows. Returns, per job, seed → model folder."""
        return self._train([(s, t, self.seeds) for s, t in jobs], overrides, per_seed_tags=True)

    def evaluate(self, model_dir: Path, tag: str) -> Metrics:
        """The recipe's evaluators on a model, as decisions see them (the dev part with ``select_on = "dev"``)."""
        return self.decisions.view(self.evaluation(model_dir, tag), self.decisions.decide_on).metrics

    def evaluation(self, model_dir: Path, tag: str) -> Evaluation:
        """The recipe's evaluators on a model, every item: metrics and per-item outcomes; cached by content."""
        material = {
            "evaluators": {k: s.raw for k, s in self.recipe.evaluators.items()},
            "code": {k: plugin_code(s.cls) for k, s in self.recipe.evaluators.items()},
            "model": self.model_key(model_dir),
            "inputs": {k: e.fingerprint() for k, e in self._evaluators.items()},  # e.g. the benchmark files
        }
        if any(s.cls.uses_seed for s in self.recipe.evaluators.values()):
            material["seed"] = self.seed
        result, stage_dir = self.engine.stage(
            f"eval:{tag}", material, partial(eval_body, self._evaluators, Path(model_dir), self), kind="eval"
        )
        self.decisions.check_names(list(result["metrics"]))
        # the average under this run's weights and exclusions, which the evaluation's key leaves out
        self.engine.annotate(f"eval:{tag}", score=round(self.aggregate(result["metrics"]), 3))
        return Evaluation(result["metrics"], read_outcomes(stage_dir / OUTCOMES_FILE))

    def trials(self, jobs: list[tuple[list[Sample], str]], overrides: dict[str, Any] | None = None) -> list[Trial]:
        """Each mixture trained once per seed and evaluated on the decision part: what noise-aware selectors compare
        (``compare``). Trainings of all jobs run at once where the executor allows."""
        out = []
        for (_, tag), by_seed in zip(jobs, self.replicates(jobs, overrides), strict=True):
            part = self.decisions.decide_on
            evaluations = {
                s: self.decisions.view(self.evaluation(d, self.seed_tag(tag, s)), part) for s, d in by_seed.items()
            }
            score = sum(self.aggregate(e.metrics) for e in evaluations.values()) / len(evaluations)
            out.append(Trial(tag, evaluations, {s: self.relative(d) for s, d in by_seed.items()}, score))
        return out

    def compare(self, a: Trial, b: Trial) -> Comparison:
        """Trial A − trial B over the run's seeds: the difference, its 95% interval and P(A better)."""
        seeds = [s for s in a.evaluations if s in b.evaluations]
        return self.decisions.compare([a.evaluations[s] for s in seeds], [b.evaluations[s] for s in seeds])

    # ---- seeds ---------------------------------------------------------------------------------------------
    def with_seed(self, seed: int) -> PipelineContext:
        """A view of this context whose training seed is ``seed`` (what a trainer reads as ``ctx.seed``)."""
        view = copy.copy(self)
        view.seed = seed
        return view

    def seed_tag(self, tag: str, seed: int) -> str:
        """A training's tag for one seed: unchanged with a single seed, ``tag@seed<n>`` with several."""
        return seed_tag(tag, seed, self.seeds)

    def relative(self, path: Path) -> str:
        """A path relative to the run folder where it lies inside it."""
        path = Path(path).resolve()
        return str(path.relative_to(self.run_dir)) if path.is_relative_to(self.run_dir) else str(path)

    def _train(
        self, jobs: list[tuple[list[Sample], str, list[int]]], overrides: dict[str, Any] | None, per_seed_tags: bool
    ) -> list[dict[int, Path]]:
        """Every (samples, tag, seeds) job trained once per seed (tags ``tag@seed<n>`` with ``per_seed_tags`` and
        several run seeds); returns, per job, seed → model folder."""

        def named(tag: str, seed: int) -> str:
            return self.seed_tag(tag, seed) if per_seed_tags else tag

        specs = [self._training(samples, named(tag, s), overrides, s) for samples, tag, seeds in jobs for s in seeds]
        if self.executor.remote:
            self.remote.train(specs, overrides, self.base_model, self.seeds)
        paths: dict[str, Path] = {}
        for ordered, tag, material in specs:
            body = self._train_body(ordered, overrides, material["seed"])
            result, stage_dir = self.engine.stage(f"train:{tag}", material, body, kind="train")
            paths[tag] = stage_dir / result["model_dir"]
        return [{s: paths[named(tag, s)] for s in seeds} for _, tag, seeds in jobs]

    # ---- identities ----------------------------------------------------------------------------------------
    def model_key(self, model_dir: Path) -> str:
        """A stable identity for a model folder: run-relative for our stages, path + mtime for outside ones."""
        model_dir = Path(model_dir).resolve()
        if model_dir.is_relative_to(self.run_dir):
            return str(model_dir.relative_to(self.run_dir))
        config = model_dir / "config.json"
        return f"{model_dir}@{config.stat().st_mtime_ns if config.exists() else 0}"

    def samples_material(self, samples: list[Sample]) -> dict[str, Any]:
        """Key material of a set of samples: the keys of the stages that loaded their sources, and their ids."""
        sources = sorted({s["source"] for s in samples})
        return {
            "sources": {s: self.source_keys.get(s, "") for s in sources},
            "ids": content_hash(sorted(s["id"] for s in samples)),
        }

    @property
    def base_key(self) -> str:
        return self._base_key

    # ---- stage bodies --------------------------------------------------------------------------------------
    def _training(
        self, samples: list[Sample], tag: str, overrides: dict[str, Any] | None, seed: int
    ) -> tuple[list[Sample], str, dict[str, Any]]:
        if not samples:
            raise UserError(f"{tag}: nothing to train on (the selection is empty). Check the arm's selector.")
        ordered = sorted(samples, key=lambda s: s["id"])
        material = {
            "trainer": self.recipe.trainer.raw,
            "code": plugin_code(self.recipe.trainer.cls),
            "fingerprint": self._trainer.with_options(overrides).fingerprint(),  # e.g. its DeepSpeed config
            "overrides": overrides or {},
            "base": self._base_key,
            "samples": self.samples_material(ordered),
            "seed": seed,
        }
        return ordered, tag, material

    def _train_body(
        self, samples: list[Sample], overrides: dict[str, Any] | None, seed: int
    ) -> Callable[[Path], dict[str, Any]]:
        ctx = self.with_seed(seed)
        return lambda stage_dir: train_body(self._trainer, samples, self.base_model, stage_dir, ctx, overrides)

    def score(self, section: Section, samples: list[Sample], reference_dir: Path | None, stage_dir: Path) -> list[str]:
        """Run a scorer into ``stage_dir/scores.npz`` (in shards of worker processes with ``processes > 1``)."""
        if self.executor.processes > 1:
            columns = self.remote.score_in_shards(
                section, samples, reference_dir, stage_dir, self.base_model, self.seeds
            )
        else:
            columns = score_body(section, samples, reference_dir, self)
        save_scores(stage_dir / SCORES_FILE, [s["id"] for s in samples], columns)
        return sorted(columns)
