"""mixlab: evaluate and select vision-language training data, atop the Hugging Face Trainer."""

import pluggy

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("mixlab")

__all__ = ["hookimpl", "__version__"]
