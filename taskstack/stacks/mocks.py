"""Run a Pulumi inline program under the SDK's own mocks and record what it declares.

`pulumi.runtime.set_mocks` replaces the engine with `_RecordingMocks`, which records every
resource the program registers (type, name, inputs) and answers the way a provider would,
just enough for the program to go on:

- autonaming: a resource without an explicit name gets `<name>-<7 hex>` derived from its
  identity, so inputs fed from another resource's name (an AWS key pair's `key_name`, an
  Azure resource group's `name`) are present rather than missing;
- ids and addresses are fake but derived from the resource's identity, so two runs of one
  program are equal;
- the invokes the programs make (`aws.ec2.get_ami`, `aws.ec2.get_subnet`) get a plausible
  answer; any other invoke is a `StackError`.

Secrets are recorded as `[secret]`. The SDK's runtime settings are process-wide, so each run
gets its own thread (a fresh context and event loop) under a lock: any number of programs can
run one after another in one process.
"""

from __future__ import annotations

import hashlib
import ipaddress
import threading
from collections.abc import Callable
from typing import Any

import pulumi
from pulumi.runtime.rpc import is_rpc_secret

from taskstack.compiler.plan import tpu_slice
from taskstack.errors import StackError

# Defined in the SDK-free `preview` module so that `dstack plan` can say which SDK is missing;
# named here too, where the recording happens.
from taskstack.stacks.preview import SECRET_MASK, PreviewResource, paused_gc

PROJECT = "taskstack"

_LOCK = threading.Lock()


def run_program(
    program: Callable[[], None], *, stack: str, project: str = PROJECT
) -> tuple[tuple[PreviewResource, ...], dict[str, Any]]:
    """Run any inline program under the recording mocks: its resources and its outputs.

    Resources come sorted by type, then name (the SDK registers them from several threads,
    so arrival order varies). A benchmark's baseline program runs through here too.

    Raises:
        StackError: the program failed; the message carries the SDK's reasons.
    """
    mocks = _RecordingMocks(stack=stack)
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["outputs"] = _run_under_mocks(
                program, mocks=mocks, project=project, stack=stack
            )
        except BaseException as exc:  # handed to the calling thread below
            result["error"] = exc

    # A thread starts with an empty context, so the SDK's context-held settings and root
    # stack of an earlier preview are not seen, and it gets an event loop of its own.
    with _LOCK, paused_gc():
        # Daemon: Ctrl+C during a preview must not leave the process waiting for it.
        worker = threading.Thread(target=target, name=f"preview-{stack}", daemon=True)
        worker.start()
        worker.join()

    if "error" in result:
        raise _stack_error(result["error"], stack=stack) from result["error"]
    resources = tuple(sorted(mocks.recorded, key=lambda r: (r.type, r.name)))
    return resources, result["outputs"]


def _run_under_mocks(
    program: Callable[[], None], *, mocks: _RecordingMocks, project: str, stack: str
) -> dict[str, Any]:
    import asyncio

    from pulumi.runtime import settings
    from pulumi.runtime import stack as runtime_stack
    from pulumi.runtime.sync_await import _sync_await

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        settings.reset_options(project=project, stack=stack, preview=False)
        pulumi.runtime.set_mocks(mocks, project=project, stack=stack, preview=False)
        _sync_await(runtime_stack.run_pulumi_func(program))

        root = settings.get_root_resource()
        exported = dict(getattr(root, "outputs", {}))
        return {name: _sync_await(_resolved(value)) for name, value in exported.items()}
    finally:
        loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()
        asyncio.set_event_loop(None)


async def _resolved(value: Any) -> Any:
    """An exported value as plain data; a secret output as a whole becomes `[secret]`."""
    output = pulumi.Output.from_input(value)
    if await output.is_secret():
        return SECRET_MASK
    return _mask(await output.future())


def _stack_error(exc: BaseException, *, stack: str) -> StackError:
    if isinstance(exc, StackError):
        return exc
    # The SDK nests its reasons line by line ("While processing resource ... has risen: ...").
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    reason = "; ".join(lines) if lines else type(exc).__name__
    return StackError(f"the program of run `{stack}` failed under the preview mocks: {reason}")


def _mask(value: Any) -> Any:
    """Secrets become `[secret]`; the SDK's bookkeeping keys (`__defaults`) are dropped."""
    if is_rpc_secret(value):
        return SECRET_MASK
    if isinstance(value, dict):
        return {k: _mask(v) for k, v in value.items() if not k.startswith("__")}
    if isinstance(value, list | tuple):
        return [_mask(v) for v in value]
    # Numbers cross the SDK's protobuf boundary as floats: 200 comes back 200.0.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _unwrap(value: Any) -> Any:
    """Secrets as plain values, for the state the mocks hand back to the program."""
    if is_rpc_secret(value):
        return _unwrap(value["value"])
    if isinstance(value, dict):
        return {k: _unwrap(v) for k, v in value.items() if not k.startswith("__")}
    if isinstance(value, list):
        return [_unwrap(v) for v in value]
    return value


def _digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def _fake_ip(network: str, *parts: str) -> str:
    """An address inside `network` picked by a hash, so it is the same on every preview."""
    net = ipaddress.ip_network(network)
    offset = int(_digest(*parts), 16) % (net.num_addresses - 2) + 1
    return str(net.network_address + offset)


_GCP_API = "https://www.googleapis.com/compute/v1"

# Fake public addresses come from the benchmarking range (RFC 2544), never a real host's.
_PUBLIC_NET = "198.18.0.0/15"
_PRIVATE_NET = "10.0.0.0/8"

# AWS resource ids start with the kind of resource.
_AWS_ID_PREFIX = {
    "aws:ec2/instance:Instance": "i",
    "aws:ec2/vpc:Vpc": "vpc",
    "aws:ec2/subnet:Subnet": "subnet",
    "aws:ec2/internetGateway:InternetGateway": "igw",
    "aws:ec2/securityGroup:SecurityGroup": "sg",
    "aws:ec2/keyPair:KeyPair": "key",
    "aws:ec2/placementGroup:PlacementGroup": "pg",
    "aws:ec2/eip:Eip": "eipalloc",
    "aws:ec2/launchTemplate:LaunchTemplate": "lt",
    "aws:ec2/route:Route": "r",
}

# azure-native names a resource through an input named after its type; these break the rule.
_AZURE_NAME_INPUT = {
    "VirtualMachine": "vmName",
    "PublicIPAddress": "publicIpAddressName",
}

# The properties pulumi-aws autonames, for the types the AWS program declares.
_AWS_AUTONAMED = {
    "aws:ec2/keyPair:KeyPair": "keyName",
    "aws:ec2/securityGroup:SecurityGroup": "name",
    "aws:ec2/placementGroup:PlacementGroup": "name",
    "aws:ec2/launchTemplate:LaunchTemplate": "name",
}


class _RecordingMocks(pulumi.runtime.Mocks):
    """Records what the program registers and answers like a provider would, deterministically."""

    def __init__(self, *, stack: str) -> None:
        # Part of every fake id and name, so two runs of one stack get the same ones.
        self.stack = stack
        self.recorded: list[PreviewResource] = []
        # The SDK registers resources from executor threads.
        self._lock = threading.Lock()

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict]:
        key = _digest(self.stack, args.typ, args.name)
        # The provider fills autonamed properties into the inputs, so a preview shows them.
        inputs = {**(args.inputs or {})}
        inputs.update(_autonamed(inputs, typ=args.typ, name=args.name, key=key))
        with self._lock:
            self.recorded.append(
                PreviewResource(type=args.typ, name=args.name, inputs=_mask(inputs))
            )

        state = _unwrap(inputs)
        state.setdefault("name", f"{args.name}-{key[:7]}")
        _fake_outputs(state, typ=args.typ, key=key)
        return _fake_id(args.typ, state=state, key=key), state

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict, list]:
        answer = _INVOKES.get(args.token)
        if answer is None:
            raise StackError(f"the offline preview cannot answer the invoke `{args.token}`")
        return answer(_unwrap(args.args or {})), []


def _autonamed(inputs: dict[str, Any], *, typ: str, name: str, key: str) -> dict[str, str]:
    """The name properties the provider generates when absent, as Pulumi does: `name-1a2b3c4`."""
    generated = f"{name}-{key[:7]}"
    if typ.startswith("azure-native:"):
        type_name = typ.rsplit(":", 1)[-1]
        prop = _AZURE_NAME_INPUT.get(type_name, type_name[0].lower() + type_name[1:] + "Name")
        # azure-native also reports the name as the output `name`.
        value = inputs.get(prop) or generated
        return {prop: value, "name": value}
    if typ.startswith("gcp:"):
        prop = "name"
    else:
        prop = _AWS_AUTONAMED.get(typ, "")
    return {prop: generated} if prop and not inputs.get(prop) else {}


def _fake_id(typ: str, *, state: dict[str, Any], key: str) -> str:
    if typ in _AWS_ID_PREFIX:
        return f"{_AWS_ID_PREFIX[typ]}-{key[:17]}"
    if typ.startswith("azure-native:"):
        kind = typ.rsplit(":", 1)[-1]
        return f"/subscriptions/mock/resourceGroups/mock/providers/{kind}/{state['name']}"
    kind = typ.rsplit(":", 1)[-1]
    return f"projects/mock/{kind}/{state.get('name', key[:8])}"


def _fake_outputs(state: dict[str, Any], *, typ: str, key: str) -> None:
    """The computed outputs the programs read: addresses, interface ids, self links."""
    if typ.startswith("gcp:"):
        kind = typ.rsplit(":", 1)[-1]
        state.setdefault("selfLink", f"{_GCP_API}/projects/mock/{kind}/{state['name']}")
    filler = _OUTPUTS.get(typ)
    if filler is not None:
        filler(state, key)


def _aws_instance(state: dict[str, Any], key: str) -> None:
    state["privateIp"] = _fake_ip(_PRIVATE_NET, key, "private")
    state["primaryNetworkInterfaceId"] = f"eni-{key[:17]}"
    state["arn"] = f"arn:aws:ec2:mock:000000000000:instance/i-{key[:17]}"
    if state.get("associatePublicIpAddress") is not False:
        state["publicIp"] = _fake_ip(_PUBLIC_NET, key, "public")


def _aws_vpc(state: dict[str, Any], key: str) -> None:
    state["mainRouteTableId"] = f"rtb-{key[:17]}"


def _aws_eip(state: dict[str, Any], key: str) -> None:
    state["publicIp"] = _fake_ip(_PUBLIC_NET, key, "public")
    state["allocationId"] = f"eipalloc-{key[:17]}"


def _gcp_instance(state: dict[str, Any], key: str) -> None:
    state["instanceId"] = str(int(key[:15], 16))
    for index, interface in enumerate(state.get("networkInterfaces") or []):
        interface["networkIp"] = _fake_ip(_PRIVATE_NET, key, "private", str(index))
        for config in interface.get("accessConfigs") or []:
            config["natIp"] = _fake_ip(_PUBLIC_NET, key, "public", str(index))


def _gcp_tpu(state: dict[str, Any], key: str) -> None:
    """One network endpoint per host of the slice, as the TPU API reports them."""
    hosts = tpu_slice(state["acceleratorType"]).hosts
    external = (state.get("networkConfig") or {}).get("enableExternalIps", False)
    endpoints = []
    for host in range(hosts):
        endpoint: dict[str, Any] = {
            "ipAddress": _fake_ip(_PRIVATE_NET, key, "private", str(host)),
            "port": 8470,
        }
        if external:
            endpoint["accessConfigs"] = [
                {"externalIp": _fake_ip(_PUBLIC_NET, key, "public", str(host))}
            ]
        endpoints.append(endpoint)
    state["networkEndpoints"] = endpoints
    state["tpuVmId"] = str(int(key[:15], 16))


def _gcp_service_account(state: dict[str, Any], key: str) -> None:
    """The email and IAM member the provider derives from the account id and project."""
    project = state.setdefault("project", "mock")
    state["email"] = f"{state['accountId']}@{project}.iam.gserviceaccount.com"
    state["member"] = f"serviceAccount:{state['email']}"


def _azure_public_ip(state: dict[str, Any], key: str) -> None:
    state["ipAddress"] = _fake_ip(_PUBLIC_NET, key, "public")


def _azure_nic(state: dict[str, Any], key: str) -> None:
    for index, config in enumerate(state.get("ipConfigurations") or []):
        config["privateIPAddress"] = _fake_ip(_PRIVATE_NET, key, "private", str(index))


def _azure_vm(state: dict[str, Any], key: str) -> None:
    state["vmId"] = f"{key[:8]}-{key[8:12]}-{key[12:16]}-{key[16:20]}-{key[20:32]}"
    if isinstance(state.get("identity"), dict):  # a system-assigned identity's principal
        state["identity"]["principalId"] = f"principal-{key[32:44]}"


_OUTPUTS: dict[str, Callable[[dict[str, Any], str], None]] = {
    "aws:ec2/instance:Instance": _aws_instance,
    "aws:ec2/vpc:Vpc": _aws_vpc,
    "aws:ec2/eip:Eip": _aws_eip,
    "gcp:compute/instance:Instance": _gcp_instance,
    "gcp:tpu/v2Vm:V2Vm": _gcp_tpu,
    "gcp:serviceaccount/account:Account": _gcp_service_account,
    "azure-native:network:PublicIPAddress": _azure_public_ip,
    "azure-native:network:NetworkInterface": _azure_nic,
    "azure-native:compute:VirtualMachine": _azure_vm,
}


def _get_ami(args: dict[str, Any]) -> dict[str, Any]:
    """No real AMI id is known offline, so the id says which lookup `up` will make."""
    filters = {f["name"]: f["values"] for f in args.get("filters") or []}
    pattern = (filters.get("name") or ["*"])[0]
    owners = ",".join(args.get("owners") or [])
    image_id = f"lookup:{owners}:{pattern}"
    return {
        "id": image_id,
        "imageId": image_id,
        "name": pattern,
        "architecture": (filters.get("architecture") or ["x86_64"])[0],
        "owners": args.get("owners") or [],
        "mostRecent": True,
    }


def _get_subnet(args: dict[str, Any]) -> dict[str, Any]:
    subnet_id = str(args.get("id") or "subnet-mock")
    return {
        "id": subnet_id,
        "vpcId": f"vpc-{_digest(subnet_id)[:17]}",
        "availabilityZone": "mock-zone",
        "cidrBlock": "10.0.0.0/24",
    }


_INVOKES: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "aws:ec2/getAmi:getAmi": _get_ami,
    "aws:ec2/getSubnet:getSubnet": _get_subnet,
}
