"""Test hosts: network namespaces on this machine, each with its own OpenSSH and Docker engine.

A pytest plugin. The session-scoped `testbed` fixture hands out `TestHost`s; `test_hosts` is
two ready hosts shared by the whole session. Everything is torn down at session end, by PID.

Layout (see `/work/shared/TESTBED.md` for the measured facts behind each choice):

- one bridge per pytest session (`tsbr<pid>`) holding the gateway address `10.200.255.254/32`;
  each host gets a veth into it, its address as a /16 inside its namespace (so hosts of one
  session reach each other directly), and a /32 route on the root side. Per-host /32 routes
  instead of one /16 let two pytest sessions run side by side without stealing each other's
  traffic, as long as their hosts use different addresses.
- daemons start with `nsenter --net=/run/netns/NAME`: `ip netns exec` remounts /sys, which
  hides the cgroup mounts, and containers then fail to start.
- sshd: own config, host key, pid file and authorized keys; `SetEnv DOCKER_HOST` points every
  session at the host's own engine.
- dockerd: vfs storage, own data-root, exec-root, pidfile, socket and containerd namespace.

Network rule: the testbed only ever connects to its own hosts' addresses and to unix sockets.
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from taskstack.runtime.spec import Node
from tests.testbed.busybox import IMAGE as BUSYBOX_IMAGE
from tests.testbed.busybox import busybox_binary, busybox_rootfs

SUBNET = ipaddress.ip_network("10.200.0.0/16")
GATEWAY = "10.200.255.254"
REQUIRE_ENV = "TASKSTACK_REQUIRE_TESTBED"

# Auto-allocated hosts live in the upper half of the subnet; addresses a test asks for
# (the e2e test uses the ones moto picked) are usually in the lower half.
_AUTO_RANGE = ipaddress.ip_network("10.200.128.0/17")
_READY_TIMEOUT = 20.0
_TOOLS = ("ip", "nsenter", "ssh", "ssh-keygen", "docker", "busybox")
_DAEMONS = ("/usr/sbin/sshd", "/usr/sbin/dockerd")


class TestbedError(RuntimeError):
    """The testbed could not build or drive a host (a defect of the machine or the testbed)."""


@dataclass
class TestHost:
    """One test host: a network namespace at `address` running sshd on port 22 and dockerd."""

    name: str
    address: str
    index: int
    directory: Path
    testbed: Testbed = field(repr=False)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict, repr=False)
    port: int = 22
    user: str = "root"

    __test__ = False  # not a test class, despite the name

    @property
    def netns(self) -> str:
        return self.name

    @property
    def docker_socket(self) -> Path:
        return self.directory / "docker.sock"

    @property
    def host_key_path(self) -> Path:
        return self.directory / "ssh_host_ed25519_key"

    @property
    def authorized_keys_path(self) -> Path:
        return self.directory / "authorized_keys"

    def host_public_key(self) -> str:
        """The host's current public key, as `ssh-ed25519 AAAA...`."""
        text = self.host_key_path.with_suffix(".pub").read_text()
        return " ".join(text.split()[:2])

    def authorize(self, public_key: str) -> None:
        """Let `public_key` (an OpenSSH public key line) log in as root."""
        with self.authorized_keys_path.open("a") as keys:
            keys.write(public_key.strip() + "\n")

    def docker(self, *args: str, input: bytes | None = None) -> str:
        """Run the docker CLI against this host's engine through its unix socket; stdout."""
        argv = ["docker", "-H", f"unix://{self.docker_socket}", *args]
        done = subprocess.run(argv, input=input, capture_output=True, timeout=120)
        if done.returncode != 0:
            raise TestbedError(f"{' '.join(argv)}: {done.stderr.decode(errors='replace')}")
        return done.stdout.decode()

    def containers(self) -> list[str]:
        """Names of every container on this host's engine, running or not."""
        return self.docker("ps", "-a", "--format", "{{.Names}}").split()

    def ssh_argv(self, *command: str) -> list[str]:
        """An OpenSSH client command line that runs `command` on this host as root."""
        return [*self.testbed.ssh_base_argv(), f"{self.user}@{self.address}", *command]

    def import_busybox(self) -> None:
        """Import the busybox rootfs as `localhost/busybox:latest`, over SSH stdin."""
        argv = self.ssh_argv("docker", "import", "-", BUSYBOX_IMAGE)
        done = subprocess.run(argv, input=busybox_rootfs(), capture_output=True, timeout=120)
        if done.returncode != 0:
            raise TestbedError(f"docker import on {self.address}: {done.stderr.decode()}")

    def node(self, rank: int = 0, key_path: Path | None = None) -> Node:
        """This host as a run's node; logs in with the testbed's key unless told otherwise."""
        return Node(
            rank=rank,
            address=self.address,
            private_ip=self.address,
            user=self.user,
            port=self.port,
            key_path=key_path or self.testbed.client_key_path,
        )

    def pids(self) -> list[int]:
        """Every process in this host's network namespace."""
        done = subprocess.run(["ip", "netns", "pids", self.name], capture_output=True, text=True)
        return [int(pid) for pid in done.stdout.split()]


class Testbed:
    """A factory of test hosts for one pytest session; `close()` removes everything it made."""

    __test__ = False

    def __init__(self, root: Path) -> None:
        self.root = root
        self.session = os.getpid()
        self.bridge = f"tsbr{self.session}"
        self.hosts: list[TestHost] = []
        self.shared_hosts: list[TestHost] = []
        """The hosts of the `test_hosts` fixture, made once per session."""
        self._counter = itertools.count()
        self.client_key_path = root / "client_ed25519"
        self.known_hosts_path = root / "known_hosts"

    # -- lifecycle -------------------------------------------------------------------------

    def open(self) -> None:
        """Create the bridge and the client key every host authorizes."""
        self.root.mkdir(parents=True, exist_ok=True)
        _keygen(self.client_key_path, comment="taskstack-testbed")
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{GATEWAY}/32", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")

    def close(self) -> None:
        """Stop every host's processes by PID, then remove namespaces, links and folders."""
        for host in reversed(self.hosts):
            with contextlib.suppress(Exception):
                self._stop_containers(host)
            self._kill_host_processes(host, graceful=True)
            self._remove_host_network(host)
        self.hosts.clear()
        self.shared_hosts.clear()
        _run(["ip", "link", "del", self.bridge], check=False)
        _unmount_below(self.root)
        shutil.rmtree(self.root, ignore_errors=True)

    # -- hosts -----------------------------------------------------------------------------

    def create_host(
        self,
        address: str | None = None,
        authorized_key: str | None = None,
        busybox: bool = True,
    ) -> TestHost:
        """Start a host at `address` (or a free one), authorizing `authorized_key` for root.

        The testbed's own client key is always authorized too (it imports the busybox image,
        which `busybox=False` skips).
        """
        index = next(self._counter)
        address = self._claim_address(address)
        host = TestHost(
            name=f"tsh{self.session}-{index}",
            address=address,
            index=index,
            directory=self.root / f"h{index}",
            testbed=self,
        )
        self.hosts.append(host)

        host.directory.mkdir(parents=True)
        self._add_host_network(host)
        self._write_ssh_files(host, authorized_key)
        self.start_sshd(host)
        self._start_dockerd(host)
        self._wait_ready(host)
        if busybox:
            host.import_busybox()
        return host

    def remove_host(self, host: TestHost) -> None:
        """Tear one host down now: its containers, processes, namespace, link and folder."""
        with contextlib.suppress(Exception):
            self._stop_containers(host)
        self._kill_host_processes(host, graceful=True)
        self._remove_host_network(host)
        shutil.rmtree(host.directory, ignore_errors=True)
        self.hosts.remove(host)
        self._write_known_hosts()

    def leftovers(self, host: TestHost) -> list[str]:
        """What still exists of `host` (namespace, link, route, processes, folder); [] once
        it is fully gone."""
        found = []
        if host.name in _run(["ip", "netns", "list"]).stdout.split():
            found.append(f"network namespace {host.name}")
            found += [f"process {pid}" for pid in host.pids()]
        if _run(["ip", "link", "show", self._veth(host)], check=False).returncode == 0:
            found.append(f"link {self._veth(host)}")
        if host.address in _routed_addresses():
            found.append(f"route to {host.address}")
        if host.directory.exists():
            found.append(f"folder {host.directory}")
        return found

    def kill(self, host: TestHost) -> None:
        """Fault injection: SIGKILL everything on the host (sshd and its sessions, dockerd,
        containers), as if the machine vanished. Its address stops answering on port 22."""
        for pid in self._container_pids(host):
            _signal(pid, signal.SIGKILL)
        self._kill_host_processes(host, graceful=False)

    def rotate_host_key(self, host: TestHost) -> None:
        """Give the host a new SSH host key and restart its sshd (a changed-key scenario)."""
        self.stop_sshd(host)
        host.host_key_path.unlink()
        host.host_key_path.with_suffix(".pub").unlink()
        _keygen(host.host_key_path, comment=host.name)
        self.start_sshd(host)
        _wait_for(lambda: _tcp_open(host.address, host.port), what=f"sshd on {host.address}")

    def start_sshd(self, host: TestHost) -> None:
        """Start the host's sshd in its namespace and record it in the known_hosts file."""
        config = host.directory / "sshd_config"
        argv = ["/usr/sbin/sshd", "-D", "-e", "-f", str(config)]
        host.processes["sshd"] = self._spawn(host, argv, log="sshd.log")
        self._write_known_hosts()

    def stop_sshd(self, host: TestHost) -> None:
        """Stop the host's listening sshd (sessions already open stay alive)."""
        process = host.processes.pop("sshd", None)
        if process is not None:
            process.kill()
            process.wait()

    def ssh_base_argv(self) -> list[str]:
        """OpenSSH client options: the testbed key, host keys pinned from known_hosts."""
        return [
            "ssh",
            "-i",
            str(self.client_key_path),
            "-o",
            f"UserKnownHostsFile={self.known_hosts_path}",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "LogLevel=ERROR",
        ]

    @property
    def client_public_key(self) -> str:
        return self.client_key_path.with_suffix(".pub").read_text().strip()

    # -- steps of create_host ----------------------------------------------------------------

    def _claim_address(self, address: str | None) -> str:
        taken = {host.address for host in self.hosts} | _routed_addresses()
        if address is None:
            free = (str(ip) for ip in _AUTO_RANGE.hosts() if str(ip) not in taken)
            address = next(ip for ip in free if ip != GATEWAY)
        if ipaddress.ip_address(address) not in SUBNET or address == GATEWAY:
            raise TestbedError(f"test host address {address} is outside {SUBNET} or reserved")
        if address in taken:
            raise TestbedError(f"test host address {address} is already in use on this machine")
        return address

    def _add_host_network(self, host: TestHost) -> None:
        outer, inner = self._veth(host), "eth0"
        _ip("netns", "add", host.name)
        _ip("link", "add", outer, "type", "veth", "peer", "name", inner, "netns", host.name)
        _ip("link", "set", outer, "master", self.bridge, "up")
        inside = ["-n", host.name]
        _ip(*inside, "link", "set", "lo", "up")
        _ip(*inside, "addr", "add", f"{host.address}/{SUBNET.prefixlen}", "dev", inner)
        _ip(*inside, "link", "set", inner, "up")
        _ip(*inside, "route", "add", "default", "via", GATEWAY)
        self._forget_neighbour(host)
        _ip("route", "add", f"{host.address}/32", "dev", self.bridge, "src", GATEWAY)

    def _veth(self, host: TestHost) -> str:
        # Interface names are limited to 15 characters: "tsv" + pid (<= 7) + "-" + index.
        return f"tsv{self.session}-{host.index}"

    def _write_ssh_files(self, host: TestHost, authorized_key: str | None) -> None:
        _keygen(host.host_key_path, comment=host.name)
        host.authorized_keys_path.write_text("")
        host.authorize(self.client_public_key)
        if authorized_key:
            host.authorize(authorized_key)
        config = _SSHD_CONFIG.format(
            address=host.address,
            port=host.port,
            host_key=host.host_key_path,
            pid_file=host.directory / "sshd.pid",
            authorized_keys=host.authorized_keys_path,
            docker_host=f"unix://{host.docker_socket}",
        )
        (host.directory / "sshd_config").write_text(config)
        # sshd refuses to start without its privilege separation folder.
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)

    def _start_dockerd(self, host: TestHost) -> None:
        config = {
            "storage-driver": "vfs",
            "data-root": str(host.directory / "docker"),
            "exec-root": str(host.directory / "x"),
            "pidfile": str(host.directory / "dockerd.pid"),
            "hosts": [f"unix://{host.docker_socket}"],
            "bip": f"10.201.{host.index % 250}.1/24",
            # Two engines must not share containerd state if a system containerd runs.
            "containerd-namespace": f"moby-{host.name}",
            "containerd-plugins-namespace": f"plugins-{host.name}",
            # 20000 is the hard nofile limit on these machines; higher values fail.
            "default-ulimits": {"nofile": {"Name": "nofile", "Soft": 20000, "Hard": 20000}},
            "shutdown-timeout": 2,
        }
        config_path = host.directory / "daemon.json"
        config_path.write_text(json.dumps(config, indent=2))
        argv = ["/usr/sbin/dockerd", "--config-file", str(config_path)]
        host.processes["dockerd"] = self._spawn(host, argv, log="dockerd.log")

    def _wait_ready(self, host: TestHost) -> None:
        try:
            _wait_for(lambda: _tcp_open(host.address, host.port), what=f"sshd on {host.address}")
            _wait_for(lambda: self._docker_up(host), what=f"dockerd of {host.name}")
        except TestbedError as exc:
            # The daemons' logs vanish with the host at teardown: keep their tails here.
            tails = [_tail(host.directory / log) for log in ("sshd.log", "dockerd.log")]
            raise TestbedError("\n".join([str(exc), *tails])) from None

    def _docker_up(self, host: TestHost) -> bool:
        if host.processes["dockerd"].poll() is not None:
            raise TestbedError(f"dockerd of {host.name} exited at start")
        return _docker_ping(host.docker_socket)

    def _spawn(self, host: TestHost, argv: list[str], log: str) -> subprocess.Popen[bytes]:
        # nsenter execs the daemon, so the Popen's pid is the daemon's own pid.
        command = ["nsenter", f"--net=/run/netns/{host.name}", *argv]
        with (host.directory / log).open("ab") as output:
            return subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def _write_known_hosts(self) -> None:
        lines = [
            f"{host.address} {host.host_public_key()}\n"
            for host in self.hosts
            if host.host_key_path.exists()
        ]
        self.known_hosts_path.write_text("".join(lines))

    # -- steps of close and kill ------------------------------------------------------------

    def _stop_containers(self, host: TestHost) -> None:
        if host.processes.get("dockerd") and _docker_ping(host.docker_socket):
            names = host.containers()
            if names:
                host.docker("rm", "-f", *names)

    def _container_pids(self, host: TestHost) -> list[int]:
        if not _docker_ping(host.docker_socket):
            return []
        with contextlib.suppress(TestbedError):
            ids = host.docker("ps", "-q").split()
            if ids:
                output = host.docker("inspect", "-f", "{{.State.Pid}}", *ids)
                return [int(pid) for pid in output.split() if int(pid) > 0]
        return []

    def _kill_host_processes(self, host: TestHost, graceful: bool) -> None:
        if graceful:
            dockerd = host.processes.get("dockerd")
            if dockerd is not None and dockerd.poll() is None:
                dockerd.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    dockerd.wait(timeout=10)
        # Every process left in the namespace: sshd sessions, containerd, shims, daemons.
        for pid in host.pids():
            _signal(pid, signal.SIGKILL)
        for process in host.processes.values():
            process.kill()
            process.wait()
        host.processes.clear()

    def _remove_host_network(self, host: TestHost) -> None:
        _unmount_below(host.directory)
        _run(["ip", "link", "del", self._veth(host)], check=False)
        _run(["ip", "netns", "del", host.name], check=False)
        _run(["ip", "route", "del", f"{host.address}/32", "dev", self.bridge], check=False)
        self._forget_neighbour(host)

    def _forget_neighbour(self, host: TestHost) -> None:
        # A host made again at a removed host's address has a new MAC; a cached neighbour
        # entry would send its first packets to the old one for tens of seconds.
        _run(["ip", "neigh", "flush", "to", host.address, "dev", self.bridge], check=False)


_SSHD_CONFIG = """\
Port {port}
ListenAddress {address}
HostKey {host_key}
PidFile {pid_file}
AuthorizedKeysFile {authorized_keys}
UsePAM no
StrictModes no
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
AllowTcpForwarding yes
MaxSessions 64
MaxStartups 64:30:128
SetEnv DOCKER_HOST={docker_host}
LogLevel ERROR
"""


# -- availability ---------------------------------------------------------------------------


def unavailable_reason() -> str | None:
    """Why test hosts cannot run on this machine, or None when they can."""
    if os.geteuid() != 0:
        return "test hosts need root (network namespaces, sshd, dockerd)"
    missing = [tool for tool in _TOOLS if shutil.which(tool) is None]
    missing += [daemon for daemon in _DAEMONS if not Path(daemon).exists()]
    if busybox_binary() is None:
        missing.append("busybox")
    if missing:
        return (
            f"test hosts need {', '.join(sorted(set(missing)))} "
            "(Debian: openssh-server docker.io busybox-static iproute2)"
        )
    return _subnet_conflict()


def _subnet_conflict() -> str | None:
    # Other pytest sessions' testbeds add /32 routes on their own bridges: those are fine.
    routes = json.loads(_run(["ip", "-j", "route", "show"]).stdout or "[]")
    for route in routes:
        destination = route.get("dst", "")
        if destination == "default" or route.get("dev", "").startswith("tsbr"):
            continue
        network = ipaddress.ip_network(destination, strict=False)
        if network.overlaps(SUBNET):
            return f"the test subnet {SUBNET} overlaps this machine's route {destination}"
    for line in Path("/etc/resolv.conf").read_text().splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == "nameserver":
            with contextlib.suppress(ValueError):
                if ipaddress.ip_address(parts[1]) in SUBNET:
                    return f"the test subnet {SUBNET} holds this machine's resolver {parts[1]}"
    return None


def skip_or_fail(reason: str) -> None:
    """Skip with `reason`, or fail when `TASKSTACK_REQUIRE_TESTBED=1` (CI must not skip)."""
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{reason} ({REQUIRE_ENV}=1 forbids skipping)")
    pytest.skip(reason)


# -- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def testbed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Testbed]:
    """The session's factory of test hosts; skips (or fails in CI) where hosts cannot run."""
    reason = unavailable_reason()
    if reason is not None:
        skip_or_fail(reason)

    # The plugin may be registered twice (root conftest and a folder's conftest): both
    # fixtures must hand out the one testbed, whose names derive from the session's pid.
    if _active:
        yield _active[0]
        return

    _sweep_stale_testbeds()
    # Unix socket paths are limited to 108 bytes: keep the root short, not under pytest's tmp.
    bed = Testbed(Path(f"/tmp/tstb-{os.getpid()}"))
    _active.append(bed)
    try:
        bed.open()
        yield bed
    finally:
        _active.remove(bed)
        bed.close()


_active: list[Testbed] = []


@pytest.fixture(scope="session")
def test_hosts(testbed: Testbed) -> list[TestHost]:
    """Two running hosts with busybox imported, shared by every test of the session."""
    if not testbed.shared_hosts:
        testbed.shared_hosts = [testbed.create_host(), testbed.create_host()]
    return testbed.shared_hosts


# -- helpers for tests that reach a task's forwarded port --------------------------------------


def free_local_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def http_get_local(url: str, attempts: int = 50) -> str:
    """The body at `url` on 127.0.0.1, retried while the server inside a container starts."""
    if not url.startswith("http://127.0.0.1:"):
        raise ValueError(f"{url}: tests only ever reach loopback or their own test hosts")
    for _ in range(attempts):
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.read().decode()
        except OSError:
            time.sleep(0.1)
    raise TestbedError(f"{url} never answered")


# -- helpers ---------------------------------------------------------------------------------


def _sweep_stale_testbeds() -> None:
    """Remove what a crashed pytest session left behind (its pid no longer runs)."""
    for netns in _run(["ip", "netns", "list"]).stdout.split():
        owner = _owner_pid(netns, prefix="tsh")
        if owner is None or _alive(owner):
            continue
        pids = _run(["ip", "netns", "pids", netns], check=False).stdout.split()
        for pid in pids:
            _signal(int(pid), signal.SIGKILL)
        _run(["ip", "netns", "del", netns], check=False)
    for link in json.loads(_run(["ip", "-j", "link", "show"]).stdout or "[]"):
        name = link.get("ifname", "")
        owner = _owner_pid(name, prefix="tsbr") or _owner_pid(name.split("@")[0], prefix="tsv")
        if owner is not None and not _alive(owner):
            _run(["ip", "link", "del", name.split("@")[0]], check=False)
    for folder in Path("/tmp").glob("tstb-*"):
        owner = _owner_pid(folder.name, prefix="tstb-")
        if owner is not None and not _alive(owner):
            _unmount_below(folder)
            shutil.rmtree(folder, ignore_errors=True)


def _owner_pid(name: str, prefix: str) -> int | None:
    if not name.startswith(prefix):
        return None
    digits = name[len(prefix) :].split("-")[0]
    return int(digits) if digits.isdigit() else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _routed_addresses() -> set[str]:
    routes = json.loads(_run(["ip", "-j", "route", "show"]).stdout or "[]")
    return {route["dst"] for route in routes if route.get("dst", "").count(".") == 3}


def _keygen(path: Path, comment: str) -> None:
    _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)])


def _ip(*args: str) -> None:
    _run(["ip", *args])


def _run(argv: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    if check and done.returncode != 0:
        raise TestbedError(f"{' '.join(argv)}: {done.stderr.strip()}")
    return done


def _signal(pid: int, signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def _unmount_below(folder: Path) -> None:
    # dockerd killed without a clean shutdown leaves shm and netns mounts under its roots.
    prefix = str(folder.resolve()) + "/"
    mounts = Path("/proc/self/mounts").read_text().splitlines()
    targets = [line.split()[1] for line in mounts if line.split()[1].startswith(prefix)]
    for target in sorted(targets, key=len, reverse=True):
        _run(["umount", "-l", target], check=False)


def _tcp_open(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=0.5):
            return True
    except OSError:
        return False


def _docker_ping(path: Path) -> bool:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(2)
            sock.connect(str(path))
            sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            status_line = sock.recv(64).split(b"\r\n", 1)[0]
            return b" 200 " in status_line + b" "
    except OSError:
        return False


def _tail(path: Path, lines: int = 15) -> str:
    if not path.exists():
        return f"{path.name}: (none)"
    return f"{path.name}:\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _wait_for(check, what: str, timeout: float = _READY_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    delay = 0.02
    while not check():
        if time.monotonic() > deadline:
            raise TestbedError(f"{what} was not ready after {timeout:.0f} s")
        time.sleep(delay)
        delay = min(delay * 2, 0.25)


def remove_lost_disks(run: str) -> None:
    """Remove what a lost machine takes with it: the run's node folders.

    Test hosts share this machine's disk, so a killed host's folders would outlive it.
    """
    from taskstack.runtime.remote import REMOTE_ROOT

    shutil.rmtree(Path(REMOTE_ROOT, run), ignore_errors=True)
    with contextlib.suppress(OSError):
        Path(REMOTE_ROOT).rmdir()  # only when empty: other runs may share it
