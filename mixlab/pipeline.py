"""The recipe's DAG: sources → model (→ scorers → select → align) → reference arms → scorers → per arm: select
(→ align) → train → eval → soup → report. Each step is a stage of the engine (mixlab.engine.stages), keyed by content
and resumable; plugins see the run through its context (mixlab.engine.context)."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

from mixlab import __version__
from mixlab.analysis import analyse
from mixlab.caches import checkpoint_hash
from mixlab.components import Metrics, RunContext, Selection, Source
from mixlab.data import Sample
from mixlab.decisions import Decisions
from mixlab.engine.bodies import IDS_COLUMN, SCORES_FILE
from mixlab.engine.context import PipelineContext
from mixlab.engine.keys import plugin_code
from mixlab.engine.stages import Engine
from mixlab.errors import UserError
from mixlab.paths import expand_user
from mixlab.progress import ProgressBoard
from mixlab.recipe import Recipe
from mixlab.results import AlignResult, ArmResult, Replicate, RunResult, SoupResult
from mixlab.run_folder import is_finished_report
from mixlab.sections import AlignSection, ModelSection, Section
from mixlab.store import SAMPLES_FILE, Store, content_hash, load_samples, save_samples


class Run:
    """One execution of a recipe."""

    def __init__(
        self, recipe: Recipe, output_dir: Path | None = None, show_progress: bool = True, fresh: tuple[str, ...] = ()
    ):
        self.recipe = recipe
        self.run_dir = (output_dir or recipe.output_dir).resolve()
        self.store = Store(self.run_dir)
        self.board = ProgressBoard(on_event=self.store.event, enabled=show_progress)
        self.engine = Engine(self.store, fresh)
        self.ctx = PipelineContext(recipe, self.run_dir, self.engine, self.board)
        self.result = RunResult(
            recipe=recipe.path,
            run_dir=self.run_dir,
            seeds=self.ctx.seeds,
            select_on=recipe.run.select_on,
            stages=self.engine.entries,
        )
        self.samples_of_source: dict[str, list[Sample]] = {}
        self.selections: dict[str, list[Sample]] = {}  # arm → the samples it trains on
        self.keep_finished = is_finished_report(self.run_dir / "report.json")  # its files wait for this run's end
        self.unaligned: tuple[Path, str] = (Path(), "")  # the base model before any alignment, and its stage key

    def execute(self) -> dict[str, Any]:
        """Every stage, then the run's files (report.json last); one run at a time per folder. Returns the report."""
        from mixlab.report import write_report

        with self.store.lock():
            resumed = self.engine.resume_fresh()
            recipe = str(self.recipe.path.resolve())  # `compare` names it to finish a stopped run
            self.store.event(event="run", recipe=recipe, mixlab_version=__version__, resumed=resumed)
            if resumed:
                self.board.log(f"Taking up the unfinished `--fresh {' '.join(resumed)}` of an earlier run here.")
            if not self.keep_finished:  # a run stopped early is still a run folder with its recipe
                self.store.keep_recipe(self.recipe.path)
            failed: BaseException | None = None
            with self.board:
                try:
                    self.run_stages()
                except BaseException as exc:  # keep what is finished; write a report of the failure
                    failed = exc
            error = None if failed is None else f"{type(failed).__name__}: {failed}"
            report = write_report(self.result, error, self.selections if self.keep_finished else None)
            if failed is not None:
                raise failed
            self.store.clear_fresh()
            return report

    def run_stages(self) -> None:
        self.load_sources()
        self.build_model()
        for arm in reference_arms(self.recipe):  # arms whose model a scorer uses go first
            self.run_arm(arm, {})
        scores = self.score(scorers_needed(self.recipe))
        for arm in self.recipe.arms:
            if arm not in self.result.arms:
                self.run_arm(arm, scores)
        if self.recipe.soup is not None:
            self.run_soup(self.recipe.soup)
        analyse(self.result, self.ctx.decisions, self.recipe.run.compare_to or next(iter(self.recipe.arms)))

    # ---- sources and the base model -------------------------------------------------------------------------
    def load_sources(self) -> None:
        for label, section in self.recipe.sources.items():
            source = section.build()
            material = {"section": section.raw, "code": plugin_code(section.cls), "fingerprint": source.fingerprint()}
            _, stage_dir = self.engine.stage(
                f"source:{label}", material, partial(source_body, source, section, self.ctx)
            )
            samples = load_samples(stage_dir / SAMPLES_FILE) if (stage_dir / SAMPLES_FILE).exists() else []
            for name in source.provides():
                self.ctx.source_keys[name] = self.engine.keys[f"source:{label}"]
                self.samples_of_source[name] = [s for s in samples if s["source"] == name]

    def samples_of(self, names: list[str]) -> list[Sample]:
        return [s for name in names for s in self.samples_of_source[name]]

    def build_model(self) -> None:
        """The base model, aligned on [model.align]'s sources (those its selector keeps) when the recipe says so."""
        self.unaligned = (self.build_base_model(), self.ctx.base_key)
        align = self.recipe.model.align
        if align is not None:
            scores = self.score(pool_scorers(self.recipe, [(align.selector, align.sources)]), "align/")
            path, key, result = self.align("align", align, scores)
            self.ctx.set_base_model(path, key)
            self.result.align = result if align.selector else None

    def align(self, tag: str, align: AlignSection, scores: Scores) -> tuple[Path, str, AlignResult]:
        """Select from an alignment pool (stage ``select:<tag>``), then align the unaligned base model on what was
        kept, once (stage ``train:<tag>``); returns the aligned model, its stage key and the selection."""
        pool = self.samples_of(align.sources)
        chosen, info = self.select(tag, align.selector, pool, scores, self.ctx)
        with self.engine.downstream_of(f"select:{tag}"):
            path = self.ctx.with_base(*self.unaligned).train(chosen, tag, align.trainer)
        return path, self.engine.keys[f"train:{tag}"], AlignResult(pool, chosen, info)

    def build_base_model(self) -> Path:
        """The model stage: the tiny preset built on the pool's texts, or the checkpoint at [model].path."""
        model = self.recipe.model
        recipe_dir = self.recipe.path.resolve().parent
        material = model_material(model, list(self.ctx.source_keys.values()), self.ctx.seed, recipe_dir)
        corpus = self.samples_of(list(self.samples_of_source))
        body = partial(pretrain_body, model, corpus, self.ctx, recipe_dir)
        result, stage_dir = self.engine.stage("model", material, body)
        base = Path(result["model_dir"])
        self.ctx.set_base_model(base if base.is_absolute() else stage_dir / base, self.engine.keys["model"])
        return self.ctx.base_model

    # ---- scores ---------------------------------------------------------------------------------------------
    def score(self, needed: dict[str, list[str]], prefix: str = "") -> Scores:
        """Run each scorer of ``needed`` over its sources (the scorer's own ``sources`` when given), as stage
        ``score:<prefix><scorer>``; returns scorer → (folder, stage key)."""
        folders: Scores = {}
        for label, pool_sources in needed.items():
            section = self.recipe.scorers[label]
            names = section.core.get("sources") or pool_sources
            samples = self.samples_of(names)
            reference = section.core.get("reference_arm")
            reference_dir = self.result.arms[reference].model_dir if reference else None
            material = {
                "section": section.raw,
                "code": plugin_code(section.cls),
                "base": self.ctx.base_key,
                "sources": {n: self.ctx.source_keys[n] for n in names},
                "reference": self.ctx.model_key(reference_dir) if reference_dir else None,
                "fingerprint": section.build().fingerprint(),  # e.g. the content of a reference checkpoint it names
            }
            if section.cls.uses_seed:
                material["seed"] = self.ctx.seed

            body = partial(score_stage_body, self.ctx, section, samples, reference_dir)
            _, folder = self.engine.stage(f"score:{prefix}{label}", material, body)
            folders[label] = (folder, self.engine.keys[f"score:{prefix}{label}"])
        return folders

    # ---- arms -----------------------------------------------------------------------------------------------
    def select(
        self, tag: str, selector: str | None, pool: list[Sample], scores: Scores, ctx: PipelineContext
    ) -> tuple[list[Sample], dict[str, Any]]:
        """A selector applied to a pool (all of it without a selector) in ``ctx`` (the base model the selector's own
        trainings start from), as stage ``select:<tag>``."""
        if not selector:
            return pool, {}
        section = self.recipe.selectors[selector]
        used = {s: scores[s] for s in section.core.get("scorers", [])}
        material = select_material(self.recipe, section, pool_material(ctx, pool), used, ctx.base_key, ctx.seed)
        body = partial(select_body, section, pool, {s: folder for s, (folder, _) in used.items()}, ctx)
        result, _ = self.engine.stage(f"select:{tag}", material, body)
        keep = set(result["ids"])
        return [s for s in pool if s["id"] in keep], result["info"]

    def run_arm(self, arm_name: str, scores: Scores) -> None:
        """Align on the arm's own alignment pool if it has one; select, then train once per seed (from the arm's
        aligned model, or the run's base model) and evaluate each model (on the report part)."""
        arm = self.recipe.arms[arm_name]
        ctx, aligned = self.ctx, None
        if arm.align is not None:
            path, key, aligned = self.align(f"{arm_name}/align", arm.align, scores)
            ctx = self.ctx.with_base(path, key)
        pool = self.samples_of(arm.sources)
        chosen, info = self.select(arm_name, arm.selector, pool, scores, ctx)
        self.selections[arm_name] = chosen
        if not self.keep_finished:
            save_samples(self.store.selection_file(arm_name), chosen)  # what `mixlab export` writes out
        with self.engine.downstream_of(f"select:{arm_name}"):
            models = ctx.replicates([(chosen, arm_name)], arm.trainer)[0]
            replicates = [self.replicate(arm_name, seed, path) for seed, path in models.items()]
        metrics, score = seed_means(self.ctx.decisions, replicates)
        self.result.arms[arm_name] = ArmResult(arm_name, pool, chosen, replicates, metrics, score, info, align=aligned)

    def replicate(self, tag: str, seed: int, model_dir: Path) -> Replicate:
        """One seed's model evaluated, as the report shows it (every item, or the test part)."""
        decisions = self.ctx.decisions
        evaluation = decisions.view(self.ctx.evaluation(model_dir, self.ctx.seed_tag(tag, seed)), decisions.report_on)
        return Replicate(seed, model_dir, evaluation, round(decisions.aggregate(evaluation.metrics), 3))

    # ---- the soup -------------------------------------------------------------------------------------------
    def run_soup(self, section: Section) -> None:
        """One soup per seed, of that seed's ingredients; each merged model evaluated like an arm's."""
        replicates, per_seed = [], {}
        judged = decision_material(self.recipe) if section.build().evaluates_models() else {}
        for seed in self.ctx.seeds:
            ingredients = soup_ingredients(section, seed, self.result.arms, self.run_dir)
            material = {
                "section": section.raw,
                "code": plugin_code(section.cls),
                "ingredients": {n: self.ctx.model_key(p) for n, p in ingredients.items()},
                **judged,  # a greedy soup evaluates its candidates and keeps by the rules
            }
            body = partial(merge_body, section, ingredients, self.ctx.with_seed(seed))
            result, stage_dir = self.engine.stage(self.ctx.seed_tag(f"merge:{section.label}", seed), material, body)
            replicates.append(self.replicate(section.label, seed, stage_dir / result["model_dir"]))
            per_seed[seed] = {"ingredients": list(ingredients), "kept": result["kept"], "info": result["info"]}
        first = per_seed[self.ctx.seeds[0]]
        metrics, score = seed_means(self.ctx.decisions, replicates)
        method = first["info"].get("method", section.type)
        self.result.soup = SoupResult(
            method, first["ingredients"], first["kept"], metrics, score, first["info"], replicates, per_seed
        )


Scores = dict[str, tuple[Path, str]]
"""Scorer label → the folder of its scores and the key of its stage."""


def reference_arms(recipe: Recipe) -> list[str]:
    """Arms named by a scorer's ``reference_arm``: their trained model is the scorer's reference model."""
    refs = [s.core["reference_arm"] for s in recipe.scorers.values() if "reference_arm" in s.core]
    for arm in refs:
        if pool_scorers(recipe, arm_pools(recipe, [arm])):
            raise UserError(f"arm {arm!r} is a scorer's reference_arm, so it cannot itself use scores.")
    return list(dict.fromkeys(refs))


def arm_pools(recipe: Recipe, names: list[str]) -> list[tuple[str | None, list[str]]]:
    """(selector, sources) of each pool of these arms: the arm's own, then its alignment pool if it has one."""
    pools: list[tuple[str | None, list[str]]] = [(recipe.arms[n].selector, recipe.arms[n].sources) for n in names]
    aligns = [a for n in names if (a := recipe.arms[n].align) is not None]
    return pools + [(a.selector, a.sources) for a in aligns]


def scorers_needed(recipe: Recipe) -> dict[str, list[str]]:
    """Each scorer a used selector of an arm names → the sources of the arms' pools that need it (alignment pools
    included)."""
    return pool_scorers(recipe, arm_pools(recipe, list(recipe.arms)))


def pool_scorers(recipe: Recipe, pools: list[tuple[str | None, list[str]]]) -> dict[str, list[str]]:
    """Each scorer named by the selectors of these (selector, sources) pools → the sources of the pools needing it."""
    needed: dict[str, list[str]] = {}
    for selector, sources in pools:
        for scorer in recipe.selectors[selector].core.get("scorers", []) if selector else []:
            needed.setdefault(scorer, [])
            needed[scorer] += [s for s in sources if s not in needed[scorer]]
    return needed


def source_body(source: Source, section: Section, ctx: PipelineContext, stage_dir: Path) -> dict[str, Any]:
    """The source stage's body: load, normalise and store the samples."""
    samples = normalise(source.load(ctx), section, source.provides())
    save_samples(stage_dir / SAMPLES_FILE, samples)
    ctx.record(n_samples=len(samples))
    return {"counts": count_sources(samples)}


def pretrain_body(
    model: ModelSection, corpus: list[Sample], ctx: PipelineContext, recipe_dir: Path, stage_dir: Path
) -> dict[str, Any]:
    """The model stage's body: the base model prepared in ``stage_dir`` (the tiny preset pretrained on the texts
    and images of ``corpus``; a checkpoint is used where it lies)."""
    from mixlab.models.base import prepare_base_model

    steps = model.tiny.vision_pretrain_steps + model.tiny.language_pretrain_steps if model.preset == "tiny" else 0
    with ctx.progress("pretrain the tiny model", steps or None) as advance:
        path = prepare_base_model(
            model,
            corpus,
            stage_dir,
            ctx.seed,
            recipe_dir,
            record=ctx.record,
            progress=lambda done, total: advance(completed=done),
        )
    return {"model_dir": str(path.relative_to(stage_dir) if path.is_relative_to(stage_dir) else path)}


def seed_means(decisions: Decisions, replicates: list[Replicate]) -> tuple[Metrics, float]:
    """Metrics and score averaged over seeds."""
    metrics = decisions.mean_metrics([r.evaluation.metrics for r in replicates])
    return metrics, round(sum(r.score for r in replicates) / len(replicates), 3)


def score_stage_body(
    ctx: PipelineContext, section: Section, samples: list[Sample], reference_dir: Path | None, stage_dir: Path
) -> dict[str, Any]:
    """A scorer stage's body: its columns into scores.npz."""
    return {"columns": ctx.score(section, samples, reference_dir, stage_dir)}


def model_material(model: ModelSection, corpus_keys: list[str], seed: int, recipe_dir: Path) -> dict[str, Any]:
    """The model stage's key material: the [model] section and the corpus; for a checkpoint at ``path``, its content
    (new weights in the same folder train again); for the tiny preset, built by mixlab's code, its chat template and
    the run's seed, which its pretraining draws from."""
    material: dict[str, Any] = {"model": model.model_dump(exclude={"align"}), "corpus": sorted(corpus_keys)}
    if model.path is not None:
        material["checkpoint"] = checkpoint_hash((recipe_dir / expand_user(model.path)).resolve())
    if model.preset == "tiny":
        from mixlab.models.templates import TINY_CHAT_TEMPLATE

        material |= {"template": TINY_CHAT_TEMPLATE, "seed": seed}
    return material


def pool_material(ctx: PipelineContext, pool: list[Sample]) -> dict[str, Any]:
    """A selection pool's key material: its samples and their order (the order of the arm's `sources`), which a
    random draw or a clustering depends on."""
    return {**ctx.samples_material(pool), "order": content_hash([s["id"] for s in pool])}


def select_material(
    recipe: Recipe, section: Section, pool: dict[str, Any], scores: Scores, base_key: str, seed: int
) -> dict[str, Any]:
    """A select stage's key material: the selector, its pool, the keys of its scores and of the base model (and the
    seed or seeds, where the selector uses them)."""
    material: dict[str, Any] = {
        "section": section.raw,
        "code": plugin_code(section.cls),
        "pool": pool,
        "scores": {s: key for s, (_, key) in scores.items()},
        "base": base_key,
    }
    trains = getattr(section.cls, "trains_models", False)
    if section.cls.uses_seed or (trains and any(e.cls.uses_seed for e in recipe.evaluators.values())):
        material["seed"] = seed  # its own draw, or the evaluations it judges by
    if trains:  # its result depends on the trainings and how they are judged
        trainer = recipe.trainer
        material["trainer"] = {
            "section": trainer.raw,
            "code": plugin_code(trainer.cls),
            "fingerprint": trainer.build().fingerprint(),
        }
        material["seeds"] = recipe.run.seed_list
        material.update(decision_material(recipe))
    return material


def decision_material(recipe: Recipe) -> dict[str, Any]:
    """What a decision read off evaluations depends on: the evaluators (sections and code) and the [run] rules that
    turn their scores into one number (the decision part, the weights, the benchmarks left out)."""
    run = recipe.run
    return {
        "evaluators": {k: {"section": s.raw, "code": plugin_code(s.cls)} for k, s in recipe.evaluators.items()},
        "rules": {
            "select_on": run.select_on,
            "dev_fraction": run.dev_fraction if run.select_on == "dev" else None,
            "weights": dict(sorted(run.weights.items())),
            "exclude": sorted(run.exclude),
        },
    }


def select_body(
    section: Section, pool: list[Sample], score_dirs: dict[str, Path], ctx: RunContext, stage_dir: Path
) -> dict[str, Any]:
    """A select stage's body: the selector's ids (checked to lie in the pool) and info."""
    columns = aligned_scores(pool, score_dirs, section)
    selection: Selection = section.build().select(pool, columns, ctx)
    unknown = set(selection.ids) - {s["id"] for s in pool}
    if unknown:
        raise RuntimeError(f"selector {section.type!r} returned ids outside the pool: {sorted(unknown)[:3]}")
    ctx.record(n_selected=len(selection.ids))
    return {"ids": selection.ids, "info": selection.info}


def soup_ingredients(section: Section, seed: int, arms: dict[str, ArmResult], run_dir: Path) -> dict[str, Path]:
    """Name → one seed's model dir: the arms the section names (all arms by default) and, with ``candidates = "<arm>"``,
    that Individual Select arm's model and the checkpoint of every candidate it kept."""
    names = section.core.get("arms") or ([] if section.core.get("candidates") else list(arms))
    ingredients = {n: arms[n].model_of(seed) for n in names}
    arm = section.core.get("candidates")
    if arm:
        block = arms[arm].selection.get("individual_select")
        if block is None:
            raise UserError(f"[soup] candidates = {arm!r}: that arm does not use an individual_select selector.")
        ingredients[arm] = arms[arm].model_of(seed)
        for r in block["rounds"]:
            for c in r["candidates"]:
                if c["kept"]:
                    ingredients[c["source"]] = run_dir / c.get("model_dirs", {}).get(str(seed), c["model_dir"])
    return ingredients


def merge_body(section: Section, ingredients: dict[str, Path], ctx: RunContext, stage_dir: Path) -> dict[str, Any]:
    """A merge stage's body: the merger's model folder, what it kept and its info."""
    merged = section.build().merge(ingredients, stage_dir, ctx)
    model_dir = str(Path(merged.model_dir).relative_to(stage_dir))
    return {"model_dir": model_dir, "kept": merged.kept, "info": merged.info}


def count_sources(samples: list[Sample]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for s in samples:
        counts[s["source"]] = counts.get(s["source"], 0) + 1
    return counts


def normalise(samples: list[Sample], section: Section, provides: list[str]) -> list[Sample]:
    """Prefix ids with their source, apply the recipe's category, and check sources are the ones provided."""
    out: list[Sample] = []
    seen: set[str] = set()
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


def aligned_scores(pool: list[Sample], score_dirs: dict[str, Path], selector: Section) -> dict[str, Any]:
    """Score columns re-ordered to match ``pool`` (scorers may have scored a superset); a column two scorers
    write is an error naming both."""
    import numpy as np

    columns: dict[str, Any] = {}
    writer: dict[str, str] = {}
    for scorer, folder in score_dirs.items():
        data = np.load(folder / SCORES_FILE)
        row_of = {sid: i for i, sid in enumerate(data[IDS_COLUMN].tolist())}
        missing = next((s["id"] for s in pool if s["id"] not in row_of), None)
        if missing is not None:
            raise UserError(
                f"[scorers.{scorer}] did not score sample {missing!r}, which selector {selector.label!r} must rank: "
                "add its source to the scorer's `sources`, or drop `sources`."
            )
        rows = np.array([row_of[s["id"]] for s in pool], dtype=int)
        for col in data.files:
            if col == IDS_COLUMN:
                continue
            if col in columns:
                raise UserError(
                    f"[selectors.{selector.label}] scorers: {writer[col]!r} and {scorer!r} both write a column "
                    f"named {col!r}, so one would hide the other. Use only one of them in this selector."
                )
            columns[col], writer[col] = data[col][rows], scorer
    return columns
