"""The working-directory snapshot shipped to every node: a tar of the files a run sees.

In a git repository the snapshot holds the tracked files as they are on disk (uncommitted
changes included) and the untracked files git does not ignore, the way a user expects
`git status` to describe their work. Outside git it is a plain copy of the directory.
The same tar is extracted into each local node's folder and uploaded over SSH.
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

from taskstack.errors import RunError
from taskstack.home import taskstack_home

log = logging.getLogger(__name__)

PLAIN_MAX_FILES = 20_000
PLAIN_MAX_BYTES = 1 << 30
"""Outside git nothing says what belongs to the code; past these a copy is refused rather
than, say, copying a home directory into every node."""


@dataclass(frozen=True)
class Snapshot:
    """A snapshot written to `archive`: where it came from and how big it is."""

    root: Path
    archive: Path
    files: int
    size: int
    git: bool


def repo_root(start: Path) -> Path:
    """The directory a run snapshots: the git top level above `start`, else `start` itself.

    dstack treats the repository of the current directory as the run's code, so commands
    in a task are written relative to the repository root.
    """
    toplevel = _git(start, "rev-parse", "--show-toplevel")
    if toplevel is None:
        return start.resolve()
    return Path(toplevel.strip()).resolve()


def repo_id(root: Path) -> str:
    """A short stable id of the working directory: from its git remote, else its path."""
    remote = _git(root, "config", "--get", "remote.origin.url")
    source = remote.strip() if remote else str(root.resolve())
    return hashlib.sha256(source.encode()).hexdigest()[:8]


def list_files(root: Path) -> tuple[list[str], bool]:
    """The relative paths a snapshot of `root` holds, and whether git chose them."""
    listing = _git(root, "ls-files", "-z", "--cached", "--others", "--exclude-standard")
    if listing is None:
        return _walk(root), False

    # A tracked file deleted in the work tree is part of the uncommitted changes: skip it.
    paths = [path for path in listing.split("\0") if path and _exists(root / path)]
    return sorted(set(paths)), True


def write_snapshot(root: Path, archive: Path) -> Snapshot:
    """Write the snapshot of `root` as an uncompressed tar at `archive`.

    Uncompressed because the local backend extracts it at once; SSH uploads compress on
    the wire.
    """
    paths, from_git = list_files(root)
    size = files = 0
    with tarfile.open(archive, "w") as tar:
        for path in paths:
            info = _entry(tar, root=root, path=path)
            if info is None:
                continue
            files += 1
            if info.isreg():
                with open(root / path, "rb") as handle:
                    tar.addfile(info, handle)
                size += info.size
            elif info.issym():
                tar.addfile(info)
            else:
                # Directories here are git submodules.
                tar.add(
                    str(root / path), arcname=path, recursive=info.isdir(), filter=_transferable
                )

    log.debug("snapshot of %s: %d files, %d bytes (git: %s)", root, files, size, from_git)
    return Snapshot(root=root, archive=archive, files=files, size=size, git=from_git)


def _entry(tar: tarfile.TarFile, *, root: Path, path: str) -> tarfile.TarInfo | None:
    """The tar header of `path`, or None (with a warning) for what a node cannot receive."""
    # tarfile has no header for a socket (None) and the "data" filter refuses to extract
    # fifos and devices, so only files, directories and links travel.
    info = tar.gettarinfo(str(root / path), arcname=path)
    if info is None or not (info.isreg() or info.isdir() or info.issym()):
        log.warning("snapshot: skipping %s, a socket, fifo or device file", root / path)
        return None
    if info.issym() and not _inside(root, root / path):
        # A node has no such target; extracting it would be refused as unsafe.
        log.warning("snapshot: skipping %s, a link to outside %s", path, root)
        return None
    if info.issym() and os.path.isabs(info.linkname):
        # An absolute link into the directory names this machine's path; on a node the
        # copy lives elsewhere, so it travels as the same link made relative.
        target = Path(os.path.normpath(info.linkname))
        base = (root / path).parent
        info.linkname = os.path.relpath(
            target, base if target.is_relative_to(base) else base.resolve()
        )
    return info


def _transferable(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
    """`tar.add`'s filter inside a submodule: leave out fifos and devices, as `_entry` does."""
    if info.isreg() or info.isdir() or info.issym() or info.islnk():
        return info
    log.warning("snapshot: skipping %s, a fifo or device file", info.name)
    return None


def extract_snapshot(archive: Path, dest: Path) -> None:
    """Extract a snapshot into `dest` (created if needed), refusing paths that leave it."""
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "r") as tar:
        # The "data" filter rejects absolute paths, `..` and links pointing outside `dest`.
        try:
            tar.extractall(dest, filter="data")
        except tarfile.FilterError as exc:
            raise RunError(f"the working-directory snapshot holds an unsafe entry: {exc}") from exc


def _git(cwd: Path, *args: str) -> str | None:
    """Output of a git command in `cwd`, or None when git is missing or `cwd` is no repo."""
    try:
        done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        return None
    except NotADirectoryError as exc:
        raise RunError(f"working directory {cwd} is not a directory") from exc
    if done.returncode != 0:
        return None
    return done.stdout


def _walk(root: Path) -> list[str]:
    paths: list[str] = []
    size = 0
    # The state folder may sit inside the directory (TASKSTACK_HOME=./state); never ship it.
    state = taskstack_home().resolve()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if (Path(dirpath) / d).resolve() != state)
        base = Path(dirpath).relative_to(root)
        paths.extend(str(base / name) for name in sorted(filenames))
        # Links to directories are not followed by os.walk; keep them as links.
        paths.extend(str(base / name) for name in dirnames if (Path(dirpath) / name).is_symlink())
        size += sum(_size(Path(dirpath) / name) for name in filenames)
        if len(paths) > PLAIN_MAX_FILES or size > PLAIN_MAX_BYTES:
            raise RunError(
                f"{root} is not a git repository and holds more than {PLAIN_MAX_FILES} files "
                f"or {PLAIN_MAX_BYTES >> 20} MB; run `dstack apply` from the task's git "
                f"repository or a smaller directory"
            )
    return paths


def _inside(root: Path, link: Path) -> bool:
    """Whether a symbolic link resolves to a path inside `root`, by its text and on disk.

    On disk too, because a link may point inside at another link that leads out.
    """
    target = Path(os.path.normpath(link.parent / os.readlink(link)))
    by_text = target.is_relative_to(root.resolve()) or target.is_relative_to(root)
    return by_text and Path(os.path.realpath(link)).is_relative_to(root.resolve())


def _size(path: Path) -> int:
    try:
        return path.lstat().st_size
    except OSError:
        return 0


def _exists(path: Path) -> bool:
    return os.path.lexists(path)
