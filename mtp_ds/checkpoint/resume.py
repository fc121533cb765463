"""Where a starting run begins: which checkpoint it resumes (past damaged ones) and what it may do to the directory.

Decided once, by every rank alike, before any model is built: every rank reads (manifests, a share of the
checksums); rank 0 alone changes the directory (lock, old run moved aside, damaged checkpoint renamed) and
broadcasts the outcome, so an error stops every rank with the same one line (`ConfigError`). The
`checkpoint.resume` rules: docs/CHECKPOINTS.md, "Resuming".
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from mtp_ds.checkpoint.manifest import read_marker, verify
from mtp_ds.checkpoint.ownership import (
    REPLACED_DIR,
    DirectoryInUse,
    RunLock,
    move_run_aside,
    new_run_id,
    run_contents,
)
from mtp_ds.checkpoint.store import TAG_PATTERN, all_gather, complete_checkpoints
from mtp_ds.config import ConfigError
from mtp_ds.config.paths import resolve_path
from mtp_ds.fileio import atomic_write_text

log = logging.getLogger("mtp_ds")


@dataclass
class RunStart:
    resume_from: Path | None  # the checkpoint to load, or None for step 0
    run_id: str
    lock: RunLock | None  # rank 0 holds the directory's lock; release it when the run ends


def on_rank0(rank: int, action, *, share: bool = True):
    """Run `action()` on rank 0 only; a ConfigError / DirectoryInUse / OSError there is raised on every rank as
    the same ConfigError. Every rank gets the result (`share=False`: only rank 0, e.g. an object holding a
    thread; the others get None)."""
    result, outcome = None, None
    if rank == 0:
        try:
            result = action()
            outcome = ("ok", result if share else None)
        except (ConfigError, DirectoryInUse, OSError) as error:
            outcome = ("error", str(error))
    outcome = all_gather(outcome)[0]
    if outcome[0] == "error":
        raise ConfigError(outcome[1])
    return result if rank == 0 else outcome[1]


def _problems_summary(problems: list[str]) -> str:
    return problems[0] + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else "")


def _intact(path: Path, rank: int, world: int, settings) -> list[str]:
    """What is wrong with a checkpoint for this run ([] if nothing); a world size change is a config error."""
    problems = verify(path, rank, world, all_gather, checksums=settings.verify == "checksum")
    if not problems:
        saved_by = read_marker(path).get("world_size")
        if saved_by is not None and saved_by != world:
            raise ConfigError(
                f"checkpoint {path} was saved by {saved_by} ranks, this run has {world}; "
                f"ZeRO-3 resumes on the same number of ranks"
            )
    return problems


def select_resume_checkpoint(settings, rank: int, world: int) -> Path | None:
    """Collective: the checkpoint to resume (rules: docs/CHECKPOINTS.md, "Resuming"), None for a fresh start."""
    directory = Path(settings.dir)
    if settings.resume == "never" or (settings.resume == "auto" and settings.overwrite):
        return None
    if settings.resume != "auto":
        path = resolve_path(settings.resume)
        problems = _intact(path, rank, world, settings)
        if problems:
            raise ConfigError(f"checkpoint.resume={settings.resume!r} is damaged: {_problems_summary(problems)}")
        return path
    damaged = []
    for path in reversed(complete_checkpoints(directory)):
        problems = _intact(path, rank, world, settings)
        if not problems:
            if damaged:
                on_rank0(rank, lambda intact=path: _set_damaged_aside(directory, damaged, intact))
            return path
        message = f"checkpoint {path} is damaged: {_problems_summary(problems)}"
        if settings.on_corrupt == "refuse":
            raise ConfigError(f"{message}; set checkpoint.on_corrupt=fallback to resume the newest intact one")
        if rank == 0:
            log.warning("%s; trying the next older checkpoint", message)
        damaged.append(path)
    if damaged:
        raise ConfigError(
            f"no intact checkpoint in checkpoint.dir {str(directory)!r}: "
            f"{', '.join(p.name for p in damaged)} are damaged"
        )
    return None


def _set_damaged_aside(directory: Path, damaged: list[Path], resumed: Path) -> None:
    for path in damaged:
        aside = path.with_name(f"damaged-{path.name}")
        os.rename(path, aside)
        log.warning("resuming from %s; the damaged %s is kept as %s", resumed.name, path.name, aside.name)
    atomic_write_text(directory / "latest_complete", resumed.name + "\n")  # fsyncs `directory`: the renames too


def _claim(settings, metrics_file: Path, resume_from: Path | None) -> str:
    """Rank 0, lock held: check the directory against the rules; returns the run id this run writes under."""
    directory = Path(settings.dir)
    if resume_from is not None and resume_from.resolve().parent == directory.resolve():
        if settings.overwrite:
            raise ConfigError(
                f"checkpoint.overwrite=true would move checkpoint.resume={settings.resume!r} aside "
                f"with the rest of its run; resume from a copy outside checkpoint.dir"
            )
        newer = [
            p.name
            for p in complete_checkpoints(directory)
            if int(TAG_PATTERN.match(p.name).group(1)) > int(TAG_PATTERN.match(resume_from.name).group(1))
        ]
        if newer:
            raise ConfigError(
                f"checkpoint.resume={settings.resume!r} is older than {', '.join(newer)} in the same "
                f"checkpoint.dir; resume the newest (checkpoint.resume=auto) or start in a new checkpoint.dir"
            )
        return read_marker(resume_from).get("run_id") or new_run_id()
    if resume_from is None and settings.resume == "auto" and not settings.overwrite:
        return new_run_id()  # no complete checkpoint: this directory's run starts (again) at step 0
    held = run_contents(directory, metrics_file, TAG_PATTERN)
    if held and settings.overwrite:
        target = move_run_aside(directory, metrics_file)
        log.warning("checkpoint.overwrite=true: moved the run that was in %s to %s", directory, target)
    elif held:
        raise ConfigError(
            f"checkpoint.dir {str(directory)!r} already holds a run ({', '.join(held)}); continue it with "
            f"checkpoint.resume=auto, use a new checkpoint.dir, or set checkpoint.overwrite=true to move it into "
            f"{directory / REPLACED_DIR}/"
        )
    return new_run_id()


def start_run(settings, metrics_file: str, rank: int, world: int) -> RunStart:
    """Collective, before any model is built: lock the directory, pick the checkpoint, claim the directory."""
    lock = on_rank0(rank, lambda: RunLock(settings.dir).acquire(), share=False)
    try:
        resume_from = select_resume_checkpoint(settings, rank, world)
        run_id = on_rank0(rank, lambda: _claim(settings, Path(metrics_file), resume_from))
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    return RunStart(resume_from=resume_from, run_id=run_id, lock=lock)
