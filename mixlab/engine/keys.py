"""The one key function: a stage's content key from its material, mixlab's own code and the code of its plugins;
and the per-seed tag in a stage's name."""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import mixlab
from mixlab.store import content_hash, tree_digest


def seed_tag(tag: str, seed: int, seeds: Sequence[int]) -> str:
    """A training's (or evaluation's) tag for one seed of a run: unchanged with a single seed, ``tag@seed<n>`` with
    several."""
    return tag if len(seeds) == 1 else f"{tag}@seed{seed}"


def stage_key(ident: str, material: Any) -> str:
    """The content key of a stage: what it is (``ident``), what it is made of, and mixlab's own code."""
    return content_hash({"stage": ident, "material": material, "code": mixlab_code()})


def cache_key(key: Any) -> str:
    """The key of a reusable cache folder (shared across stages), from a plugin's own key material."""
    return content_hash({"key": key, "code": mixlab_code()})


@functools.cache
def mixlab_code() -> str:
    """What identifies mixlab's own code (its models, training, evaluation rules) in every key.

    ``mixlab-<version>`` for an installed, non-editable release; from a source checkout (an editable install) the
    version plus a hash of every file of the package, so that editing mixlab itself reruns what it computed.
    """
    dist = _distribution("mixlab")
    if dist is not None and dist.version and not _editable(dist):
        return f"mixlab-{dist.version}"
    return f"mixlab-{mixlab.__version__}+{tree_digest(Path(mixlab.__file__).parent)}"


def plugin_code(cls: type) -> str:
    """What identifies a plugin class's code in a stage key.

    ``name==version`` of the distribution it comes from when that is installed, versioned and not editable;
    otherwise (a local module, an editable install) ``module@<hash of its source>``: every ``.py`` file of the
    package it belongs to (a helper module the plugin imports counts), or the module's own file when it is not in a
    package; so editing the plugin reruns the stages that use it.
    """
    # Through a plain `type`: mypy does not see type[SomeClass] as Hashable, which the cache requires (mypy#11470).
    return _plugin_code(cls)


@functools.cache
def _plugin_code(cls: type) -> str:
    module = cls.__module__
    dist = _distribution(module.split(".")[0])
    if dist is not None and dist.version and not _editable(dist):
        return f"{dist.metadata['Name']}=={dist.version}"
    top = sys.modules.get(module.split(".")[0])
    try:
        if top is not None and getattr(top, "__path__", None):  # a package: all of its code
            digest = _package_digest(top.__name__)
        else:
            source = Path(inspect.getsourcefile(sys.modules[module]) or "")
            digest = hashlib.sha256(source.read_bytes()).hexdigest()[:16]
    except (KeyError, OSError, TypeError):
        digest = "unknown"
    return f"{module}@{digest}"


@functools.cache
def _package_digest(name: str) -> str:
    """A hash of every ``.py`` file's path and bytes under a package's folders (``__pycache__`` left out)."""
    digest = hashlib.sha256()
    for root in sys.modules[name].__path__:
        for path in sorted(Path(root).rglob("*.py")):
            if "__pycache__" not in path.parts:
                digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def _distribution(top_level: str) -> metadata.Distribution | None:
    names = metadata.packages_distributions().get(top_level, [])
    for name in names:
        try:
            return metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def _editable(dist: metadata.Distribution) -> bool:
    text = dist.read_text("direct_url.json")
    if not text:
        return False
    try:
        return bool(json.loads(text).get("dir_info", {}).get("editable"))
    except json.JSONDecodeError:
        return False
