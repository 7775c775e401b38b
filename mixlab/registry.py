"""The plugin manager: built-ins (DEFAULT_PLUGINS) and installed packages, all through the same hooks."""

from __future__ import annotations

import difflib
import importlib
import os
import re
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from types import ModuleType
from typing import Any

import pluggy

from mixlab import __version__, hookspecs
from mixlab.components import KINDS, Component, Evaluator, Merger, Scorer, Selector, Source, Trainer
from mixlab.errors import UserError

DEFAULT_PLUGINS = (
    "mixlab.plugins.sources.llava_json",
    "mixlab.plugins.sources.hf_dataset",
    "mixlab.plugins.sources.toyworld",
    "mixlab.plugins.scorers.perplexity",
    "mixlab.plugins.scorers.activations",
    "mixlab.plugins.selectors.random",
    "mixlab.plugins.selectors.fraction",
    "mixlab.plugins.selectors.coincide",
    "mixlab.plugins.selectors.individual_select",
    "mixlab.plugins.trainers.llava_sft",
    "mixlab.plugins.evaluators.benchmarks",
    "mixlab.plugins.evaluators.lm_eval",
    "mixlab.plugins.evaluators.lmms_eval",
    "mixlab.plugins.evaluators.vlmevalkit",
    "mixlab.plugins.mergers.soup",
    "mixlab.plugins.commands",
)

HOOK_OF_KIND = {kind: f"register_{kind}s" for kind in KINDS}
BASE_OF_KIND: dict[str, type[Component]] = {c.kind: c for c in (Source, Scorer, Selector, Trainer, Evaluator, Merger)}


@dataclass(frozen=True)
class Entry:
    """One registered component class and where it came from."""

    kind: str
    name: str
    cls: type[Component]
    package: str
    version: str


class Registry:
    """Components by kind and name, with the distribution each came from."""

    def __init__(self, pm: pluggy.PluginManager, packages: dict[str, tuple[str, str]]):
        self.pm = pm
        self.entries: dict[str, dict[str, Entry]] = {kind: {} for kind in KINDS}
        self._origins: dict[str, tuple[str, str]] = {}  # top-level package of a plugin → its distribution
        for name, plugin in pm.list_name_plugin():
            module = getattr(plugin, "__name__", None) or type(plugin).__module__
            self._origins.setdefault(str(module).split(".")[0], packages.get(name, (str(module), "")))
        for kind, hook_name in HOOK_OF_KIND.items():
            # through pluggy's hook caller: opt-in arguments, tryfirst/trylast and hook wrappers all apply
            try:
                getattr(pm.hook, hook_name)(register=self._registrar(kind))
            except UserError:
                raise
            except Exception as exc:  # a third-party hook's bug: name its package, not a traceback
                raise UserError(
                    f"the {hook_name} hook of {self._raiser(exc)} raised {type(exc).__name__}: {exc}. Fix or "
                    "uninstall that plugin, or leave it out with MIXLAB_LOAD_PLUGINS."
                ) from exc

    def _raiser(self, exc: Exception) -> str:
        """The plugin package whose code raised exc: the innermost frame in a registered plugin's package."""
        found = "a plugin"
        for frame, _ in traceback.walk_tb(exc.__traceback__):
            module = str(frame.f_globals.get("__name__", ""))
            top = module.split(".")[0]
            if top in self._origins and (top != "mixlab" or module.startswith("mixlab.plugins.")):
                found = f"plugin package {self._origins[top][0]!r}"
        return found

    def _origin(self, cls: type) -> tuple[str, str]:
        """(distribution, version) a registered class comes from, found by its top-level package."""
        top = cls.__module__.split(".")[0]
        if top in self._origins:
            return self._origins[top]
        for dist_name in metadata.packages_distributions().get(top, []):
            return dist_name, metadata.version(dist_name)
        return cls.__module__, ""

    def _registrar(self, kind: str) -> Callable[[type], None]:
        hook, base = HOOK_OF_KIND[kind], BASE_OF_KIND[kind]

        def register(cls: type) -> None:
            if not isinstance(cls, type):
                raise UserError(
                    f"a {hook} hook passed {cls!r:.80} to register(), which is not a class: pass the component class "
                    f"itself, register(My{base.__name__})."
                )
            package, version = self._origin(cls)
            name = getattr(cls, "name", None)
            if not isinstance(name, str) or not name:
                raise UserError(f"plugin package {package!r} registered {cls!r} as a {kind} without a `name`.")
            if not issubclass(cls, base):
                what = f"a {cls.kind}" if issubclass(cls, Component) and hasattr(cls, "kind") else "not a component"
                raise UserError(
                    f"plugin package {package!r} registered {cls.__name__} ({what}) through {hook}, which takes "
                    f"{kind}s: derive it from mixlab.components.{base.__name__}, or register it through its own hook."
                )
            if name in self.entries[kind]:
                other = self.entries[kind][name]
                if other.cls is cls:
                    raise UserError(
                        f"{kind} {name!r} ({cls.__module__}.{cls.__qualname__}, package {package!r}) is registered "
                        "twice: register each class once, from one plugin."
                    )
                owners = f"{other.package!r} and {package!r}" if other.package != package else f"both {package!r}"
                raise UserError(
                    f"two plugins register a {kind} named {name!r}: {owners}. Rename one, uninstall one, or limit "
                    "plugins with MIXLAB_LOAD_PLUGINS."
                )
            self.entries[kind][name] = Entry(kind, name, cls, package, version)

        return register

    def get(self, kind: str, name: str) -> type[Component]:
        """The class registered as ``name``; a miss raises UserError with the closest names."""
        found = self.entries[kind].get(name)
        if found is None:
            raise UserError(f"no {kind} named {name!r}.{did_you_mean(name, self.entries[kind])}")
        return found.cls

    def names(self, kind: str) -> list[str]:
        return sorted(self.entries[kind])

    def all(self) -> list[Entry]:
        return [e for kind in KINDS for e in sorted(self.entries[kind].values(), key=lambda e: e.name)]

    def listing(self) -> list[dict[str, str]]:
        """Every component and plugin command as {kind, name, package, version} (`mixlab plugins`, `mixlab env`)."""
        rows = [{"kind": e.kind, "name": e.name, "package": e.package, "version": e.version} for e in self.all()]
        return rows + [{"kind": "command", "name": n, "package": p, "version": v} for n, p, v in self.commands()]

    def commands(self) -> list[tuple[str, str, str]]:
        """(command name, distribution, version) of each command a plugin adds through `register_commands`, found by
        calling each implementation on an empty command group."""
        import click

        found = []
        for impl in self.pm.hook.register_commands.get_hookimpls():
            if impl.hookwrapper or impl.wrapper:
                continue
            group = click.Group()
            impl.function(**{name: group for name in impl.argnames})
            module = getattr(impl.plugin, "__name__", None) or type(impl.plugin).__module__
            package, version = self._origins.get(str(module).split(".")[0], (str(module), ""))
            found += [(name, package, version) for name in sorted(group.commands)]
        return sorted(found)


def did_you_mean(word: str, choices: Any) -> str:
    """' Did you mean 'x'?' for the closest choices, or a list of what exists.

    A name that differs from a choice only in Unicode normalisation (é as one character or as e + accent) is said so.
    """
    import unicodedata

    choices = sorted(str(c) for c in choices)
    same = [c for c in choices if unicodedata.normalize("NFC", c) == unicodedata.normalize("NFC", str(word))]
    if same:
        return (
            f" {word!r} and {same[0]!r} look the same but are written with different Unicode characters (composed vs "
            "decomposed accents): retype one of them so both use the same characters."
        )
    close = difflib.get_close_matches(word, choices, n=3, cutoff=0.5)
    if close:
        return " Did you mean " + " or ".join(repr(c) for c in close) + "?"
    if choices:
        return " Known: " + ", ".join(choices) + "."
    return ""


def allowed_distributions() -> set[str] | None:
    """Distribution names from MIXLAB_LOAD_PLUGINS, normalised (None: load all installed plugins)."""
    value = os.environ.get("MIXLAB_LOAD_PLUGINS")
    if value is None:
        return None
    return {canonical(name) for name in value.split(",") if name.strip()}


def canonical(name: str) -> str:
    """A distribution name as pip compares them: case and runs of '-', '_' and '.' do not matter."""
    return re.sub(r"[-_.]+", "-", name.strip()).lower()


def _load_entry_points(pm: pluggy.PluginManager, packages: dict[str, tuple[str, str]]) -> None:
    allowed = allowed_distributions()
    for ep in metadata.entry_points(group="mixlab"):
        dist = ep.dist
        dist_name = dist.name if dist else ep.name
        if allowed is not None and canonical(dist_name) not in allowed:
            continue
        if pm.get_plugin(ep.name) is not None or pm.is_blocked(ep.name):
            continue
        try:
            plugin = ep.load()
        except Exception as exc:  # a broken third-party package must not crash mixlab with a traceback
            raise UserError(
                f"plugin package {dist_name!r} (entry point {ep.value!r}) failed to import: "
                f"{type(exc).__name__}: {exc}. Fix or uninstall it, or leave it out: MIXLAB_LOAD_PLUGINS lists the "
                "packages to load (comma-separated; '' loads none)."
            ) from exc
        _register(pm, plugin, ep.name, f"plugin package {dist_name!r}")
        packages[ep.name] = (dist_name, dist.version if dist else "")


def _register(pm: pluggy.PluginManager, plugin: Any, name: str | None, what: str) -> str | None:
    """``pm.register``, with one clear message where a hook implementation's arguments are not the hook's."""
    try:
        return pm.register(plugin, name=name)
    except pluggy.PluginValidationError as exc:
        said = " ".join(str(exc).split()).rstrip(".")  # pluggy's message spans lines
        raise UserError(
            f"{what}: {said}. Name a hook implementation's arguments as its hook does (docs/plugins.md lists "
            "them: register_*(register))."
        ) from None


def make_registry(extra_plugins: tuple[Any, ...] = ()) -> Registry:
    """Built-ins, installed packages and any extra plugin objects, checked against the hookspecs."""
    pm = pluggy.PluginManager("mixlab")
    pm.add_hookspecs(hookspecs)
    packages: dict[str, tuple[str, str]] = {}
    for module_name in DEFAULT_PLUGINS:
        pm.register(importlib.import_module(module_name), name=module_name)
        packages[module_name] = ("mixlab", __version__)
    _load_entry_points(pm, packages)
    for plugin in extra_plugins:
        name = _register(pm, plugin, None, f"plugin {getattr(plugin, '__name__', plugin)!r}")
        if name is not None:  # None: pluggy blocked that plugin name, so nothing was registered
            packages[name] = (getattr(plugin, "__name__", "local"), "")
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        name = pm.get_name(exc.plugin)
        package = packages.get(name, (name, ""))[0] if name else repr(exc.plugin)
        hook = next(iter(re.findall(r"unknown hook '([^']+)'", str(exc))), "?")
        known = [h for h in dir(hookspecs) if h.startswith("register_")]
        raise UserError(
            f"plugin {package!r} implements a hook mixlab does not define, {hook!r}.{did_you_mean(hook, known)} "
            "Fix the hook's name (docs/plugins.md lists them)."
        ) from None
    return Registry(pm, packages)


_registry: Registry | None = None
_extra: list[Any] = []


def get_registry() -> Registry:
    """The process-wide registry, built on first use."""
    global _registry
    if _registry is None:
        _registry = make_registry(tuple(_extra))
    return _registry


def register_plugin(plugin: Any) -> None:
    """Add a plugin object or module (tests, notebooks) and rebuild the registry on next use."""
    global _registry
    _extra.append(plugin)
    _registry = None


def extra_plugin_modules() -> list[str]:
    """Names of the plugin modules added with register_plugin, for worker processes to import again."""
    return [p.__name__ for p in _extra if isinstance(p, ModuleType)]


def unregister_plugin(plugin: Any) -> None:
    global _registry
    _extra.remove(plugin)
    _registry = None
