"""Checkpoints that a crash, even a power loss, cannot corrupt, and that a restart continues from exactly.

A checkpoint holds DeepSpeed's files, every rank's RNG state, `hf/` (config + tokenizer, for export), the
effective config and, written last through `mtp_ds.fileio` once every file is on disk, `COMPLETE` (the manifest).
A save that dies leaves no COMPLETE, so the previous checkpoint stays the one resumed; everything loads through
torch's safe unpickler. A full disk on any rank stops every rank with the same one line (`DiskFull`) and removes
the half-written step. Layout, order of writes, the fsync rule: docs/CHECKPOINTS.md.
"""

from __future__ import annotations

import errno
import logging
import os
import pickle
import random
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from mtp_ds.checkpoint.manifest import COMPLETE, gather_file_table, read_marker, write_marker
from mtp_ds.checkpoint.safe_load import refused_shard, weights_only_loads
from mtp_ds.fileio import atomic_write_text

log = logging.getLogger(__name__)

TAG_PATTERN = re.compile(r"^step(\d{8})$")
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# how torch.save's C++ writer reports a full disk (a RuntimeError without an errno)
DISK_FULL_TEXTS = ("No space left on device", "Disk quota exceeded", "basic_ios::clear")


class DiskFull(RuntimeError):
    """A save that ran out of space on some rank; the message is one line naming the directory and what is intact."""


def is_disk_full(error: BaseException) -> bool:
    """ENOSPC / EDQUOT, raised as an OSError or as torch's writer words it, here or anywhere in its causes."""
    for _ in range(8):  # a chain of causes, never a cycle
        if isinstance(error, OSError) and error.errno in DISK_FULL_ERRNOS:
            return True
        if isinstance(error, RuntimeError) and any(text in str(error) for text in DISK_FULL_TEXTS):
            return True
        error = error.__cause__ or error.__context__
        if error is None:
            return False
    return False


def tag_for_step(step: int) -> str:
    return f"step{step:08d}"


def complete_checkpoints(directory: str | os.PathLike) -> list[Path]:
    """Complete checkpoint directories under `directory`, oldest first."""
    root = Path(directory)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and TAG_PATTERN.match(p.name) and (p / COMPLETE).exists()]
    return sorted(found, key=lambda p: int(TAG_PATTERN.match(p.name).group(1)))


def run_of(checkpoint: Path) -> str | None:
    """The run id in a checkpoint's manifest (None for a marker without one)."""
    try:
        return read_marker(checkpoint).get("run_id")
    except Exception:
        return None


def rotate(directory: str | os.PathLike, keep_last: int, run_id: str) -> list[Path]:
    """Delete complete checkpoints of run `run_id` older than its newest `keep_last`; returns what went."""
    if keep_last <= 0:
        return []
    ours = [path for path in complete_checkpoints(directory) if run_of(path) == run_id]
    for old in ours[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return ours[:-keep_last]


def rng_state() -> dict:
    """Every RNG's state as tensors and plain values, so that it loads with `torch.load(weights_only=True)`."""
    kind, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    numpy_state = state["numpy"]
    torch.set_rng_state(state["torch"])
    np.random.set_state(
        (
            numpy_state["kind"],
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["position"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def all_gather(value) -> list:
    """Every rank's `value` (a list of one outside a process group)."""
    import torch.distributed as dist

    if not dist.is_initialized():
        return [value]
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def _rank_and_world() -> tuple[int, int]:
    import torch.distributed as dist

    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def save_checkpoint(
    engine,
    directory: str,
    step: int,
    client_state: dict,
    *,
    keep_last: int,
    effective_config: dict,
    hf_config,
    tokenizer,
    run_id: str,
    generation_config=None,
) -> Path:
    """Collective: every rank calls it. Returns the checkpoint path once it is COMPLETE; `DiskFull` on every rank
    when any rank ran out of space (the step's folder is removed, the previous checkpoint stays the latest)."""
    rank, world = _rank_and_world()
    tag = tag_for_step(step)
    path = Path(directory) / tag
    with rank_zero_first():  # a leftover of a save that died, or a damaged one of this run: start clean
        if rank == 0 and path.exists():
            shutil.rmtree(path)
    full = None
    try:
        engine.save_checkpoint(directory, tag=tag, client_state={**client_state, "run_id": run_id}, save_latest=False)
    except Exception as error:
        if not is_disk_full(error):
            raise
        full = rank
        _barrier()  # DeepSpeed's save ends in a barrier that this rank's save did not reach
    if full is None:
        full = _unless_disk_full(
            lambda: _write_own_files(path, rank, effective_config, hf_config, tokenizer, generation_config), rank
        )
    # every rank's shards and RNG file are on disk before they are hashed (the gather is the barrier)
    _stop_if_disk_full(all_gather(full), directory, path)
    files = gather_file_table(path, rank, world, all_gather)
    if rank == 0:
        full = _unless_disk_full(lambda: _commit(path, directory, step, run_id, world, files, keep_last), rank)
    _stop_if_disk_full(all_gather(full), directory, path)
    return path


def _write_own_files(
    path: Path, rank: int, effective_config: dict, hf_config, tokenizer, generation_config=None
) -> None:
    """This rank's RNG state; on rank 0 also `hf/` (config, the base model's generation config and the tokenizer,
    for export) and the effective config."""
    torch.save(rng_state(), path / f"rng_rank{rank}.pt")
    if rank == 0:
        hf_dir = path / "hf"
        hf_config.save_pretrained(hf_dir)
        if generation_config is not None:
            try:  # the base model's EOS list and sampling defaults, which the export hands to stock generate
                generation_config.save_pretrained(hf_dir)
            except ValueError as error:  # transformers refuses to save an inconsistent one: export falls back
                log.warning("the base model's generation config was not saved with the checkpoint: %s", error)
        tokenizer.save_pretrained(hf_dir)
        from mtp_ds.config import save_effective_config

        save_effective_config(path / "effective_config.yaml", effective_config)


def _commit(path: Path, directory: str, step: int, run_id: str, world: int, files: dict, keep_last: int) -> None:
    """Rank 0: the manifest (COMPLETE), then `latest_complete`, then rotation."""
    write_marker(path, step=step, run_id=run_id, world_size=world, files=files)
    atomic_write_text(Path(directory) / "latest_complete", path.name + "\n")
    rotate(directory, keep_last, run_id)


def _unless_disk_full(write, rank: int) -> int | None:
    """Run `write()`; this rank's number when the disk was full (any other error is raised as it is)."""
    try:
        write()
    except Exception as error:
        if not is_disk_full(error):
            raise
        return rank
    return None


def _stop_if_disk_full(full_ranks: list[int | None], directory: str, path: Path) -> None:
    """On every rank: if any rank ran out of space, rank 0 removes the half-written step and all raise one line."""
    if all(rank is None for rank in full_ranks):
        return
    rank, _ = _rank_and_world()
    earlier = [checkpoint for checkpoint in complete_checkpoints(directory) if checkpoint.name != path.name]
    if rank == 0:
        (path / COMPLETE).unlink(missing_ok=True)  # first: a step that is being removed is never resumed
        shutil.rmtree(path, ignore_errors=True)  # frees what it held
    intact = (
        f"the previous checkpoint {earlier[-1].name} is intact (free space, then run the same command to resume)"
        if earlier
        else "no earlier checkpoint was saved (free space, then run the same command)"
    )
    raise DiskFull(f"no space left on {directory} while saving {path.name}; {intact}")


def load_checkpoint(engine, path: Path) -> dict:
    """Collective. Restores engine (weights, optimizer, scheduler) and this rank's RNG; returns client state.
    `path` has passed `mtp_ds.checkpoint.resume.select_resume_checkpoint` (manifest, world size)."""
    rank, _ = _rank_and_world()
    rng_file = path / f"rng_rank{rank}.pt"
    if not rng_file.is_file():  # never resume without it: the run would not continue as it would have
        raise FileNotFoundError(f"{rng_file} is missing: rank {rank}'s RNG state cannot be restored")
    refused, load_path, client_state = None, None, None
    with weights_only_loads():  # DeepSpeed's shards through torch's safe unpickler, like `mtp-ds export`
        try:
            load_path, client_state = engine.load_checkpoint(str(path.parent), tag=path.name)
        except (pickle.UnpicklingError, RuntimeError):
            refused = refused_shard(path)
            if refused is None:
                raise
    # every rank learns whether any rank's shards were refused, so all stop together with the same line
    refusals = [
        item for item in all_gather(refused and f"{refused[0]}: refusing to unpickle it ({refused[1]})") if item
    ]
    if refusals:
        from mtp_ds.config import ConfigError

        raise ConfigError(refusals[0])
    if load_path is None:
        raise RuntimeError(f"DeepSpeed could not load the checkpoint at {path}")
    set_rng_state(torch.load(rng_file, weights_only=True))
    return client_state


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()


@contextmanager
def rank_zero_first() -> Iterator[None]:
    """Rank 0 runs the body first; the other ranks run it after a barrier that rank 0 reaches when its body is
    done (a cache it fills, a directory it cleans). Without a process group the body just runs."""
    rank, _ = _rank_and_world()
    if rank != 0:
        _barrier()
    try:
        yield
    finally:  # also when the body raised: the others then raise the same one-line error, not a gloo error
        if rank == 0:
            _barrier()
