"""The recipe's core sections as pydantic models: [run] (with [run.executor]), [model] (with [model.tiny] and
[model.align]) and [arms.<name>]. Plugin sections are validated by each plugin's own Options model (mixlab.recipe)."""

from __future__ import annotations

import builtins
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from mixlab.components import MAX_SEED, Component, Options, Seed

MAX_NAME = 100
_DEVICE = re.compile(r"^(\d+|GPU-[0-9A-Za-z-]+|MIG-[0-9A-Za-z/-]+)$")


class ExecutorSection(Options):
    """[run.executor]: where trainings run. Results are identical whichever is chosen."""

    type: Literal["inline", "local", "submitit"] = Field(
        "inline",
        description='"inline": in the mixlab process; "local": worker processes on this machine; '
        '"submitit": jobs on a Slurm cluster (or submitit\'s local cluster) through submitit.',
    )
    workers: int = Field(1, ge=1, le=1024, description="Trainings that may run at once (Individual Select candidates).")
    devices: list[str] | None = Field(
        None,
        description='GPU sets, one per worker, as CUDA_VISIBLE_DEVICES values (e.g. ["0,1", "2,3"]); '
        "sets workers to their number. None: no GPU pinning.",
    )
    processes: int = Field(
        1,
        ge=1,
        le=1024,
        description="Processes per training (torchrun, data parallel; DeepSpeed ZeRO if the trainer sets "
        "`deepspeed`), and data-parallel shards per scorer.",
    )
    cluster: Literal["slurm", "local", "debug"] | None = Field(
        None, description='submitit: "slurm", "local" or "debug"; None lets submitit pick (Slurm when present).'
    )
    parameters: dict[str, Any] = Field(
        default_factory=dict,
        description="submitit: passed to update_parameters (timeout_min, slurm_partition, gpus_per_node, "
        "cpus_per_task, mem_gb, slurm_additional_parameters, ...).",
    )

    @field_validator("devices")
    @classmethod
    def _devices(cls, devices: list[str] | None) -> list[str] | None:
        seen: set[str] = set()
        for i, value in enumerate(devices or []):
            gpus = [g.strip() for g in value.split(",")]
            bad = [g for g in gpus if not _DEVICE.match(g)]
            if bad:
                raise ValueError(
                    f"devices[{i}] = {value!r} is not a CUDA_VISIBLE_DEVICES value: give GPU numbers separated by "
                    'commas, e.g. "0" or "0,1"'
                )
            twice = sorted(seen.intersection(gpus)) or sorted({g for g in gpus if gpus.count(g) > 1})
            if twice:
                raise ValueError(
                    f"GPU {twice[0]} is listed twice in `devices`: give each worker its own GPUs (disjoint sets)"
                )
            seen.update(gpus)
        return devices

    @model_validator(mode="after")
    def _consistent(self) -> ExecutorSection:
        if self.devices is not None:
            if not self.devices:
                raise ValueError("`devices` is empty: list one CUDA_VISIBLE_DEVICES value per worker, or drop it")
            self.workers = len(self.devices)
        if self.type != "submitit" and (self.cluster or self.parameters):
            raise ValueError('`cluster` and `parameters` are submitit settings: set type = "submitit"')
        return self

    @property
    def remote(self) -> bool:
        """Whether trainings leave the pipeline's process."""
        return self.type != "inline" or self.processes > 1

    def for_shards(self) -> ExecutorSection:
        """How scoring shards run: `processes` single-process jobs at once, each on one GPU of `devices`."""
        gpus = [g for d in self.devices for g in d.split(",")][: self.processes] if self.devices else None
        kind = "local" if self.type == "inline" else self.type
        return ExecutorSection(
            type=kind, workers=self.processes, devices=gpus, cluster=self.cluster, parameters=self.parameters
        )


class RunSection(Options):
    """[run]: settings of the whole run."""

    name: str = Field(
        description="Run name; the default output directory is runs/<name>: a plain folder name (no '/', not '..', "
        f"at most {MAX_NAME} characters)."
    )
    seed: Seed = Field(
        0,
        description="Seed for every random choice (data order, init, sampling); the first "
        "training seed when `seeds` is not given.",
    )
    seeds: list[int] | int | None = Field(
        None,
        description="Training replicates: a list of seeds (e.g. [0, 1, 2]) or a count n (seeds seed..seed+n-1). Every "
        "training (arms, Individual Select rounds, soup ingredients) runs once per seed; default: [seed].",
    )
    compare_to: str | None = Field(
        None, description="The arm every other arm is compared with (difference, interval); default: the first arm."
    )
    select_on: Literal["all", "dev"] = Field(
        "all",
        description='"dev": selectors and mergers decide on a held-out dev part of each benchmark (by item cluster) '
        'and arms are reported on the rest (test); "all": both use every item.',
    )
    dev_fraction: float = Field(0.5, gt=0, lt=1, description='With select_on = "dev": the share of clusters in dev.')
    weights: dict[str, Annotated[float, Field(ge=0, allow_inf_nan=False)]] = Field(
        default_factory=dict, description="Benchmark → weight (≥ 0) in an arm's average score (default 1 each)."
    )
    exclude: list[str] = Field(default_factory=list, description="Benchmarks left out of the average score.")
    output_dir: str | None = Field(None, description="Run directory (relative to the working directory).")
    executor: ExecutorSection = Field(
        default_factory=ExecutorSection,
        description="Where trainings run ([run.executor]); results do not depend on it.",
    )

    @field_validator("name")
    @classmethod
    def _safe_name(cls, name: str) -> str:
        if not name.strip():
            raise ValueError('the run name is empty: give a short folder name, e.g. name = "baseline"')
        if len(name) > MAX_NAME:
            raise ValueError(f"the run name is {len(name)} characters long: keep it to at most {MAX_NAME}")
        if any(c in name for c in "/\\") or name in (".", "..") or name != name.strip():
            raise ValueError(
                "the run name becomes the folder runs/<name>: use no '/' or '\\', no leading or trailing spaces, "
                "and not '.' or '..' (set `output_dir` to choose another place)"
            )
        if any(ord(c) < 32 or ord(c) == 127 for c in name):
            raise ValueError("the run name holds a control character (NUL, tab, newline, ...): remove it")
        return name

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, seeds: list[int] | int | None) -> list[int] | int | None:
        if isinstance(seeds, int):
            if not 1 <= seeds <= 64:
                raise ValueError(f"`seeds` = {seeds} replicates: give a count from 1 to 64, or a list of seeds")
        elif seeds is not None:
            if not 1 <= len(seeds) <= 64:
                raise ValueError(f"`seeds` lists {len(seeds)} seeds: give 1 to 64")
            bad = [s for s in seeds if not 0 <= s <= MAX_SEED]
            if bad:
                raise ValueError(f"seed {bad[0]} is out of range: use integers from 0 to 2**32 - 1")
            twice = sorted({s for s in seeds if seeds.count(s) > 1})
            if twice:
                raise ValueError(f"seed {twice[0]} is listed twice in `seeds`: give each replicate its own seed")
        return seeds

    @field_validator("output_dir")
    @classmethod
    def _output_dir(cls, value: str | None) -> str | None:
        if value is not None and (not value.strip() or "\0" in value):
            raise ValueError(
                "`output_dir` must be a folder path (not empty, no NUL character): give one, or drop the key"
            )
        return value

    @model_validator(mode="after")
    def _seed_range(self) -> RunSection:
        if isinstance(self.seeds, int) and self.seed + self.seeds - 1 > MAX_SEED:
            raise ValueError(f"seeds {self.seed}..{self.seed + self.seeds - 1} go past 2**32 - 1: lower `seed`")
        return self

    @property
    def seed_list(self) -> list[int]:
        """The training seeds: `seeds` as given, n seeds from `seed`, or [seed]."""
        if self.seeds is None:
            return [self.seed]
        if isinstance(self.seeds, int):
            return list(range(self.seed, self.seed + self.seeds))
        return list(self.seeds)


class TinyModel(Options):
    """[model.tiny]: the size of the tiny LLaVA built from config."""

    image_size: int = Field(64, ge=8, le=1024, description="Image side in pixels.")
    patch_size: int = Field(8, ge=1, le=1024, description="Vision patch side; must divide image_size.")
    vision_hidden: int = Field(128, ge=8, le=8192, description="Vision tower width; a multiple of heads.")
    text_hidden: int = Field(128, ge=8, le=8192, description="Language model width; a multiple of heads.")
    layers: int = Field(2, ge=1, le=64, description="Layers of the vision tower and of the language model.")
    heads: int = Field(4, ge=1, le=128, description="Attention heads.")
    vocab_size: int = Field(512, ge=300, le=262144, description="Tokenizer size (byte-level BPE: at least 300).")
    tie_embeddings: bool = Field(
        False,
        description="Share the language model's input and output word embeddings (docs/toyworld.md, Learnability).",
    )
    vision_pretrain_steps: int = Field(
        600,
        ge=0,
        le=1_000_000,
        description="Supervised pretraining steps of the vision tower on labelled toy scenes (the tiny stand-in "
        "for CLIP; docs/toyworld.md). 0: a random-init tower.",
    )
    language_pretrain_steps: int = Field(
        1500,
        ge=0,
        le=1_000_000,
        description="Text-only pretraining steps of the language model on reading questions about described toy "
        "scenes (the tiny stand-in for Vicuna; docs/toyworld.md). 0: a random-init language model.",
    )

    @model_validator(mode="after")
    def _shape(self) -> TinyModel:
        if self.image_size % self.patch_size:
            raise ValueError(
                f"patch_size {self.patch_size} does not divide image_size {self.image_size}: choose sizes such as "
                "image_size = 64, patch_size = 8"
            )
        if (self.image_size // self.patch_size) ** 2 > 4096:
            raise ValueError(
                f"image_size / patch_size = {self.image_size // self.patch_size} makes "
                f"{(self.image_size // self.patch_size) ** 2} image tokens per image (at most 4096): raise patch_size"
            )
        for key in ("vision_hidden", "text_hidden"):
            if getattr(self, key) % self.heads:
                raise ValueError(
                    f"{key} {getattr(self, key)} is not a multiple of heads {self.heads}: choose heads that divide it"
                )
        return self


class AlignSection(Options):
    """[model.align] (or an arm's `align`): train the unaligned base model once on these sources (cached)."""

    sources: list[str] = Field(min_length=1, description="Sources to align on (e.g. captions).")
    selector: str | None = Field(
        None, description="A [selectors.<name>] section choosing from the alignment pool (default: all of it)."
    )
    trainer: dict[str, Any] = Field(default_factory=dict, description="Trainer options overridden for alignment.")


class ModelSection(Options):
    """[model]: the base model every arm fine-tunes."""

    preset: Literal["tiny"] | None = Field(None, description='"tiny": a tiny LLaVA built from config (no download).')
    path: str | None = Field(None, description="A local llava-hf format model directory.")
    tiny: TinyModel = Field(default_factory=TinyModel)
    align: AlignSection | None = None

    @model_validator(mode="after")
    def _one_model(self) -> ModelSection:
        if (self.preset is None) == (self.path is None):
            raise ValueError('give exactly one of `preset = "tiny"` or `path = "<model dir>"`')
        return self


class ArmSection(Options):
    """[arms.<name>]: one training set to compare: sources, an optional selector, then train and evaluate."""

    sources: list[str] = Field(min_length=1, description="Sources whose samples form the arm's pool.")
    selector: str | None = Field(None, description="A [selectors.<name>] section choosing from that pool.")
    trainer: dict[str, Any] = Field(default_factory=dict, description="Trainer options overridden for this arm.")
    align: AlignSection | None = Field(
        None,
        description="The arm's own alignment: the unaligned base model aligned on these (selected) sources, instead "
        "of [model.align]'s model; the arm's trainings start from it.",
    )


@dataclass
class Section:
    """A validated plugin section: its label, plugin class, options and core keys."""

    label: str
    type: str
    cls: builtins.type[Component]  # builtins.: the field `type` above shadows the builtin here
    options: BaseModel
    core: dict[str, Any]
    raw: dict[str, Any]
    base_dir: Path

    def build(self) -> Any:
        return self.cls(self.options, self.label, self.base_dir)
