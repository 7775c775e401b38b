"""``mixlab data inspect``: what is in the data before anyone trains on it (counts, images, lengths, label masks)."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from mixlab.data import Sample
from mixlab.errors import UserError

console = Console(emoji=False)


def _recipe_samples(path: Path, only: list[str]) -> tuple[list[Sample], Any, int, int | None]:
    """A recipe's sources (loaded through the run's cache; ``only`` checked against them), its base model's processor
    and context length, and the trainer's max_length."""
    from mixlab.models.loading import load_model
    from mixlab.pipeline import Run
    from mixlab.progress import quiet_libraries
    from mixlab.recipe import load_recipe

    quiet_libraries()
    recipe = load_recipe(path)
    if recipe.model.preset == "tiny":  # only the processor is needed: the same tokenizer, no pretraining
        recipe.model.tiny.vision_pretrain_steps = recipe.model.tiny.language_pretrain_steps = 0
    run = Run(recipe, show_progress=False)
    with run.store.lock(), run.board:  # it writes stages: not beside a `mixlab run` in the same folder
        run.load_sources()
        check_sources(only, list(run.samples_of_source))
        model_dir = run.build_base_model()
    model, processor = load_model(model_dir)
    context = int(getattr(model.config.get_text_config(), "max_position_embeddings", 0) or 0)
    max_length = getattr(recipe.trainer.options, "max_length", None)
    samples = [s for name in run.samples_of_source for s in run.samples_of_source[name]]
    return samples, processor, context, max_length


def _json_samples(path: Path, image_root: Path | None) -> list[Sample]:
    from mixlab.records import collect, read_records_with_lines

    records, lines = read_records_with_lines(path)
    samples, skipped = collect(records, path, image_root or path.parent, "open", "skip", path.stem, lines)
    for message in skipped[:10]:
        console.print(f"[red]bad record[/] {message}", highlight=False)
    if skipped:
        console.print(
            f"[red]{len(skipped)} bad records[/] (missing or corrupt images, malformed conversations, repeated ids)"
        )
    return samples


def check_sources(only: list[str], known: list[str]) -> None:
    """Each --source names a source of the data (else the table would be silently empty)."""
    from mixlab.registry import did_you_mean

    unknown = [name for name in only if name not in known]
    if unknown:
        raise UserError(
            f"--source {unknown[0]}: no such source in the data.{did_you_mean(unknown[0], known)} Name one of: "
            f"{', '.join(known)}."
        )


def inspect_target(target: Path, only: list[str], preview: int, image_root: Path | None = None) -> None:
    if not target.exists():
        raise UserError(f"{target} not found. Give a recipe (.toml) or a LLaVA JSON file.")
    if target.is_dir():
        raise UserError(f"{target} is a folder: give a recipe (.toml) or a LLaVA JSON (.json, .jsonl) file.")
    if target.suffix.lower() not in (".toml", ".json", ".jsonl"):
        raise UserError(f"{target}: give a recipe (.toml) or a LLaVA JSON (.json, .jsonl) file, not {target.suffix!r}.")
    if image_root is not None and not image_root.is_dir():
        what = "is a file" if image_root.exists() else "does not exist"
        raise UserError(f"--image-root {image_root} {what}: give the folder the records' image paths start from.")
    processor, context, max_length = None, 0, None
    if target.suffix.lower() == ".toml":
        samples, processor, context, max_length = _recipe_samples(target, only)
    else:
        samples = _json_samples(target, image_root)
        check_sources(only, sorted({s["source"] for s in samples}))
    if only:
        samples = [s for s in samples if s["source"] in only]
    by_source: dict[str, list[Sample]] = {}
    for s in samples:
        by_source.setdefault(s["source"], []).append(s)
    table = Table(title=f"data in {target}")
    for col in (
        "source",
        "category",
        "samples",
        "with image",
        "missing images",
        "known noisy",
        "answer length (mean/max)",
    ):
        table.add_column(col)
    for name, group in by_source.items():
        missing = sum(1 for s in group if s["image"] and not Path(s["image"]).is_file())
        noisy = sum(1 for s in group if s.get("noisy"))
        lengths = [_answer_tokens(s, processor) for s in group]
        cats = sorted({s["category"] or "-" for s in group})
        table.add_row(
            name,
            ",".join(cats),
            str(len(group)),
            str(sum(1 for s in group if s["image"])),
            str(missing),
            str(noisy),
            f"{statistics.mean(lengths):.1f} / {max(lengths)}",
        )
    console.print(table)
    if processor is not None:
        _length_report(samples, processor, context, max_length)
    if processor is not None and preview:
        from mixlab.models.collator import mask_preview

        console.print("label mask preview: [bold green]trained[/] tokens, [dim]masked[/] tokens")
        for group in by_source.values():
            for s in group[:preview]:
                text = Text(f"{s['id']}: ")
                for token, trained in mask_preview(s, processor):
                    text.append(token, style="bold green" if trained else "dim")
                console.print(text)


def _answer_tokens(sample: Sample, processor: Any) -> int:
    answers = " ".join(t["value"] for t in sample["conversations"] if t["from"] == "gpt")
    if processor is None:
        return len(answers.split())
    return len(processor.tokenizer(answers, add_special_tokens=False)["input_ids"])


def _length_report(samples: list[Sample], processor: Any, context: int, max_length: int | None) -> None:
    """The longest sequences (text + image tokens), and the samples longer than the model's context."""
    from mixlab.models.sample_scores import image_token_count
    from mixlab.training.sft import sequence_lengths

    if not samples:
        return
    lengths = sequence_lengths(samples, processor, image_token_count(processor, samples))
    longest = max(range(len(samples)), key=lambda i: lengths[i])
    console.print(
        f"sequence length (tokens, estimated): mean {statistics.mean(lengths):.0f}, max {lengths[longest]} "
        f"({samples[longest]['id']}); model context {context or 'unknown'}, trainer max_length {max_length or 'none'}"
    )
    over = [i for i, n in enumerate(lengths) if context and n > context]
    if over and max_length is None:
        console.print(
            f"[red]{len(over)} samples are longer than the model's context of {context} tokens[/], e.g. "
            f"{samples[over[0]]['id']} ({lengths[over[0]]} tokens): training would stop on them. Set max_length = "
            f"{context} (or less) in [trainer] to truncate, or drop them.",
            highlight=False,
        )
