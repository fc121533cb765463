"""What a newcomer sees of a run (issue 25): `--help`, an interrupt before the first step, the start-up stages, the
end-of-run line, the third-party warnings silenced, and a full disk while saving as one line that keeps the
previous checkpoint. The trainer's own entry point, in-process as a world of one (no torchrun).
"""

import errno
import logging
import os
import re
import runpy
import signal
import sys
import warnings
from pathlib import Path

import pytest
import torch
from helpers import FAST, RECIPE, make_mtp_model

import mtp_ds.checkpoint.resume as resume_module
from mtp_ds.checkpoint.manifest import verify
from mtp_ds.checkpoint.store import DiskFull, is_disk_full, save_checkpoint
from mtp_ds.cli import main as cli_main
from mtp_ds.train.console import KNOWN_WARNINGS
from mtp_ds.train.loop import main

SHORT_RUN = ("train.steps=2", "train.eval_every=0")


@pytest.mark.parametrize("verb", ["train", "pretrain"])
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_prints_usage_and_exits_0(verb, flag, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli_main([verb, flag]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith(f"usage: mtp-ds {verb} RECIPE.yaml [section.key=value ...]"), captured
    assert "example" in captured.out and "recipes/" in captured.out and captured.err == ""
    assert list(tmp_path.iterdir()) == []  # "--help" was not taken for a recipe: nothing written


def test_python_m_mtp_ds_train_help_exits_0(capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["mtp_ds.train", "--help"])
    with pytest.raises(SystemExit) as exit_:
        runpy.run_module("mtp_ds.train", run_name="__main__")
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith("usage: mtp-ds train RECIPE.yaml")


@pytest.mark.parametrize("name", ["SIGTERM", "SIGINT"])
def test_an_interrupt_before_the_first_step_names_the_signal_once(name, tmp_path, monkeypatch, capsys, trainer_process):
    def interrupted(*_args, **_kwargs):  # while the run's directory is being claimed, before any model
        if name == "SIGTERM":
            os.kill(os.getpid(), signal.SIGTERM)  # through the loading phase's own handler
        raise KeyboardInterrupt()  # Ctrl-C: Python's KeyboardInterrupt carries no text

    monkeypatch.setattr(resume_module, "start_run", interrupted)
    assert main([RECIPE, f"checkpoint.dir={tmp_path / 'run'}"]) == 130
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("mtp-ds train:")]
    assert lines == [f"mtp-ds train: interrupted ({name} before the first step): nothing to save"]


def deprecations(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if any(re.match(p, str(w.message)) for _, p, _ in KNOWN_WARNINGS)]


def test_a_run_says_its_start_up_stages_and_ends_with_where_its_checkpoint_is(tmp_path, caplog, trainer_process):
    out = tmp_path / "run"
    caplog.set_level(logging.INFO, logger="mtp_ds")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # every warning recorded, except those the trainer filters itself
        assert main([RECIPE, f"checkpoint.dir={out}", *FAST, *SHORT_RUN, "checkpoint.every=0"]) == 0
    said = [record.getMessage() for record in caplog.records if record.name == "mtp_ds"]
    stages = [line for line in said if line.startswith("start-up:")]
    assert stages[:-1] == [
        "start-up: process group ...",
        "start-up: checkpoint directory ...",
        "start-up: tokenizer ...",
        "start-up: data ...",
        "start-up: teacher and student ...",
    ], said
    assert re.fullmatch(
        r"start-up: done in \d+\.\d s \(process group \d+\.\d s, checkpoint directory \d+\.\d s, tokenizer \d+\.\d s, "
        r"data \d+\.\d s, teacher and student \d+\.\d s\)",
        stages[-1],
    ), stages[-1]
    checkpoint = out / "step00000002"
    assert said[-1].startswith("done: 2 steps (step 2 of 2) in "), said[-1]
    assert said[-1].endswith(f"; last checkpoint: {checkpoint}; next: mtp-ds export {checkpoint} {out}-mtp"), said
    assert deprecations(caught) == []
    # the base model's generation config travels with the checkpoint, for the export (stock generate reads it)
    assert (checkpoint / "hf" / "generation_config.json").is_file()


@pytest.mark.parametrize(
    ("error", "full"),
    [
        (OSError(errno.ENOSPC, "No space left on device"), True),
        (OSError(errno.EDQUOT, "Disk quota exceeded"), True),
        (RuntimeError("basic_ios::clear: iostream error"), True),  # torch.save's C++ writer on a full disk
        (
            RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 64 vs 0: No space left on device"),
            True,
        ),
        (OSError(errno.EACCES, "Permission denied"), False),
        (RuntimeError("CUDA out of memory"), False),
    ],
)
def test_a_full_disk_is_recognised_however_the_writer_reports_it(error, full):
    assert is_disk_full(error) is full
    wrapped = RuntimeError("DeepSpeed could not save")
    wrapped.__cause__ = error
    assert is_disk_full(wrapped) is full


class SavingEngine:
    """What `save_checkpoint` asks of a DeepSpeed engine, with its files written by DeepSpeed's own writer.

    Why a stand-in: DeepSpeed keeps its process groups in module globals, so a second engine in one process fails;
    the unit tier's one real engine is the run above."""

    def __init__(self) -> None:
        from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

        self.writer, self.weights = TorchCheckpointEngine(), torch.nn.Linear(4, 4).state_dict()

    def save_checkpoint(self, save_dir, tag, client_state, save_latest):
        folder = Path(save_dir, tag)
        folder.mkdir(parents=True, exist_ok=True)
        self.writer.save({"module": self.weights, **client_state}, str(folder / "mp_rank_00_model_states.pt"))
        self.writer.save({"optimizer_state_dict": {}}, str(folder / "zero_pp_rank_0_mp_rank_00_optim_states.pt"))


def save_step(directory: Path, step: int) -> Path:
    model, tokenizer, _ = make_mtp_model("qwen3")
    return save_checkpoint(
        SavingEngine(),
        str(directory),
        step,
        {"step": step},
        keep_last=2,
        effective_config={"train": {"steps": 2}},
        hf_config=model.config,
        tokenizer=tokenizer,
        run_id="run-a",
    )


@pytest.mark.parametrize("full_at", ["mp_rank_00_model_states.pt", "rng_rank0.pt"])  # DeepSpeed's file, then ours
def test_a_full_disk_while_saving_is_one_line_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch, full_at):
    """Step 2's save runs out of space half-way through a file: step 1 stays the checkpoint a restart resumes."""
    out = tmp_path / "run"
    save_step(out, 1)
    real_save = torch.save

    def save_until_the_disk_is_full(obj, f, *args, **kwargs):  # the writer DeepSpeed's files and ours go through
        if str(f).endswith(f"step00000002/{full_at}"):
            Path(f).write_bytes(b"\0" * 64)  # the part that fitted
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(f))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_until_the_disk_is_full)
    with pytest.raises(DiskFull) as error:
        save_step(out, 2)
    assert str(error.value) == (
        f"no space left on {out} while saving step00000002; the previous checkpoint step00000001 is intact "
        "(free space, then run the same command to resume)"
    )
    assert (out / "latest_complete").read_text() == "step00000001\n"
    assert not (out / "step00000002").exists()  # the half-written step is gone, its space freed
    assert verify(out / "step00000001", 0, 1, lambda value: [value], checksums=True) == []


def test_a_full_disk_at_the_first_save_says_nothing_was_saved(tmp_path, monkeypatch):
    monkeypatch.setattr(torch, "save", lambda *args, **kwargs: (_ for _ in ()).throw(RuntimeError("basic_ios::clear")))
    with pytest.raises(DiskFull, match=r"while saving step00000001; no earlier checkpoint was saved \(free space"):
        save_step(tmp_path / "run", 1)
    assert list((tmp_path / "run").iterdir()) == []
