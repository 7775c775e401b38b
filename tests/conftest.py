"""Shared fixtures: the fake plugins registered for a test, and a folder with the fake recipe."""

from __future__ import annotations

import pytest

from mixlab import registry
from tests import fakes


@pytest.fixture
def fake_plugins():
    registry.register_plugin(fakes)
    yield fakes
    registry.unregister_plugin(fakes)


@pytest.fixture
def fake_recipe(tmp_path, fake_plugins, monkeypatch):
    monkeypatch.chdir(tmp_path)  # runs/<name> is relative to the working directory
    return fakes.write_recipe(tmp_path)
