"""`dstack apply` (the real CLI) in a child process whose engine is `FakeEngine`.

    python -m tests.testbed.fake_apply apply -f TASK -y

The settings (environment) choose AWS and an engine; this process swaps the engine for a
`FakeEngine` described by `FAKE_ENGINE` (JSON): `hosts` (each an `address` and the
`authorized_keys` file the run's key is added to, as cloud-init would), and the fault
options `preview_seconds`, `up_seconds`, `destroy_seconds`; `heartbeat_file` and
`heartbeat_seconds` move the nodes' heartbeat (test hosts share this machine's files).
Tests signal this process as a terminal would (SIGINT for Ctrl+C, SIGKILL for a crash)
and check what it leaves behind.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

OPTIONS_ENV = "FAKE_ENGINE"


@dataclass
class Machine:
    """A machine of the fake cloud: an address and the file its sshd reads keys from."""

    address: str
    authorized_keys: str

    def authorize(self, public_key: str) -> None:
        with Path(self.authorized_keys).open("a") as keys:
            keys.write(public_key.strip() + "\n")


def main() -> None:
    import taskstack.stacks.engine as engines
    from taskstack.cli.app import main as cli_main
    from taskstack.runtime import heartbeat
    from tests.testbed.fake_engine import FakeEngine

    options = json.loads(os.environ.get(OPTIONS_ENV, "{}"))
    heartbeat.HEARTBEAT_FILE = options.pop("heartbeat_file", heartbeat.HEARTBEAT_FILE)
    heartbeat.HEARTBEAT_SECONDS = options.pop("heartbeat_seconds", heartbeat.HEARTBEAT_SECONDS)
    engine = FakeEngine(
        hosts=[Machine(**host) for host in options.pop("hosts", [])],
        **options,
    )
    engines.engine_for = lambda settings, name=None: engine
    sys.argv = ["dstack", *sys.argv[1:]]
    cli_main()


if __name__ == "__main__":
    main()
