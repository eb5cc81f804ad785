from __future__ import annotations

import os
import socket
import subprocess
import tarfile
from pathlib import Path

import pytest

from taskstack.errors import RunError
from taskstack.runtime.workdir import (
    extract_snapshot,
    list_files,
    repo_id,
    repo_root,
    write_snapshot,
)


def _git(cwd: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
    )


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    (root / "src").mkdir(parents=True)
    (root / "src" / "train.py").write_text("print('committed')\n")
    (root / "gone.txt").write_text("deleted later\n")
    (root / ".gitignore").write_text("*.ckpt\nbuild/\n")
    _git(root, "init", "-q")
    _git(root, "add", ".")
    _git(root, "commit", "-q", "-m", "first")

    # The work tree now differs from the commit in every way a snapshot must honour.
    (root / "src" / "train.py").write_text("print('uncommitted')\n")
    (root / "notes.md").write_text("untracked\n")
    (root / "model.ckpt").write_text("ignored\n")
    (root / "build").mkdir()
    (root / "build" / "out.bin").write_text("ignored\n")
    (root / "gone.txt").unlink()
    return root


def test_git_snapshot_holds_the_work_tree_as_git_sees_it(repo: Path, tmp_path: Path) -> None:
    snapshot = write_snapshot(repo, tmp_path / "snap.tar")

    with tarfile.open(snapshot.archive) as tar:
        names = sorted(tar.getnames())
        edited = tar.extractfile("src/train.py").read()  # type: ignore[union-attr]
    assert names == [".gitignore", "notes.md", "src/train.py"]
    assert edited == b"print('uncommitted')\n"
    assert snapshot.git and snapshot.files == 3


def test_plain_directory_is_copied_whole(tmp_path: Path) -> None:
    root = tmp_path / "plain"
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "b" / "c.txt").write_text("deep\n")
    (root / "model.ckpt").write_text("kept: no git, no ignore rules\n")

    paths, from_git = list_files(root)

    assert (sorted(paths), from_git) == (["a/b/c.txt", "model.ckpt"], False)


def test_extract_recreates_files_with_modes(repo: Path, tmp_path: Path) -> None:
    script = repo / "run.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o755)
    snapshot = write_snapshot(repo, tmp_path / "snap.tar")

    extract_snapshot(snapshot.archive, tmp_path / "node0")

    copy = tmp_path / "node0" / "run.sh"
    assert copy.read_text() == "#!/bin/sh\necho hi\n"
    assert copy.stat().st_mode & 0o111
    assert (tmp_path / "node0" / "src" / "train.py").read_text() == "print('uncommitted')\n"


def test_repo_root_is_the_git_top_level(repo: Path) -> None:
    assert repo_root(repo / "src") == repo.resolve()


def test_repo_id_is_stable_and_follows_the_remote(repo: Path, tmp_path: Path) -> None:
    first = repo_id(repo)
    _git(repo, "remote", "add", "origin", "https://example.com/team/models.git")

    assert repo_id(repo) == repo_id(repo) != first
    assert len(first) == 8


def test_a_huge_plain_directory_is_refused(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr("taskstack.runtime.workdir.PLAIN_MAX_FILES", 3)
    for index in range(5):
        (tmp_path / f"f{index}").write_text("x")

    with pytest.raises(RunError, match=r"is not a git repository and holds more than 3 files"):
        list_files(tmp_path)


def test_links_out_of_the_directory_are_left_out(tmp_path: Path) -> None:
    root = tmp_path / "plain"
    root.mkdir()
    (root / "data.txt").write_text("kept\n")
    (root / "inside").symlink_to("data.txt")
    (root / "outside").symlink_to("/usr/bin/env")
    archive = tmp_path / "snap.tar"

    write_snapshot(root, archive)
    extract_snapshot(archive, tmp_path / "node")

    assert (tmp_path / "node" / "inside").read_text() == "kept\n"
    assert not (tmp_path / "node" / "outside").exists()


def test_the_state_folder_inside_the_directory_is_not_shipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "plain"
    (root / "state" / "runs").mkdir(parents=True)
    (root / "state" / "runs" / "record.json").write_text("{}")
    (root / "task.py").write_text("print()\n")
    monkeypatch.setenv("TASKSTACK_HOME", str(root / "state"))

    paths, _ = list_files(root)

    assert paths == ["task.py"]


def test_an_unsafe_archive_is_one_clear_error(tmp_path: Path) -> None:
    archive = tmp_path / "evil.tar"
    with tarfile.open(archive, "w") as tar:
        info = tarfile.TarInfo("escape")
        info.type = tarfile.SYMTYPE
        info.linkname = "/etc/passwd"
        tar.addfile(info)

    with pytest.raises(RunError, match="unsafe entry"):
        extract_snapshot(archive, tmp_path / "node")


def test_sockets_and_fifos_are_left_out_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "plain"
    root.mkdir()
    (root / "data.txt").write_text("kept\n")
    os.mkfifo(root / "pipe")
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(root / "agent.sock"))
    archive = tmp_path / "snap.tar"

    try:
        snapshot = write_snapshot(root, archive)
    finally:
        server.close()
    extract_snapshot(archive, tmp_path / "node")

    assert sorted(p.name for p in (tmp_path / "node").iterdir()) == ["data.txt"]
    assert snapshot.files == 1
    assert f"skipping {root / 'pipe'}, a socket, fifo or device file" in caplog.text
    assert f"skipping {root / 'agent.sock'}" in caplog.text


@pytest.mark.parametrize("target", ["../../etc/hostname", "../plain/../../outside.txt"])
def test_relative_links_out_of_the_directory_are_left_out(tmp_path: Path, target: str) -> None:
    root = tmp_path / "plain"
    (root / "sub").mkdir(parents=True)
    (tmp_path / "outside.txt").write_text("secret\n")
    (root / "sub" / "link").symlink_to(target)
    archive = tmp_path / "snap.tar"

    write_snapshot(root, archive)

    with tarfile.open(archive) as tar:
        assert "sub/link" not in tar.getnames()


def test_a_link_to_a_link_that_leads_out_is_left_out(tmp_path: Path) -> None:
    root = tmp_path / "plain"
    root.mkdir()
    (tmp_path / "outside.txt").write_text("secret\n")
    (root / "out").symlink_to(tmp_path / "outside.txt")
    (root / "hop").symlink_to("out")
    archive = tmp_path / "snap.tar"

    write_snapshot(root, archive)

    with tarfile.open(archive) as tar:
        assert tar.getnames() == []


def test_a_fifo_inside_a_submodule_is_left_out(repo: Path, tmp_path: Path) -> None:
    library = tmp_path / "library"
    library.mkdir()
    (library / "lib.py").write_text("x = 1\n")
    _git(library, "init", "-q")
    _git(library, "add", ".")
    _git(library, "commit", "-q", "-m", "lib")
    _git(repo, "-c", "protocol.file.allow=always", "submodule", "add", "-q", str(library), "lib")
    os.mkfifo(repo / "lib" / "pipe")
    archive = tmp_path / "snap.tar"

    write_snapshot(repo, archive)
    extract_snapshot(archive, tmp_path / "node")

    assert (tmp_path / "node" / "lib" / "lib.py").read_text() == "x = 1\n"
    assert not (tmp_path / "node" / "lib" / "pipe").exists()


def test_an_absolute_link_into_the_directory_travels_as_a_relative_link(tmp_path: Path) -> None:
    root = tmp_path / "plain"
    (root / "data").mkdir(parents=True)
    (root / "data" / "train.csv").write_text("x,y\n")
    (root / "latest").symlink_to(root / "data")
    archive = tmp_path / "snap.tar"

    write_snapshot(root, archive)
    extract_snapshot(archive, tmp_path / "node")

    assert (tmp_path / "node" / "latest").is_symlink()
    assert (tmp_path / "node" / "latest" / "train.csv").read_text() == "x,y\n"
