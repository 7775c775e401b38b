"""Print docs/results.md's tables from one or more report.json files of the same recipe (e.g. two seeds).

Per arm (and the soups): the mean over the reports of each benchmark's score and of the average score, the share of
noisy samples trained on, and the selection's removal precision/recall of noisy samples. Then Individual Select's
verdicts per report, and for a perplexity scorer the noisy samples a lowest-50% cut would remove.

    python scripts/results_table.py runs/study/report.json runs/study-seed1/report.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from statistics import mean


def fmt(values: list[float]) -> str:
    if not values:
        return "-"
    text = f"{mean(values):.1f}"
    return text + (f" ({', '.join(f'{v:.1f}' for v in values)})" if len(values) > 1 else "")


def rows(report: dict) -> dict[str, dict]:
    out = dict(report["arms"])
    if "soup" in report:
        soup = report["soup"]
        out[f"soup ({soup['method']})"] = soup
        if "uniform" in soup.get("info", {}):
            out["soup (uniform)"] = soup["info"]["uniform"]
    return out


def main(paths: list[str]) -> None:
    reports = [json.loads(Path(p).read_text()) for p in paths]
    names = list(rows(reports[0]))
    benches = sorted({b for r in reports for a in rows(r).values() for b in a.get("metrics", {})})
    print("| arm | samples | " + " | ".join(benches) + " | score | noisy share | noisy removed (precision / recall) |")
    print("|---" * (len(benches) + 5) + "|")
    for name in names:
        arms = [rows(r)[name] for r in reports if name in rows(r)]
        cells = [fmt([a["metrics"][b]["score"] for a in arms if b in a.get("metrics", {})]) for b in benches]
        truth = [a.get("ground_truth", {}) for a in arms]
        share = fmt([100 * t["noisy_fraction"] for t in truth if "noisy_fraction" in t])
        removed = [t["removed_noisy"] for t in truth if "removed_noisy" in t]
        rm = " / ".join(fmt([100 * (x[k] or 0) for x in removed]) for k in ("precision", "recall")) if removed else "-"
        n = arms[0].get("n_samples", "")
        print(f"| {name} | {n} | " + " | ".join(cells) + f" | **{fmt([a['score'] for a in arms])}** | {share} | {rm} |")
    for path, report in zip(paths, reports, strict=True):
        block = report.get("individual_select")
        if block:
            print(f"\nIndividual Select ({path}):")
            for r in block["rounds"]:
                verdicts = ", ".join(
                    f"{c['source']} {c['delta']:+.1f} {'kept' if c['kept'] else 'rejected'}" for c in r["candidates"]
                )
                print(f"- {r['category']}: baseline {r['baseline_score']:.1f}" + (f"; {verdicts}" if verdicts else ""))
        soup = report.get("soup", {}).get("info", {})
        if soup.get("steps"):
            print(f"\nGreedy soup ({path}): ingredients {soup['ingredient_scores']}; steps {soup['steps']}")
        perplexity_cut(Path(path).parent)


def perplexity_cut(run_dir: Path, keep: float = 0.5) -> None:
    """From a perplexity scorer's saved scores: the share of noisy samples a lowest-`keep` cut removes."""
    import numpy as np

    from mixlab.store import SAMPLES_FILE, load_samples

    noisy: dict[str, bool] = {}
    for stage in run_dir.glob("stages/source_*"):
        if (stage / SAMPLES_FILE).exists():
            noisy |= {s["id"]: bool(s.get("noisy")) for s in load_samples(stage / SAMPLES_FILE)}
    for scores in run_dir.glob("stages/score_*/scores.npz"):
        data = np.load(scores)
        if "ppl" not in data:
            continue
        ids, ppl = list(data["__ids__"]), data["ppl"]
        order = np.argsort(ppl, kind="stable")
        kept = {ids[i] for i in order[: int(round(keep * len(ids)))]}
        bad = [i for i in ids if noisy.get(i)]
        removed = sum(1 for i in bad if i not in kept)
        print(
            f"\n{scores.parent.name}: keeping the lowest {keep:.0%} of {len(ids)} by ppl removes {removed} of "
            f"{len(bad)} noisy samples ({removed / max(1, len(bad)):.1%})"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
