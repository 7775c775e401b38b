"""``benchmarks``: VLMEvalKit-format TSV benchmarks (MME, MMBench, SEED, ScienceQA, any MCQ or yes/no),
answered by option likelihood or greedy generation, scored by VLMEvalKit's rules, predictions cached per sample."""

from __future__ import annotations

import glob
import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from mixlab import hookimpl
from mixlab.components import Evaluator, Metrics, Options
from mixlab.errors import UserError
from mixlab.plugins.sources.toyworld import ToyWorldParams


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
    limit: int | None = Field(None, ge=1, description="Evaluate only the first N rows of each benchmark.")
    only: list[str] | None = Field(None, description="Keep only these benchmarks (file stems, e.g. SEED_toy).")


def checkpoint_hash(model_dir: Path) -> str:
    """Content hash of a checkpoint: small files whole, large weight files by size + first and last 4 MiB."""
    h = hashlib.sha256()
    for f in sorted(p for p in Path(model_dir).rglob("*") if p.is_file()):
        h.update(f"{f.relative_to(model_dir)}:{f.stat().st_size}".encode())
        with open(f, "rb") as fh:
            if f.stat().st_size <= 64 << 20:
                h.update(fh.read())
            else:
                h.update(fh.read(4 << 20))
                fh.seek(-(4 << 20), 2)
                h.update(fh.read())
    return h.hexdigest()


class PredictionCache:
    """Per-sample predictions in a JSON-lines file keyed by sample index; appended as they come (resumable)."""

    def __init__(self, path: Path):
        self.path = path
        self.items: dict[str, str] = {}
        if path.exists():
            for line in path.read_text().splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:  # a line cut by a crash
                    continue
                self.items[str(record["index"])] = record["prediction"]

    def add(self, pairs: list[tuple[Any, str]]) -> None:
        with open(self.path, "a") as f:
            for index, prediction in pairs:
                self.items[str(index)] = prediction
                f.write(json.dumps({"index": index, "prediction": prediction}) + "\n")


class Benchmarks(Evaluator):
    name = "benchmarks"
    Options = BenchmarksOptions

    def tsv_files(self, ctx) -> list[Path]:
        files: list[Path] = []
        for pattern in self.options.paths:
            matched = sorted(Path(p) for p in glob.glob(str(self.resolve(pattern))))
            if not matched:
                raise UserError(f"evaluator {self.label!r}: no file matches {pattern!r}. Check `paths`.")
            files += matched
        if self.options.toyworld is not None:
            manifest = self.options.toyworld.ensure(ctx)
            root = Path(manifest["_dir"])
            files += [root / b["tsv"] for b in manifest["benchmarks"].values()]
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

    def evaluate(self, model_dir: Path, work_dir: Path, ctx) -> Metrics:
        from mixlab.evaluation.rules import score
        from mixlab.evaluation.tsv import detect_kind, load_tsv

        files = self.tsv_files(ctx)
        model_hash = checkpoint_hash(model_dir)
        o = self.options
        settings = {"mode": o.mode, "max_new_tokens": o.max_new_tokens, "options_as": o.options_as}
        loaded: tuple[Any, Any] | None = None
        metrics: Metrics = {}
        for tsv in files:
            rows = load_tsv(tsv)[: self.options.limit]
            kind = detect_kind(tsv.stem, list(rows[0]) if rows else [], [str(r.get("answer", "")) for r in rows])
            key = {"model": model_hash, "benchmark": tsv.name, "size": tsv.stat().st_size, **settings}
            cache = PredictionCache(ctx.cache_dir("predictions", key) / "predictions.jsonl")
            todo = [r for r in rows if str(r["index"]) not in cache.items]
            if todo:
                if loaded is None:
                    from mixlab.models.loading import load_model

                    loaded = load_model(model_dir)
                self.predict(loaded, kind, todo, cache, ctx, tsv.stem)
            for r in rows:
                r["prediction"] = cache.items[str(r["index"])]
            metrics[tsv.stem] = score(kind, rows)
            with open(work_dir / f"{tsv.stem}.jsonl", "w") as f:
                for r in rows:
                    f.write(json.dumps({k: v for k, v in r.items() if k != "image"}) + "\n")
        return metrics

    def predict(
        self, loaded: tuple[Any, Any], kind: str, rows: list[dict[str, Any]], cache: PredictionCache, ctx, name: str
    ) -> None:
        from mixlab.evaluation.tsv import MCQ_KINDS, build_cloze_prompt, build_prompt, decode_image, options
        from mixlab.models.predict import PromptItem, choose, generate

        model, processor = loaded
        by_text = self.options.mode == "likelihood" and self.options.options_as == "text" and kind in MCQ_KINDS
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
                cache.add([(r["index"], a) for r, a in zip(part, answers, strict=True)])
                advance(len(part))


@hookimpl
def register_evaluators(register):
    register(Benchmarks)
