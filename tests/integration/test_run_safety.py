"""Never lose a run, for real: 2 torchrun ranks (gloo, ZeRO-3) on the tiny recipe.

A fresh run refuses a directory holding a run (overwrite moves it aside, byte for byte), a second run is refused
while the first holds the directory's lock, ranks save and exit when torchrun is killed with SIGKILL, Ctrl-C to
the process group saves at the step's end, and resume falls back past a damaged newest checkpoint to the
identical trajectory; a crafted shard is refused on resume without running.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_cli_errors import TouchOnUnpickle
from test_train import FAST, RECIPE, REPO, metrics, run_trainer

from mtp_ds.checkpoint.manifest import checkpoint_files, describe, read_marker, write_marker

pytestmark = pytest.mark.slow
ENV = {
    **os.environ,
    "DS_ACCELERATOR": "cpu",
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "OMP_NUM_THREADS": "1",
}


def one_error_line(result) -> str:
    """The one line the ranks said; torchrun then reports its child's exit code 2 its own way (rc 1)."""
    lines = [line for line in result.stderr.splitlines() if line.startswith("mtp-ds train:")]
    assert result.returncode != 0 and len(lines) == 1, result.stderr[-3000:]
    assert f'File "{REPO / "mtp_ds"}' not in result.stderr, result.stderr[-3000:]  # no traceback through our code
    return lines[0]


def snapshot(directory: Path) -> dict:
    """Every file under `directory` with its bytes (the tiny run's checkpoints are a few hundred kB)."""
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def start_trainer(out_dir, log_file, *overrides, ranks=2):
    launcher = (
        [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={ranks}", "--standalone"]
        if ranks
        else [sys.executable]
    )
    command = [*launcher, "-m", "mtp_ds.train", RECIPE, f"checkpoint.dir={out_dir}", *FAST, *overrides]
    return subprocess.Popen(
        command, cwd=REPO, env=ENV, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
    )  # its own process group, as a job in a terminal


def wait_for_steps(out_dir: Path, steps: int, process, timeout=240) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if (out_dir / "metrics.jsonl").exists() and len(metrics(out_dir)) >= steps:
            return
        assert process.poll() is None, "the trainer exited early"
        time.sleep(0.2)
    raise AssertionError(f"no {steps} steps within {timeout} s")


def processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


def newest_checkpoint(out_dir: Path) -> Path:
    return out_dir / (out_dir / "latest_complete").read_text().strip()


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """4 steps, checkpoints at 2 and 4, finished (DONE)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    run_trainer(out, "train.steps=4", "checkpoint.every=2", "train.eval_every=0")
    return out


def test_a_fresh_run_refuses_a_directory_holding_a_run_and_overwrite_moves_it_aside(finished_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    before = snapshot(out)
    refused = run_trainer(out, "checkpoint.resume=never", "train.steps=2", expect_ok=False)
    message = one_error_line(refused)
    assert (
        f"checkpoint.dir {str(out)!r} already holds a run (checkpoints step00000002..step00000004, DONE, "
        f"metrics.jsonl (4 lines))"
        in message
        and "checkpoint.overwrite=true" in message
    ), message
    assert snapshot(out) == before  # nothing touched

    run_trainer(out, "checkpoint.resume=never", "checkpoint.overwrite=true", "train.steps=2", "train.eval_every=0")
    replaced = list((out / "replaced").iterdir())
    assert len(replaced) == 1 and snapshot(replaced[0]) == before  # the old run, byte for byte
    assert [r["step"] for r in metrics(out)] == [1, 2]
    assert newest_checkpoint(out).name == "step00000002" and (out / "DONE").read_text() == "2\n"
    old_run = read_marker(replaced[0] / "step00000004")["run_id"]
    assert read_marker(out / "step00000002")["run_id"] != old_run


def test_a_second_run_is_refused_and_ranks_save_and_exit_when_torchrun_is_killed(tmp_path):
    out = tmp_path / "run"
    with open(tmp_path / "first.log", "w") as log_file:
        first = start_trainer(out, log_file, "train.steps=100000", "checkpoint.every=0", "train.eval_every=0")
        try:
            wait_for_steps(out, 2, first)
            owner = json.loads((out / "LOCK").read_text())
            second = run_trainer(out, "train.steps=3", expect_ok=False)
            assert f"is in use by pid {owner['pid']} on {owner['host']}" in one_error_line(second)

            ranks = [pid for pid in processes_mentioning(f"checkpoint.dir={out}") if pid != first.pid]
            assert len(ranks) == 2, ranks
            os.kill(first.pid, signal.SIGKILL)  # the launcher only; its ranks are orphaned
            first.wait()
            deadline = time.time() + 120
            while any(Path(f"/proc/{pid}").exists() for pid in ranks) and time.time() < deadline:
                time.sleep(0.5)
            assert not any(Path(f"/proc/{pid}").exists() for pid in ranks), "ranks outlived their launcher"
        finally:
            os.killpg(first.pid, signal.SIGKILL) if first.poll() is None else None
    log = (tmp_path / "first.log").read_text()
    last_step = metrics(out)[-1]["step"]
    saved = newest_checkpoint(out)
    assert read_marker(saved)["step"] == last_step and (saved / "COMPLETE").exists(), log[-3000:]
    assert "stopped (no launcher" in log and not (out / "LOCK").exists() and not (out / "DONE").exists()


def test_ctrl_c_saves_at_the_step_boundary(tmp_path):
    out = tmp_path / "run"
    with open(tmp_path / "run.log", "w") as log_file:
        run = start_trainer(out, log_file, "train.steps=100000", "checkpoint.every=0", "train.eval_every=0")
        wait_for_steps(out, 3, run)
        os.killpg(run.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole foreground group
        run.wait(timeout=120)
    log = (tmp_path / "run.log").read_text()
    assert "KeyboardInterrupt" not in log and log.count("stopped (SIGINT)") == 1, log[-3000:]
    saved = newest_checkpoint(out)
    assert read_marker(saved)["step"] == metrics(out)[-1]["step"] >= 3 and not (out / "LOCK").exists()
    # torchrun itself reports the signal it received (rc 1, its SignalException); one process exits 0
    single = tmp_path / "single"
    with open(tmp_path / "single.log", "w") as log_file:
        run = start_trainer(single, log_file, "train.steps=100000", "checkpoint.every=0", "train.eval_every=0", ranks=0)
        wait_for_steps(single, 2, run)
        os.killpg(run.pid, signal.SIGTERM)
        assert run.wait(timeout=120) == 0, (tmp_path / "single.log").read_text()[-3000:]
    assert read_marker(newest_checkpoint(single))["step"] == metrics(single)[-1]["step"]


def test_resume_falls_back_past_a_damaged_checkpoint_to_the_same_trajectory(finished_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    straight = {r["step"]: r["loss"] for r in metrics(finished_run)}
    shard = out / "step00000004" / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])  # a truncated shard
    (out / "DONE").unlink()

    refused = run_trainer(out, "train.steps=4", "checkpoint.on_corrupt=refuse", expect_ok=False)
    assert (
        f"checkpoint {out / 'step00000004'} is damaged: zero_pp_rank_1_mp_rank_00_optim_states.pt has"
        in one_error_line(refused)
    )

    resumed = run_trainer(out, "train.steps=4", "train.eval_every=0")
    assert "is damaged: zero_pp_rank_1_mp_rank_00_optim_states.pt has" in resumed.stderr
    assert (out / "damaged-step00000004").is_dir() and "resumed from" in resumed.stderr
    records = metrics(out)
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert {r["step"]: r["loss"] for r in records} == straight  # steps 3-4 re-run exactly as the first time
    assert read_marker(out / "step00000004")["step"] == 4 and (out / "DONE").read_text() == "4\n"


def test_resume_refuses_a_crafted_shard_without_running_it(finished_run, tmp_path):
    """A shard whose pickle would run code, with a manifest that matches it (the whole checkpoint crafted):
    every rank stops with one line naming the file, and the payload never ran."""
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    (out / "DONE").unlink()
    checkpoint, marker = out / "step00000004", tmp_path / "the_payload_ran"
    torch.save(
        {"optimizer_state_dict": TouchOnUnpickle(marker)}, checkpoint / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    )
    marker_fields = read_marker(checkpoint)
    write_marker(
        checkpoint,
        step=4,
        run_id=marker_fields["run_id"],
        world_size=2,
        files=describe(checkpoint, checkpoint_files(checkpoint)),
    )
    refused = run_trainer(out, "train.steps=6", expect_ok=False)
    line = one_error_line(refused)
    assert f"{checkpoint / 'zero_pp_rank_1_mp_rank_00_optim_states.pt'}: refusing to unpickle it" in line, line
    assert not marker.exists()
