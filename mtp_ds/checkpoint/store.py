"""Checkpoints that a crash, even a power loss, cannot corrupt, and that a restart continues from exactly.

A checkpoint holds DeepSpeed's files, every rank's RNG state, `hf/` (config + tokenizer, for export), the
effective config and, written last through `mtp_ds.fileio` once every file is on disk, `COMPLETE` (the manifest).
A save that dies leaves no COMPLETE, so the previous checkpoint stays the one resumed; everything loads through
torch's safe unpickler. Layout, order of writes, the fsync rule: docs/CHECKPOINTS.md.
"""

from __future__ import annotations

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

TAG_PATTERN = re.compile(r"^step(\d{8})$")


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
) -> Path:
    """Collective: every rank calls it. Returns the checkpoint path once it is COMPLETE."""
    rank, world = _rank_and_world()
    tag = tag_for_step(step)
    path = Path(directory) / tag
    with rank_zero_first():  # a leftover of a save that died, or a damaged one of this run: start clean
        if rank == 0 and path.exists():
            shutil.rmtree(path)
    engine.save_checkpoint(directory, tag=tag, client_state={**client_state, "run_id": run_id}, save_latest=False)
    torch.save(rng_state(), path / f"rng_rank{rank}.pt")
    if rank == 0:
        hf_dir = path / "hf"
        hf_config.save_pretrained(hf_dir)
        tokenizer.save_pretrained(hf_dir)
        from mtp_ds.config import save_effective_config

        save_effective_config(path / "effective_config.yaml", effective_config)
    _barrier()  # every rank's shards and RNG file are on disk before they are hashed
    files = gather_file_table(path, rank, world, all_gather)
    if rank == 0:
        write_marker(path, step=step, run_id=run_id, world_size=world, files=files)
        atomic_write_text(Path(directory) / "latest_complete", tag + "\n")
        rotate(directory, keep_last, run_id)
    _barrier()
    return path


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
    yield
    if rank == 0:
        _barrier()
