"""A taskstack stand-in process for the interrupt tests of the Pulumi engine.

`python -m tests.stacks.interrupted_up MODE SCRATCH` previews a one-node AWS run through
`PulumiEngine` with the recording Pulumi CLI (its folder: `SCRATCH/cli`), holds the CLI's
`up`, and runs `up` the way `dstack apply` does (`worker`: in a worker thread, the main
thread taking Ctrl+C) or the way a plain script would (`main`: in the main thread, where
Ctrl+C raises KeyboardInterrupt). The test sends SIGINT to this process's group, as the
terminal does on Ctrl+C, and reads the JSON line this process prints when it is done.

It runs as a process of its own, started in a new session by the test, so that the SIGINT
reaches no process of the test session (a moto server, test hosts) but this one's group.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from taskstack.settings import load_settings
from taskstack.stacks.pulumi_engine import PulumiEngine
from tests.testbed.plans import aws_plan
from tests.testbed.pulumi_cli import RecordingPulumi

SIGINT_SEEN = "taskstack-saw-sigint"
"""Written into SCRATCH by the `worker` mode's SIGINT handler."""


def main(mode: str, scratch: Path) -> dict[str, Any]:
    """Preview, then `up` with the CLI held; what happened, as a JSON-ready dict."""
    cli = _recording_cli(scratch / "cli")
    environ = {"TASKSTACK_BACKENDS": "aws", "TASKSTACK_STATE_PASSPHRASE": "pass"}
    settings = load_settings(path=scratch / "none.yml", environ=environ)
    engine = PulumiEngine(settings, pulumi_command=cli)
    plan = aws_plan("train", nodes=1)
    engine.preview(plan)
    cli.hold("up")

    if mode == "worker":
        return _up_in_a_worker(engine, plan, scratch=scratch)
    try:
        engine.up(plan)
    except KeyboardInterrupt:
        # Had the CLI not exited yet, its record would be missing here.
        return {"outcome": "interrupted", "cli_done": [p.verb for p in cli.processes()]}
    return {"outcome": "up finished"}


def _up_in_a_worker(engine: PulumiEngine, plan: Any, *, scratch: Path) -> dict[str, Any]:
    sigints: list[int] = []

    def on_sigint(signum: int, frame: Any) -> None:
        sigints.append(signum)
        (scratch / SIGINT_SEEN).touch()

    signal.signal(signal.SIGINT, on_sigint)
    result: dict[str, Any] = {}
    worker = threading.Thread(target=lambda: result.update(nodes=engine.up(plan)))
    worker.start()
    worker.join()
    return {"outcome": "up finished", "nodes": len(result["nodes"]), "sigints": len(sigints)}


def _recording_cli(folder: Path) -> RecordingPulumi:
    outputs = {
        "nodes": [
            {"rank": 0, "instance_id": "i-0", "public_ip": "198.18.0.1", "private_ip": "10.0.0.1"}
        ]
    }
    return RecordingPulumi(
        resources=lambda plan_json: [("aws:ec2/instance:Instance", "train-0")],
        outputs=lambda plan_json: outputs,
        scratch=folder,
    )


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], Path(sys.argv[2]))), flush=True)
