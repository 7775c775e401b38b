"""The registry: built-ins through the hooks, lookups with suggestions, bad plugins turned into clear errors."""

from __future__ import annotations

import subprocess
import sys
from contextlib import contextmanager

import pytest

from mixlab import hookimpl, registry
from mixlab.errors import UserError
from tests import fakes


def test_builtins_register_through_hooks(monkeypatch):
    monkeypatch.setenv("MIXLAB_LOAD_PLUGINS", "")
    reg = registry.make_registry()
    assert {"llava_json", "hf_dataset"} <= set(reg.names("source"))
    assert {"random", "fraction"} <= set(reg.names("selector"))
    assert all(e.package == "mixlab" for e in reg.all())


def test_lookup_suggests_closest_names():
    reg = registry.make_registry()
    with pytest.raises(UserError, match="Did you mean 'llava_json'"):
        reg.get("source", "llava_jsn")


def test_hook_register_scorers_and_duplicate_names(fake_plugins):
    reg = registry.get_registry()
    assert reg.get("scorer", "fake_quality").name == "fake_quality"

    class Clash:
        @hookimpl
        def register_scorers(self, register):
            from tests.fakes import FakeScorer

            register(FakeScorer)

    with pytest.raises(UserError, match=r"scorer 'fake_quality' \(tests.fakes.FakeScorer, .*\) is registered twice"):
        registry.make_registry((fake_plugins, Clash()))

    class Other:
        @hookimpl
        def register_scorers(self, register):
            register(type("Another", (fakes.FakeScorer,), {}))  # another class, the same name

    with pytest.raises(UserError, match="two plugins register a scorer named 'fake_quality': both 'tests.fakes'"):
        registry.make_registry((fake_plugins, Other()))


def test_register_takes_a_class_of_its_hooks_kind():
    """A non-class, or a scorer passed to register_selectors, was accepted and failed at run time (AttributeError:
    no select), or named the value as its package."""

    class NotAClass:
        @hookimpl
        def register_selectors(self, register):
            register("not a class")

    with pytest.raises(
        UserError, match=r"a register_selectors hook passed 'not a class' to register\(\), which is not"
    ):
        registry.make_registry((NotAClass(),))

    class WrongKind:
        @hookimpl
        def register_selectors(self, register):
            register(type("Words", (fakes.FakeScorer,), {"name": "words"}))

    with pytest.raises(UserError, match=r"registered Words \(a scorer\) through register_selectors.*Selector"):
        registry.make_registry((WrongKind(),))


def test_a_hook_that_raises_is_one_message_naming_its_plugin():
    class Broken:
        __name__ = "broken_plugin"

        @hookimpl
        def register_scorers(self, register):
            raise KeyError("config")

    with pytest.raises(UserError, match=r"register_scorers hook of plugin package 'tests.fakes' raised KeyError: 'co"):
        registry.make_registry((fakes, Broken()))  # fakes: the tests package is a registered plugin's


def test_unknown_hook_is_rejected():
    class Typo:
        @hookimpl
        def register_scorer(self, register):  # missing "s": matches no spec
            pass

    with pytest.raises(UserError, match=r"implements a hook mixlab does not define, 'register_scorer'. Did you mean "
                       r"'register_scorers'"):  # fmt: skip
        registry.make_registry((Typo(),))


def test_a_hook_argument_with_another_name_is_one_clear_message():
    class Misnamed:
        __name__ = "misnamed_plugin"

        @hookimpl
        def register_scorers(self, reg):  # the hook's argument is `register`
            pass

    with pytest.raises(UserError, match=r"plugin 'misnamed_plugin': .*reg.* Name a hook implementation's arguments"):
        registry.make_registry((Misnamed(),))


def test_component_without_name_is_rejected():
    class Nameless:
        @hookimpl
        def register_mergers(self, register):
            register(type("NoName", (), {}))

    with pytest.raises(UserError, match="without a `name`"):
        registry.make_registry((Nameless(),))


@contextmanager
def registered(plugin):
    """The plugin in the process-wide registry for the block."""
    registry.register_plugin(plugin)
    try:
        yield
    finally:
        registry.unregister_plugin(plugin)


def registered_component(hook: str, base: type, name: str, options: type):
    """A plugin whose `hook` registers a subclass of `base` named `name` with `options` as its Options model, in the
    process-wide registry for the block."""
    component = type(f"{name.title()}Component", (base,), {"name": name, "Options": options})
    plugin = type("OnePlugin", (), {hook: hookimpl(lambda self, register: register(component))})()
    return registered(plugin)


def test_a_section_of_a_component_with_loose_options_is_one_recipe_problem(fake_recipe):
    """A plugin whose Options is a plain pydantic model registers (other commands and recipes keep working), but a
    section that uses it is refused, naming the plugin package: its options would not be checked strictly."""
    from pydantic import BaseModel

    from mixlab.recipe import RecipeError, load_recipe

    class LooseOptions(BaseModel):
        fraction: float = 0.5

    with registered_component("register_mergers", fakes.FakeMerger, "loose_soup", LooseOptions):
        assert "loose_soup" in registry.get_registry().entries["merger"]
        load_recipe(fake_recipe)  # a recipe that does not use it
        fake_recipe.write_text(fake_recipe.read_text().replace('type = "fake_soup"', 'type = "loose_soup"'))
        with pytest.raises(RecipeError, match=r"soup.type: merger 'loose_soup' \(plugin package .*not a subclass"):
            load_recipe(fake_recipe)


def test_a_plugin_option_named_like_a_key_mixlab_reads_is_refused(fake_recipe):
    """A scorer option called `sources` is read by mixlab itself (the pools to score): it never reached the plugin,
    silently, while a test building the plugin directly did pass it."""
    from mixlab.components import Options
    from mixlab.recipe import RecipeError, load_recipe

    class GreedyOptions(Options):
        sources: list[str] = []

    with registered_component("register_scorers", fakes.FakeScorer, "greedy", GreedyOptions):
        fake_recipe.write_text(fake_recipe.read_text().replace('type = "fake_quality"', 'type = "greedy"'))
        with pytest.raises(RecipeError, match=r"scorer 'greedy' .* has options named \['sources'\], which mixlab"):
            load_recipe(fake_recipe)


def test_every_builtin_options_model_is_strict():
    """The built-ins follow the documented contract, nested option tables (the trainer's `lora`) included."""
    from mixlab.components import Options, loose_option_tables

    entries = [entry for entries in registry.get_registry().entries.values() for entry in entries.values()]
    assert "lora" in registry.get_registry().entries["trainer"]["llava_sft"].cls.Options.model_fields
    assert [(e.name, issubclass(e.cls.Options, Options), loose_option_tables(e.cls.Options)) for e in entries] == [
        (e.name, True, []) for e in entries
    ]


def test_loose_option_tables_are_found_at_any_depth():
    from pydantic import BaseModel

    from mixlab.components import Options, loose_option_tables

    class Plain(BaseModel):
        rate: float = 0.1

    class Strict(Options):
        inner: Plain | None = None
        fine: int = 1

    class Top(Options):
        plain: Plain = Plain()
        many: list[Plain] = []
        named: dict[str, Strict] = {}
        strict: Strict = Strict()
        again: Top | None = None  # a model that refers to itself is walked once

    assert loose_option_tables(Top) == ["plain", "many", "named.inner"]  # each model walked once (Strict: at `named`)
    assert loose_option_tables(Strict) == ["inner"]


def test_a_section_of_a_component_with_a_loose_nested_table_is_one_recipe_problem(fake_recipe):
    """A plain pydantic model inside a plugin's options ignores unknown keys: a typo there would be dropped."""
    from pydantic import BaseModel

    from mixlab.components import Options
    from mixlab.recipe import RecipeError, load_recipe

    class Schedule(BaseModel):
        warmup: int = 0

    class NestedOptions(Options):
        schedule: Schedule = Schedule()

    with registered_component("register_mergers", fakes.FakeMerger, "nested_soup", NestedOptions):
        fake_recipe.write_text(fake_recipe.read_text().replace('type = "fake_soup"', 'type = "nested_soup"'))
        with pytest.raises(RecipeError, match=r"merger 'nested_soup' .* has an option table, `schedule`, whose model"):
            load_recipe(fake_recipe)


def test_core_commands_import_no_torch():
    code = (
        "import sys; from mixlab.cli import cli, _add_plugin_commands; _add_plugin_commands();"
        "import mixlab.recipe, mixlab.pipeline; assert 'torch' not in sys.modules, 'torch imported';"
        "assert 'transformers' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_load_plugins_env_chooses_installed_packages(monkeypatch):
    """MIXLAB_LOAD_PLUGINS: unset loads every installed plugin package, a list loads those named, empty loads none."""
    from importlib.metadata import EntryPoint

    installed = EntryPoint(name="fakes", value="tests.fakes", group="mixlab")  # no distribution: named "fakes"
    monkeypatch.setattr(registry.metadata, "entry_points", lambda group: [installed] if group == "mixlab" else [])
    cases = ((None, True), ("fakes", True), ("other, Fakes", True), ("other", False), ("", False))
    for value, loaded in cases:  # names compare as pip compares them: "Fakes" is "fakes"
        if value is None:
            monkeypatch.delenv("MIXLAB_LOAD_PLUGINS", raising=False)
        else:
            monkeypatch.setenv("MIXLAB_LOAD_PLUGINS", value)
        reg = registry.make_registry()
        assert ("fake_quality" in reg.names("scorer")) is loaded, value
        assert all(e.package == "mixlab" for e in reg.all()) is not loaded, value
    assert registry.allowed_distributions() == set()
