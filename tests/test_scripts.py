"""The analysis scripts the docs name, on small run folders written here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from mixlab.outcomes import OUTCOMES_FILE, ItemOutcomes, write_outcomes
from mixlab.store import Store

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"
CATEGORIES = ["attribute_recognition", "object_counting"]  # MMBench categories testing colour and count


def mmbench(right_colour: np.ndarray, right_count: np.ndarray) -> ItemOutcomes:
    """MMBench-style outcomes (one item per question) for 40 colour and 40 count questions."""
    correct = np.concatenate([right_colour, right_count])
    return ItemOutcomes(
        rule="mean",
        items=[str(i) for i in range(80)],
        clusters=[str(i) for i in range(80)],
        correct=correct,
        chance=np.full(80, 0.25),
        strata=[CATEGORIES[0]] * 40 + [CATEGORIES[1]] * 40,
        categories=[CATEGORIES[0]] * 40 + [CATEGORIES[1]] * 40,
    )


def write_run(run_dir: Path) -> None:
    """Arms baseline and color_noisy over three seeds: the noisy arm loses colour questions, count is the same."""
    rng = np.random.default_rng(0)
    store, stages, arms = Store(run_dir), [], {}
    for arm, colour_rate in (("baseline", 0.9), ("color_noisy", 0.4)):
        per_seed = {}
        for seed in (0, 1, 2):
            key = f"{arm}{seed}".ljust(12, "0")
            outcomes = mmbench(rng.random(40) < colour_rate, rng.random(40) < 0.7)
            score = 100 * float(outcomes.correct.mean())
            folder = store.stage_dir("eval", key)
            folder.mkdir(parents=True)
            write_outcomes(folder / OUTCOMES_FILE, {"MMBench_toy": outcomes})
            Store.finish(folder, {"metrics": {"MMBench_toy": {"score": score}}})
            stages.append({"name": f"eval:{arm}@seed{seed}", "key": key})
            per_seed[str(seed)] = {"score": score}
        arms[arm] = {"per_seed": per_seed}
    world = run_dir / "toyworld" / "w"  # the run's toy world: which toy category each benchmark item tests
    (world / "bench").mkdir(parents=True)
    (world / "bench" / "MMBench_toy.tsv").write_text(
        "index\tcategory\n" + "".join(f"{i}\t{CATEGORIES[i // 40]}\n" for i in range(80))
    )
    tests = {"attribute_recognition": "color", "object_counting": "count"}
    manifest = {"benchmarks": {"MMBench_toy": {"tsv": "bench/MMBench_toy.tsv", "n_rows": 80, "categories": tests}}}
    (world / "manifest.json").write_text(json.dumps(manifest))
    (run_dir / "recipe.toml").write_text('[run]\nname = "clean_vs_noisy"\nseeds = [0, 1, 2]\n')
    (run_dir / "report.json").write_text(json.dumps({"seeds": [0, 1, 2], "stages": stages, "arms": arms}))


def clean_vs_noisy(run_dir, floor: float) -> str:
    return subprocess.run(
        [sys.executable, str(SCRIPTS / "clean_vs_noisy.py"), str(run_dir), "--floor", str(floor)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def verdict_of(out: str, category: str) -> str:
    row = next(line for line in out.splitlines() if line.startswith(f"| {category} |"))
    return row.split("|")[5].strip()


def test_clean_vs_noisy_prints_each_effect_with_its_interval_against_the_floor(tmp_path):
    write_run(tmp_path)
    out = clean_vs_noisy(tmp_path, 1.0)
    assert "noise floor 1.00 (given); three times it: 3.00" in out
    header = next(line for line in out.splitlines() if line.startswith("| category |"))
    assert header.rstrip(" |").endswith("MMBench_toy")  # one column per benchmark after the average
    rows = [line for line in out.splitlines() if line.startswith("| color | baseline |")]
    assert len(rows) == 1 and "| count |" not in out  # only categories whose two arms ran
    average, verdict, mmbench_toy = (cell.strip() for cell in rows[0].split("|")[4:7])
    assert average == mmbench_toy  # a single benchmark: its effect is the average
    delta, low, high = (float(x.strip("[],")) for x in average.split())
    assert 15 < delta < 35 and low < delta < high  # 40 of 80 items drop from 90 % to 40 % right: 25 points
    assert 0 < low and verdict == ("yes, the whole interval" if low >= 3.0 else "the estimate only")
    own = next(line for line in out.splitlines() if line.startswith("| color | 40 |"))  # its 40 colour items only
    effect, own_low, own_high = (float(x.strip("[],")) for x in own.split("|")[3].split())
    assert 40 < effect < 60 and effect > 1.5 * delta and 0 < own_low < effect < own_high  # undiluted by the count items
    assert verdict_of(clean_vs_noisy(tmp_path, low / 3 - 0.1), "color") == "yes, the whole interval"
    assert verdict_of(clean_vs_noisy(tmp_path, (low + delta) / 6), "color") == "the estimate only"  # 3×floor inside
    assert verdict_of(clean_vs_noisy(tmp_path, delta / 3 + 0.1), "color") == "no"


def test_clean_vs_noisy_on_a_folder_that_is_not_a_run(tmp_path):
    done = subprocess.run(
        [sys.executable, str(SCRIPTS / "clean_vs_noisy.py"), str(tmp_path)], capture_output=True, text=True
    )
    assert done.returncode == 2 and "report.json does not exist" in done.stderr and "Traceback" not in done.stderr


def test_bench_and_scripts_import_only_what_mixlab_has():
    """Every `from mixlab... import name` in bench/ and scripts/ resolves: a moved function breaks no bench unseen."""
    import ast
    import importlib

    root = SCRIPTS.parent
    missing = []
    for path in sorted([*(root / "bench").glob("*.py"), *SCRIPTS.glob("*.py")]):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "mixlab":
                module = importlib.import_module(node.module)
                missing += [
                    f"{path.relative_to(root)}:{node.lineno} {node.module}.{alias.name}"
                    for alias in node.names
                    if not hasattr(module, alias.name)
                    and importlib.util.find_spec(f"{node.module}.{alias.name}") is None
                ]
    assert missing == []
