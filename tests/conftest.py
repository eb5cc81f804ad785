"""Fixtures every test shares: an isolated state folder, and the testbed's plugins."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"

# One moto server for the whole session, and Terraform set up offline (tests/testbed/).
pytest_plugins = [
    "tests.testbed.moto",
    "tests.testbed.terraform",
    "tests.testbed.hosts",
    "tests.testbed.catalogs",
    "tests.testbed.cloudbox",
]


@pytest.fixture(autouse=True)
def taskstack_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """Each test gets its own `TASKSTACK_HOME`, so nothing touches the user's `~/.taskstack`."""
    home = tmp_path_factory.mktemp("taskstack-home")
    monkeypatch.setenv("TASKSTACK_HOME", str(home))
    # Tests never reach for the online offers catalog: the network is loopback-only.
    monkeypatch.setenv("TASKSTACK_OFFLINE", "1")
    return home
