"""Soup memory: mixlab's streamed average against loading every ingredient's state dict at once.

Builds N ingredients of a random-init LlamaForCausalLM (the same init plus seeded noise, saved in bf16 as
standard HF folders), then averages them twice, each in a fresh child process so that its peak resident set
(VmHWM, see ``peak_rss_mb``) is its own: mixlab's ``average`` (one tensor at a time), and the naive soup
(``load_file`` every ingredient, average every tensor, ``save_file`` the result). A third child only imports
torch, safetensors and mixlab.merging, for the import baseline. Checks that both soups are bitwise equal. The last
line is one JSON object: {"bench": "soup_memory", "ratio": naive / streaming peak memory above the imports,
"identical": the soups are bitwise equal, ...}.

    python bench/soup_memory.py --n 4
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def build(root: Path, n: int, hidden: int, layers: int, intermediate: int, vocab: int) -> list[Path]:
    """N ingredient folders: one seeded random init, plus independent noise (std 1e-3) each, saved in bf16."""
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=hidden // 64,
        num_key_value_heads=hidden // 64,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    state = LlamaForCausalLM(config).state_dict()
    dirs = []
    for i in range(n):
        gen = torch.Generator().manual_seed(i + 1)
        noisy = {k: (v + 1e-3 * torch.randn(v.shape, generator=gen)).to(torch.bfloat16) for k, v in state.items()}
        d = root / f"ingredient{i}"
        d.mkdir(parents=True)
        config.save_pretrained(d)
        save_file(noisy, d / "model.safetensors", metadata={"format": "pt"})
        del noisy
        dirs.append(d)
    return dirs


def naive(dirs: list[Path], out: Path) -> None:
    """Every state dict in memory at once, then the mean of each tensor (same float32 sum order as mixlab)."""
    import torch
    from safetensors.torch import load_file, save_file

    states = [load_file(d / "model.safetensors") for d in dirs]
    result = {}
    for k, first in states[0].items():
        acc = torch.zeros(first.shape, dtype=torch.float32)
        for s in states:
            acc.add_(s[k])
        result[k] = acc.div_(len(states)).to(first.dtype)
    out.mkdir(parents=True)
    save_file(result, out / "model.safetensors", metadata={"format": "pt"})


def child(method: str, dirs: list[Path], out: Path) -> None:
    import safetensors  # noqa: F401
    import torch  # noqa: F401

    from mixlab.merging import average

    start = time.perf_counter()
    if method == "streaming":
        average(dirs, out)
    elif method == "naive":
        naive(dirs, out)
    print(json.dumps({"peak_mb": round(peak_rss_mb(), 1), "seconds": round(time.perf_counter() - start, 2)}))


def peak_rss_mb() -> float:
    """This process's peak resident set: VmHWM on Linux.

    Not ``getrusage(RUSAGE_SELF).ru_maxrss``: Linux carries the parent's high-water mark into a child across
    fork/exec, so a child spawned by a parent holding the ingredients would report the parent's peak.
    """
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_child(method: str, dirs: list[Path], out: Path) -> dict:
    cmd = [sys.executable, __file__, "--child", method, "--out", str(out), *map(str, dirs)]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def compare(a: Path, b: Path) -> float:
    """Max abs difference over all tensors (inf if the tensor sets differ), one tensor at a time."""
    from mixlab.merging import Checkpoint

    ca, cb = Checkpoint.open(a), Checkpoint.open(b)
    if ca.tensors.keys() != cb.tensors.keys():
        return float("inf")
    worst = 0.0
    for name in ca.tensors:
        x, y = ca.read(name), cb.read(name)
        if x.dtype != y.dtype:
            return float("inf")
        worst = max(worst, float((x.float() - y.float()).abs().max()) if x.numel() else 0.0)
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4, help="number of ingredients")
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--intermediate", type=int, default=2048)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--workdir", type=Path, default=None, help="where to build (default: a temp dir, removed)")
    parser.add_argument("--child", choices=["baseline", "streaming", "naive"], help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("dirs", nargs="*", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.dirs, args.out)
        return

    root = args.workdir or Path(tempfile.mkdtemp(prefix="soup-bench-"))
    try:
        start = time.perf_counter()
        dirs = build(root, args.n, args.hidden, args.layers, args.intermediate, args.vocab)
        size_mb = (dirs[0] / "model.safetensors").stat().st_size / 2**20
        print(f"built {args.n} ingredients of {size_mb:.0f} MB (bf16) in {time.perf_counter() - start:.1f} s")
        results = {m: run_child(m, dirs, root / f"soup-{m}") for m in ("baseline", "streaming", "naive")}
        diff = compare(root / "soup-streaming", root / "soup-naive")
        base = results["baseline"]["peak_mb"]
        print(f"{'method':<10} {'peak RSS MB':>12} {'above imports':>14} {'seconds':>8}")
        for m, r in results.items():
            print(f"{m:<10} {r['peak_mb']:>12.0f} {r['peak_mb'] - base:>14.0f} {r['seconds']:>8.2f}")
        s, n = results["streaming"]["peak_mb"], results["naive"]["peak_mb"]
        print(f"naive / streaming: {n / s:.1f}x peak RSS, {(n - base) / max(s - base, 1.0):.1f}x above imports")
        print(f"outputs equal: {diff == 0.0} (max abs diff {diff})")
        summary = {
            "bench": "soup_memory",
            "ratio": round((n - base) / max(s - base, 1.0), 2),
            "identical": diff == 0.0,
            "ingredients": args.n,
            "ingredient_mb": round(size_mb, 1),
            "peak_mb": {m: round(r["peak_mb"], 1) for m, r in results.items()},
        }
        print(json.dumps(summary))
        if diff != 0.0:
            sys.exit(1)
    finally:
        if args.workdir is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
