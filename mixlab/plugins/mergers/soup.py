"""``soup``: uniform or greedy model soup (Wortsman et al. 2022) over the arms' checkpoints.

Uniform averages every ingredient. Greedy scores each ingredient with the recipe's evaluators, sorts them by that
aggregate score (best first, ties by name), starts the soup with the best, and adds each next ingredient only if
the uniform average of the soup's members plus it scores at least as well (``strict``: strictly better). The soup
never scores below its best ingredient. Greedy scores candidates through ``ctx.evaluate``, which with
``[run] select_on = "dev"`` gives the dev half of each benchmark, so the soup is not tuned on what is reported.

LoRA adapter folders are merged into their base first; ingredients must pass ``check_compatible`` (same
architecture, tensors, dtypes, and initialisation by cosine similarity, against the recipe's base model too when
there is one). Averaging streams one tensor at a time (``mixlab.merging``).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from mixlab import hookimpl
from mixlab.components import Merger, MergeResult, Options, RunContext
from mixlab.errors import UserError
from mixlab.hookspecs import Register


class SoupOptions(Options):
    method: Literal["uniform", "greedy"] = Field(
        "greedy", description="`uniform`: average all ingredients; `greedy`: add them best first while they help."
    )
    strict: bool = Field(
        False,
        description="Greedy: keep an ingredient only if the score rises (>, as the model-soups code does); "
        "false also keeps ingredients that leave it equal (>=).",
    )
    compare_uniform: bool = Field(
        True, description="Greedy: also build and score the uniform soup of all ingredients, reported beside it."
    )
    min_cosine: float = Field(
        0.2,
        ge=-1,
        le=1,
        description="Refuse ingredient pairs (and ingredient vs base model) whose largest weight matrices have a "
        "lower cosine similarity: different initialisations. -1 turns the check off.",
    )


class SoupMerger(Merger):
    name = "soup"
    Options = SoupOptions
    options: SoupOptions

    def evaluates_models(self) -> bool:
        return self.options.method == "greedy"  # a uniform soup averages without judging

    def merge(self, ingredients: dict[str, Path], work_dir: Path, ctx: RunContext) -> MergeResult:
        from mixlab.merging import soup as core

        o = self.options
        if not ingredients:
            raise UserError(f"soup {self.label!r}: no ingredients (the soup's `arms` is empty)")
        work_dir = Path(work_dir)
        resolved = self._resolve(ingredients, work_dir)
        base = _base_model(ctx)
        checks = core.check_compatible(resolved, base=base, min_cosine=o.min_cosine)
        model_dir = work_dir / "model"
        _remove(model_dir)
        cosines = checks["cosine"].values()
        info: dict[str, Any] = {"method": o.method, "lowest_cosine": round(min(cosines), 4) if cosines else None}
        if o.method == "uniform":
            total = len(core.Checkpoint.open(next(iter(resolved.values()))).tensors)
            with ctx.progress(f"soup {self.label}: averaging {len(resolved)} models", total) as advance:
                core.average(list(resolved.values()), model_dir, on_tensor=advance)
            kept = list(resolved)
            info["order"] = kept
        else:
            kept, greedy_info = self._greedy(resolved, work_dir, model_dir, ctx)
            info.update(greedy_info)
            if o.compare_uniform and len(resolved) > 1:
                uniform_dir = work_dir / "uniform"
                _remove(uniform_dir)
                core.average(list(resolved.values()), uniform_dir)
                metrics = ctx.evaluate(uniform_dir, f"{self.label}/uniform")
                info["uniform"] = {"score": round(float(ctx.aggregate(metrics)), 3), "metrics": metrics}
        _remove(work_dir / "candidates")
        _remove(work_dir / "lora_merged")
        ctx.log(f"soup {self.label}: kept {len(kept)} of {len(resolved)}: {', '.join(kept)}")
        return MergeResult(model_dir=model_dir, kept=kept, info=info)

    def _resolve(self, ingredients: dict[str, Path], work_dir: Path) -> dict[str, Path]:
        """Ingredient name → full model folder (LoRA adapters merged into their base under work_dir)."""
        from mixlab.merging import soup as core

        resolved: dict[str, Path] = {}
        for i, (name, path) in enumerate(ingredients.items()):
            path = Path(path)
            if core.is_adapter(path):
                out = work_dir / "lora_merged" / f"{i}-{_safe(name)}"
                _remove(out)
                out.parent.mkdir(parents=True, exist_ok=True)
                path = core.merge_lora(path, out)
            resolved[name] = path
        return resolved

    def _greedy(
        self, resolved: dict[str, Path], work_dir: Path, model_dir: Path, ctx: RunContext
    ) -> tuple[list[str], dict[str, Any]]:
        from mixlab.merging import soup as core

        o = self.options
        scores: dict[str, float] = {}
        steps: list[dict[str, Any]] = []
        with ctx.progress(f"soup {self.label}: greedy", 2 * len(resolved) - 1) as advance:
            for name, path in resolved.items():
                scores[name] = float(ctx.aggregate(ctx.evaluate(path, f"{self.label}/{name}")))
                ctx.log(f"soup {self.label}: ingredient {name} scores {scores[name]:.3f}")
                advance()
            order = sorted(resolved, key=lambda n: (-scores[n], n))
            kept, best = [order[0]], scores[order[0]]
            current: Path | None = None  # the accepted candidate folder; None while the soup is one ingredient
            for i, name in enumerate(order[1:], start=1):
                candidate = work_dir / "candidates" / str(i)
                _remove(candidate)
                candidate.parent.mkdir(parents=True, exist_ok=True)
                # the uniform average of the members plus the new one, θ' = (n·θ_soup + θ_new)/(n+1), built from
                # the members in one float32 pass: no re-rounding of the soup in 16-bit dtypes at each step
                core.average([resolved[k] for k in [*kept, name]], candidate)
                score = float(ctx.aggregate(ctx.evaluate(candidate, f"{self.label}/try{i}")))
                accepted = score > best if o.strict else score >= best
                steps.append({"ingredient": name, "score": score, "accepted": accepted})
                ctx.log(
                    f"soup {self.label}: + {name} scores {score:.3f} vs {best:.3f}: "
                    f"{'kept' if accepted else 'dropped'}",
                )
                if accepted:
                    kept.append(name)
                    best = score
                    if current is not None:
                        _remove(current)
                    current = candidate
                else:
                    _remove(candidate)
                advance()
        if current is None:
            core.average([resolved[kept[0]]], model_dir)
        else:
            current.rename(model_dir)
        info = {
            "strict": o.strict,
            "order": order,
            "ingredient_scores": scores,
            "steps": steps,
            "score": best,
        }
        return kept, info


def _base_model(ctx: RunContext) -> Path | None:
    """The recipe's base model when the context has one with safetensors weights, else None."""
    from mixlab.merging.soup import weight_files

    try:
        base = Path(ctx.base_model)
        weight_files(base)
    except (RuntimeError, UserError):  # no base model yet, or one without safetensors weights
        return None
    return base if (base / "config.json").is_file() else None


def _remove(path: Path) -> None:
    for p in (path, path.with_name(path.name + ".partial")):
        if p.is_dir():
            shutil.rmtree(p)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "ingredient"


@hookimpl
def register_mergers(register: Register) -> None:
    register(SoupMerger)
