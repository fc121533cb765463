"""The trainer for real: torchrun, 2 CPU ranks, gloo, ZeRO-3 student, DeepSpeed inference-engine teacher."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import REPO

from mtp_ds.config import load_recipe

pytestmark = pytest.mark.slow
RECIPE = "recipes/tiny_cpu.yaml"
# static k and a higher LR make the loss trend visible within a few steps
FAST = [
    "packing.static_k=4",
    "train.deepspeed_overrides.optimizer.params.lr=3e-3",
    "train.deepspeed_overrides.scheduler.params.warmup_max_lr=3e-3",
    "train.deepspeed_overrides.scheduler.params.warmup_num_steps=1",
    "train.log_every=1",
]


def run_trainer(out_dir, *overrides, ranks=2, expect_ok=True):
    env = {
        **os.environ,
        "DS_ACCELERATOR": "cpu",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",
    }
    launcher = (
        [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={ranks}", "--standalone"]
        if ranks
        else [sys.executable]
    )
    command = [*launcher, "-m", "mtp_ds.train", RECIPE, f"checkpoint.dir={out_dir}", *FAST, *overrides]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    if expect_ok:
        assert result.returncode == 0, result.stderr[-4000:]
    return result


def metrics(out_dir):
    lines = [json.loads(line) for line in Path(out_dir, "metrics.jsonl").read_text().splitlines()]
    return [line for line in lines if "loss" in line]


def weights(checkpoint):
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    return get_fp32_state_dict_from_zero_checkpoint(str(Path(checkpoint).parent), tag=Path(checkpoint).name)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    out = tmp_path_factory.mktemp("straight")
    run_trainer(out, "train.steps=6", "checkpoint.every=3", "train.eval_every=3")
    return out


def test_trains_on_two_ranks(straight):
    records = metrics(straight)
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    losses = [r["loss"] for r in records]
    assert all(map(lambda x: x == x and abs(x) < 1e3, losses))
    assert sum(losses[-3:]) < sum(losses[:3]), losses  # decreasing on average
    assert records[0]["agreement/slot0"] == 1.0  # student == teacher at step 0: the anchor slot agrees
    validation = [
        json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines() if "val/agreement" in line
    ]
    assert [v["step"] for v in validation] == [3, 6]
    assert {"lr", "tokens_per_second", "step_seconds", "accept_length@0.9", "confidence/slot3"} <= set(records[-1])
    assert (straight / "step00000006" / "COMPLETE").exists() and (straight / "DONE").read_text().strip() == "6"
    saved = load_recipe(straight / "step00000006" / "effective_config.yaml")
    assert saved.train.steps == 6 and saved.packing.static_k == 4
    hf_config = json.loads((straight / "step00000006" / "hf" / "config.json").read_text())
    assert hf_config["mtp_token_id"] == hf_config["mtp_base_vocab_size"]


def test_resume_gives_the_same_losses_and_weights(straight, tmp_path):
    run_trainer(tmp_path, "train.steps=3", "checkpoint.every=3", "train.eval_every=3")
    assert (tmp_path / "DONE").read_text().strip() == "3"
    run_trainer(tmp_path, "train.steps=6", "checkpoint.every=3", "train.eval_every=3")
    assert (tmp_path / "DONE").read_text().strip() == "6"
    assert [r["step"] for r in metrics(tmp_path)] == [1, 2, 3, 4, 5, 6]  # no duplicated or lost steps
    for a, b in zip(metrics(straight), metrics(tmp_path)):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-6, abs=1e-7), (a["step"], a["loss"], b["loss"])
    resumed, uninterrupted = weights(tmp_path / "step00000006"), weights(straight / "step00000006")
    assert resumed.keys() == uninterrupted.keys()
    for name in resumed:
        torch.testing.assert_close(resumed[name], uninterrupted[name], rtol=1e-5, atol=1e-7)


def test_gradient_accumulation_matches_one_big_micro_batch(tmp_path):
    common = ["train.steps=3", "train.eval_every=0", "checkpoint.every=0"]
    run_trainer(tmp_path / "one", *common, "train.micro_batch_size=8", ranks=0)
    run_trainer(tmp_path / "four", *common, "train.micro_batch_size=2", ranks=0)
    # Loss and the (pre-clipping) global gradient norm agree step by step. Weights are not compared: Adam
    # normalises every element, so float-level noise on near-zero gradients moves them by up to lr.
    for a, b in zip(metrics(tmp_path / "one"), metrics(tmp_path / "four")):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4), (a["step"], a["loss"], b["loss"])
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-3), (a["step"], a["grad_norm"], b["grad_norm"])


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_trains_on_one_gpu_with_nccl(tmp_path):
    """The tiny recipe on one GPU: NCCL process group, ZeRO-3 student and inference-engine teacher on cuda:0."""
    env = {key: value for key, value in os.environ.items() if key != "DS_ACCELERATOR"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=1",
        "--standalone",
        "-m",
        "mtp_ds.train",
        RECIPE,
        f"checkpoint.dir={tmp_path}",
        *FAST,
        "train.steps=4",
        "train.eval_every=2",
        "checkpoint.every=4",
    ]  # fp32 (the recipe's JSONs): agreement at step 0 is exact
    result = subprocess.run(
        command, cwd=REPO, env={**env, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-4000:]
    records = metrics(tmp_path)
    assert [r["step"] for r in records] == [1, 2, 3, 4] and records[0]["agreement/slot0"] == 1.0
    assert all(r["loss"] == r["loss"] for r in records) and (tmp_path / "step00000004" / "COMPLETE").exists()
    effective = (tmp_path / "step00000004" / "effective_config.yaml").read_text()
    assert "device_type: cuda" in effective


def test_data_parallel_ranks_match_one_rank_with_the_whole_batch(tmp_path):
    """2 ranks x micro-batch 4 vs 1 rank x micro-batch 8, same global batch of 8: the loss is normalised by
    the global slot count and DeepSpeed's rank averaging is undone, so loss and global grad norm agree."""
    common = ["train.steps=3", "train.eval_every=0", "checkpoint.every=0", "train.global_batch_size=8"]
    run_trainer(tmp_path / "one", *common, "train.micro_batch_size=8", ranks=1)
    run_trainer(tmp_path / "two", *common, "train.micro_batch_size=4", ranks=2)
    one, two = metrics(tmp_path / "one"), metrics(tmp_path / "two")
    assert [r["step"] for r in one] == [r["step"] for r in two] == [1, 2, 3]
    for a, b in zip(one, two):
        assert a["supervised_slots"] == b["supervised_slots"]
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4), (a["step"], a["loss"], b["loss"])
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-3), (a["step"], a["grad_norm"], b["grad_norm"])


@pytest.mark.parametrize(
    "teacher",
    [
        ["teacher.tp_size=2"],
        ["teacher.mode=replica"],
        ["teacher.mode=zero3", "teacher.ds_config=ds_configs/teacher_zero3.json"],
    ],
    ids=["inference_tp2", "replica", "zero3"],
)
def test_teacher_modes_agree(straight, tmp_path, teacher):
    run_trainer(tmp_path, "train.steps=2", "train.eval_every=0", "checkpoint.every=0", *teacher)
    for a, b in zip(metrics(straight)[:2], metrics(tmp_path)):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5), (teacher, a["loss"], b["loss"])
        assert a["agreement"] == pytest.approx(b["agreement"], abs=1e-6)


def test_export_round_trip(straight, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mtp_ds.checkpoint.export import main as export_main
    from mtp_ds.decoding import generate

    checkpoint = straight / "step00000006"
    assert export_main([str(checkpoint), str(tmp_path / "fp32"), "--dtype", "float32"]) == 0
    assert export_main([str(checkpoint), str(tmp_path / "bf16")]) == 0
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            "--standalone",
            "tests/scripts/engine_logits.py",
            RECIPE,
            str(checkpoint),
            str(tmp_path / "engine.pt"),
            f"checkpoint.dir={tmp_path / 'unused'}",
            *FAST,
        ],
        cwd=REPO,
        env=env,
        check=True,
        capture_output=True,
        timeout=300,
    )
    engine_logits = torch.load(tmp_path / "engine.pt")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "fp32")  # plain HF: no custom code
    assert sorted(p.name for p in (tmp_path / "fp32").glob("*.safetensors"))
    with torch.no_grad():
        exported = model(input_ids=torch.arange(4, 36).reshape(2, 16)).logits
    torch.testing.assert_close(exported, engine_logits, rtol=1e-5, atol=1e-5)
    bf16 = AutoModelForCausalLM.from_pretrained(tmp_path / "bf16")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "bf16")
    assert bf16.dtype == torch.bfloat16 and tokenizer.convert_ids_to_tokens(bf16.config.mtp_token_id) == "<MTP>"
    result = generate(bf16, torch.tensor([[5, 6, 7]]), strategy="static", k=3, max_new_tokens=6)
    assert len(result.sequences[0]) == 6 and bf16.config.mtp_token_id not in result.sequences[0]


def _data_file(tmp_path, name, rows):
    path = tmp_path / name
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return f"data.path={path}"


@pytest.mark.parametrize(
    "case",
    [
        "unknown_key",
        "batch_conflict",
        "missing_model",
        "missing_field",
        "empty_data",
        "k_max_too_large",
        "not_json",
        "unknown_optimizer",
        "string_lr",
        "resume_not_checkpoint",
    ],
)
def test_config_errors_are_one_line_and_write_nothing(tmp_path, case):
    out = tmp_path / "out"
    overrides = {
        "unknown_key": ["train.stepz=3"],
        "batch_conflict": ["train.deepspeed_overrides.train_batch_size=16"],
        "missing_model": ["model.tiny_config=null", f"model.name_or_path={tmp_path / 'no_such_model'}"],
        "missing_field": [
            _data_file(tmp_path, "no_response.jsonl", [{"query": "q", "original_question": "q", "type": "t"}])
        ],
        "empty_data": [_data_file(tmp_path, "empty.jsonl", [])],
        "k_max_too_large": ["packing.k_max=40"],
        "not_json": [_data_file(tmp_path, "torn.jsonl", [{"query": "q", "response": "r", "original_question": "q"}])],
        "unknown_optimizer": ["train.deepspeed_overrides.optimizer.type=AdamWW"],
        "string_lr": ["train.deepspeed_overrides.optimizer.params.lr=1e-4x"],
        "resume_not_checkpoint": [f"checkpoint.resume={tmp_path}"],
    }[case]
    if case == "not_json":
        with open(tmp_path / "torn.jsonl", "a") as handle:
            handle.write('{"query": "q2", "response": \n')
    expected = {
        "unknown_key": "unknown recipe key 'train.stepz'; valid keys in 'train': global_batch_size",
        "batch_conflict": "train_batch_size",
        "missing_model": "model.name_or_path",
        "missing_field": "response",
        "empty_data": "empty",
        "k_max_too_large": "packing.k_max=40",
        "not_json": "torn.jsonl' line 2 is not JSON",
        "unknown_optimizer": "optimizer.type='AdamWW' is not a DeepSpeed optimizer",
        "string_lr": "optimizer.params.lr must be a number, got '1e-4x'",
        "resume_not_checkpoint": "is not a complete checkpoint (no COMPLETE file)",
    }[case]
    result = run_trainer(out, *overrides, ranks=0, expect_ok=False)
    message = [line for line in result.stderr.splitlines() if line.startswith("mtp-ds train:")]
    assert result.returncode == 2, result.stderr[-3000:]
    assert len(message) == 1 and expected in message[0], result.stderr[-3000:]
    assert not out.exists()


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
