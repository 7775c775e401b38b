"""``benchmarks``: VLMEvalKit-format TSV benchmarks (MME, MMBench, SEED, ScienceQA, any MCQ or yes/no),
answered by option likelihood or greedy generation, scored by VLMEvalKit's rules, predictions cached per sample."""

from __future__ import annotations

import glob
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from mixlab import hookimpl
from mixlab.caches import JsonlCache, checkpoint_hash, file_digest, files_fingerprint
from mixlab.components import Evaluation, Evaluator, Metrics, Options, RunContext
from mixlab.errors import UserError
from mixlab.hookspecs import Register
from mixlab.toyworld.params import ToyWorldParams


class BenchmarksOptions(Options):
    paths: list[str] = Field(
        default_factory=list,
        description="VLMEvalKit TSV files (globs allowed), "
        "relative to the recipe; the benchmark is named after the file stem.",
    )
    toyworld: ToyWorldParams | None = Field(None, description="Also evaluate on the toy world's benchmarks.")
    mode: Literal["likelihood", "generate"] = Field(
        "likelihood",
        description='"likelihood": pick the option (letter or Yes/No) the model finds most likely; '
        '"generate": greedy decoding, answers extracted as VLMEvalKit does.',
    )
    options_as: Literal["letters", "text"] = Field(
        "letters",
        description='Multiple choice in likelihood mode. "letters": the lettered prompt, each letter scored (the '
        "LLaVA protocol). \"text\": the question asked for a short answer, each option's text scored (lm-eval's "
        "multiple-choice scoring; for small models that have not learned to map options to letters).",
    )
    batch_size: int = Field(32, ge=1, description="Prompts per forward pass.")
    max_new_tokens: int = Field(16, ge=1, description="Greedy decoding length (mode = generate).")
    limit: int | None = Field(
        None,
        ge=1,
        description="Evaluate only the first N rows of each benchmark (of a circular set such as MMBench: the first N "
        "questions with all their copies).",
    )
    only: list[str] | None = Field(None, description="Keep only these benchmarks (file stems, e.g. SEED_toy).")
    extraction: Literal["vlmevalkit", "extended"] = Field(
        "vlmevalkit",
        description='Reading answers out of generated text. "vlmevalkit": exactly VLMEvalKit\'s exact matching; '
        '"extended": mixlab\'s more lenient reading ("Answer: X", "(X)", any option letter), whose scores are not '
        "comparable with VLMEvalKit's.",
    )


TOY_BENCHMARKS = ["MME_toy", "MMBench_toy", "SEED_toy", "ScienceQA_toy"]
"""What the toy world's benchmarks are named (its benchmark builders name them; a test checks the two agree)."""


class Benchmarks(Evaluator):
    name = "benchmarks"
    Options = BenchmarksOptions
    options: BenchmarksOptions
    path_options = frozenset({"paths", "toyworld"})

    def fingerprint(self) -> str:
        """The content of the files `paths` names (the toy world's benchmarks follow from the section and mixlab's
        code): an edited answer key or a new file matching a glob evaluates again."""
        matched = (Path(p) for pattern in self.options.paths for p in glob.glob(str(self.resolve(pattern))))
        return files_fingerprint(matched)

    def benchmark_names(self) -> list[str] | None:
        """File stems of the TSVs `paths` matches and the toy world's benchmarks, as `only` keeps them; None while a
        pattern matches nothing (validate reports that)."""
        found = _by_benchmark(self, lambda path: set(), lambda name: set())
        return None if found is None else list(found)

    def item_categories(self) -> dict[str, set[str]] | None:
        """Each benchmark's item categories: its TSV's `category` column (`tsv_categories`), the toy world's as its
        builders write them; None while a pattern matches nothing or a TSV cannot be read (validate reports both)."""
        from mixlab.evaluation.tsv import tsv_categories

        return _by_benchmark(self, tsv_categories, _toy_categories)

    def tsv_files(self, ctx: RunContext) -> list[Path]:
        files: list[Path] = []
        for pattern in self.options.paths:
            matched = sorted(Path(p) for p in glob.glob(str(self.resolve(pattern))))
            if not matched:
                raise UserError(f"evaluator {self.label!r}: no file matches {pattern!r}. Check `paths`.")
            files += [f for f in matched if f.resolve() not in {g.resolve() for g in files}]  # two patterns, one file
        if self.options.toyworld is not None:
            manifest = self.options.toyworld.ensure(ctx, self.base_dir)
            root = Path(manifest["_dir"])
            files += [root / b["tsv"] for b in manifest["benchmarks"].values()]
        if clash := stem_clash(files):
            raise UserError(f"evaluator {self.label!r}: {clash}")
        if self.options.only is not None:
            unknown = set(self.options.only) - {f.stem for f in files}
            if unknown:
                raise UserError(
                    f"evaluator {self.label!r}: `only` names {sorted(unknown)}, but the benchmarks are "
                    f"{', '.join(f.stem for f in files)}. Fix `only`."
                )
            files = [f for f in files if f.stem in self.options.only]
        if not files:
            raise UserError(f"evaluator {self.label!r}: no benchmarks. Set `paths` or `toyworld`.")
        return files

    def evaluate(self, model_dir: Path, work_dir: Path, ctx: RunContext) -> Evaluation:
        from mixlab.evaluation.rules import first_rows, order_blind, rate
        from mixlab.evaluation.tsv import detect_kind, lacks_image, load_tsv
        from mixlab.outcomes import ItemOutcomes

        files = self.tsv_files(ctx)
        model_hash = checkpoint_hash(model_dir)
        o = self.options
        settings = {"mode": o.mode, "max_new_tokens": o.max_new_tokens, "options_as": o.options_as}
        loaded: tuple[Any, Any] | None = None
        metrics: Metrics = {}
        outcomes: dict[str, ItemOutcomes] = {}
        for tsv in files:
            rows = load_tsv(tsv)
            try:
                kind = detect_kind(tsv.stem, list(rows[0]) if rows else [], [str(r.get("answer", "")) for r in rows])
            except UserError as e:
                raise UserError(f"{tsv}: {e}") from None
            rows = first_rows(kind, rows, o.limit)
            asked = [r for r in rows if not lacks_image(r)]  # VLMEvalKit skips rows without an image
            key = {"model": model_hash, "benchmark": tsv.name, "content": file_digest(tsv), **settings}
            cache = JsonlCache(ctx.cache_dir("predictions", key) / "predictions.jsonl")
            todo = [r for r in asked if str(r["index"]) not in cache.items]
            if todo:
                if loaded is None:
                    from mixlab.models.loading import load_model

                    loaded = load_model(model_dir)
                try:
                    self.predict(loaded, kind, todo, cache, ctx, tsv.stem)
                except UserError as e:  # a row the model cannot read (a bad base64 image): name the file too
                    raise UserError(f"{tsv}: {e}") from None
            for r in asked:
                r["prediction"] = cache.items[str(r["index"])]
            try:
                scored = rate(kind, rows, extraction=o.extraction)
            except UserError as e:  # the rule names the benchmark kind, not the file
                raise UserError(f"{tsv}: {e} Fix the benchmark file.") from None
            metrics[tsv.stem] = scored.metrics
            outcomes[tsv.stem] = order_blind(scored.outcomes) if self.by_text(kind) else scored.outcomes
            with open(work_dir / f"{tsv.stem}.jsonl", "w") as f:
                for r in asked:
                    f.write(json.dumps({k: v for k, v in r.items() if k != "image"}) + "\n")
        return Evaluation(metrics, outcomes)

    def by_text(self, kind: str) -> bool:
        """Whether multiple choice of this kind is scored by option text after the bare question (blind to the
        options' order, so circular copies are asked alike)."""
        from mixlab.evaluation.tsv import MCQ_KINDS

        return self.options.mode == "likelihood" and self.options.options_as == "text" and kind in MCQ_KINDS

    def predict(
        self,
        loaded: tuple[Any, Any],
        kind: str,
        rows: list[dict[str, Any]],
        cache: JsonlCache,
        ctx: RunContext,
        name: str,
    ) -> None:
        from mixlab.evaluation.tsv import build_cloze_prompt, build_prompt, decode_image, options
        from mixlab.models.predict import PromptItem, choose, generate

        model, processor = loaded
        by_text = self.by_text(kind)
        prompt = build_cloze_prompt if by_text else (lambda r: build_prompt(r, kind))
        chunk = self.options.batch_size * 4  # write predictions to the cache every few batches
        with ctx.progress(f"eval {name}", len(rows)) as advance:
            for start in range(0, len(rows), chunk):
                part = rows[start : start + chunk]
                items = [
                    PromptItem(prompt(r), decode_image(r["image"], r["index"]) if r.get("image") else None)
                    for r in part
                ]
                if self.options.mode == "generate":
                    answers = generate(
                        model,
                        processor,
                        items,
                        max_new_tokens=self.options.max_new_tokens,
                        batch_size=self.options.batch_size,
                    )
                else:
                    letters = [list(options(r)) or ["Yes", "No"] for r in part]
                    choices = [list(options(r).values()) for r in part] if by_text else letters
                    picked = choose(model, processor, items, choices, batch_size=self.options.batch_size)
                    answers = [c[i] for c, i in zip(letters, picked, strict=True)]
                cache.add([(str(r["index"]), a) for r, a in zip(part, answers, strict=True)])
                advance(len(part))

    def check(self) -> list[tuple[tuple, str]]:
        """Every `paths` pattern matches TSV files; `only` names benchmarks that exist."""
        from mixlab.registry import did_you_mean

        o = self.options
        problems: list[tuple[tuple, str]] = []
        stems: list[str] = []
        seen: list[Path] = []
        complete = True
        for i, pattern in enumerate(o.paths):
            matched = sorted(Path(p) for p in glob.glob(str(self.resolve(pattern))))
            if not matched:
                problems.append((("paths", i), f"no file matches {pattern!r} (relative to the recipe): fix the path."))
                complete = False
            matched = [p for p in matched if p.resolve() not in {s.resolve() for s in seen}]  # two patterns, one file
            seen += matched
            for path in matched:
                if path.is_dir():
                    problems.append((("paths", i), f"{path} is a folder: give the .tsv files, e.g. '{path}/*.tsv'."))
                elif path.suffix.lower() != ".tsv":
                    problems.append((("paths", i), f"{path} is not a .tsv file: give VLMEvalKit TSV benchmarks."))
                elif found := tsv_problem(path):
                    problems.append((("paths", i), found))
                stems.append(path.stem)
        if clash := stem_clash([p for p in seen if p.is_file()]):
            problems.append((("paths",), clash))
        if o.toyworld is not None:
            stems += TOY_BENCHMARKS
            if found := o.toyworld.dir_problem(self.base_dir):
                problems.append((("toyworld", "dir"), found))
        elif not o.paths:
            problems.append(((), "no benchmarks: set `paths` (VLMEvalKit TSVs) or `toyworld`."))
        if o.only is not None and not o.only:
            problems.append((("only",), "is empty: name the benchmarks to keep, or drop `only` to keep them all."))
        for i, name in enumerate(o.only or []):
            if complete and name not in stems:
                problems.append(
                    (("only", i), f"no benchmark named {name!r}.{did_you_mean(name, stems)} Benchmarks are file stems.")
                )
        return problems


def tsv_problem(path: Path) -> str | None:
    """What keeps a benchmark TSV from being scored (every row scoring needs, each image readable to its end), or
    None: checked before any training."""
    from mixlab.evaluation.rules import check_rateable
    from mixlab.evaluation.tsv import check_image, detect_kind, lacks_image, load_tsv

    try:
        rows = load_tsv(path)
        if not rows:
            raise UserError(f"{path}: no rows below the header: add the benchmark's questions.")
        kind = detect_kind(path.stem, list(rows[0]), [str(r.get("answer", "")) for r in rows])
        check_rateable(kind, rows)
        opened: set[str] = set()  # rows that name another row's image share its string
        for r in rows:
            if not lacks_image(r) and r.get("image") and r["image"] not in opened:
                check_image(r["image"], r["index"])
                opened.add(r["image"])
    except UserError as e:
        message = str(e)
        return message if str(path) in message else f"{path}: {message}"
    return None


def _by_benchmark(
    evaluator: Benchmarks, of_tsv: Callable[[Path], set[str] | None], of_toy: Callable[[str], set[str]]
) -> dict[str, set[str]] | None:
    """Benchmark name → of_tsv(its TSV) for the files `paths` matches (the first file of a stem), and → of_toy(its
    name) for the toy world's benchmarks, as `only` keeps them; None where a pattern matches nothing or `of_tsv` gives
    None."""
    found: dict[str, set[str]] = {}
    for pattern in evaluator.options.paths:
        matched = [Path(p) for p in glob.glob(str(evaluator.resolve(pattern)))]
        if not matched:
            return None
        for path in matched:
            if path.stem not in found:
                if (value := of_tsv(path)) is None:
                    return None
                found[path.stem] = value
    if evaluator.options.toyworld is not None:
        found |= {name: of_toy(name) for name in TOY_BENCHMARKS}
    only = evaluator.options.only
    return {name: value for name, value in found.items() if only is None or name in only}


def _toy_categories(name: str) -> set[str]:
    from mixlab.toyworld.benchmarks import CATEGORIES

    return set(CATEGORIES[name])


@hookimpl
def register_evaluators(register: Register) -> None:
    register(Benchmarks)


def stem_clash(files: list[Path]) -> str | None:
    """Two different files with one file name stem would report under one benchmark name: the message, or None."""
    by_stem: dict[str, Path] = {}
    for f in files:
        if f.stem in by_stem and by_stem[f.stem].resolve() != f.resolve():
            return (
                f"{by_stem[f.stem]} and {f} are both benchmark {f.stem!r} (a benchmark is named by its file name), so "
                "one would hide the other: rename one file."
            )
        by_stem.setdefault(f.stem, f)
    return None
