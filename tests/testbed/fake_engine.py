"""An engine with real behaviour and no IaC tool: stacks are JSON files under the state folder.

`FakeEngine` keeps each run's stack in `$TASKSTACK_HOME/fake-engine/RUN.json`, so a stack
outlives the process that made it (a killed apply leaves it behind, as with Terraform).
`preview` records the frozen plan, `up` refuses a plan other than the previewed one and
"creates" the nodes on the machines it was given (test hosts), authorizing the plan's SSH
key there as cloud-init would; `destroy` removes the stack (already gone is success);
`list_stacks` lists the files. Every call is appended to `calls` and to the stack's file.

Each `up` launches its nodes on the next machines of `hosts` that no earlier `up` of this
engine used, so a run provisioned again (`retry: interruption`) lands on fresh machines.

Faults are explicit: `fail_up` raises the given error after the stack exists; `no_capacity_for`
names instance types the fake cloud refuses (`NoCapacityError` after the stack's network
exists, before any node); `hang_up` blocks `up` (after the stack is recorded) until the
process is killed; `interrupt_up` sends this process SIGINT during `up`, as a Ctrl+C in the
terminal would. `preview_seconds`, `up_seconds` and `destroy_seconds` make those calls take
that long (after the stack is recorded), so a signal can arrive in the middle of them.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Collection, Sequence
from pathlib import Path

from taskstack.compiler.plan import ClusterPlan
from taskstack.errors import NoCapacityError, StackError
from taskstack.home import taskstack_home
from taskstack.runtime.spec import Node
from taskstack.stacks.engine import EngineEvent, OnEvent, PlannedResource, StackPreview


class FakeEngine:
    """See the module docstring."""

    def __init__(
        self,
        *,
        name: str = "terraform",
        hosts: Sequence[object] = (),
        fail_up: Exception | None = None,
        hang_up: bool = False,
        interrupt_up: bool = False,
        no_capacity_for: Collection[str] = (),
        preview_seconds: float = 0.0,
        up_seconds: float = 0.0,
        destroy_seconds: float = 0.0,
    ) -> None:
        self.name = name
        self.hosts = list(hosts)
        self.fail_up = fail_up
        self.hang_up = hang_up
        self.interrupt_up = interrupt_up
        self.no_capacity_for = set(no_capacity_for)
        self.preview_seconds = preview_seconds
        self.up_seconds = up_seconds
        self.destroy_seconds = destroy_seconds
        self.calls: list[str] = []
        self.instance_types: list[str] = []
        """The instance type of every `up`, in order."""
        self._used = 0

    def preview(self, plan: ClusterPlan) -> StackPreview:
        self._call("preview", plan.run_name)
        state = self._load(plan.run_name) or {"calls": []}
        state.update(plan=plan.model_dump(mode="json"), nodes=[])
        self._save(plan.run_name, state)
        time.sleep(self.preview_seconds)  # an engine's refresh and plan take a while
        resources = [PlannedResource(type="fake_network", name="net")]
        resources += [PlannedResource(type="fake_instance", name=n.name) for n in plan.nodes]
        return StackPreview(run_name=plan.run_name, engine=self.name, resources=tuple(resources))

    def up(self, plan: ClusterPlan, on_event: OnEvent | None = None) -> list[Node]:
        self._call("up", plan.run_name)
        state = self._load(plan.run_name)
        if state is None or state["plan"] != plan.model_dump(mode="json"):
            raise StackError(f"run {plan.run_name} was not previewed with this plan")
        self.instance_types.append(plan.instance_type)
        time.sleep(self.up_seconds)  # creating the network before the nodes
        while self.hang_up:  # killed half-way through creating the stack
            time.sleep(0.1)
        if plan.instance_type in self.no_capacity_for:
            raise NoCapacityError(f"no capacity for {plan.instance_type} in {plan.region}")
        free = self.hosts[self._used :]
        if len(free) < plan.node_count:
            raise StackError(f"fake cloud has {len(free)} machines for {plan.node_count}")

        nodes = [
            self._launch(plan, host, on_event, rank=rank)
            for rank, host in enumerate(free[: plan.node_count])
        ]
        self._used += plan.node_count
        state["nodes"] = [node.model_dump(mode="json") for node in nodes]
        self._save(plan.run_name, state)
        self._faults()
        return nodes

    def destroy(self, run_name: str, on_event: OnEvent | None = None) -> None:
        self._call("destroy", run_name)
        time.sleep(self.destroy_seconds)
        state = self._load(run_name)
        for node in (state or {}).get("nodes", []):
            if on_event is not None:
                on_event(_event(f"fake_instance.{node['rank']}", "delete", "done"))
        self._path(run_name).unlink(missing_ok=True)

    def list_stacks(self) -> list[str]:
        folder = _folder()
        return sorted(path.stem for path in folder.glob("*.json")) if folder.is_dir() else []

    def _launch(
        self, plan: ClusterPlan, host: object, on_event: OnEvent | None, *, rank: int
    ) -> Node:
        if on_event is not None:
            on_event(_event(f"fake_instance.{rank}", "create", "started"))
        # What cloud-init does with the key pair on a real instance.
        host.authorize(plan.ssh_public_key)  # type: ignore[attr-defined]
        if on_event is not None:
            on_event(_event(f"fake_instance.{rank}", "create", "done"))
        address = host.address  # type: ignore[attr-defined]
        return Node(
            rank=rank,
            address=address,
            private_ip=address,
            user=plan.ssh_user,
            instance_id=f"i-fake{rank}",
        )

    def _faults(self) -> None:
        if self.interrupt_up:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1.0)  # an engine finishing its step; the run is stopping meanwhile
        if self.fail_up is not None:
            raise self.fail_up

    def _call(self, what: str, run_name: str) -> None:
        self.calls.append(what)
        state = self._load(run_name)
        if state is not None:
            state["calls"].append(what)
            self._save(run_name, state)

    def _load(self, run_name: str) -> dict | None:
        path = self._path(run_name)
        return json.loads(path.read_text()) if path.exists() else None

    def _save(self, run_name: str, state: dict) -> None:
        _folder().mkdir(parents=True, exist_ok=True)
        self._path(run_name).write_text(json.dumps(state))

    def _path(self, run_name: str) -> Path:
        return _folder() / f"{run_name}.json"


def _folder() -> Path:
    return taskstack_home() / "fake-engine"


def _event(name: str, action: str, status: str) -> EngineEvent:
    return EngineEvent(
        kind="resource",
        message=f"{name}: {action} {status}",
        resource_type="fake_instance",
        resource_name=name,
        action=action,
        status=status,  # type: ignore[arg-type]
    )
