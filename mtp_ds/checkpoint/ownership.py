"""One run per `checkpoint.dir`: an exclusive lock for the run's lifetime, and no fresh run over an old one.

`<checkpoint.dir>/LOCK` is created with O_CREAT|O_EXCL (atomic on NFS, Lustre, GPFS, where flock may be local to a
node) and touched every HEARTBEAT_S; a stale one (dead pid on this host, untouched for STALE_AFTER_S on another,
or taken by this same requeued Slurm job) is renamed aside and taken over. `move_run_aside` keeps an old run in
`replaced/<UTC time>/`, never deleted. Why and the full rules: docs/CHECKPOINTS.md, "Owning the directory".
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time
import uuid
from pathlib import Path

from mtp_ds.fileio import fsync_dir

LOCK_FILE = "LOCK"
REPLACED_DIR = "replaced"
HEARTBEAT_S = 30.0
STALE_AFTER_S = float(os.environ.get("MTP_DS_LOCK_STALE_AFTER_S", "600"))


class DirectoryInUse(Exception):
    """Another live run holds the lock, or the directory holds a run this one may not replace."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def _read_owner(lock: Path) -> dict | None:
    try:
        return json.loads(lock.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}  # torn or foreign content: judged by its age alone


def _is_stale(lock: Path, owner: dict) -> bool:
    job = os.environ.get("SLURM_JOB_ID")
    if job and owner.get("slurm_job_id") == job:
        return True  # Slurm runs a job once at a time: this is our own job, requeued (maybe on another node)
    if owner.get("host") == socket.gethostname() and isinstance(owner.get("pid"), int):
        return not _pid_alive(owner["pid"])
    try:
        return time.time() - lock.stat().st_mtime > STALE_AFTER_S
    except FileNotFoundError:
        return True


class RunLock:
    """The exclusive lock of one run on one directory; `acquire` raises DirectoryInUse naming the owner."""

    def __init__(self, directory: str | os.PathLike):
        self.path = Path(directory) / LOCK_FILE
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None
        self.created_directory = False

    def acquire(self) -> RunLock:
        self.created_directory = not self.path.parent.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        owner_text = json.dumps(
            {
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "token": self.token,
                "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
            }
        )
        for _ in range(5):
            try:
                descriptor = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = _read_owner(self.path)
                if owner is None:
                    continue  # released meanwhile
                if not _is_stale(self.path, owner):
                    raise DirectoryInUse(
                        f"checkpoint.dir {str(self.path.parent)!r} is in use by pid {owner.get('pid')} on "
                        f"{owner.get('host')} since {owner.get('started')} ({self.path}); wait for that run, stop "
                        f"it, or pick another checkpoint.dir"
                    ) from None
                self._take_over_stale(owner)
                continue
            with os.fdopen(descriptor, "w") as handle:
                handle.write(owner_text + "\n")
            self._heartbeat = threading.Thread(target=self._beat, name="mtp-ds-lock-heartbeat", daemon=True)
            self._heartbeat.start()
            return self
        raise DirectoryInUse(f"could not take {self.path}: other runs keep taking it")

    def _take_over_stale(self, owner: dict) -> None:
        aside = self.path.with_name(f"{LOCK_FILE}.stale-{self.token}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return  # another contender moved it first
        if _read_owner(aside) != owner:  # we moved a lock taken since we looked: give it back
            os.rename(aside, self.path)
            return
        aside.unlink(missing_ok=True)

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                os.utime(self.path)
            except OSError:
                pass

    def release(self) -> None:
        self._stop.set()
        owner = _read_owner(self.path)
        if owner and owner.get("token") == self.token:
            self.path.unlink(missing_ok=True)
            if self.created_directory:  # a run that stopped before writing anything leaves nothing behind
                try:
                    self.path.parent.rmdir()
                except OSError:
                    pass


def run_contents(directory: Path, metrics_file: Path, tag_pattern) -> list[str]:
    """What of a run `directory` holds, in words ([] when nothing)."""
    held = []
    if directory.is_dir():
        steps = sorted(p.name for p in directory.iterdir() if p.is_dir() and tag_pattern.match(p.name))
        if steps:
            held.append(f"checkpoints {steps[0]}..{steps[-1]}" if len(steps) > 1 else f"checkpoint {steps[0]}")
        if (directory / "DONE").exists():
            held.append("DONE")
    if metrics_file.is_file() and metrics_file.stat().st_size > 0:
        held.append(f"{metrics_file.name} ({len(metrics_file.read_text().splitlines())} lines)")
    return held


def move_run_aside(directory: Path, metrics_file: Path | None = None) -> Path:
    """Move everything of the old run (all but the lock and earlier replaced runs) into replaced/<UTC time>/
    (also what `mtp-ds export --overwrite` finds in its OUT_DIR)."""
    target = directory / REPLACED_DIR / time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    while target.exists():
        target = target.with_name(target.name + "+")
    target.mkdir(parents=True)
    for entry in directory.iterdir():
        if entry.name not in (LOCK_FILE, REPLACED_DIR):
            os.rename(entry, target / entry.name)
    if metrics_file is not None and metrics_file.exists():  # a logging.metrics_file outside checkpoint.dir
        shutil.move(metrics_file, target / metrics_file.name)
        fsync_dir(metrics_file.parent)
    for changed in (target, target.parent, directory):  # what moved in, the new folder, what moved out
        fsync_dir(changed)
    return target


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:8]
