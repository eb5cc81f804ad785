"""This machine as an offer: what the local backend can give a task, at $0.

The local backend runs a task's nodes as containers on this machine, so its one offer is the
machine itself: its CPUs, memory, the disk that holds the state folder, and its NVIDIA GPUs as
`nvidia-smi` reports them.
"""

from __future__ import annotations

import functools
import logging
import os
import platform
import shutil
import subprocess
from dataclasses import dataclass

from taskstack.compiler.catalog import Offer
from taskstack.home import taskstack_home

log = logging.getLogger(__name__)

LOCAL_BACKEND = "local"
NVIDIA_SMI_TIMEOUT = 10.0  # seconds; a wedged driver must not hang every apply

_GIB = 1024**3


@dataclass(frozen=True)
class Gpus:
    """The GPUs `nvidia-smi` lists; all GPUs of a machine are taken as one model."""

    name: str
    count: int
    memory_gb: float


@functools.cache
def local_offer() -> Offer:
    """This machine's one offer, measured once per process."""
    gpus = detect_gpus()
    return Offer(
        backend=LOCAL_BACKEND,
        region=LOCAL_BACKEND,
        instance_type=platform.node() or "localhost",
        price=0.0,
        spot=False,
        cpu=os.cpu_count() or 1,
        cpu_arch=_cpu_arch(platform.machine()),
        memory_gb=round(_memory_bytes() / _GIB, 1),
        disk_gb=int(_disk_bytes() // _GIB),
        disk_fixed=True,
        gpu_vendor="nvidia" if gpus else None,
        gpu_name=gpus.name if gpus else None,
        gpu_count=gpus.count if gpus else 0,
        gpu_memory_gb=gpus.memory_gb if gpus else None,
    )


def detect_gpus() -> Gpus | None:
    """The NVIDIA GPUs of this machine, or None without `nvidia-smi` or without GPUs."""
    binary = shutil.which("nvidia-smi")
    if binary is None:
        return None
    command = [binary, "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"]
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=NVIDIA_SMI_TIMEOUT, check=True
        )
    except (OSError, subprocess.SubprocessError) as exc:
        # A machine whose driver is broken can still run CPU tasks.
        log.warning("nvidia-smi failed, offering no GPUs: %s", exc)
        return None
    return parse_nvidia_smi(done.stdout)


def parse_nvidia_smi(output: str) -> Gpus | None:
    """GPUs from `nvidia-smi --query-gpu=name,memory.total --format=csv,noheader,nounits`.

    Names are reduced to gpuhunt's short form (`NVIDIA A100-SXM4-80GB` -> `A100`), and the
    memory is corrected to the card's nominal size where gpuhunt knows the card.
    """
    from gpuhunt import correct_gpu_memory_gib

    rows = [line.rsplit(",", 1) for line in output.splitlines() if line.strip()]
    if not rows:
        return None
    name = short_gpu_name(rows[0][0].strip())
    memory_mib = float(rows[0][1].strip())
    return Gpus(name=name, count=len(rows), memory_gb=correct_gpu_memory_gib(name, memory_mib))


def short_gpu_name(reported: str) -> str:
    """gpuhunt's name of a card from the name the driver reports, else the reported name."""
    from gpuhunt import KNOWN_NVIDIA_GPUS

    squeezed = reported.upper()
    for word in ("NVIDIA", "GEFORCE", "TESLA", " "):
        squeezed = squeezed.replace(word, "")
    # Longest first, so `A100` does not claim an `A1000` and `L40S` wins over `L40`.
    known = sorted({gpu.name for gpu in KNOWN_NVIDIA_GPUS}, key=len, reverse=True)
    for name in known:
        if squeezed.startswith(name.upper()):
            return name
    return reported


def _cpu_arch(machine: str) -> str:
    return "arm" if machine.lower() in ("aarch64", "arm64") else "x86"


def _memory_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _disk_bytes() -> int:
    """Size of the disk that holds the state folder (the nearest folder that exists)."""
    folder = taskstack_home()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return shutil.disk_usage(folder).total
