"""The three parts of a LLaVA model, told apart by parameter name: vision tower, projector, language model."""

from __future__ import annotations

from typing import Final, Literal

VISION: Final = "vision"
PROJECTOR: Final = "projector"
LM: Final = "lm"


def param_part(name: str) -> Literal["vision", "projector", "lm"]:
    """Which part of a LLaVA model a parameter belongs to, from its name."""
    if "vision_tower" in name:
        return VISION
    if "multi_modal_projector" in name:
        return PROJECTOR
    return LM
