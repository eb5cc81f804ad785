"""Pulumi inline programs, one per cloud, rendered from a `ClusterPlan`.

`program_for(plan)` returns a zero-argument callable that declares the run's resources when
the Pulumi runtime calls it (the Automation API's `program=`, or the mocks of `preview`).
Only the module of the plan's cloud is imported, so only that cloud's SDK is loaded.

Every program exports `nodes`: a list, in rank order, of
`{"rank": int, "instance_id": str, "public_ip": str | None, "private_ip": str}`; engines turn
each entry into a runtime `Node`. `public_ip` is None when the plan asks for private
addresses only.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from taskstack.compiler.plan import ClusterPlan

NODES_OUTPUT = "nodes"


def program_for(plan: ClusterPlan) -> Callable[[], None]:
    """The Pulumi inline program that creates the plan's nodes on the plan's cloud."""
    # Imported here, not when the program runs, so a missing SDK fails before any engine work.
    module = importlib.import_module(f"{__name__}.{plan.cloud}")

    def program() -> None:
        module.declare(plan)

    return program
