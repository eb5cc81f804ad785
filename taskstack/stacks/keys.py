"""The SSH key pair of a run: generated once, kept under the state folder, mode 0600.

`run_key_pair(run_name)` returns the run's key, creating it on first use, so a retry of
the same run (same stack) reuses the key its nodes already trust. The private key never
leaves `~/.taskstack/keys/` (or `$TASKSTACK_HOME/keys/`); only the public key reaches a plan.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from taskstack.errors import ConfigError
from taskstack.home import taskstack_home


class RunKey(BaseModel):
    """Where a run's private key lives and its public key in OpenSSH form."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    private_key_path: Path
    public_key: str


def keys_dir() -> Path:
    """The folder of generated run keys."""
    return taskstack_home() / "keys"


def run_key_pair(run_name: str) -> RunKey:
    """The run's ed25519 key pair, generated on first use and reused afterwards."""
    path = _key_path(run_name)
    if not path.exists():
        _generate(path, comment=f"taskstack-{run_name}")
    return RunKey(private_key_path=path, public_key=_public_key(path))


def delete_run_key(run_name: str) -> None:
    """Remove the run's key pair once its stack is gone; a missing key is not an error."""
    path = _key_path(run_name)
    for file in (path, path.with_suffix(".pub")):
        file.unlink(missing_ok=True)


def _key_path(run_name: str) -> Path:
    if not run_name or "/" in run_name or run_name.startswith("."):
        raise ConfigError(f"run name `{run_name}` cannot name a key file")
    return keys_dir() / run_name


def _generate(path: Path, *, comment: str) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        encoding=serialization.Encoding.PEM,
        format=serialization.PrivateFormat.OpenSSH,
        encryption_algorithm=serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        encoding=serialization.Encoding.OpenSSH,
        format=serialization.PublicFormat.OpenSSH,
    )

    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    # Created with 0600 from the start: the key is never readable by others, even briefly.
    # O_EXCL: two applies of one run cannot interleave their keys.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    with os.fdopen(fd, "wb") as file:
        file.write(private)
    path.with_suffix(".pub").write_text(f"{public.decode()} {comment}\n")


def _public_key(path: Path) -> str:
    public = path.with_suffix(".pub")
    try:
        return public.read_text().strip()
    except FileNotFoundError:
        raise ConfigError(
            f"{public}: the public half of the run's key is missing; delete {path} to "
            "generate a new pair"
        ) from None
