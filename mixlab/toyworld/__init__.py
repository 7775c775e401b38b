"""The toy world: a deterministic, procedurally generated vision-language world whose truth is known.

``generate(out_dir)`` writes LLaVA-JSON training sources of known quality (clean, label-noisy, duplicated,
off-task), VLMEvalKit-format benchmark TSVs, a text corpus for the tokenizer, and manifest.json. See docs/toyworld.md.
"""

from mixlab.toyworld.formats import MC_SUFFIX, SHORT_SUFFIX, YES_NO_SUFFIX, mc_block, yes_no_question
from mixlab.toyworld.world import CATEGORIES, GENERATOR_VERSION, generate, load_manifest

__all__ = [
    "CATEGORIES",
    "GENERATOR_VERSION",
    "MC_SUFFIX",
    "SHORT_SUFFIX",
    "YES_NO_SUFFIX",
    "generate",
    "load_manifest",
    "mc_block",
    "yes_no_question",
]
