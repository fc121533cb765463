"""Checkpoints that a crash cannot corrupt and a restart can continue from exactly.

Layout of `checkpoint.dir`:
    step00000040/                 DeepSpeed's own files (ZeRO shards, optimizer, scheduler) + client state
    step00000040/rng_rank{r}.pt   torch / numpy / python RNG states of every rank
    step00000040/hf/              config.json (with mtp_token_id) + tokenizer: what `mtp-ds export` needs
    step00000040/effective_config.yaml
    step00000040/COMPLETE         written last (atomic rename), after every rank finished writing
    latest_complete               name of the newest COMPLETE checkpoint (atomic rename)

A save that dies half-way leaves a directory without COMPLETE, which `resume: auto` ignores, so the previous
checkpoint stays the one resumed. Rotation deletes only complete checkpoints older than the newest `keep_last`.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

TAG_PATTERN = re.compile(r"^step(\d{8})$")
COMPLETE = "COMPLETE"


def tag_for_step(step: int) -> str:
    return f"step{step:08d}"


def _write_atomic(path: Path, text: str) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def complete_checkpoints(directory: str | os.PathLike) -> list[Path]:
    """Complete checkpoint directories under `directory`, oldest first."""
    root = Path(directory)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and TAG_PATTERN.match(p.name) and (p / COMPLETE).exists()]
    return sorted(found, key=lambda p: int(TAG_PATTERN.match(p.name).group(1)))


def find_resume_checkpoint(resume: str, directory: str) -> Path | None:
    """`auto`: newest complete checkpoint in `directory` (None if there is none); `never`; or a path."""
    if resume == "never":
        return None
    if resume == "auto":
        found = complete_checkpoints(directory)
        return found[-1] if found else None
    path = Path(resume)
    if not (path / COMPLETE).exists():
        raise ValueError(f"checkpoint.resume={resume!r} is not a complete checkpoint directory (no {COMPLETE} file)")
    return path


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save_checkpoint(engine, directory: str, step: int, client_state: dict, *, keep_last: int,
                    effective_config: dict, hf_config, tokenizer) -> Path:
    """Collective: every rank calls it. Returns the checkpoint path once it is COMPLETE."""
    import torch.distributed as dist

    rank = dist.get_rank() if dist.is_initialized() else 0
    tag = tag_for_step(step)
    path = Path(directory) / tag
    if rank == 0 and path.exists():  # a leftover of a save that died: start it clean
        shutil.rmtree(path)
    _barrier()
    engine.save_checkpoint(directory, tag=tag, client_state=client_state, save_latest=False)
    torch.save(rng_state(), path / f"rng_rank{rank}.pt")
    if rank == 0:
        hf_dir = path / "hf"
        hf_config.save_pretrained(hf_dir)
        tokenizer.save_pretrained(hf_dir)
        from mtp_ds.config import save_effective_config

        save_effective_config(path / "effective_config.yaml", effective_config)
    _barrier()  # every rank's shards and RNG file are on disk before the marker
    if rank == 0:
        _write_atomic(path / COMPLETE, json.dumps({"step": step}) + "\n")
        _write_atomic(Path(directory) / "latest_complete", tag + "\n")
        if keep_last > 0:
            for old in complete_checkpoints(directory)[:-keep_last]:
                shutil.rmtree(old, ignore_errors=True)
    _barrier()
    return path


def load_checkpoint(engine, path: Path) -> dict:
    """Collective. Restores engine (weights, optimizer, scheduler) and this rank's RNG; returns client state."""
    import torch.distributed as dist

    rank = dist.get_rank() if dist.is_initialized() else 0
    load_path, client_state = engine.load_checkpoint(str(path.parent), tag=path.name)
    if load_path is None:
        raise RuntimeError(f"DeepSpeed could not load the checkpoint at {path}")
    rng_file = path / f"rng_rank{rank}.pt"
    if rng_file.exists():
        set_rng_state(torch.load(rng_file, weights_only=False))
    return client_state


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()
