"""The pieces behind "never lose a run", in one process: manifests, rotation, the directory lock, safe RNG files,
the claim rules, and the run-level config errors that must stop before any model is built."""

import json
import os
import random
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from mtp_ds.checkpoint import ownership
from mtp_ds.checkpoint.manifest import (
    COMPLETE,
    checkpoint_files,
    describe,
    gather_file_table,
    read_marker,
    verify,
    write_marker,
)
from mtp_ds.checkpoint.ownership import DirectoryInUse, RunLock
from mtp_ds.checkpoint.resume import _claim
from mtp_ds.checkpoint.store import rng_state, rotate, set_rng_state
from mtp_ds.config import ConfigError, load_recipe, plan_run
from mtp_ds.config.deepspeed_json import check_optimizer_and_scheduler

ONE_PROCESS = (0, 1, lambda value: [value])  # rank, world, all_gather


def fake_checkpoint(root, name="step00000004", run_id="run-a", step=4):
    path = root / name
    (path / "hf").mkdir(parents=True)
    (path / "zero_pp_rank_0_mp_rank_00_model_states.pt").write_bytes(os.urandom(3000))
    (path / "rng_rank0.pt").write_bytes(b"r0" * 100)
    (path / "rng_rank1.pt").write_bytes(b"r1" * 100)
    (path / "hf" / "config.json").write_text("{}")
    write_marker(path, step=step, run_id=run_id, world_size=2, files=describe(path, checkpoint_files(path)))
    return path


def problems(path, checksums=True):
    return verify(path, *ONE_PROCESS, checksums=checksums)


def test_the_manifest_names_what_is_wrong_with_a_checkpoint(tmp_path):
    path = fake_checkpoint(tmp_path)
    assert problems(path) == [] and sorted(read_marker(path)["files"]) == [
        "hf/config.json",
        "rng_rank0.pt",
        "rng_rank1.pt",
        "zero_pp_rank_0_mp_rank_00_model_states.pt",
    ]
    shard = path / "zero_pp_rank_0_mp_rank_00_model_states.pt"
    data = shard.read_bytes()
    shard.write_bytes(data[:1000])
    assert problems(path) == ["zero_pp_rank_0_mp_rank_00_model_states.pt has 1000 bytes, the manifest says 3000"]
    shard.write_bytes(bytes([data[0] ^ 1]) + data[1:])  # same size, one bit flipped
    assert problems(path) == [f"zero_pp_rank_0_mp_rank_00_model_states.pt does not match its SHA-256 in {COMPLETE}"]
    assert problems(path, checksums=False) == []
    shard.write_bytes(data)
    (path / "rng_rank1.pt").unlink()
    assert problems(path) == ["rng_rank1.pt is missing"]
    (path / COMPLETE).write_text("{truncated")
    assert problems(path)[0].startswith(f"{COMPLETE} is unreadable")
    (path / COMPLETE).write_text(json.dumps({"step": 4}))  # a marker from before manifests: nothing to check
    assert problems(path) == []


def record_disk_events(monkeypatch) -> list[tuple[str, str]]:
    """("fsync", path of the fd) and ("replace", destination), in order, while the real calls still run."""
    events, real_fsync, real_replace = [], os.fsync, os.replace
    monkeypatch.setattr(
        os, "fsync", lambda fd: (events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))), real_fsync(fd))
    )
    monkeypatch.setattr(os, "replace", lambda src, dst: (events.append(("replace", str(dst))), real_replace(src, dst)))
    return events


def test_every_file_and_folder_is_on_disk_before_complete_vouches_for_it(tmp_path, monkeypatch):
    path = fake_checkpoint(tmp_path)
    (path / COMPLETE).unlink()
    (path / f"{COMPLETE}.0a1b2c3d.tmp").write_text("{")  # what a power loss mid-write can leave: not a file of it
    events = record_disk_events(monkeypatch)
    write_marker(path, step=4, run_id="run-a", world_size=1, files=gather_file_table(path, *ONE_PROCESS))
    complete = events.index(("replace", str(path / COMPLETE)))
    synced_before = {name for kind, name in events[:complete] if kind == "fsync"}
    expected = {str(path / name) for name in read_marker(path)["files"]} | {str(path), str(path / "hf")}
    assert expected <= synced_before and len(read_marker(path)["files"]) == 4
    assert events[complete + 1 :] == [("fsync", str(path))]  # then the rename itself
    assert problems(path) == [] and [p.name for p in path.glob("*.tmp")] == [f"{COMPLETE}.0a1b2c3d.tmp"]


def test_a_run_moved_aside_is_on_disk_in_its_new_place(tmp_path, monkeypatch):
    directory = tmp_path / "run"
    fake_checkpoint(directory)
    (directory / "metrics.jsonl").write_text('{"step": 1}\n')
    events = record_disk_events(monkeypatch)
    target = ownership.move_run_aside(directory, directory / "metrics.jsonl")
    assert sorted(p.name for p in target.iterdir()) == ["metrics.jsonl", "step00000004"]
    assert events == [("fsync", str(target)), ("fsync", str(target.parent)), ("fsync", str(directory))]


def test_rotation_removes_only_checkpoints_of_the_current_run(tmp_path):
    for step, run in ((2, "old"), (4, "old"), (6, "new"), (8, "new"), (10, "new")):
        fake_checkpoint(tmp_path, f"step{step:08d}", run_id=run, step=step)
    removed = rotate(tmp_path, 1, "new")
    assert [p.name for p in removed] == ["step00000006", "step00000008"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step00000002", "step00000004", "step00000010"]


def test_rng_state_round_trips_through_the_safe_loader(tmp_path):
    torch.manual_seed(3), np.random.seed(3), random.seed(3)
    np.random.standard_normal()  # a cached Gaussian is part of numpy's state
    torch.save(rng_state(), tmp_path / "rng.pt")
    expected = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], again[0]) and np.array_equal(expected[1], again[1]) and expected[2] == again[2]


def test_the_lock_admits_one_run_and_takes_over_only_stale_locks(tmp_path, monkeypatch):
    lock = RunLock(tmp_path).acquire()
    with pytest.raises(DirectoryInUse, match=f"is in use by pid {os.getpid()} on {socket.gethostname()} since"):
        RunLock(tmp_path).acquire()
    lock.release()
    assert not (tmp_path / "LOCK").exists()

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock_file = tmp_path / "LOCK"
    lock_file.write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid, "started": "then"}))
    RunLock(tmp_path).acquire().release()  # its owner is gone: taken over

    lock_file.write_text(json.dumps({"host": "another-node", "pid": 1, "started": "now"}))
    with pytest.raises(DirectoryInUse, match="pid 1 on another-node"):
        RunLock(tmp_path).acquire()  # fresh heartbeat on another host: alive as far as we can tell
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    lock_file.write_text(json.dumps({"host": "another-node", "pid": 1, "slurm_job_id": "77"}))
    RunLock(tmp_path).acquire().release()  # our own Slurm job, requeued onto this node
    monkeypatch.delenv("SLURM_JOB_ID")
    lock_file.write_text(json.dumps({"host": "another-node", "pid": 1, "started": "long ago"}))
    old = time.time() - ownership.STALE_AFTER_S - 60
    os.utime(lock_file, (old, old))
    taken = RunLock(tmp_path).acquire()  # no heartbeat for longer than STALE_AFTER_S
    lock_file.write_text(json.dumps({"host": "x", "pid": 2, "token": "someone else"}))
    taken.release()
    assert lock_file.exists()  # release never removes a lock that is not ours


def test_claim_refuses_a_held_directory_and_overwrite_moves_it_aside(tmp_path):
    directory, metrics_file = tmp_path / "run", tmp_path / "elsewhere" / "metrics.jsonl"
    fake_checkpoint(directory, "step00000004")
    metrics_file.parent.mkdir()
    metrics_file.write_text('{"step": 1}\n{"step": 2}\n')
    settings = load_recipe(
        "recipes/tiny_cpu.yaml", [f"checkpoint.dir={directory}", "checkpoint.resume=never"]
    ).checkpoint
    with pytest.raises(
        ConfigError, match=r"already holds a run \(checkpoint step00000004, metrics.jsonl \(2 lines\)\)"
    ):
        _claim(settings, metrics_file, None)
    settings.overwrite = True
    run_id = _claim(settings, metrics_file, None)
    (moved,) = (directory / "replaced").iterdir()
    assert (moved / "step00000004" / COMPLETE).exists() and (moved / "metrics.jsonl").read_text().count("\n") == 2
    assert run_id != "run-a" and not metrics_file.exists()
    assert sorted(p.name for p in directory.iterdir()) == ["replaced"]


@pytest.mark.parametrize("text, kind", [("- model\n- data\n", "list"), ("42\n", "int")])
def test_a_recipe_that_is_not_a_mapping_is_one_line(tmp_path, text, kind):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(text)
    with pytest.raises(ConfigError, match=f"must hold a mapping of sections .*not a YAML {kind}$"):
        load_recipe(recipe)


def test_checkpoint_settings_are_checked_without_writing(tmp_path):
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "not_a_checkpoint").mkdir()
    read_only = "/sys/mtp-ds-test/run" if os.geteuid() == 0 else str(tmp_path / "ro" / "run")
    if os.geteuid() != 0:
        (tmp_path / "ro").mkdir(mode=0o555)
    cases = {
        f"checkpoint.dir={tmp_path / 'a_file'}": "is a file, not a directory",
        f"checkpoint.dir={read_only}": "is not writable",
        f"checkpoint.resume={tmp_path / 'not_a_checkpoint'}": "is not a complete checkpoint (no COMPLETE file)",
        "checkpoint.on_corrupt=ignore": "checkpoint.on_corrupt: must be one of fallback, refuse",
    }
    before = sorted(tmp_path.rglob("*"))
    for override, expected in cases.items():
        with pytest.raises(ConfigError) as error:
            load_recipe("recipes/tiny_cpu.yaml", [override])
        assert expected in str(error.value) and "\n" not in str(error.value)
    assert sorted(tmp_path.rglob("*")) == before


@pytest.mark.parametrize(
    "override, expected",
    [
        ("train.deepspeed_overrides.optimizer.params.lr=-1e-4", "optimizer.params.lr must be >= 0, got -0.0001"),
        ("train.deepspeed_overrides.optimizer.params.lr=fast", "optimizer.params.lr must be a number, got 'fast'"),
        ("train.deepspeed_overrides.scheduler.params.warmup_max_lr=-1", "scheduler.params.warmup_max_lr must be >= 0"),
    ],
)
def test_learning_rates_are_checked_when_the_run_is_planned(override, expected):
    recipe = load_recipe("recipes/tiny_cpu.yaml", [override])
    with pytest.raises(ConfigError, match=expected):
        plan_run(recipe, 2, device_type="cpu")


def test_an_unknown_optimizer_or_schedule_is_one_line():
    names = dict(
        optimizers={"adamw", "lion"}, torch_optimizers={"SGD"}, schedulers={"WarmupLR"}, torch_schedulers={"StepLR"}
    )
    for accepted in (
        {"optimizer": {"type": "AdamW"}},
        {"optimizer": {"type": "SGD"}},
        {"scheduler": {"type": "StepLR"}},
    ):
        check_optimizer_and_scheduler(accepted, "ds.json", **names)
    with pytest.raises(
        ConfigError, match=r"ds.json: optimizer.type='AdamWW' is not a DeepSpeed optimizer \(adamw, lion\)"
    ):
        check_optimizer_and_scheduler({"optimizer": {"type": "AdamWW"}}, "ds.json", **names)
    with pytest.raises(ConfigError, match=r"scheduler\.type='Cosine' is not a DeepSpeed LR schedule"):
        check_optimizer_and_scheduler({"scheduler": {"type": "Cosine"}}, "ds.json", **names)
