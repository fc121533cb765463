"""How the ranks share the hashing of a checkpoint (`manifest.share`), at save (`gather_file_table`) and at resume
(`verify`): every file hashed exactly once, and no rank hashes much more than total / world bytes, on a file set
shaped like DeepSpeed's ZeRO-3 checkpoint of 4 ranks (the optimizer shards are the bulk of the bytes)."""

import os

import pytest

from mtp_ds.checkpoint import manifest
from mtp_ds.checkpoint.manifest import checkpoint_files, describe, gather_file_table, verify, write_marker

WORLD = 4
OPTIM, MODEL, RNG = 400_000, 20_000, 1_500  # bytes: per-rank optimizer shard, model states, RNG file


def deepspeed_like_checkpoint(path, world=WORLD):
    """The files of one step of a `world`-rank ZeRO-3 run (DeepSpeed's names, sizes in its proportions)."""
    (path / "hf").mkdir(parents=True)
    for rank in range(world):
        (path / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt").write_bytes(os.urandom(OPTIM))
        (path / f"zero_pp_rank_{rank}_mp_rank_00_model_states.pt").write_bytes(os.urandom(MODEL))
        (path / f"rng_rank{rank}.pt").write_bytes(os.urandom(RNG))
    (path / "hf" / "config.json").write_text("{}" * 400)
    (path / "hf" / "tokenizer.json").write_text("t" * 30_000)
    (path / "effective_config.yaml").write_text("a: 1\n" * 500)
    return path


def run_ranks(monkeypatch, collective, world=WORLD) -> dict[int, list[str]]:
    """Run `collective(rank, all_gather)` for every rank in turn; which files each rank hashed.

    The fake all_gather hands every rank rank 0's value of the first gather (the listing: `gather_file_table`
    splits what rank 0 sees) and the rank's own value otherwise (what the ranks hash does not depend on it)."""
    hashed: dict[int, list[str]] = {}
    real_sha256 = manifest.file_sha256
    current = {}
    monkeypatch.setattr(
        manifest, "file_sha256", lambda file: (hashed[current["rank"]].append(file), real_sha256(file))[1]
    )
    first_value = {}
    for rank in range(world):
        current["rank"], hashed[rank], calls = rank, [], []

        def all_gather(value, calls=calls, rank=rank):
            calls.append(value)
            if len(calls) == 1 and rank == 0:
                first_value["value"] = value
            return [first_value.get("value", value) if len(calls) == 1 else value]

        collective(rank, all_gather)
    return hashed


def assert_balanced(path, hashed, world=WORLD):
    names = [os.path.relpath(file, path) for files in hashed.values() for file in files]
    assert sorted(names) == checkpoint_files(path), "every file is hashed exactly once"
    total = sum((path / name).stat().st_size for name in names)
    per_rank = {rank: sum(file.stat().st_size for file in files) for rank, files in hashed.items()}
    # the ideal is total / world; one optimizer shard each plus the small files put every rank within 10%
    assert max(per_rank.values()) <= 1.1 * total / world, per_rank
    optimizer_shards = {
        rank: [file.name for file in files if file.name.endswith("_optim_states.pt")] for rank, files in hashed.items()
    }
    # equal shards go to the rank that wrote them (its page cache, its node)
    assert optimizer_shards == {r: [f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt"] for r in range(world)}


def test_saving_hashes_each_file_once_and_balances_the_bytes_over_the_ranks(tmp_path, monkeypatch):
    path = deepspeed_like_checkpoint(tmp_path / "step00000004")
    tables = {}
    hashed = run_ranks(
        monkeypatch, lambda rank, gather: tables.setdefault(rank, gather_file_table(path, rank, WORLD, gather))
    )
    assert_balanced(path, hashed)
    merged = {name: entry for table in tables.values() for name, entry in table.items()}
    assert merged == describe(path, checkpoint_files(path))


def test_resume_verification_hashes_each_file_once_and_balances_the_bytes(tmp_path, monkeypatch):
    path = deepspeed_like_checkpoint(tmp_path / "step00000004")
    write_marker(path, step=4, run_id="run", world_size=WORLD, files=describe(path, checkpoint_files(path)))
    problems = {}
    hashed = run_ranks(
        monkeypatch, lambda rank, gather: problems.setdefault(rank, verify(path, rank, WORLD, gather, checksums=True))
    )
    assert_balanced(path, hashed)
    assert problems == {rank: [] for rank in range(WORLD)}


@pytest.mark.parametrize("world", [1, 2, 3, 8])
def test_the_split_covers_every_file_once_for_any_world_size(world):
    sizes = {f"file{i}": (i * 7919) % 1000 for i in range(20)} | {"zero_pp_rank_1_mp_rank_00_optim_states.pt": 5000}
    shares = manifest.share(sizes, world)
    assert len(shares) == world and sorted(name for names in shares for name in names) == sorted(sizes)
    assert shares == manifest.share(dict(reversed(sizes.items())), world)  # the same split on every rank
