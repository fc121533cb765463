"""What a complete checkpoint holds, written into its COMPLETE marker, and the check that it still holds it.

The marker lists every file with its size and SHA-256, the run id and the number of ranks, so resume names what
is damaged and falls back past it, and rotation deletes only its own run's checkpoints. Hashing (and fsyncing)
is split over the ranks by size (`share`: largest file first to the least-loaded rank), so each byte is read once
and no rank reads much more than its 1/world; stdlib only, the collective parts take `all_gather` as a function.
Why and the format: docs/CHECKPOINTS.md, "Verifying one".
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable
from pathlib import Path

from mtp_ds.fileio import atomic_write_json, fsync_file, fsync_tree

COMPLETE = "COMPLETE"
FORMAT = 1
_WRITER = re.compile(r"rank_?(\d+)")  # zero_pp_rank_3_..., bf16_zero_pp_rank_3_..., mp_rank_00_..., rng_rank3.pt


class CheckpointDamaged(Exception):
    """A checkpoint whose marker is unreadable or whose files do not match it."""


def checkpoint_files(path: Path) -> list[str]:
    """Every file under `path` (relative names, sorted) except the marker itself."""
    names = []
    for root, _, files in os.walk(path):
        for name in files:
            relative = os.path.relpath(os.path.join(root, name), path)
            if relative != COMPLETE and not relative.endswith(".tmp"):
                names.append(relative)
    return sorted(names)


def file_sha256(file: Path) -> str:
    with file.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def describe(path: Path, names: list[str]) -> dict[str, dict]:
    return {name: {"size": (path / name).stat().st_size, "sha256": file_sha256(path / name)} for name in names}


def share(sizes: dict[str, int], world: int) -> list[list[str]]:
    """Which files each of `world` ranks hashes: every file exactly once, the bytes balanced (largest file first,
    to the rank with the fewest bytes so far; on a tie the rank that wrote it, as its name says, then the lowest).

    A pure function of the names and sizes, so every rank computes the same split. Why not `names[rank::world]`:
    DeepSpeed's per-rank files sort as model, optim, model, optim, ..., so with an even world every optimizer
    shard (the bulk of the bytes) fell to half of the ranks.
    """
    loads, shares = [0] * world, [[] for _ in range(world)]
    for name in sorted(sizes, key=lambda name: (-sizes[name], name)):
        match = _WRITER.search(os.path.basename(name))
        writer = int(match.group(1)) if match else -1
        rank = min(range(world), key=lambda r: (loads[r], r != writer, r))
        loads[rank] += sizes[name]
        shares[rank].append(name)
    return [sorted(names) for names in shares]


def gather_file_table(path: Path, rank: int, world: int, all_gather: Callable[[object], list]) -> dict[str, dict]:
    """Collective: sizes and digests of every file of `path`, each file hashed by one rank.

    The split is made from rank 0's listing and sizes (one small gather), so that every rank splits the same
    list even where a shared file system shows a rank stale sizes."""
    sizes = all_gather({name: (path / name).stat().st_size for name in checkpoint_files(path)} if rank == 0 else None)
    mine = share(sizes[0], world)[rank]
    for name in mine:  # on disk before the marker that vouches for it (a power loss keeps the older checkpoint)
        fsync_file(path / name)
    table: dict[str, dict] = {}
    for part in all_gather(describe(path, mine)):
        table.update(part)
    return table


def write_marker(path: Path, *, step: int, run_id: str, world_size: int, files: dict[str, dict]) -> None:
    """Rank 0, after `gather_file_table`: the directories are made durable, then the marker is written atomically."""
    marker = {"format": FORMAT, "step": step, "run_id": run_id, "world_size": world_size, "files": files}
    fsync_tree(path, files=False)
    atomic_write_json(path / COMPLETE, marker, indent=1)


def read_marker(path: Path) -> dict:
    """The marker's contents; {} for a marker of the format before manifests (it only held the step)."""
    try:
        marker = json.loads((path / COMPLETE).read_text())
    except (OSError, ValueError) as error:
        raise CheckpointDamaged(f"{COMPLETE} is unreadable ({error})") from None
    if not isinstance(marker, dict):
        raise CheckpointDamaged(f"{COMPLETE} does not hold a JSON object")
    return marker if "files" in marker else {}


def size_problems(path: Path, files: dict[str, dict]) -> list[str]:
    problems = []
    for name, expected in sorted(files.items()):
        file = path / name
        if not file.is_file():
            problems.append(f"{name} is missing")
        elif file.stat().st_size != expected["size"]:
            problems.append(f"{name} has {file.stat().st_size} bytes, the manifest says {expected['size']}")
    return problems


def verify(path: Path, rank: int, world: int, all_gather: Callable[[object], list], *, checksums: bool) -> list[str]:
    """Collective: what is wrong with the checkpoint at `path` ([] when intact). Every rank gets the same list."""
    try:
        files = read_marker(path).get("files")
        problems = size_problems(path, files) if files is not None else []
    except CheckpointDamaged as error:
        files, problems = None, [str(error)]
    if checksums and files and not problems:
        mine = share({name: entry["size"] for name, entry in files.items()}, world)[rank]
        problems = [
            f"{name} does not match its SHA-256 in {COMPLETE}"
            for name in mine
            if file_sha256(path / name) != files[name]["sha256"]
        ]
    return sorted({problem for part in all_gather(problems) for problem in part})
