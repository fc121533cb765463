"""The trainer for real: torchrun, 2 CPU ranks, gloo, ZeRO-3 student, DeepSpeed inference-engine teacher.

Most tests read the session's one trained run (`trained_run`, tests/integration/conftest.py: 6 steps, checkpoints
and validation at 3 and 6) and launch only what they compare it with. Config errors, which stop before any
launch matters, are tested in-process (tests/unit/train/test_train_config_errors.py).
"""

import json
import os
import signal
import subprocess

import pytest
import torch
from helpers import (
    FAST,
    LAUNCH_ENV,
    RECIPE,
    REPO,
    TRAINED_OVERRIDES,
    metrics,
    newest_checkpoint,
    one_error_line,
    run_trainer,
    start_trainer,
    torchrun,
    trainer_command,
    validation_records,
    wait_for_steps,
    zero_weights,
)

from mtp_ds.checkpoint.manifest import read_marker
from mtp_ds.config import load_recipe

SHARD = "zero_pp_rank_1_mp_rank_00_optim_states.pt"


def test_trains_on_two_ranks(trained_run):
    records = metrics(trained_run)
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    losses = [r["loss"] for r in records]
    assert all(x == x and abs(x) < 1e3 for x in losses)
    assert sum(losses[-3:]) < sum(losses[:3]), losses  # decreasing on average
    assert records[0]["agreement/slot0"] == 1.0  # student == teacher at step 0: the anchor slot agrees
    assert [v["step"] for v in validation_records(trained_run)] == [3, 6]
    assert {"lr", "tokens_per_second", "step_seconds", "accept_length@0.9", "confidence/slot3"} <= set(records[-1])
    assert (trained_run / "step00000006" / "COMPLETE").exists() and (trained_run / "DONE").read_text().strip() == "6"
    saved = load_recipe(trained_run / "step00000006" / "effective_config.yaml")
    assert saved.train.steps == 6 and saved.packing.static_k == 4
    hf_config = json.loads((trained_run / "step00000006" / "hf" / "config.json").read_text())
    assert hf_config["mtp_token_id"] == hf_config["mtp_base_vocab_size"]
    assert hf_config["mtp_k_max"] == saved.packing.k_max == 8  # recorded for mtp-ds generate's default --k-max


def test_resume_falls_back_past_a_damaged_checkpoint_to_the_same_losses_and_weights(trained_run, copy_of_trained_run):
    """The newest checkpoint (step 6) has a truncated shard: `on_corrupt=refuse` stops with one line naming it;
    the default sets it aside, resumes from step 3 with the next unseen batch, and re-runs steps 4-6 to exactly
    the uninterrupted run's losses and weights, with no step logged twice or lost."""
    out = copy_of_trained_run
    shard = out / "step00000006" / SHARD
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    (out / "DONE").unlink()

    refused = run_trainer(out, *TRAINED_OVERRIDES, "checkpoint.on_corrupt=refuse", expect_ok=False)
    assert f"checkpoint {out / 'step00000006'} is damaged: {SHARD} has" in one_error_line(refused)

    resumed = run_trainer(out, *TRAINED_OVERRIDES)
    assert f"is damaged: {SHARD} has" in resumed.stderr and "resumed from" in resumed.stderr
    assert (out / "damaged-step00000006").is_dir() and (out / "DONE").read_text() == "6\n"
    assert [r["step"] for r in metrics(out)] == [1, 2, 3, 4, 5, 6]  # no duplicated or lost steps
    assert {r["step"]: r["loss"] for r in metrics(out)} == {r["step"]: r["loss"] for r in metrics(trained_run)}
    assert [v["step"] for v in validation_records(out)] == [3, 6]
    resumed_weights, uninterrupted = zero_weights(out / "step00000006"), zero_weights(trained_run / "step00000006")
    assert resumed_weights.keys() == uninterrupted.keys()
    for name in resumed_weights:
        torch.testing.assert_close(resumed_weights[name], uninterrupted[name], rtol=1e-5, atol=1e-7)


def test_data_parallel_and_accumulation_match_one_process_with_the_whole_batch(trained_run, tmp_path):
    """The same global batch of 8 three ways: one process with one micro-batch of 8 (the reference), one process
    accumulating 4 micro-batches of 2, and the trained run (2 ranks x 2 accumulated micro-batches of 2). The loss
    is normalised by the global slot count and DeepSpeed's rank / accumulation averaging is undone, so loss and
    the (pre-clipping) global grad norm agree step by step. Weights are not compared: Adam normalises every
    element, so float-level noise on near-zero gradients moves them by up to lr.

    The accumulating process is also the single-process stop test: it runs until SIGTERM, which saves the step
    it was in and exits 0 (torchrun's own exit code after a signal is its business: test_run_safety.py)."""
    run_trainer(
        tmp_path / "whole",
        "train.steps=3",
        "train.eval_every=0",
        "checkpoint.every=0",
        "train.micro_batch_size=8",
        ranks=0,
    )
    accumulated = tmp_path / "accumulated"
    with open(tmp_path / "accumulated.log", "w") as log_file:
        run = start_trainer(
            accumulated,
            log_file,
            "train.steps=100000",
            "train.eval_every=0",
            "checkpoint.every=0",
            "train.micro_batch_size=2",
            ranks=0,
        )
        wait_for_steps(accumulated, 3, run)
        os.killpg(run.pid, signal.SIGTERM)
        assert run.wait(timeout=120) == 0, (tmp_path / "accumulated.log").read_text()[-3000:]
    assert read_marker(newest_checkpoint(accumulated))["step"] == metrics(accumulated)[-1]["step"] >= 3
    reference = metrics(tmp_path / "whole")
    assert [r["step"] for r in reference] == [1, 2, 3]
    for name, other in (("accumulated", metrics(accumulated)[:3]), ("2 ranks", metrics(trained_run)[:3])):
        for a, b in zip(reference, other, strict=True):
            assert a["supervised_slots"] == b["supervised_slots"], name
            assert a["loss"] == pytest.approx(b["loss"], rel=1e-4), (name, a["step"], a["loss"], b["loss"])
            assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-3), (name, a["step"], a["grad_norm"])


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_trains_on_one_gpu_with_nccl(tmp_path):
    """The tiny recipe on one GPU: NCCL process group, ZeRO-3 student and inference-engine teacher on cuda:0."""
    env = {key: value for key, value in LAUNCH_ENV.items() if key not in ("DS_ACCELERATOR", "OMP_NUM_THREADS")}
    command = [
        *trainer_command(tmp_path, "train.steps=4", "train.eval_every=2", "checkpoint.every=4", ranks=1)
    ]  # fp32 (the recipe's JSONs): agreement at step 0 is exact
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    records = metrics(tmp_path)
    assert [r["step"] for r in records] == [1, 2, 3, 4] and records[0]["agreement/slot0"] == 1.0
    assert all(r["loss"] == r["loss"] for r in records) and (tmp_path / "step00000004" / "COMPLETE").exists()
    effective = (tmp_path / "step00000004" / "effective_config.yaml").read_text()
    assert "device_type: cuda" in effective


def test_export_round_trip(trained_run, exported_model, tmp_path):
    """The exported fp32 checkpoint (plain HF, no custom code) gives the DeepSpeed engine's logits; the bf16
    export loads as bf16 with <MTP> in its tokenizer and decodes without emitting it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mtp_ds.checkpoint.export import main as export_main
    from mtp_ds.decoding import generate

    checkpoint = trained_run / "step00000006"
    assert export_main([str(checkpoint), str(tmp_path / "bf16")]) == 0
    subprocess.run(
        [
            *torchrun(2),
            "tests/scripts/engine_logits.py",
            RECIPE,
            str(checkpoint),
            str(tmp_path / "engine.pt"),
            f"checkpoint.dir={tmp_path / 'unused'}",
            *FAST,
        ],
        cwd=REPO,
        env=LAUNCH_ENV,
        check=True,
        capture_output=True,
        timeout=300,
    )
    engine_logits = torch.load(tmp_path / "engine.pt")
    model = AutoModelForCausalLM.from_pretrained(exported_model)  # plain HF: no custom code
    assert sorted(p.name for p in exported_model.glob("*.safetensors"))
    with torch.no_grad():
        exported = model(input_ids=torch.arange(4, 36).reshape(2, 16)).logits
    torch.testing.assert_close(exported, engine_logits, rtol=1e-5, atol=1e-5)
    bf16 = AutoModelForCausalLM.from_pretrained(tmp_path / "bf16")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "bf16")
    assert bf16.dtype == torch.bfloat16 and tokenizer.convert_ids_to_tokens(bf16.config.mtp_token_id) == "<MTP>"
    result = generate(bf16, torch.tensor([[5, 6, 7]]), strategy="static", k=3, max_new_tokens=6)
    assert len(result.sequences[0]) == 6 and bf16.config.mtp_token_id not in result.sequences[0]


def test_non_finite_training_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    blow_up = [
        "train.deepspeed_overrides.optimizer.params.lr=1e30",
        "train.deepspeed_overrides.scheduler.params.warmup_max_lr=1e30",
    ]
    result = run_trainer(
        tmp_path,
        "train.steps=8",
        "train.eval_every=0",
        "checkpoint.every=1",
        "train.micro_batch_size=4",
        *blow_up,
        ranks=0,
        expect_ok=False,
    )
    message = [line for line in result.stderr.splitlines() if line.startswith("mtp-ds train:")]
    assert result.returncode == 1 and len(message) == 1, result.stderr[-3000:]
    failed_step = int(message[0].split(" at step ")[1].split(";")[0])
    assert f"last good checkpoint: {tmp_path / f'step{failed_step - 1:08d}'}" in message[0]
    assert (tmp_path / f"step{failed_step - 1:08d}" / "COMPLETE").exists()
    assert not (tmp_path / f"step{failed_step:08d}").exists() and not (tmp_path / "DONE").exists()
