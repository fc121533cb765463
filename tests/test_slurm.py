"""Slurm launch scripts: generated multi-node command lines, the no-Slurm fallback, and a real one-node Slurm.

The real-Slurm tests need a running cluster (CI starts one with `.ci/slurm_cluster.sh start` and sets
MTP_DS_REQUIRE_SLURM=1, which turns a missing cluster into a failure instead of a skip).
"""

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TINY = {"RECIPE": "recipes/tiny_cpu.yaml", "GPUS_PER_NODE": "2", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
SBATCH_FOR_CI = ["--gpus-per-node=0", "--cpus-per-task=2", "--time=00:20:00"]  # the CI node has 2 CPUs, no GPU


def script_env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_") and k != "VIRTUAL_ENV"}
    return {**env, **extra}


def run_script(script, *args, timeout=300, **env):
    return subprocess.run(["bash", f"slurm/{script}", *args], cwd=REPO, env=script_env(**env), capture_output=True,
                          text=True, timeout=timeout)


def slurm_cluster_up() -> bool:
    if shutil.which("sinfo") is None:
        return False
    result = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
    return result.returncode == 0 and any(state in result.stdout for state in ("idle", "mixed", "allocated"))


needs_scontrol = pytest.mark.skipif(shutil.which("scontrol") is None and not os.environ.get("MTP_DS_REQUIRE_SLURM"),
                                    reason="scontrol (slurm-client) is not installed")
needs_cluster = pytest.mark.skipif(not slurm_cluster_up() and not os.environ.get("MTP_DS_REQUIRE_SLURM"),
                                   reason="no Slurm cluster is running (CI starts one: .ci/slurm_cluster.sh start)")


@needs_scontrol
@pytest.mark.parametrize("nodes", [1, 2, 4])
def test_multinode_command_lines(nodes):
    result = run_script("train_qwen3.sh", "train.steps=10", MTP_DS_DRY_RUN="1", SLURM_JOB_ID="4242",
                        SLURM_NNODES=str(nodes), SLURM_JOB_NODELIST=f"gpu[01-{nodes:02d}]", GPUS_PER_NODE="8",
                        OUTPUT_DIR="/scratch/run")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    launch, node_lines = lines[0], lines[1:]
    # one srun task per node, the job dies with any node, the overrides reach the trainer
    assert launch.startswith(f"launch: srun --nodes={nodes} --ntasks-per-node=1 --kill-on-bad-exit=1 bash ")
    assert launch.endswith("slurm/node_launch.sh train.steps=10")
    assert [re.match(r"node (\d+) ", line).group(1) for line in node_lines] == [str(n) for n in range(nodes)]
    torchrun = {line.split(": ", 1)[1] for line in node_lines}
    assert len(torchrun) == 1  # identical everywhere: c10d rendezvous hands out the ranks, no node guesses its own
    command = torchrun.pop()
    for expected in (f"--nnodes={nodes}", "--nproc_per_node=8", "--rdzv_backend=c10d",
                     "--rdzv_endpoint=gpu01:24242", "--rdzv_id=4242", "SIGUSR1", "-m mtp_ds.train",
                     "recipes/qwen3_4b_metamath.yaml", "checkpoint.dir=/scratch/run", "train.steps=10"):
        assert expected in command, (expected, command)
    assert "--standalone" not in command and "--node_rank" not in command


def test_required_variables_fail_up_front():
    for env, message in [({"RECIPE": "recipes/nope.yaml"}, "error: RECIPE=recipes/nope.yaml does not exist"),
                         ({"GPUS_PER_NODE": "two", "MTP_DS_DRY_RUN": "1"}, "error: GPUS_PER_NODE=two is not a positive integer")]:
        result = run_script("train_qwen3.sh", **env)
        assert result.returncode == 2 and result.stderr.strip().startswith(message), result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    result = run_script("eval_gsm8k.sh")
    assert result.returncode == 2 and result.stderr.strip().startswith("error: set MODEL_DIR")


@pytest.mark.slow
def test_runs_without_slurm(tmp_path):
    result = run_script("train_tiny.sh", "train.steps=3", "train.eval_every=0", OUTPUT_DIR=str(tmp_path),
                        HF_HUB_OFFLINE="1")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "--standalone" not in result.stdout and "training finished (3 steps); not requeued" in result.stdout
    assert (tmp_path / "DONE").read_text().strip() == "3"


def metric_steps(out_dir: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


def job_state(job_id: str) -> str | None:
    result = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True)
    match = re.search(r"JobState=(\w+)", result.stdout)
    return match.group(1) if match else None


def wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.mark.slow
@needs_cluster
def test_sbatch_train_qwen3_script_trains_the_tiny_recipe(tmp_path):
    out = tmp_path / "run"
    result = subprocess.run(["sbatch", "--wait", "--parsable", *SBATCH_FOR_CI, "slurm/train_qwen3.sh",
                             "train.steps=4", "train.eval_every=0"],
                            cwd=REPO, env=script_env(**TINY, OUTPUT_DIR=str(out)), capture_output=True, text=True,
                            timeout=600)
    job_id = result.stdout.strip().split(";")[0]
    log = (REPO / "logs" / f"mtp-qwen3-4b-{job_id}.out").read_text() if job_id else ""
    assert result.returncode == 0, result.stderr + log[-3000:]
    assert "2 rank(s)" in log and "training finished (4 steps); not requeued" in log
    assert metric_steps(out) == [1, 2, 3, 4]
    assert (out / "step00000004" / "COMPLETE").exists()


@pytest.mark.slow
@needs_cluster
def test_preemption_requeues_and_resumes_without_losing_or_repeating_steps(tmp_path):
    out, steps = tmp_path / "run", 120
    submitted = subprocess.run(["sbatch", "--parsable", *SBATCH_FOR_CI, "slurm/train_qwen3.sh",
                                f"train.steps={steps}", "train.eval_every=0", "checkpoint.every=1000"],
                               cwd=REPO, env=script_env(**TINY, OUTPUT_DIR=str(out)), capture_output=True, text=True,
                               check=True)
    job_id = submitted.stdout.strip().split(";")[0]
    try:
        wait_for(lambda: (out / "metrics.jsonl").exists() and len(metric_steps(out)) >= 10, 300, "10 training steps")
        # what Slurm does before the time limit (--signal=B:USR1@300): signal the batch shell only
        subprocess.run(["scancel", "--signal=USR1", "--batch", job_id], check=True)
        wait_for(lambda: job_state(job_id) == "PENDING", 300, "the job to requeue itself")
        # it starts again after the cluster's cred_expire (120 s by default, 10 s on the CI cluster)
        wait_for(lambda: (out / "DONE").exists() and job_state(job_id) in (None, "COMPLETED"), 600, "the resumed run")
    finally:
        subprocess.run(["scancel", job_id], capture_output=True)
    log = (REPO / "logs" / f"mtp-qwen3-4b-{job_id}.out").read_text()
    saved = int(re.search(r"resumed from \S+step(\d+) at step (\d+)", log).group(1))
    assert f"preempted (SIGUSR1): checkpoint saved, requeueing job {job_id}" in log
    assert 10 <= saved < steps and (out / f"step{saved:08d}" / "COMPLETE").exists()
    assert f"training finished ({steps} steps); not requeued" in log
    assert metric_steps(out) == list(range(1, steps + 1))  # no duplicated or lost steps
