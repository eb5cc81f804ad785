"""Run key pairs: generated once, private half 0600, usable by OpenSSH and asyncssh."""

from __future__ import annotations

import shutil
import stat
import subprocess

import asyncssh
import pytest

from taskstack.errors import ConfigError
from taskstack.stacks.keys import delete_run_key, keys_dir, run_key_pair


def test_key_pair_is_generated_private_and_reused() -> None:
    first = run_key_pair("train")
    second = run_key_pair("train")

    assert first == second
    assert first.private_key_path.parent == keys_dir()
    assert stat.S_IMODE(first.private_key_path.stat().st_mode) == 0o600
    assert first.public_key.startswith("ssh-ed25519 ")
    assert first.public_key.endswith(" taskstack-train")


def test_each_run_has_its_own_key() -> None:
    assert run_key_pair("a").public_key != run_key_pair("b").public_key


def test_private_key_matches_the_public_key() -> None:
    key = run_key_pair("train")

    loaded = asyncssh.read_private_key(str(key.private_key_path))

    exported = loaded.export_public_key("openssh").decode().split()[:2]
    assert exported == key.public_key.split()[:2]


def test_openssh_reads_the_private_key() -> None:
    if shutil.which("ssh-keygen") is None:
        pytest.skip("ssh-keygen is not installed")
    key = run_key_pair("train")

    derived = subprocess.run(
        ["ssh-keygen", "-y", "-f", str(key.private_key_path)],
        capture_output=True,
        text=True,
        check=True,
    )

    assert derived.stdout.split()[:2] == key.public_key.split()[:2]


def test_deleted_key_is_generated_anew() -> None:
    old = run_key_pair("train")

    delete_run_key("train")
    delete_run_key("train")  # gone already: not an error
    new = run_key_pair("train")

    assert new.public_key != old.public_key


def test_missing_public_half_is_a_config_error() -> None:
    key = run_key_pair("train")
    key.private_key_path.with_suffix(".pub").unlink()

    with pytest.raises(ConfigError, match="public half of the run's key is missing"):
        run_key_pair("train")


@pytest.mark.parametrize("name", ["", "../evil", ".hidden"])
def test_names_that_escape_the_keys_folder_are_refused(name: str) -> None:
    with pytest.raises(ConfigError, match="cannot name a key file"):
        run_key_pair(name)
