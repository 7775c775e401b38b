"""One test per hook (test_hook_<name>), plus the meta-tests: every hook is documented and tested."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import click
from click.testing import CliRunner

from mixlab import hookimpl, hookspecs, registry
from tests import fakes

ROOT = Path(__file__).resolve().parents[1]
# every hook the plugin manager knows (not only the register_* ones): a new hook must be documented and tested
HOOKS = sorted(name for name, caller in vars(registry.make_registry().pm.hook).items() if caller.spec is not None)


def registered(kind: str, name: str) -> bool:
    reg = registry.make_registry((fakes,))
    return name in reg.names(kind)


def test_hook_register_sources():
    assert registered("source", "fake_source")


def test_hook_register_scorers():
    assert registered("scorer", "fake_quality")


def test_hook_register_selectors():
    assert registered("selector", "fake_lowest")


def test_hook_register_trainers():
    assert registered("trainer", "fake_trainer")


def test_hook_register_evaluators():
    assert registered("evaluator", "fake_bench")


def test_hook_register_mergers():
    assert registered("merger", "fake_soup")


def test_hook_register_commands():
    class Commands:
        @hookimpl
        def register_commands(self, cli):
            @cli.command()
            def hello():
                click.echo("hi from a plugin")

    group = click.Group()
    registry.make_registry((Commands(),)).pm.hook.register_commands(cli=group)
    assert CliRunner().invoke(group, ["hello"]).output == "hi from a plugin\n"


def test_plugin_hooks_are_documented():
    docs = (ROOT / "docs" / "plugins.md").read_text()
    for name in HOOKS:
        params = ", ".join(inspect.signature(getattr(hookspecs, name)).parameters)
        assert re.search(rf"^### `{name}\({re.escape(params)}\)`", docs, re.M), f"{name}({params}) undocumented"


def test_plugin_hooks_have_tests():
    tested = {
        name for name, _ in inspect.getmembers(__import__(__name__, fromlist=["x"])) if name.startswith("test_hook_")
    }
    missing = [h for h in HOOKS if f"test_hook_{h}" not in tested]
    assert not missing, f"hooks without a test_hook_<name> test: {missing}"


def test_hook_implementation_may_take_fewer_arguments():
    """pluggy's opt-in arguments: an implementation that names none of the hook's arguments still runs."""
    calls = []

    class NoArguments:
        @hookimpl
        def register_scorers(self):
            calls.append("called")

    registry.make_registry((NoArguments(),))
    assert calls == ["called"]


def test_hookimpl_options_are_honoured():
    """Implementations are called through pluggy's hook caller, so tryfirst and hook wrappers apply."""
    order = []

    class First:
        @hookimpl(tryfirst=True)
        def register_selectors(self, register):
            order.append("first")

    class Wrapper:
        @hookimpl(wrapper=True)
        def register_selectors(self, register):
            order.append("before")
            result = yield
            order.append("after")
            return result

    registry.make_registry((Wrapper(), First()))
    assert order[0] == "before" and order[1] == "first" and order[-1] == "after"


def test_meta_tests_see_every_hookspec():
    assert HOOKS == sorted(name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction))
