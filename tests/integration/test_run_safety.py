"""Never lose a run, for real: 2 torchrun ranks (gloo, ZeRO-3) on the tiny recipe.

A fresh run refuses a directory holding a run (overwrite moves it aside, byte for byte), a second run is refused
while the first holds the directory's lock, ranks save and exit when torchrun is killed with SIGKILL, Ctrl-C to
the process group saves at the step's end (and tells the launch scripts which step: STOPPED), and a crafted shard
is refused on resume without running. Resume past a damaged checkpoint: tests/integration/test_train.py.
Runs that exist anyway also try the other teacher modes against the session's trained run (same losses).
"""

import json
import os
import signal
import time
from pathlib import Path

import pytest
import torch
from helpers import (
    TouchOnUnpickle,
    metrics,
    newest_checkpoint,
    one_error_line,
    run_trainer,
    snapshot,
    start_trainer,
    wait_for_steps,
)

from mtp_ds.checkpoint.manifest import checkpoint_files, describe, read_marker, write_marker


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


def parent_pid(pid: int) -> int | None:
    """The parent of a live process (/proc/PID/stat's 4th field, after the command name in parentheses)."""
    try:
        return int((Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def assert_same_losses_as(trained_run, out_dir, steps: int, what: str) -> None:
    """The first `steps` steps of a run equal the trained run's: same recipe, seed and data, another teacher mode."""
    for a, b in zip(metrics(trained_run)[:steps], metrics(out_dir)[:steps], strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5), (what, a["step"], a["loss"], b["loss"])
        assert a["agreement"] == pytest.approx(b["agreement"], abs=1e-6), what


def test_a_fresh_run_refuses_a_directory_holding_a_run_and_overwrite_moves_it_aside(trained_run, copy_of_trained_run):
    out = copy_of_trained_run
    before = snapshot(out)
    refused = run_trainer(out, "checkpoint.resume=never", "train.steps=2", expect_ok=False)
    message = one_error_line(refused)
    lines = len((out / "metrics.jsonl").read_text().splitlines())
    assert (
        f"checkpoint.dir {str(out)!r} already holds a run (checkpoints step00000003..step00000006, DONE, "
        f"metrics.jsonl ({lines} lines))"
        in message
        and "checkpoint.overwrite=true" in message
    ), message
    assert snapshot(out) == before  # nothing touched

    # the new run also uses a plain replica teacher: same losses as the trained run's inference-engine teacher
    run_trainer(
        out,
        "checkpoint.resume=never",
        "checkpoint.overwrite=true",
        "train.steps=2",
        "train.eval_every=0",
        "teacher.mode=replica",
    )
    replaced = list((out / "replaced").iterdir())
    assert len(replaced) == 1 and snapshot(replaced[0]) == before  # the old run, byte for byte
    assert [r["step"] for r in metrics(out)] == [1, 2]
    assert newest_checkpoint(out).name == "step00000002" and (out / "DONE").read_text() == "2\n"
    old_run = read_marker(replaced[0] / "step00000006")["run_id"]
    assert read_marker(out / "step00000002")["run_id"] != old_run
    assert_same_losses_as(trained_run, out, 2, "teacher.mode=replica")


def test_a_second_run_is_refused_and_ranks_save_and_exit_when_torchrun_is_killed(trained_run, tmp_path):
    """Also the ZeRO-3 frozen teacher beside a ZeRO-3 student with gradient checkpointing (DeepSpeed #8148 leaves
    frozen parameters gathered after a recompute): no partitioned parameter stays gathered after any step."""
    out = tmp_path / "run"
    zero3_teacher = [
        "teacher.mode=zero3",
        "teacher.ds_config=ds_configs/teacher_zero3.json",
        "model.gradient_checkpointing=true",
    ]
    with open(tmp_path / "first.log", "w") as log_file:
        first = start_trainer(
            out, log_file, "train.steps=100000", "checkpoint.every=0", "train.eval_every=0", *zero3_teacher
        )
        try:
            wait_for_steps(out, 2, first)
            owner = json.loads((out / "LOCK").read_text())
            second = run_trainer(out, "train.steps=3", expect_ok=False)
            assert f"is in use by pid {owner['pid']} on {owner['host']}" in one_error_line(second)

            # the first run's ranks: its launcher's children (a rank of the refused second run may still be exiting)
            ranks = [pid for pid in processes_mentioning(f"checkpoint.dir={out}") if parent_pid(pid) == first.pid]
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
    assert_same_losses_as(trained_run, out, 2, "teacher.mode=zero3")
    assert [r["zero3/gathered_params"] for r in metrics(out)] == [0] * last_step


def test_ctrl_c_saves_at_the_step_boundary(trained_run, tmp_path):
    """Ctrl-C to a plain torchrun's process group (ranks and launcher all get SIGINT): one clean stop at the step's
    end, the checkpoint of that step, and STOPPED naming it (what slurm/*.sh report; their own signal handling is
    tested in test_slurm.py). The run uses the inference teacher with tensor parallelism over both ranks. (One
    process stopped by SIGTERM: test_train.py's accumulation test.)"""
    out = tmp_path / "run"
    with open(tmp_path / "run.log", "w") as log_file:
        run = start_trainer(
            out, log_file, "train.steps=100000", "checkpoint.every=0", "train.eval_every=0", "teacher.tp_size=2"
        )
        wait_for_steps(out, 3, run)
        os.killpg(run.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole foreground group
        run.wait(timeout=120)
    log = (tmp_path / "run.log").read_text()
    assert "KeyboardInterrupt" not in log and log.count("stopped (SIGINT)") == 1, log[-3000:]
    saved = newest_checkpoint(out)
    assert read_marker(saved)["step"] == metrics(out)[-1]["step"] >= 3 and not (out / "LOCK").exists()
    assert (out / "STOPPED").read_text() == f"{read_marker(saved)['step']}\n"
    assert_same_losses_as(trained_run, out, 3, "teacher.tp_size=2")


def test_resume_refuses_a_crafted_shard_without_running_it(copy_of_trained_run, tmp_path):
    """A shard whose pickle would run code, with a manifest that matches it (the whole checkpoint crafted):
    every rank stops with one line naming the file, and the payload never ran."""
    out = copy_of_trained_run
    (out / "DONE").unlink()
    checkpoint, marker = out / "step00000006", tmp_path / "the_payload_ran"
    torch.save(
        {"optimizer_state_dict": TouchOnUnpickle(marker)}, checkpoint / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    )
    marker_fields = read_marker(checkpoint)
    write_marker(
        checkpoint,
        step=6,
        run_id=marker_fields["run_id"],
        world_size=2,
        files=describe(checkpoint, checkpoint_files(checkpoint)),
    )
    refused = run_trainer(out, "train.steps=8", expect_ok=False)
    line = one_error_line(refused)
    assert f"{checkpoint / 'zero_pp_rank_1_mp_rank_00_optim_states.pt'}: refusing to unpickle it" in line, line
    assert not marker.exists()
