"""mtp_ds.fileio: atomic writes that are fsynced (file, then its directory) and leave nothing on failure."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from mtp_ds.fileio import atomic_write_bytes, atomic_write_json, atomic_write_text, atomic_writer, fsync_dir, fsync_tree


@pytest.fixture
def fsynced(monkeypatch):
    """Every fd passed to os.fsync, as (kind, inode, path through /proc/self/fd), recorded before it is synced."""
    calls = []
    real = os.fsync

    def record(descriptor):
        info = os.fstat(descriptor)
        kind = "dir" if stat.S_ISDIR(info.st_mode) else "file" if stat.S_ISREG(info.st_mode) else "other"
        link = Path(f"/proc/self/fd/{descriptor}")
        calls.append((kind, info.st_ino, Path(os.readlink(link)) if link.exists() else None))
        real(descriptor)

    monkeypatch.setattr(os, "fsync", record)
    return calls


def leftovers(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir() if path.name.endswith(".tmp"))


def test_round_trips(tmp_path):
    atomic_write_text(tmp_path / "a.txt", "héllo\n")
    atomic_write_bytes(tmp_path / "b.bin", b"\x00\xff")
    atomic_write_json(tmp_path / "c.json", {"step": 3}, indent=2)
    with atomic_writer(tmp_path / "d.txt") as handle:
        handle.write("one\n")
        handle.write("two\n")
    assert (tmp_path / "a.txt").read_text() == "héllo\n"
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\xff"
    assert (tmp_path / "c.json").read_text() == json.dumps({"step": 3}, indent=2) + "\n"
    assert (tmp_path / "d.txt").read_text() == "one\ntwo\n"
    atomic_write_text(tmp_path / "a.txt", "replaced")  # over an existing file
    assert (tmp_path / "a.txt").read_text() == "replaced"
    assert leftovers(tmp_path) == []


def test_a_new_file_gets_the_permissions_a_plain_write_gives(tmp_path):
    (tmp_path / "plain").write_text("x")
    atomic_write_text(tmp_path / "atomic", "x")
    assert stat.S_IMODE((tmp_path / "atomic").stat().st_mode) == stat.S_IMODE((tmp_path / "plain").stat().st_mode)


def test_a_failed_write_keeps_the_previous_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "state.json"
    atomic_write_json(target, {"step": 1})
    with pytest.raises(TypeError):
        atomic_write_json(target, {"step": object()})
    with pytest.raises(RuntimeError, match="midway"), atomic_writer(target) as handle:
        handle.write('{"step": 2, "half')
        raise RuntimeError("crash midway")
    with pytest.raises(KeyboardInterrupt), atomic_writer(target, "wb") as handle:
        handle.write(b"partial")
        raise KeyboardInterrupt
    assert json.loads(target.read_text()) == {"step": 1}
    assert leftovers(tmp_path) == []


def test_a_failed_first_write_leaves_nothing(tmp_path):
    with pytest.raises(ValueError), atomic_writer(tmp_path / "new.txt") as handle:
        handle.write("x")
        raise ValueError
    with pytest.raises(LookupError):  # refused by open() after it created the file
        atomic_write_text(tmp_path / "new.txt", "x", encoding="no-such-encoding")
    assert list(tmp_path.iterdir()) == []


def test_the_temporary_file_lives_in_the_targets_directory(tmp_path):
    target = tmp_path / "sub" / "metrics.jsonl"
    target.parent.mkdir()
    with atomic_writer(target) as handle:
        (temporary,) = leftovers(target.parent)
        assert temporary.startswith("metrics.jsonl.")  # checkpoint manifests skip names ending in .tmp
        assert Path(os.readlink(f"/proc/self/fd/{handle.fileno()}")).parent == target.parent
        assert os.fstat(handle.fileno()).st_dev == target.parent.stat().st_dev
        handle.write("x\n")
    assert leftovers(target.parent) == []


def test_the_file_is_fsynced_then_its_directory(tmp_path, fsynced):
    target = tmp_path / "COMPLETE"
    atomic_write_text(target, "{}\n")
    assert [kind for kind, *_ in fsynced] == ["file", "dir"]
    (_, file_inode, file_path), (_, dir_inode, dir_path) = fsynced
    assert file_inode == target.stat().st_ino  # the synced file is the one renamed into place
    assert file_path.parent == tmp_path and file_path.name.endswith(".tmp")  # synced before the rename
    assert dir_inode == tmp_path.stat().st_ino and dir_path == tmp_path


def test_a_failed_write_is_not_renamed_nor_its_directory_synced(tmp_path, fsynced):
    with pytest.raises(RuntimeError), atomic_writer(tmp_path / "x") as handle:
        handle.write("x")
        raise RuntimeError
    assert fsynced == []


def test_fsync_dir_and_tree(tmp_path, fsynced):
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text("{}")
    (tmp_path / "rng_rank0.pt").write_bytes(b"0")
    fsync_dir(tmp_path)
    assert fsynced == [("dir", tmp_path.stat().st_ino, tmp_path)]
    fsynced.clear()
    fsync_tree(tmp_path)
    assert sorted((kind, path) for kind, _, path in fsynced) == [
        ("dir", tmp_path),
        ("dir", tmp_path / "hf"),
        ("file", tmp_path / "hf" / "config.json"),
        ("file", tmp_path / "rng_rank0.pt"),
    ]
    assert fsynced[-1] == ("dir", tmp_path.stat().st_ino, tmp_path)  # the root last, after what is in it
    fsynced.clear()
    fsync_tree(tmp_path, files=False)
    assert [(kind, path) for kind, _, path in fsynced] == [("dir", tmp_path / "hf"), ("dir", tmp_path)]


def test_a_file_system_that_cannot_fsync_a_directory_is_skipped(tmp_path, monkeypatch):
    def refuse(descriptor):
        raise OSError(22, "Invalid argument")  # EINVAL: what some file systems answer for a directory

    monkeypatch.setattr(os, "fsync", refuse)
    fsync_dir(tmp_path)
    monkeypatch.delattr(os, "O_DIRECTORY")  # a platform without it (Windows): nothing to open
    fsync_dir(tmp_path)


def test_a_real_write_error_is_raised(tmp_path, monkeypatch):
    def fail(descriptor):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(OSError, match="Input/output"):
        atomic_write_text(tmp_path / "x", "x")
    assert list(tmp_path.iterdir()) == []


def test_only_write_modes_are_accepted(tmp_path):
    with pytest.raises(ValueError, match="mode"), atomic_writer(tmp_path / "x", "a"):
        pass
