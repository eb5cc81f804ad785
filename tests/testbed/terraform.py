"""Terraform for the tests: the binary, the offline provider mirror, a CLI config per run.

The mirror is the folder that holds `registry.terraform.io` (found under `/opt`, `/usr`,
`/root` and `$HOME`, or named by `TASKSTACK_TF_MIRROR`). The fixture writes a CLI config that
installs providers from it and never from the network, and points `TF_CLI_CONFIG_FILE` at it.
Without terraform or the mirror the tests skip with the reason; with
`TASKSTACK_REQUIRE_TESTBED=1` (CI) they fail instead.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

_SEARCH_ROOTS = ("/opt", "/usr/local", "/usr/share", "/root", "/var/lib")


def testbed_required() -> bool:
    """CI sets `TASKSTACK_REQUIRE_TESTBED=1`: a missing testbed piece is then a failure."""
    return os.environ.get("TASKSTACK_REQUIRE_TESTBED") == "1"


def skip_or_fail(reason: str) -> None:
    """Skip the test, or fail it when the testbed is required."""
    if testbed_required():
        pytest.fail(reason)
    pytest.skip(reason)


@functools.cache
def find_mirror() -> Path | None:
    """The provider mirror root (the folder holding `registry.terraform.io`), if any."""
    named = os.environ.get("TASKSTACK_TF_MIRROR")
    if named:
        return Path(named) if (Path(named) / "registry.terraform.io").is_dir() else None

    roots = [root for root in (*_SEARCH_ROOTS, str(Path.home())) if Path(root).is_dir()]
    found = subprocess.run(
        ["find", *roots, "-xdev", "-name", "terraform-provider-aws_*", "-type", "f"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()
    for binary in found:
        for parent in Path(binary).parents:
            if parent.name == "registry.terraform.io":
                return parent.parent
    return None


def cli_config_text(mirror: Path) -> str:
    """A CLI config that installs providers from `mirror` only (no plugin cache: two inits
    sharing one collide)."""
    return (
        "provider_installation {\n"
        f"  filesystem_mirror {{\n    path = {json.dumps(str(mirror))}\n  }}\n"
        '  direct {\n    exclude = ["*/*/*"]\n  }\n'
        "}\n"
    )


@pytest.fixture
def terraform_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """terraform set up for offline use in this test; skips (or fails in CI) without it."""
    if shutil.which("terraform") is None:
        skip_or_fail("terraform is not on PATH (see TESTBED.md)")
    mirror = find_mirror()
    if mirror is None:
        skip_or_fail(
            "no Terraform provider mirror with hashicorp/aws found; set TASKSTACK_TF_MIRROR "
            "to the folder holding registry.terraform.io"
        )

    config = tmp_path / "terraform.rc"
    config.write_text(cli_config_text(mirror), encoding="utf-8")
    monkeypatch.setenv("TF_CLI_CONFIG_FILE", str(config))
    monkeypatch.delenv("TF_WORKSPACE", raising=False)
    return config
