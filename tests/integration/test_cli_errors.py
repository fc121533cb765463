"""Bad arguments to the command-line tools stop early with one line: exit 2, nothing loaded, nothing written.

Why subprocesses: the contract is about what a user sees from the real console scripts (`mtp-ds ...`,
lm-eval's own `lm_eval`): the exit code, exactly one stderr line with the command's prefix naming what is
wrong, and no traceback. `mtp-ds` runs through a probe that also prints which heavy packages the command
imported before it returned: a refusal that never imported transformers cannot have loaded a model.

Also here: `mtp-ds export` reads DeepSpeed's pickled shards with torch's safe unpickler, so a crafted
checkpoint file is refused instead of running its code (issue "Never lose a run", items 5 and 7); the loader on
its own, in-process, is tests/unit/checkpoint/test_safe_load.py.
"""

import contextlib
import pickle
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from helpers import LAUNCH_ENV, REPO, TouchOnUnpickle, lm_eval_command, make_mtp_model

from mtp_ds.checkpoint.manifest import checkpoint_files, describe, read_marker, write_marker
from mtp_ds.models.tiny import tiny_model

HEAVY = ("transformers", "deepspeed", "matplotlib")
PROBE = (
    "import sys; from mtp_ds.cli import main; code = main(sys.argv[1:]); "
    f"print('imported:', *sorted(m for m in {HEAVY!r} if m in sys.modules)); sys.exit(code)"
)


@dataclass
class Outcome:
    returncode: int
    stdout: str  # without the probe's line
    stderr: str
    imported: set  # the HEAVY packages imported by the time the command returned (mtp-ds only)


def run_mtp_ds(*args, timeout=300) -> Outcome:
    result = subprocess.run(
        [sys.executable, "-c", PROBE, *map(str, args)],
        cwd=REPO,
        env=LAUNCH_ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    lines = result.stdout.splitlines()
    probe = lines.pop() if lines and lines[-1].startswith("imported:") else "imported:"
    return Outcome(result.returncode, "\n".join(lines), result.stderr, set(probe.split()[1:]))


def run_lm_eval(model_args: str) -> Outcome:
    result = subprocess.run(
        lm_eval_command(model_args),
        cwd=REPO,
        env=LAUNCH_ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return Outcome(result.returncode, result.stdout, result.stderr, set())


def refusal(outcome: Outcome, prefix: str, *names: str) -> str:
    """The one stderr line starting with `prefix`, after checking exit 2, no traceback, and that it names `names`."""
    context = f"rc={outcome.returncode}\nSTDOUT:\n{outcome.stdout[-2000:]}\nSTDERR:\n{outcome.stderr[-4000:]}"
    assert outcome.returncode == 2, context
    assert "Traceback" not in outcome.stderr, context
    lines = [line for line in outcome.stderr.splitlines() if line.startswith(prefix)]
    assert len(lines) == 1, context
    for name in names:
        assert name in lines[0], (name, lines[0])
    return lines[0]


def only_line(outcome: Outcome) -> str:
    """An mtp-ds refusal before anything heavy ran prints that one line and nothing else."""
    assert outcome.stderr.strip().count("\n") == 0 and outcome.stdout.strip() == "", outcome
    return outcome.stderr.strip()


# --- lm_eval --model mtp: checked in the constructor, before HFLM loads anything ----------------------------

MODEL_LOADING_STARTED = "Using device"  # HFLM's first log line, before its from_pretrained calls


def test_lm_eval_missing_pretrained_path_is_one_line(require_installed, tmp_path):
    missing = tmp_path / "no_such_model"
    outcome = run_lm_eval(f"pretrained={missing}")
    line = refusal(outcome, "lm_eval --model mtp: ", "pretrained", str(missing))
    assert "Repo id" not in line and MODEL_LOADING_STARTED not in outcome.stderr


def test_lm_eval_k_above_k_max_is_refused_at_construction(require_installed, tiny_mtp_dir):
    outcome = run_lm_eval(f"pretrained={tiny_mtp_dir},strategy=static,k=5,k_max=4")
    refusal(outcome, "lm_eval --model mtp: ", "k=5", "k_max=4")
    assert MODEL_LOADING_STARTED not in outcome.stderr


# --- mtp-ds generate ---------------------------------------------------------------------------------------


def test_generate_refuses_a_model_dir_without_tokenizer_files(tmp_path):
    model_dir = tmp_path / "weights_only"
    tiny_model("qwen3").save_pretrained(model_dir)  # config.json + weights, no tokenizer
    outcome = run_mtp_ds("generate", model_dir, "--prompt", "how many apples")
    line = refusal(outcome, "mtp-ds generate: ", str(model_dir), "no tokenizer files")
    assert only_line(outcome) == line and "input_ids" not in line and outcome.imported == set()


# --- mtp-ds show-layout ------------------------------------------------------------------------------------


def test_show_layout_png_into_a_missing_directory(tmp_path):
    target = tmp_path / "no_such_dir" / "layout.png"
    outcome = run_mtp_ds("show-layout", "--png", target)
    line = refusal(outcome, "mtp-ds show-layout: ", "--png", str(target.parent))
    assert only_line(outcome) == line and not target.parent.exists() and "matplotlib" not in outcome.imported


@pytest.mark.parametrize("offset", ["24", "30", "-1"])
def test_show_layout_offset_outside_the_sequence(offset):
    outcome = run_mtp_ds("show-layout", "--length", "24", "--offset", offset)
    line = refusal(outcome, "mtp-ds show-layout: ", f"--offset {offset}", "[0, 23]")
    assert only_line(outcome) == line


def test_show_layout_offset_must_land_before_the_eos():
    outcome = run_mtp_ds("show-layout", "--length", "24", "--eos-at", "10", "--offset", "10")
    line = refusal(outcome, "mtp-ds show-layout: ", "--offset 10", "[0, 9]", "--eos-at")
    assert only_line(outcome) == line


# --- mtp-ds export: the cheap checks -----------------------------------------------------------------------


def _checkpoint_with_hf_folder(root: Path) -> Path:
    """COMPLETE plus a real hf/ folder (config with mtp_token_id, tokenizer), but no DeepSpeed shards."""
    model, tokenizer, _ = make_mtp_model("qwen3")
    checkpoint = root / "step00000004"
    model.config.save_pretrained(checkpoint / "hf")
    tokenizer.save_pretrained(checkpoint / "hf")
    (checkpoint / "COMPLETE").write_text("{}")
    return checkpoint


def test_export_refuses_a_complete_checkpoint_without_hf_folder(tmp_path):
    checkpoint = tmp_path / "run" / "step00000004"
    checkpoint.mkdir(parents=True)
    (checkpoint / "COMPLETE").write_text("{}")
    out_dir = tmp_path / "exported"
    outcome = run_mtp_ds("export", checkpoint, out_dir)
    line = refusal(outcome, "mtp-ds export: ", str(checkpoint), "hf/")
    assert only_line(outcome) == line and not out_dir.exists() and outcome.imported == set()


def test_export_refuses_an_out_dir_that_is_a_file(tmp_path):
    checkpoint = _checkpoint_with_hf_folder(tmp_path / "run")
    out_file = tmp_path / "exported"
    out_file.write_text("not a directory\n")
    outcome = run_mtp_ds("export", checkpoint, out_file)
    line = refusal(outcome, "mtp-ds export: ", "OUT_DIR", str(out_file))
    assert only_line(outcome) == line and out_file.read_text() == "not a directory\n"
    assert outcome.imported == set()


# --- mtp-ds export: DeepSpeed's pickles are loaded with weights_only=True -----------------------------------


@pytest.fixture
def real_checkpoint(trained_run) -> Path:
    """The shared trained run's last checkpoint (read-only: a test that changes it works on a copy)."""
    return trained_run / "step00000006"


def test_export_of_a_real_checkpoint_loads_deepspeed_shards_safely(real_checkpoint, tmp_path):
    outcome = run_mtp_ds("export", real_checkpoint, tmp_path / "exported", "--dtype", "float32")
    assert outcome.returncode == 0, outcome
    assert sorted(p.name for p in (tmp_path / "exported").glob("*.safetensors"))


def _torch_save(payload, path: Path) -> None:
    torch.save({"optimizer_state_dict": payload}, path)  # a zip file, as DeepSpeed writes its shards


def _plain_pickle(payload, path: Path) -> None:
    path.write_bytes(pickle.dumps(payload))  # not a zip: torch's legacy loader (and no mmap) for this one


@pytest.mark.parametrize(
    "shard, write",
    [
        ("zero_pp_rank_0_mp_rank_00_model_states.pt", _torch_save),
        ("zero_pp_rank_1_mp_rank_00_optim_states.pt", _torch_save),
        ("zero_pp_rank_1_mp_rank_00_optim_states.pt", _plain_pickle),
    ],
    ids=["model_states", "optim_states", "optim_states_plain_pickle"],
)
def test_export_refuses_a_crafted_shard_without_running_it(real_checkpoint, tmp_path, shard, write):
    checkpoint = tmp_path / "run" / real_checkpoint.name
    shutil.copytree(real_checkpoint, checkpoint)
    marker = tmp_path / "the_payload_ran"
    write(TouchOnUnpickle(marker), checkpoint / shard)
    with contextlib.suppress(RuntimeError):  # the legacy loader checks its magic number after unpickling it
        torch.load(checkpoint / shard, weights_only=False)  # the payload is live: a full-pickle load runs it
    assert marker.exists()
    marker.unlink()
    fields = read_marker(checkpoint)  # the whole checkpoint is crafted: its manifest matches the shard
    files = describe(checkpoint, checkpoint_files(checkpoint))
    write_marker(checkpoint, step=fields["step"], run_id=fields["run_id"], world_size=2, files=files)
    out_dir = tmp_path / "exported"
    outcome = run_mtp_ds("export", checkpoint, out_dir)
    assert not marker.exists(), "export ran the shard's pickle code"
    refusal(outcome, "mtp-ds export: ", str(checkpoint / shard), "weights_only")
    assert not out_dir.exists()
