"""The real `dstack` CLI with the real Terraform engine, in a child process a test can signal.

    python -m tests.testbed.cloud_apply apply -f TASK -y

Unlike `fake_apply`, nothing of the product is swapped: the settings (the environment of a
CI job pointed at moto, `cloudbox.cloudbox_environ`) choose AWS and Terraform, and the
stack is applied against moto. `CLOUD_APPLY` (JSON) holds test-only overrides, all
optional: `heartbeat_file` and `heartbeat_seconds` move and quicken the beats the apply
sends its nodes (test hosts share this machine's files, so one file stands for every
node's), and `heartbeat_grace` shortens the grace of the dead man's switch that the nodes'
user data installs (600 s by default), so a test sees it fire. Tests signal this process as
a terminal would (SIGINT to its process group for Ctrl+C, SIGKILL for a crash) and check
what it leaves behind.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

OPTIONS_ENV = "CLOUD_APPLY"


def main() -> None:
    from taskstack.cli.app import main as cli_main

    options = json.loads(os.environ.get(OPTIONS_ENV, "{}"))
    _move_heartbeat(options)
    if "heartbeat_grace" in options:
        _shorten_grace(int(options["heartbeat_grace"]))
    sys.argv = ["dstack", *sys.argv[1:]]
    cli_main()


def _move_heartbeat(options: dict[str, Any]) -> None:
    from taskstack.runtime import heartbeat

    # `CloudProvisioner` reads both when it is made, which is after this.
    heartbeat.HEARTBEAT_FILE = options.get("heartbeat_file", heartbeat.HEARTBEAT_FILE)
    heartbeat.HEARTBEAT_SECONDS = options.get("heartbeat_seconds", heartbeat.HEARTBEAT_SECONDS)


def _shorten_grace(grace: int) -> None:
    from taskstack.compiler import plan as plans

    # `CloudProvisioner.cluster_plan` looks `build_plan` up when it runs: every plan the
    # engine previews and applies (and so the user data in moto) carries this grace.
    build_plan = plans.build_plan

    def with_grace(*args: Any, **kwargs: Any) -> Any:
        return build_plan(*args, **kwargs).model_copy(update={"heartbeat_grace": grace})

    plans.build_plan = with_grace


if __name__ == "__main__":
    main()
