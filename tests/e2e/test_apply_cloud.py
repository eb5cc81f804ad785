"""The cloud in a box: `dstack apply` of a 2-node AWS task through Terraform, against moto,
on test hosts standing at exactly the addresses the stack reports.

One apply for the whole scenario (a Terraform cycle is about a minute here). The lifecycle
runs for real: offers from a catalog, the run's key pair, the Terraform preview, `up`
against moto's EC2 API, the runtime over SSH to the nodes' private addresses
(`public_ips: false`), logs, a forwarded port, destroy. Only the machines are stand-ins:
when the run reports its nodes (`NodesUp`, before anything connects), the test starts a
network-namespace host with sshd and Docker at each address, with the run's key authorized.
moto has no Ubuntu 22.04 image, so the run boots one of moto's images as a custom image
whose login user is `root` (the test hosts' only user).
"""

from __future__ import annotations

import re
import textwrap
import threading
import time
from pathlib import Path

import pytest

from taskstack import apply, records
from taskstack.apply import NodesUp
from taskstack.runtime.job import LogLine, PortsForwarded
from taskstack.runtime.remote import REMOTE_ROOT
from taskstack.stacks.engine import EngineEvent
from taskstack.stacks.keys import run_key_pair
from tests.testbed.cloudbox import assert_port_free, live_instances, run_processes
from tests.testbed.hosts import Testbed, TestHost, free_local_port, http_get_local
from tests.testbed.moto import MotoServer

pytestmark = pytest.mark.e2e

RUN = "cloud-box"
CONTAINER_PORT = 8080


_TASK = textwrap.dedent(
    f"""\
    type: task
    name: {RUN}
    nodes: 2
    image: localhost/busybox:latest
    resources:
      cpu: 2
      memory: 8GB
    ports: [{CONTAINER_PORT}]
    commands:
      - echo "rank $DSTACK_NODE_RANK of $DSTACK_NODES_NUM"
      - echo "ips $(echo "$DSTACK_NODES_IPS" | tr "\\n" " ")"
      - if [ "$DSTACK_NODE_RANK" = 0 ]; then sh /workflow/serve.sh; fi
    """
)

# Rank 0 serves until the test has fetched its page (busybox httpd, with a CGI script
# that leaves a flag), so the forward is checked while the run is running.
_SERVE = textwrap.dedent(
    f"""\
    mkdir -p /tmp/www/cgi-bin
    echo "hello from rank $DSTACK_NODE_RANK" > /tmp/www/index.html
    echo '#!/bin/sh' > /tmp/www/cgi-bin/done
    echo 'touch /tmp/fetched' >> /tmp/www/cgi-bin/done
    echo 'printf "Content-Type: text/plain\\r\\n\\r\\nbye\\n"' >> /tmp/www/cgi-bin/done
    chmod +x /tmp/www/cgi-bin/done
    httpd -p {CONTAINER_PORT} -h /tmp/www
    i=0
    while [ ! -e /tmp/fetched ] && [ $i -lt 1200 ]; do sleep 0.1; i=$((i + 1)); done
    [ -e /tmp/fetched ] || {{ echo "nobody fetched the page"; exit 3; }}
    echo "served"
    """
)


class _Observer:
    """Subscribes to the run's events: starts test hosts when the nodes are up, fetches the
    forwarded page while the task runs, keeps the log lines and timings."""

    def __init__(self, testbed: Testbed, started: float) -> None:
        self.testbed = testbed
        self.started = started
        self.hosts: list[TestHost] = []
        self.nodes: list = []
        self.lines: list[LogLine] = []
        self.engine_events: list[EngineEvent] = []
        self.pages: dict[str, str] = {}
        self.marks: dict[str, float] = {}
        self._fetcher: threading.Thread | None = None

    def __call__(self, event: object) -> None:
        if isinstance(event, LogLine):
            self.lines.append(event)
        elif isinstance(event, EngineEvent):
            self.engine_events.append(event)
        elif isinstance(event, NodesUp):
            self._mark("nodes up")
            self.nodes = list(event.nodes)
            key = run_key_pair(RUN).public_key
            for node in event.nodes:
                host = self.testbed.create_host(address=node.address, authorized_key=key)
                self.hosts.append(host)
            self._mark("hosts ready")
        elif isinstance(event, PortsForwarded):
            self._mark("ports forwarded")
            # The forward is served by this thread's event loop: fetch from another thread.
            self._fetcher = threading.Thread(target=self._fetch, args=(event.urls[0],))
            self._fetcher.start()
        elif isinstance(event, apply.StepStarted) and event.step == "teardown":
            self._mark("teardown")

    def join(self) -> None:
        if self._fetcher is not None:
            self._fetcher.join(timeout=60)

    def _fetch(self, url: str) -> None:
        self.pages["index"] = http_get_local(f"{url}/index.html")
        self.pages["done"] = http_get_local(f"{url}/cgi-bin/done")

    def _mark(self, step: str) -> None:
        self.marks[step] = round(time.monotonic() - self.started, 1)


def test_a_two_node_task_runs_on_the_cloud_in_a_box(
    aws_in_moto: MotoServer, terraform_cli: Path, testbed: Testbed, tmp_path: Path
) -> None:
    job = tmp_path / "job"
    job.mkdir()
    (job / ".dstack.yml").write_text(_TASK)
    (job / "serve.sh").write_text(_SERVE)
    local_port = free_local_port()
    started = time.monotonic()
    observer = _Observer(testbed, started)

    plan = apply.plan_run(
        job / ".dstack.yml", cwd=job, ports=[f"{local_port}:{CONTAINER_PORT}"], environ={}
    )
    provisioner = apply.provisioner_for(plan)
    try:
        result = apply.execute_run(plan, on_event=observer, provisioner=provisioner)
        observer.join()
        elapsed = round(time.monotonic() - started, 1)
        containers = {host.address: host.containers() for host in observer.hosts}
        processes = {host.address: run_processes(host, RUN) for host in observer.hosts}
    finally:
        for host in list(observer.hosts):
            testbed.remove_host(host)
    print(f"\ncloud in a box: {elapsed} s in all; {observer.marks}")

    assert plan.backend == "aws" and plan.offer.instance_type == "t3.large"
    assert plan.offer.region == "us-east-1"
    assert result.status == "done" and result.exit_status == 0, result.reason
    ips = [node.address for node in observer.nodes]
    assert [node.rank for node in observer.nodes] == [0, 1]
    assert all(re.fullmatch(r"10\.200\.0\.\d+", ip) for ip in ips)
    assert all(node.private_ip == node.address for node in observer.nodes)
    text = {(line.rank, line.text.strip()) for line in observer.lines}
    assert {(0, "rank 0 of 2"), (1, "rank 1 of 2")} <= text
    assert {(0, f"ips {ips[0]} {ips[1]}"), (1, f"ips {ips[0]} {ips[1]}")} <= text
    assert (0, "served") in text
    assert observer.pages == {"index": "hello from rank 0\n", "done": "bye\n"}
    assert any(e.resource_name == "aws_instance.node_1" for e in observer.engine_events)

    assert live_instances(aws_in_moto) == []
    record = records.load_record(RUN)
    assert (record.status, record.backend, record.engine) == ("done", "aws", "terraform")
    assert [node.address for node in record.nodes] == ips
    assert containers == {ip: [] for ip in ips}
    assert processes == {ip: [] for ip in ips}
    assert not Path(REMOTE_ROOT, RUN).exists()
    assert [testbed.leftovers(host) for host in observer.hosts] == [[], []]
    assert not (records.run_dir(RUN) / "known_hosts").exists()
    assert provisioner.engine.list_stacks() == []
    assert_port_free(local_port)
