"""Shared fixtures: every test writes its own tiny files; the phantom cache is per session."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    # Never touch ~/.cache/unetzoo from tests.
    monkeypatch.setenv("UNETZOO_CACHE", str(tmp_path_factory.getbasetemp() / "uz-cache"))


@pytest.fixture(scope="session")
def tiny_phantom_root(tmp_path_factory):
    """A small CT phantom (3 train + 1 test cases of 6 x 32 x 32), generated once."""
    from unetzoo.data.phantom import generate_phantom

    root = tmp_path_factory.mktemp("phantom") / "ct"
    return generate_phantom(root, n_train=3, n_test=1, shape=(6, 32, 32), seed=3)
