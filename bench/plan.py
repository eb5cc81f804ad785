"""`dstack plan` for 1, 8 and 64 AWS nodes against the bare Pulumi SDK under the same mocks.

taskstack: `dstack plan -f task --backend aws --nodes N --json` in a fresh process: CLI
start-up, the task parse, the catalog and offer match, the plan, the AWS program under the
recording mocks, the JSON. Baseline: a fresh Python process with only the Pulumi SDK that
runs a hand-written program declaring the same resources for the same p5.48xlarge offer
(network, security group, key pair, placement group, a 32-EFA launch template, instances,
Elastic IPs) under a `pulumi.runtime.Mocks` that answers as taskstack's mocks do
(autonaming, ids, addresses, the AMI lookup), then prints the resources as JSON. Before
timing, both sides must declare the same resource counts. Each figure is the median of
several fresh processes, the two sides alternating; peak memory is the child's own max RSS.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.common import row, run_child

NODES = (1, 8, 64)
REPEAT = 5

TASK = """\
type: task
name: bench
commands:
  - torchrun train.py
resources:
  gpu: H100:8
"""

# What a Pulumi user would write by hand for the same run, with the mocks Pulumi's unit
# testing guide describes. Keep it equivalent to taskstack's AWS program for p5.48xlarge.
BASELINE = r"""
import hashlib, json, sys
import pulumi
import pulumi_aws as aws
from pulumi.runtime import settings, stack
from pulumi.runtime.sync_await import _sync_await

NODES = int(sys.argv[1])
REGION = "us-east-1"
TAGS = {"taskstack:run": "bench"}
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPREVIEWPLACEHOLDERKEYNOTUSABLE taskstack-preview"
AUTONAMED = {
    "aws:ec2/keyPair:KeyPair": "keyName",
    "aws:ec2/securityGroup:SecurityGroup": "name",
    "aws:ec2/placementGroup:PlacementGroup": "name",
    "aws:ec2/launchTemplate:LaunchTemplate": "name",
}


def digest(*parts):
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def fake_ip(prefix, key):
    n = int(key[:8], 16)
    return f"{prefix}.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255 or 1}"


class Mocks(pulumi.runtime.Mocks):
    def __init__(self):
        self.recorded = []

    def new_resource(self, args):
        key = digest("bench", args.typ, args.name)
        inputs = dict(args.inputs)
        prop = AUTONAMED.get(args.typ)
        if prop and not inputs.get(prop):
            inputs[prop] = f"{args.name}-{key[:7]}"
        self.recorded.append({"type": args.typ, "name": args.name, "inputs": inputs})
        state = {**inputs, "name": inputs.get("name", f"{args.name}-{key[:7]}")}
        if args.typ == "aws:ec2/instance:Instance":
            state.update(privateIp=fake_ip("10", key), publicIp=fake_ip("198", key),
                         primaryNetworkInterfaceId=f"eni-{key[:17]}")
        if args.typ == "aws:ec2/vpc:Vpc":
            state["mainRouteTableId"] = f"rtb-{key[:17]}"
        if args.typ == "aws:ec2/eip:Eip":
            state["publicIp"] = fake_ip("198", key)
        return f"id-{key[:17]}", state

    def call(self, args):
        if args.token == "aws:ec2/getAmi:getAmi":
            return {"id": "ami-lookup", "imageId": "ami-lookup"}, []
        raise RuntimeError(args.token)


def program():
    vpc = aws.ec2.Vpc("bench-vpc", cidr_block="10.200.0.0/16", enable_dns_hostnames=True,
                      enable_dns_support=True, region=REGION, tags=TAGS)
    subnet = aws.ec2.Subnet("bench-subnet", vpc_id=vpc.id, cidr_block="10.200.0.0/24",
                            map_public_ip_on_launch=True, region=REGION, tags=TAGS)
    igw = aws.ec2.InternetGateway("bench-igw", vpc_id=vpc.id, region=REGION, tags=TAGS)
    aws.ec2.Route("bench-default-route", route_table_id=vpc.main_route_table_id,
                  destination_cidr_block="0.0.0.0/0", gateway_id=igw.id, region=REGION)
    ingress = [{"protocol": "tcp", "from_port": 22, "to_port": 22, "cidr_blocks": ["0.0.0.0/0"]}]
    if NODES > 1:
        ingress.append({"protocol": "-1", "from_port": 0, "to_port": 0, "self": True})
    sg = aws.ec2.SecurityGroup("bench-sg", vpc_id=vpc.id, ingress=ingress, egress=[
        {"protocol": "-1", "from_port": 0, "to_port": 0, "cidr_blocks": ["0.0.0.0/0"]}],
        region=REGION, tags=TAGS)
    key = aws.ec2.KeyPair("bench-key", public_key=KEY, region=REGION, tags=TAGS)
    pg = aws.ec2.PlacementGroup("bench-placement", strategy="cluster", region=REGION,
                                tags=TAGS) if NODES > 1 else None
    lt = aws.ec2.LaunchTemplate("bench-efa", region=REGION, tags=TAGS, network_interfaces=[
        {"network_card_index": card, "device_index": 0 if card == 0 else 1,
         "interface_type": "efa", "subnet_id": subnet.id, "security_groups": [sg.id],
         "delete_on_termination": "true"} for card in range(32)])
    dlami = "Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04) *"
    ami = aws.ec2.get_ami_output(most_recent=True, owners=["amazon"], region=REGION, filters=[
        {"name": "name", "values": [dlami]},
        {"name": "architecture", "values": ["x86_64"]}]).id
    nodes = []
    for rank in range(NODES):
        tags = {**TAGS, "taskstack:rank": str(rank), "Name": f"bench-{rank}"}
        vm = aws.ec2.Instance(f"bench-{rank}", ami=ami, instance_type="p5.48xlarge",
            key_name=key.key_name, user_data="#!/bin/bash\n", user_data_replace_on_change=True,
            instance_initiated_shutdown_behavior="terminate",
            root_block_device={"volume_size": 100, "volume_type": "gp3",
                               "delete_on_termination": True},
            placement_group=pg.name if pg else None,
            launch_template={"id": lt.id, "version": "$Latest"},
            region=REGION, tags=tags, volume_tags=tags)
        eip = aws.ec2.Eip(f"bench-{rank}-eip", domain="vpc", region=REGION,
            network_interface=vm.primary_network_interface_id,
            tags={**TAGS, "taskstack:rank": str(rank)},
            opts=pulumi.ResourceOptions(depends_on=[igw]))
        nodes.append({"rank": rank, "instance_id": vm.id, "public_ip": eip.public_ip,
                      "private_ip": vm.private_ip})
    pulumi.export("nodes", nodes)


mocks = Mocks()
pulumi.runtime.set_mocks(mocks, project="bench", stack="bench", preview=False)
_sync_await(stack.run_pulumi_func(program))
outputs = _sync_await(pulumi.Output.from_input(settings.get_root_resource().outputs).future())
counts = {}
for r in mocks.recorded:
    counts[r["type"]] = counts.get(r["type"], 0) + 1
print(json.dumps({"counts": counts, "resources": sorted(mocks.recorded, key=lambda r: (
    r["type"], r["name"])), "outputs": outputs}, sort_keys=True, default=str))
"""


def run() -> list[dict[str, Any]]:
    """Rows for wall time and peak memory at 1, 8 and 64 nodes."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-plan-") as folder:
        tmp = Path(folder)
        task = tmp / "bench.dstack.yml"
        task.write_text(TASK)
        baseline = tmp / "baseline.py"
        baseline.write_text(BASELINE)
        env = {"TASKSTACK_HOME": str(tmp / "home"), "TASKSTACK_OFFLINE": "1"}

        for nodes in NODES:
            ours = [_dstack(), "plan", "-f", str(task), "--backend", "aws"]
            ours += ["--nodes", str(nodes), "--json"]
            theirs = [sys.executable, str(baseline), str(nodes)]
            _check_same_resources(ours, theirs, env=env, nodes=nodes)

            ours_time, ours_mem, base_time, base_mem = _interleaved(ours, theirs, env=env)
            how = f"median of {REPEAT} fresh processes; p5.48xlarge, 32 EFA interfaces each"
            rows.append(
                row(
                    f"dstack plan, {nodes} AWS node(s): wall time",
                    taskstack=ours_time,
                    baseline=base_time,
                    unit="s",
                    how=f"bare Pulumi SDK + hand-written program under mocks; {how}",
                )
            )
            rows.append(
                row(
                    f"dstack plan, {nodes} AWS node(s): peak memory",
                    taskstack=ours_mem,
                    baseline=base_mem,
                    unit="MiB",
                    how=f"max RSS of the child (wait4); {how}",
                )
            )
    return rows


def _dstack() -> str:
    return str(Path(sys.executable).with_name("dstack"))


def _interleaved(
    ours: list[str], theirs: list[str], *, env: dict[str, str]
) -> tuple[float, float, float, float]:
    """Medians of both sides, run alternately so a busy machine slows both alike."""
    samples: dict[str, list[tuple[float, int]]] = {"ours": [], "theirs": []}
    for _ in range(REPEAT):
        samples["ours"].append(run_child(ours, env=env))
        samples["theirs"].append(run_child(theirs, env=env))

    def medians(side: str) -> tuple[float, float]:
        times, peaks = zip(*samples[side], strict=True)
        return statistics.median(times), statistics.median(peaks)

    return (*medians("ours"), *medians("theirs"))


def _check_same_resources(
    ours: list[str], theirs: list[str], *, env: dict[str, str], nodes: int
) -> None:
    """Both sides must declare the same resources, or the ratio compares different work."""
    full_env = {**os.environ, **env}
    mine = json.loads(_stdout(ours, env=full_env))["preview"]["counts"]
    base = json.loads(_stdout(theirs, env=full_env))["counts"]
    if mine != base:
        raise RuntimeError(f"{nodes} nodes: taskstack declares {mine}, the baseline {base}")


def _stdout(argv: list[str], *, env: dict[str, str]) -> str:
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed: {done.stderr.strip()[-400:]}")
    return done.stdout


if __name__ == "__main__":
    for result in run():
        print(result)
