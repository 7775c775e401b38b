"""Shared fixtures: the fake plugins registered for a test, and a folder with the fake recipe."""

from __future__ import annotations

import pytest

from mixlab import registry
from tests import fakes


@pytest.fixture(autouse=True, scope="session")
def kept_digests_in_a_temp_folder(tmp_path_factory):
    """Digests of large files kept across processes go to a folder of this session, not the user's cache."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MIXLAB_CACHE_DIR", str(tmp_path_factory.mktemp("mixlab-cache")))
        yield


@pytest.fixture
def fake_plugins():
    registry.register_plugin(fakes)
    yield fakes
    registry.unregister_plugin(fakes)


@pytest.fixture
def fake_recipe(tmp_path, fake_plugins, monkeypatch):
    monkeypatch.chdir(tmp_path)  # runs/<name> is relative to the working directory
    return fakes.write_recipe(tmp_path)
