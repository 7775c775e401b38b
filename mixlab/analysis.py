"""After the arms have run: each arm's score with its interval, its difference to the ``compare_to`` arm, and each
benchmark's health (chance level, seed noise, signal across arms, the smallest difference it can detect)."""

from __future__ import annotations

from mixlab.decisions import Decisions
from mixlab.errors import UserError
from mixlab.results import ArmResult, RunResult
from mixlab.stats import Health, chance_level, health


def analyse(result: RunResult, decisions: Decisions, compare_to: str) -> None:
    """Fill in the arms' estimates and comparisons and the run's benchmark health (in place)."""
    arms = result.arms
    if compare_to not in arms:
        raise UserError(f"[run] compare_to = {compare_to!r} is not an arm of this run ({', '.join(arms)}).")
    reference = arms[compare_to]
    for arm in arms.values():
        arm.estimate = decisions.estimate(evaluations(arm))
        if arm.name != compare_to:
            arm.comparison = decisions.compare(evaluations(arm), paired(reference, arm))
            arm.compared_to = compare_to
    result.health = benchmark_health(arms)
    result.unsplit = sorted(decisions.unsplit)


def evaluations(arm: ArmResult) -> list:
    return [r.evaluation for r in arm.replicates]


def paired(reference: ArmResult, arm: ArmResult) -> list:
    """The reference arm's evaluations for the arm's seeds, in the same order."""
    by_seed = {r.seed: r.evaluation for r in reference.replicates}
    return [by_seed[r.seed] for r in arm.replicates]


def benchmark_health(arms: dict[str, ArmResult]) -> dict[str, Health]:
    """Per benchmark: its chance level (from the items' formats), noise, signal, SNR, MDD and the arms at chance."""
    out: dict[str, Health] = {}
    benches = list(dict.fromkeys(b for arm in arms.values() for b in arm.metrics))
    for bench in benches:
        outcomes = next(
            (
                r.evaluation.outcomes[bench]
                for a in arms.values()
                for r in a.replicates
                if bench in r.evaluation.outcomes
            ),
            None,
        )
        per_seed = {
            a.name: [r.evaluation.metrics[bench]["score"] for r in a.replicates if bench in r.evaluation.metrics]
            for a in arms.values()
        }
        estimates = {
            a.name: a.estimate.benchmarks[bench]
            for a in arms.values()
            if a.estimate is not None and bench in a.estimate.benchmarks
        }
        comparisons = [
            a.comparison.benchmarks[bench]
            for a in arms.values()
            if a.comparison is not None and bench in a.comparison.benchmarks
        ]
        chance = chance_level(outcomes) if outcomes is not None else float("nan")
        out[bench] = health(per_seed, chance, estimates=estimates, comparisons=comparisons)
    return out
