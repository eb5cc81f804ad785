"""A minimal busybox root filesystem as a tar archive, for `docker import` on test hosts.

Nothing can be pulled on these machines, so the test image is built from the static busybox
binary that the `busybox-static` Debian package installs (~2 MB).
"""

from __future__ import annotations

import functools
import io
import shutil
import subprocess
import tarfile
from pathlib import Path

IMAGE = "localhost/busybox:latest"

_DIRECTORIES = ("bin", "sbin", "usr/bin", "usr/sbin", "etc", "root", "proc", "sys", "dev", "www")
_PASSWD = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n"
_GROUP = "root:x:0:\nnogroup:x:65534:\n"


def busybox_binary() -> Path | None:
    """The static busybox binary on this machine, or None when it is not installed."""
    found = shutil.which("busybox")
    return Path(found) if found else None


@functools.cache
def busybox_rootfs() -> bytes:
    """A tar of a root filesystem whose every applet is a symlink to `/bin/busybox`."""
    binary = busybox_binary()
    if binary is None:
        raise FileNotFoundError("busybox is not installed (Debian package busybox-static)")

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for directory in _DIRECTORIES:
            _add_directory(archive, directory)
        _add_directory(archive, "tmp", mode=0o1777)
        archive.add(binary, arcname="bin/busybox")
        for applet in _applets(binary):
            _add_symlink(archive, applet, target="/bin/busybox")
        _add_text(archive, "etc/passwd", _PASSWD)
        _add_text(archive, "etc/group", _GROUP)
    return buffer.getvalue()


def _applets(binary: Path) -> list[str]:
    listing = subprocess.run(
        [str(binary), "--list-full"], capture_output=True, text=True, check=True
    )
    return [line for line in listing.stdout.split() if line and line != "bin/busybox"]


def _add_directory(archive: tarfile.TarFile, name: str, mode: int = 0o755) -> None:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = mode
    archive.addfile(info)


def _add_symlink(archive: tarfile.TarFile, name: str, target: str) -> None:
    info = tarfile.TarInfo(name)
    info.type = tarfile.SYMTYPE
    info.linkname = target
    archive.addfile(info)


def _add_text(archive: tarfile.TarFile, name: str, text: str) -> None:
    data = text.encode()
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    archive.addfile(info, io.BytesIO(data))
