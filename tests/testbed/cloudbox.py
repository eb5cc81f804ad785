"""The cloud in a box, shared by the e2e tests: settings pointed at moto, and what a test
checks afterwards (live instances and what is left of a run's stack in moto, the run's
processes on a test host, a free port).

`aws_in_moto` configures a CI job against the session's moto server through environment
variables: AWS through Terraform, the stacks' network inside the test subnet, nodes reached
at their private addresses, the CPU catalog, and one of moto's images booted as a custom
image whose login user is `root` (moto has no Ubuntu 22.04; `root` is the test hosts' user).
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from taskstack.compiler.plan import RUN_TAG
from tests.testbed.catalogs import cpu_catalog
from tests.testbed.hosts import TestHost
from tests.testbed.moto import MotoServer, aws_environ


def cloudbox_environ(moto: MotoServer, catalog_folder: Path) -> dict[str, str]:
    """The environment of a CI job applying AWS tasks on `moto` (see the module docstring)."""
    return {
        **aws_environ(moto),
        "TASKSTACK_CATALOG": str(cpu_catalog(catalog_folder)),
        "TASKSTACK_AWS_PUBLIC_IPS": "false",
        "TASKSTACK_AWS_IMAGE": moto_image(moto),
        "TASKSTACK_AWS_SSH_USER": "root",
    }


@pytest.fixture
def aws_in_moto(moto: MotoServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> MotoServer:
    """This process's settings pointed at a freshly reset moto (see the module docstring)."""
    for key, value in cloudbox_environ(moto, tmp_path / "catalog").items():
        monkeypatch.setenv(key, value)
    return moto


def moto_image(moto: MotoServer) -> str:
    """The newest of moto's Ubuntu images."""
    images = moto.client("ec2").describe_images(Owners=["099720109477"])["Images"]
    return sorted(images, key=lambda image: image["Name"])[-1]["ImageId"]


def live_instances(moto: MotoServer) -> list[str]:
    """Instances moto holds as pending or running."""
    reservations = moto.client("ec2").describe_instances(
        Filters=[{"Name": "instance-state-name", "Values": ["pending", "running"]}]
    )["Reservations"]
    return [i["InstanceId"] for r in reservations for i in r["Instances"]]


def run_resources(moto: MotoServer, run_name: str) -> list[str]:
    """What moto still holds of run `run_name`'s stack: its VPC, subnet, internet gateway and
    security group (found by the run's tag), its key pair (by name), and instances tagged
    with the run that are not terminated."""
    ec2 = moto.client("ec2")
    key_name = f"taskstack-{run_name}"
    pairs = ec2.describe_key_pairs()["KeyPairs"]
    found = [f"key pair {key_name}" for pair in pairs if pair["KeyName"] == key_name]
    tagged = [
        ("vpc", ec2.describe_vpcs()["Vpcs"], "VpcId"),
        ("subnet", ec2.describe_subnets()["Subnets"], "SubnetId"),
        ("gateway", ec2.describe_internet_gateways()["InternetGateways"], "InternetGatewayId"),
        ("security group", ec2.describe_security_groups()["SecurityGroups"], "GroupId"),
    ]
    for kind, items, id_key in tagged:
        found += [f"{kind} {item[id_key]}" for item in items if _run_tag(item) == run_name]
    reservations = ec2.describe_instances()["Reservations"]
    for instance in (i for r in reservations for i in r["Instances"]):
        state = instance["State"]["Name"]
        if _run_tag(instance) == run_name and state != "terminated":
            found.append(f"instance {instance['InstanceId']} ({state})")
    return found


def run_processes(host: TestHost, run_name: str) -> list[str]:
    """Processes on the host that belong to the run (attached clients, log followers)."""
    found = []
    for pid in host.pids():
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if run_name in command or "tail " in command or "docker start" in command:
            found.append(f"{pid}: {command}")
    return found


def _run_tag(item: dict) -> str | None:
    tags = {tag["Key"]: tag["Value"] for tag in item.get("Tags", [])}
    return tags.get(RUN_TAG)


def assert_port_free(port: int) -> None:
    """Nothing listens on the port any more (connections of a fetch may linger in TIME_WAIT,
    which SO_REUSEADDR allows; a listener would still refuse the bind)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", port))
        probe.listen()
