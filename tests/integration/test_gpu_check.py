"""bench/gpu_check.sh's trained-model steps end to end on CPU at toy sizes: the plumbing a GPU lease relies on.

A demo-like teacher (a tiny Qwen3 with a sentencepiece tokenizer trained on the demo's problems) and the demo's
data format go through `trained_model` (the demo's conversion recipe on one rank, exported) and `serve_bf16` /
`serve_fp32` (bench/serve.py at two concurrencies; in fp32 it exits 1 when selfspec or a batched row differs from
our k=1 decoding alone). One command, as on the device machine.
"""

import json
import subprocess

from helpers import LAUNCH_ENV, REPO

from mtp_ds.demo.run import PROMPT_TEMPLATE
from mtp_ds.demo.spm_tokenizer import train_tokenizer
from mtp_ds.demo.synth_gsm import write_splits
from mtp_ds.models.tiny import tiny_model


def test_trained_model_and_its_serving_steps_run_on_cpu(tmp_path):
    data = write_splits(tmp_path / "data", train=96, test=4, seed=0)
    rows = [json.loads(line) for line in data["train"].read_text().splitlines()]
    tokenizer = train_tokenizer(
        [PROMPT_TEMPLATE.replace("{prompt}", r["question"]) + " " + r["answer"] for r in rows],
        tmp_path / "tokenizer",
        vocab_size=256,
    )
    teacher = tmp_path / "teacher"
    tiny_model("qwen3", vocab_size=len(tokenizer)).save_pretrained(teacher)
    tokenizer.save_pretrained(teacher)
    out = tmp_path / "check"
    env = {**LAUNCH_ENV, "TRAINED_TEACHER": str(teacher), "TRAINED_DATA": str(data["train"]), "OMP_NUM_THREADS": "2"}
    result = subprocess.run(
        ["bash", "bench/gpu_check.sh", "--device", "cpu", "--steps", "trained_model,serve_bf16,serve_fp32"]
        + ["--out", str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    log = (out / "gpu_check.log").read_text() if (out / "gpu_check.log").exists() else ""
    assert result.returncode == 0, (result.stdout + result.stderr)[-2000:] + log[-4000:]
    records = {r["step"]: r for r in map(json.loads, (out / "gpu_check.jsonl").read_text().splitlines())}
    assert [records[s]["rc"] for s in ("trained_model", "serve_bf16", "serve_fp32")] == [0, 0, 0]
    trained = records["trained_model"]["result"]
    assert trained["steps"] == 3 and trained["last_metrics"]["step"] == 3
    for step in ("serve_bf16", "serve_fp32"):
        serve = records[step]["result"]
        cells = {(r["concurrency"], r["setting"]) for r in serve["rows"]}
        assert cells == {(c, s) for c in (1, 2) for s in ("HF generate", "ours k=1", "confadapt 0.9", "selfspec")}
