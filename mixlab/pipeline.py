"""Run a recipe: stages in dependency order, each cached by a content hash, resumable after a crash.

Stages: one per source → model (→ align) → one per scorer → per arm: select → train → eval → soup → report.
A stage's key hashes its recipe section, its upstream stages' keys and the code version; its folder is
``stages/<name>-<key>``, and its DONE marker is written after its artifacts, so a rerun trusts only finished work.
"""

from __future__ import annotations

import shutil
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mixlab import __version__
from mixlab.components import Metrics, Selection
from mixlab.data import Sample
from mixlab.errors import UserError
from mixlab.progress import ProgressBoard
from mixlab.recipe import Recipe, Section
from mixlab.store import SAMPLES_FILE, Store, content_hash, load_samples, save_samples
from mixlab.worker import score_columns, train_result

CODE_VERSION = f"mixlab-{__version__}"


class StageFailed(Exception):
    """A stage raised; the run stops with everything finished so far kept."""


class Run:
    """One execution of a recipe; also the RunContext handed to plugins."""

    def __init__(self, recipe: Recipe, output_dir: Path | None = None, show_progress: bool = True):
        self.recipe = recipe
        self.run_dir = (output_dir or recipe.output_dir).resolve()
        self.seed = recipe.run.seed
        self.store = Store(self.run_dir)
        self.board = ProgressBoard(on_event=self.store.event, enabled=show_progress)
        self.stages: list[dict[str, Any]] = []
        self.keys: dict[str, str] = {}  # stage name → key
        self.source_keys: dict[str, str] = {}  # source name → key of the section that provides it
        self.samples_of_source: dict[str, list[Sample]] = {}
        self.arms: dict[str, dict[str, Any]] = {}
        self.extra: dict[str, Any] = {}
        self._base_model: Path | None = None
        self._base_key = ""
        self._current: dict[str, Any] | None = None
        self._trainer = recipe.trainer.build()
        self.executor = recipe.run.executor
        self._fresh: dict[Path, float] = {}  # stage folders an executor finished in this run → their seconds
        self._evaluators = {label: s.build() for label, s in recipe.evaluators.items()}

    # ---- stages -------------------------------------------------------------------------------------------
    def stage(
        self, name: str, material: Any, fn: Callable[[Path], dict[str, Any]], kind: str | None = None
    ) -> tuple[dict[str, Any], Path]:
        """Run ``fn(stage_dir)`` unless a finished stage with the same key exists; return its result and folder.

        With ``kind`` (trainings, evaluations) the key and folder depend on the material only, not on the name, so
        the same training asked for under two names (an Individual Select candidate and an arm) runs once.
        """
        ident = kind or name
        key = content_hash({"stage": ident, "material": material, "code": CODE_VERSION})
        self.keys[name] = key
        stage_dir = self.store.stage_dir(ident, key)
        entry: dict[str, Any] = {"name": name, "status": "cached", "seconds": 0.0, "key": key[:12]}
        if self.store.is_done(stage_dir):
            result = self.store.result(stage_dir)
            entry.update(result.get("_record", {}))
            if stage_dir in self._fresh:  # finished just now by an executor's worker
                entry.update(status="done", seconds=self._fresh.pop(stage_dir))
            self.stages.append(entry)
            self.store.event(event="end", stage=name, status=entry["status"], seconds=entry["seconds"])
            return result, stage_dir
        stage_dir.mkdir(parents=True, exist_ok=True)
        self.store.event(event="start", stage=name, key=key[:12])
        outer, self._current = self._current, entry
        start = time.perf_counter()
        try:
            result = fn(stage_dir)
        except BaseException as exc:
            entry.update(status="failed", seconds=round(time.perf_counter() - start, 3))
            self.stages.append(entry)
            self.store.event(event="end", stage=name, status="failed", error=f"{type(exc).__name__}: {exc}")
            if not isinstance(exc, UserError):
                (stage_dir / "error.txt").write_text(traceback.format_exc())
            raise
        finally:
            self._current = outer
        entry.update(status="done", seconds=round(time.perf_counter() - start, 3))
        result["_record"] = {k: v for k, v in entry.items() if k not in ("name", "status", "seconds", "key")}
        self.store.finish(stage_dir, result)
        self.stages.append(entry)
        self.store.event(event="end", stage=name, status="done", seconds=entry["seconds"])
        return result, stage_dir

    # ---- RunContext --------------------------------------------------------------------------------------
    @property
    def base_model(self) -> Path:
        if self._base_model is None:
            raise RuntimeError("the base model is not built yet")
        return self._base_model

    def progress(self, description: str, total: int | None):
        return self.board.task(description, total)

    def record(self, **info: Any) -> None:
        if self._current is not None:
            self._current.update(info)

    def log(self, message: str) -> None:
        self.board.log(message)
        self.store.event(event="log", message=message)

    def cache_dir(self, kind: str, key: Any) -> Path:
        return self.store.cache_dir(kind, content_hash({"key": key, "code": CODE_VERSION}))

    def model_key(self, model_dir: Path) -> str:
        """A stable identity for a model folder: run-relative for our stages, path + mtime for outside ones."""
        model_dir = Path(model_dir).resolve()
        if model_dir.is_relative_to(self.run_dir):
            return str(model_dir.relative_to(self.run_dir))
        config = model_dir / "config.json"
        return f"{model_dir}@{config.stat().st_mtime_ns if config.exists() else 0}"

    def samples_key(self, samples: list[Sample]) -> str:
        sources = sorted({s["source"] for s in samples})
        return content_hash(
            {"sources": {s: self.source_keys.get(s, "") for s in sources}, "ids": sorted(s["id"] for s in samples)}
        )

    def train(self, samples: list[Sample], tag: str, overrides: dict[str, Any] | None = None) -> Path:
        return self.train_many([(samples, tag)], overrides)[0]

    def train_many(self, jobs: list[tuple[list[Sample], str]], overrides: dict[str, Any] | None = None) -> list[Path]:
        """Train several independent mixtures; with a parallel executor the unfinished ones run at once."""
        specs = []
        for samples, tag in jobs:
            if not samples:
                raise UserError(f"{tag}: nothing to train on (the selection is empty). Check the arm's selector.")
            ordered = sorted(samples, key=lambda s: s["id"])
            material = {
                "trainer": self.recipe.trainer.raw,
                "overrides": overrides or {},
                "base": self._base_key,
                "samples": self.samples_key(ordered),
                "seed": self.seed,
            }
            specs.append((ordered, tag, material))
        if self.executor.remote:
            self._run_elsewhere(specs, overrides)
        paths = []
        for ordered, tag, material in specs:

            def run(stage_dir: Path, ordered=ordered) -> dict[str, Any]:
                return train_result(self._trainer, ordered, self.base_model, stage_dir, self, overrides)

            result, stage_dir = self.stage(f"train:{tag}", material, run, kind="train")
            paths.append(stage_dir / result["model_dir"])
        return paths

    def _run_elsewhere(self, specs: list[tuple[list[Sample], str, Any]], overrides: dict[str, Any] | None) -> None:
        """Hand the unfinished trainings to the executor; each finishes its own stage folder."""
        from mixlab.executors import Job, run_jobs

        jobs = []
        for ordered, tag, material in specs:
            key = content_hash({"stage": "train", "material": material, "code": CODE_VERSION})
            job = Job(tag, self.store.stage_dir("train", key))
            if self.store.is_done(job.stage_dir):
                continue
            self._prepare_job(job, ordered, kind="train", overrides=overrides)
            self.store.event(event="submit", stage=f"train:{tag}", executor=self.executor.type)
            jobs.append(job)
        if not jobs:
            return
        with self.progress(f"trainings ({self.executor.type}, {self.executor.workers} at once)", len(jobs)) as advance:

            def done(job) -> None:
                self._fresh[job.stage_dir] = self.store.result(job.stage_dir).get("_seconds", 0.0)
                advance()

            run_jobs(jobs, self.executor, self.run_dir, done)

    def evaluate(self, model_dir: Path, tag: str) -> Metrics:
        material = {
            "evaluators": {k: s.raw for k, s in self.recipe.evaluators.items()},
            "model": self.model_key(model_dir),
        }

        def run(stage_dir: Path) -> dict[str, Any]:
            metrics: Metrics = {}
            for label, evaluator in self._evaluators.items():
                work = stage_dir / label
                work.mkdir(exist_ok=True)
                for bench, values in evaluator.evaluate(Path(model_dir), work, self).items():
                    metrics[bench if bench not in metrics else f"{label}/{bench}"] = values
            self.record(score=round(aggregate(metrics), 3))
            return {"metrics": metrics}

        result, _ = self.stage(f"eval:{tag}", material, run, kind="eval")
        return result["metrics"]

    def aggregate(self, metrics: Metrics) -> float:
        return aggregate(metrics)

    # ---- the pipeline ------------------------------------------------------------------------------------
    def execute(self) -> dict[str, Any]:
        """Run every stage and write report.json / report.md; returns the report."""
        from mixlab.report import build_report, write_report

        self.run_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.recipe.path, self.run_dir / "recipe.toml")
        self.store.event(event="run", recipe=str(self.recipe.path), mixlab_version=__version__)
        failed: BaseException | None = None
        with self.board:
            try:
                self.load_sources()
                self._build_model()
                for arm in self.reference_arms():  # arms whose model a scorer uses go first
                    self._run_arm(arm, {})
                scores = self._score()
                for arm in self.recipe.arms:
                    if arm not in self.arms:
                        self._run_arm(arm, scores)
                if self.recipe.soup is not None:
                    self._run_soup(self.recipe.soup)
            except BaseException as exc:  # keep what is finished; write a report of the failure
                failed = exc
        report = build_report(self)
        write_report(self, report)
        if failed is not None:
            raise failed
        return report

    def load_sources(self) -> None:
        for label, section in self.recipe.sources.items():
            source = section.build()
            material = {"section": section.raw, "fingerprint": source.fingerprint()}

            def run(stage_dir: Path, source=source, section=section) -> dict[str, Any]:
                samples = normalise(source.load(self), section, source.provides())
                save_samples(stage_dir / SAMPLES_FILE, samples)
                counts: dict[str, int] = {}
                for s in samples:
                    counts[s["source"]] = counts.get(s["source"], 0) + 1
                self.record(n_samples=len(samples))
                return {"counts": counts}

            _, stage_dir = self.stage(f"source:{label}", material, run)
            samples = load_samples(stage_dir / SAMPLES_FILE) if (stage_dir / SAMPLES_FILE).exists() else []
            for name in source.provides():
                self.source_keys[name] = self.keys[f"source:{label}"]
                self.samples_of_source[name] = [s for s in samples if s["source"] == name]

    def samples_of(self, names: list[str]) -> list[Sample]:
        return [s for name in names for s in self.samples_of_source[name]]

    def _build_model(self) -> None:
        self.build_base_model()
        align = self.recipe.model.align
        if align is not None:
            aligned = self.train(self.samples_of(align.sources), "align", align.trainer)
            self._base_model, self._base_key = aligned, self.keys["train:align"]

    def build_base_model(self) -> Path:
        """The model stage: the tiny preset built on the pool's texts, or the checkpoint at [model].path."""
        from mixlab.models.base import prepare_base_model

        model = self.recipe.model
        material = {"model": model.model_dump(exclude={"align"}), "corpus": sorted(self.source_keys.values())}

        def run(stage_dir: Path) -> dict[str, Any]:
            samples = self.samples_of(list(self.samples_of_source))
            steps = model.tiny.vision_pretrain_steps if model.preset == "tiny" else 0
            with self.progress("pretrain vision tower", steps or None) as advance:
                path = prepare_base_model(
                    model,
                    samples,
                    stage_dir,
                    self.seed,
                    self.recipe.path.resolve().parent,
                    record=self.record,
                    progress=lambda done, total: advance(completed=done),
                )
            return {"model_dir": str(path.relative_to(stage_dir) if path.is_relative_to(stage_dir) else path)}

        result, stage_dir = self.stage("model", material, run)
        self._base_model = Path(result["model_dir"])
        if not self._base_model.is_absolute():
            self._base_model = stage_dir / self._base_model
        self._base_key = self.keys["model"]
        return self._base_model

    def reference_arms(self) -> list[str]:
        """Arms named by a scorer's ``reference_arm``: their trained model is the scorer's reference model."""
        refs = [s.core["reference_arm"] for s in self.recipe.scorers.values() if "reference_arm" in s.core]
        for arm in refs:
            selector = self.recipe.arms[arm].selector
            if selector and self.recipe.selectors[selector].core.get("scorers"):
                raise UserError(f"arm {arm!r} is a scorer's reference_arm, so it cannot itself use scores.")
        return list(dict.fromkeys(refs))

    def _score(self) -> dict[str, dict[str, Any]]:
        """Run each scorer that a used selector names, over the sources of the arms that need it."""
        needed: dict[str, list[str]] = {}
        for arm in self.recipe.arms.values():
            if arm.selector:
                for scorer in self.recipe.selectors[arm.selector].core.get("scorers", []):
                    needed.setdefault(scorer, [])
                    needed[scorer] += [s for s in arm.sources if s not in needed[scorer]]
        scores: dict[str, dict[str, Any]] = {}
        for label, arm_sources in needed.items():
            section = self.recipe.scorers[label]
            names = section.core.get("sources") or arm_sources
            samples = self.samples_of(names)
            reference = section.core.get("reference_arm")
            reference_dir = Path(self.arms[reference]["model_dir"]) if reference else None
            material = {
                "section": section.raw,
                "base": self._base_key,
                "sources": {n: self.source_keys[n] for n in names},
                "reference": self.model_key(reference_dir) if reference_dir else None,
            }

            def run(stage_dir: Path, section=section, samples=samples, reference_dir=reference_dir) -> dict[str, Any]:
                import numpy as np

                if self.executor.processes > 1:
                    columns = self._score_in_shards(section, samples, reference_dir, stage_dir)
                else:
                    columns = score_columns(section, samples, reference_dir, self)
                np.savez(stage_dir / "scores.npz", __ids__=np.array([s["id"] for s in samples]), **columns)
                return {"columns": sorted(columns)}

            _, stage_dir = self.stage(f"score:{label}", material, run)
            scores[label] = {"dir": stage_dir}
        return scores

    def _prepare_job(self, job: Any, samples: list[Sample], **spec: Any) -> None:
        """Write a worker job into its folder: the samples, and what the worker needs to rebuild this run's parts."""
        from mixlab.executors import write_job
        from mixlab.registry import extra_plugin_modules

        job.stage_dir.mkdir(parents=True, exist_ok=True)
        save_samples(job.stage_dir / "job-samples.parquet", samples)
        payload = {
            "recipe": str(self.recipe.path.resolve()),
            "run_dir": str(self.run_dir),
            "base_model": str(self.base_model),
            "samples": "job-samples.parquet",
            "seed": self.seed,
            "code": CODE_VERSION,
            "plugins": extra_plugin_modules(),
            **spec,
        }
        write_job(job, payload)

    def _score_in_shards(
        self, section: Section, samples: list[Sample], reference_dir: Path | None, stage_dir: Path
    ) -> dict[str, Any]:
        """Data-parallel scoring: shard i scores samples i, i+n, … in a worker of its own; rows merged back in order."""
        import numpy as np

        from mixlab.executors import Job, run_jobs

        n = self.executor.processes
        shards = [Job(f"score:{section.label} shard {i + 1}/{n}", stage_dir / f"shard-{i}") for i in range(n)]
        todo = [job for job in shards if not self.store.is_done(job.stage_dir)]  # finished shards are kept
        for i, job in enumerate(shards):
            if job in todo:
                reference = str(reference_dir) if reference_dir else None
                self._prepare_job(job, samples[i::n], kind="score", scorer=section.label, reference=reference)
        with self.progress(f"score:{section.label} ({n} shards)", len(todo)) as advance:
            run_jobs(todo, self.executor.for_shards(), self.run_dir, lambda job: advance())
        columns: dict[str, Any] = {}
        for i, job in enumerate(shards):
            with np.load(job.stage_dir / "scores.npz") as part:
                for col in part.files:
                    if col not in columns:
                        columns[col] = np.zeros((len(samples), *part[col].shape[1:]), dtype=part[col].dtype)
                    columns[col][i::n] = part[col]
        self.record(shards=n)
        return columns

    def _run_arm(self, arm_name: str, scores: dict[str, dict[str, Any]]) -> None:
        arm = self.recipe.arms[arm_name]
        pool = self.samples_of(arm.sources)
        info: dict[str, Any] = {}
        chosen = pool
        if arm.selector:
            section = self.recipe.selectors[arm.selector]
            used = section.core.get("scorers", [])
            material = {
                "section": section.raw,
                "pool": self.samples_key(pool),
                "scores": {s: self.keys[f"score:{s}"] for s in used},
                "base": self._base_key,
            }

            def run(stage_dir: Path) -> dict[str, Any]:
                columns = aligned_scores(pool, [scores[s]["dir"] for s in used])
                selection: Selection = section.build().select(pool, columns, self)
                unknown = set(selection.ids) - {s["id"] for s in pool}
                if unknown:
                    raise RuntimeError(
                        f"selector {section.type!r} returned ids outside the pool: {sorted(unknown)[:3]}"
                    )
                self.record(n_selected=len(selection.ids))
                return {"ids": selection.ids, "info": selection.info}

            result, _ = self.stage(f"select:{arm_name}", material, run)
            keep = set(result["ids"])
            chosen = [s for s in pool if s["id"] in keep]
            info = result["info"]
        save_samples(self.store.selection_file(arm_name), chosen)  # what `mixlab export` writes out
        model_dir = self.train(chosen, arm_name, arm.trainer)
        metrics = self.evaluate(model_dir, arm_name)
        counts: dict[str, int] = {}
        for s in chosen:
            counts[s["source"]] = counts.get(s["source"], 0) + 1
        self.arms[arm_name] = {
            "n_samples": len(chosen),
            "sources": counts,
            "metrics": metrics,
            "score": round(aggregate(metrics), 3),
            "model_dir": str(model_dir),
            "selection": info,
            "_chosen": chosen,
            "_pool": pool,
        }

    def soup_ingredients(self, section: Section) -> dict[str, Path]:
        """Name → model dir: the arms the section names (all arms by default) and, with ``candidates = "<arm>"``,
        that Individual Select arm's model and the checkpoint of every candidate it kept."""
        names = section.core.get("arms") or ([] if section.core.get("candidates") else list(self.arms))
        ingredients = {n: Path(self.arms[n]["model_dir"]) for n in names}
        arm = section.core.get("candidates")
        if arm:
            block = self.arms[arm]["selection"].get("individual_select")
            if block is None:
                raise UserError(f"[soup] candidates = {arm!r}: that arm does not use an individual_select selector.")
            ingredients[arm] = Path(self.arms[arm]["model_dir"])
            for r in block["rounds"]:
                for c in r["candidates"]:
                    if c["kept"]:
                        ingredients[c["source"]] = self.run_dir / c["model_dir"]
        return ingredients

    def _run_soup(self, section: Section) -> None:
        ingredients = self.soup_ingredients(section)
        material = {"section": section.raw, "ingredients": {n: self.model_key(p) for n, p in ingredients.items()}}

        def run(stage_dir: Path) -> dict[str, Any]:
            merged = section.build().merge(ingredients, stage_dir, self)
            return {
                "model_dir": str(Path(merged.model_dir).relative_to(stage_dir)),
                "kept": merged.kept,
                "info": merged.info,
            }

        result, stage_dir = self.stage(f"merge:{section.label}", material, run)
        metrics = self.evaluate(stage_dir / result["model_dir"], section.label)
        self.extra["soup"] = {
            "method": result["info"].get("method", section.type),
            "ingredients": list(ingredients),
            "kept": result["kept"],
            "metrics": metrics,
            "score": round(aggregate(metrics), 3),
            "info": result["info"],
        }


def aggregate(metrics: Metrics) -> float:
    """Mean of each benchmark's 0-100 ``score``."""
    values = [m["score"] for m in metrics.values() if "score" in m]
    return sum(values) / len(values) if values else 0.0


def normalise(samples: list[Sample], section: Section, provides: list[str]) -> list[Sample]:
    """Prefix ids with their source, apply the recipe's category, and check sources are the ones provided."""
    out, seen = [], set()
    category = section.core.get("category")
    for s in samples:
        source = s.get("source") or section.label
        if source not in provides:
            raise RuntimeError(f"source plugin {section.type!r} yielded source {source!r}, not one of {provides}")
        sample_id = s["id"] if str(s["id"]).startswith(f"{source}/") else f"{source}/{s['id']}"
        if sample_id in seen:
            raise UserError(f"source {section.label!r}: duplicate sample id {s['id']!r}. Ids must be unique.")
        seen.add(sample_id)
        out.append(
            {
                "id": sample_id,
                "source": source,
                "category": category or s.get("category"),
                "image": s.get("image"),
                "conversations": s["conversations"],
                "noisy": s.get("noisy"),
                "quality": s.get("quality"),
            }
        )
    return out


def aligned_scores(pool: list[Sample], score_dirs: list[Path]) -> dict[str, Any]:
    """Score columns re-ordered to match ``pool`` (scorers may have scored a superset)."""
    import numpy as np

    columns: dict[str, Any] = {}
    for d in score_dirs:
        data = np.load(d / "scores.npz")
        row_of = {sid: i for i, sid in enumerate(data["__ids__"].tolist())}
        rows = np.array([row_of[s["id"]] for s in pool], dtype=int)
        for col in data.files:
            if col != "__ids__":
                columns[col] = data[col][rows]
    return columns
