"""Join a vision encoder and a language model into an unaligned llava-hf model (projector untrained): the starting
point of LLaVA's first stage, for comparing alignment data (recipes/llava15_7b_points_ppl.toml).

    python scripts/compose_llava.py --vision /models/clip-vit-large-patch14-336 \
        --language /models/vicuna-7b-v1.5 --out /models/llava-1.5-7b-stage0-hf --dtype bfloat16

Both parts are local Hugging Face downloads; nothing is fetched.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mixlab.errors import UserError
from mixlab.models.compose import compose_llava


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vision", type=Path, required=True, help="a CLIP (or CLIP vision) model directory")
    parser.add_argument("--language", type=Path, required=True, help="a causal language model directory")
    parser.add_argument("--out", type=Path, required=True, help="where to write the llava-hf model")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--seed", type=int, default=0, help="seed of the projector's initialisation")
    args = parser.parse_args(argv)
    try:
        out = compose_llava(args.vision, args.language, args.out, seed=args.seed, dtype=args.dtype)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
