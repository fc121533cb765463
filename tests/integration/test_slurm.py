"""Slurm launch scripts: generated multi-node command lines, the no-Slurm fallback, and a real one-node Slurm.

The real-Slurm tests need a running cluster (CI starts one with `.ci/slurm_cluster.sh start` and sets
MTP_DS_REQUIRE_SLURM=1, which turns a missing cluster into a failure instead of a skip).
"""

import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import REPO

TINY = {"RECIPE": "recipes/tiny_cpu.yaml", "GPUS_PER_NODE": "2", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
SBATCH_FOR_CI = ["--gpus-per-node=0", "--cpus-per-task=2", "--time=00:20:00"]  # the CI node has 2 CPUs, no GPU


def script_env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_") and k != "VIRTUAL_ENV"}
    return {**env, **extra}


def run_script(script, *args, timeout=300, **env):
    return subprocess.run(
        ["bash", f"slurm/{script}", *args],
        cwd=REPO,
        env=script_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def slurm_cluster_up() -> bool:
    if shutil.which("sinfo") is None:
        return False
    result = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
    return result.returncode == 0 and any(state in result.stdout for state in ("idle", "mixed", "allocated"))


needs_cluster = pytest.mark.skipif(
    not slurm_cluster_up() and not os.environ.get("MTP_DS_REQUIRE_SLURM"),
    reason="no Slurm cluster is running (CI starts one: .ci/slurm_cluster.sh start)",
)

SLURM_COMMANDS = {"scontrol", "srun", "sbatch", "salloc", "sinfo", "squeue", "scancel", "sacct", "sstat"}


@pytest.fixture(scope="module")
def path_without_slurm(tmp_path_factory) -> str:
    """$PATH as on a machine without slurm-client: each directory holding a Slurm command is replaced by a copy
    made of links to everything else in it (this machine may have the client installed)."""
    root, entries = tmp_path_factory.mktemp("no-slurm-path"), []
    for index, entry in enumerate(os.environ["PATH"].split(os.pathsep)):
        directory = Path(entry)
        if not directory.is_dir() or not any((directory / name).exists() for name in SLURM_COMMANDS):
            entries.append(entry)
            continue
        shadow = root / str(index)
        shadow.mkdir()
        for item in directory.iterdir():
            if item.name not in SLURM_COMMANDS:
                (shadow / item.name).symlink_to(item)
        entries.append(str(shadow))
    path = os.pathsep.join(entries)
    assert not any(shutil.which(name, path=path) for name in SLURM_COMMANDS)
    return path


def fake_command(directory: Path, name: str, body: str) -> Path:
    """A test double for a command on PATH (a Slurm client binary, torchrun): a Python script."""
    directory.mkdir(parents=True, exist_ok=True)
    script = directory / name
    script.write_text(f"#!{sys.executable}\n{body}")
    script.chmod(0o755)
    return script


@pytest.mark.parametrize("nodes", [1, 2, 4])
def test_multinode_command_lines(nodes):
    result = run_script(
        "train_qwen3.sh",
        "train.steps=10",
        MTP_DS_DRY_RUN="1",
        SLURM_JOB_ID="4242",
        SLURM_NNODES=str(nodes),
        SLURM_JOB_NODELIST=f"gpu[01-{nodes:02d}]",
        SLURM_CPUS_PER_TASK="32",
        GPUS_PER_NODE="8",
        OUTPUT_DIR="/scratch/run",
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    launch, node_lines = lines[0], lines[1:]
    # one srun task per node with the job's CPUs (srun of Slurm 22.05-23.02 does not inherit them), the job dies
    # with any node, the overrides reach the trainer
    assert launch.startswith(
        f"launch: srun --nodes={nodes} --ntasks-per-node=1 --kill-on-bad-exit=1 --cpus-per-task=32 bash "
    )
    assert launch.endswith("slurm/node_launch.sh train.steps=10")
    assert [re.match(r"node (\d+) ", line).group(1) for line in node_lines] == [str(n) for n in range(nodes)]
    torchrun = {line.split(": ", 1)[1] for line in node_lines}
    assert len(torchrun) == 1  # identical everywhere: c10d rendezvous hands out the ranks, no node guesses its own
    command = torchrun.pop()
    for expected in (
        f"--nnodes={nodes}",
        "--nproc_per_node=8",
        "--rdzv_backend=c10d",
        "--rdzv_endpoint=gpu01:24242",
        "--rdzv_id=4242",
        "SIGUSR1",
        "-m mtp_ds.train",
        "recipes/qwen3_4b_metamath.yaml",
        "checkpoint.dir=/scratch/run",
        "train.steps=10",
    ):
        assert expected in command, (expected, command)
    assert "--standalone" not in command and "--node_rank" not in command


def test_required_variables_fail_up_front():
    for env, message in [
        ({"RECIPE": "recipes/nope.yaml"}, "error: RECIPE=recipes/nope.yaml does not exist"),
        ({"GPUS_PER_NODE": "two", "MTP_DS_DRY_RUN": "1"}, "error: GPUS_PER_NODE=two is not a positive integer"),
    ]:
        result = run_script("train_qwen3.sh", **env)
        assert result.returncode == 2 and result.stderr.strip().startswith(message), result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    result = run_script("eval_gsm8k.sh")
    assert result.returncode == 2 and result.stderr.strip().startswith("error: set MODEL_DIR")


def test_long_node_list_does_not_kill_the_script(tmp_path):
    # `scontrol show hostnames | head -n1` under pipefail: head exits after one line, scontrol dies of SIGPIPE
    # on a long list and the script with it (exit 141, no message)
    fake_command(
        tmp_path / "bin",
        "scontrol",
        (
            "import signal, sys\n"
            "signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # a C program: dies of SIGPIPE\n"
            "assert sys.argv[1:3] == ['show', 'hostnames'], sys.argv\n"
            "sys.stdout.write(''.join(f'node{i:06d}\\n' for i in range(1, 200001)))\n"
        ),
    )
    result = run_script(
        "train_qwen3.sh",
        MTP_DS_DRY_RUN="1",
        SLURM_JOB_ID="4242",
        SLURM_NNODES="2",
        SLURM_JOB_NODELIST="node[000001-200000]",
        GPUS_PER_NODE="8",
        PATH=f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}",
    )
    assert result.returncode == 0, (result.returncode, result.stderr)
    assert "--rdzv_endpoint=node000001:24242" in result.stdout, result.stdout


@pytest.mark.parametrize(
    "env, message",
    [
        ({"SLURM_JOB_ID": "abc"}, "error: SLURM_JOB_ID=abc is not a positive integer"),
        ({"SLURM_NNODES": "0"}, "error: SLURM_NNODES=0 is not a positive integer"),
        ({"SLURM_NNODES": "two"}, "error: SLURM_NNODES=two is not a positive integer"),
    ],
)
def test_slurm_variables_fail_up_front(env, message):
    result = run_script(
        "train_qwen3.sh",
        **{"MTP_DS_DRY_RUN": "1", "SLURM_JOB_ID": "4242", "SLURM_NNODES": "2", "SLURM_JOB_NODELIST": "gpu[1-2]", **env},
    )
    assert result.returncode == 2 and result.stderr.strip() == message, (result.returncode, result.stderr)


@pytest.mark.parametrize("dry_run", ["1", "0"])
def test_misspelt_override_fails_before_the_launch(dry_run, tmp_path):
    # the trainer's own parse of its arguments (recipe, checkpoint.dir=$OUTPUT_DIR, overrides), in the script
    result = run_script("train_tiny.sh", "train.stepz=5", MTP_DS_DRY_RUN=dry_run, OUTPUT_DIR=str(tmp_path / "run"))
    assert result.returncode == 2, (result.returncode, result.stdout[-2000:], result.stderr[-2000:])
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]  # one line
    assert result.stderr.startswith("error: unknown recipe key 'train.stepz'"), result.stderr
    assert "launch:" not in result.stdout and not (tmp_path / "run").exists()


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is not None, reason="tensorboard is installed here")
def test_dry_run_stops_at_a_switched_on_extra_that_is_not_installed(tmp_path):
    # before: the job launched, loaded both models, and rank 0 died importing tensorboard (no requeue)
    result = run_script("train_qwen3.sh", "logging.tensorboard=true", MTP_DS_DRY_RUN="1", OUTPUT_DIR=str(tmp_path))
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]  # one line
    assert result.stderr.startswith("error: logging.tensorboard=true needs the tensorboard package"), result.stderr
    assert "pip install -e '.[tensorboard]'" in result.stderr and "launch:" not in result.stdout


def readme_dry_run_example() -> str:
    section = (REPO / "README.md").read_text().split("## On a Slurm cluster", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("MTP_DS_DRY_RUN=1 ")]
    assert len(lines) == 1, lines
    return lines[0]


def test_readme_dry_run_example_works_without_slurm(path_without_slurm):
    command = readme_dry_run_example()  # exactly as the README shows it (its trailing comment included)
    result = subprocess.run(
        ["bash", "-c", command],
        cwd=REPO,
        env=script_env(PATH=path_without_slurm),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, (result.returncode, result.stderr)
    lines = result.stdout.splitlines()
    assert lines[0].startswith("launch: srun --nodes=2 ") and len(lines) == 3, result.stdout
    assert all("--rdzv_endpoint=gpu1:20001" in line for line in lines[1:]), result.stdout
    assert "scontrol" in result.stderr and "gpu1" in result.stderr  # says where MASTER_ADDR came from


@pytest.mark.parametrize(
    "nodelist, first",
    [
        ("gpu[1-2]", "gpu1"),
        ("gpu[01-04,07],cpu3", "gpu01"),
        ("n1,n[2-3]", "n1"),
        ("rack[2-3]-n[005-008]", "rack2-n005"),
        ("node-7", "node-7"),
        ("x[10,2-3]", "x10"),
        ("a[1-2]b[3-4]", "a1b3"),
    ],
)
def test_dry_run_without_scontrol_reads_the_first_host_itself(nodelist, first, path_without_slurm):
    result = run_script(
        "train_qwen3.sh",
        MTP_DS_DRY_RUN="1",
        SLURM_JOB_ID="7",
        SLURM_NNODES="2",
        SLURM_JOB_NODELIST=nodelist,
        PATH=path_without_slurm,
    )
    assert result.returncode == 0, result.stderr
    assert f"--rdzv_endpoint={first}:20007" in result.stdout, result.stdout
    if shutil.which("scontrol"):  # the real client, where installed, agrees
        hosts = subprocess.run(
            ["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=True
        ).stdout
        assert hosts.splitlines()[0] == first


@pytest.mark.parametrize("nodelist", ["gpu[1-2", "gpu[a-b]", "x[1-2]y", "gpu]1["])
def test_dry_run_without_scontrol_refuses_a_malformed_node_list(nodelist, path_without_slurm):
    result = run_script(
        "train_qwen3.sh",
        MTP_DS_DRY_RUN="1",
        SLURM_JOB_ID="7",
        SLURM_NNODES="2",
        SLURM_JOB_NODELIST=nodelist,
        PATH=path_without_slurm,
    )
    assert result.returncode == 2 and result.stderr.strip().startswith(f"error: SLURM_JOB_NODELIST={nodelist} "), (
        result.stderr
    )
    assert len(result.stderr.strip().splitlines()) == 1  # (scontrol 22.05 prints "gpu]" for the first: no guide)


# A test double for torchrun / srun: records its arguments and every signal it gets, stops on the first (after a
# moment, so that a duplicate would be seen too) and exits 0, as ranks do after a checkpoint.
def as_a_terminal_job() -> None:
    """In the child before exec: SIGINT / SIGQUIT as a job in a terminal has them. A test run started in the
    background by a non-interactive shell (nohup, `cmd &`, some CI runners) inherits them ignored, and bash
    cannot trap a signal that was ignored when it started, so the Ctrl-C tests would test nothing."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGQUIT, signal.SIG_DFL)


def start_in_a_terminal(command: list[str], env: dict) -> subprocess.Popen:
    """`command` as a job of its own in a terminal: its own process group, SIGINT / SIGQUIT at their defaults."""
    return subprocess.Popen(
        command,
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=as_a_terminal_job,
    )


RECORDING_LAUNCHER = """\
import json, os, signal, sys, time
from pathlib import Path
out = Path(os.environ["FAKE_LAUNCH_LOG"])
got = []
for number in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGHUP):
    signal.signal(number, lambda n, _f: got.append(signal.Signals(n).name))
(out / "argv.json").write_text(json.dumps([Path(sys.argv[0]).name] + sys.argv[1:]))
while not got:
    time.sleep(0.05)
time.sleep(1.0)
(out / "signals.json").write_text(json.dumps(got))
Path(os.environ["OUTPUT_DIR"]).mkdir(parents=True, exist_ok=True)
(Path(os.environ["OUTPUT_DIR"]) / "STOPPED").write_text("7\\n")  # what rank 0 writes after its save
"""
FAKE_SCONTROL = """\
import os, sys
from pathlib import Path
if sys.argv[1:3] == ["show", "hostnames"]:
    print("gpu1")
else:
    with open(Path(os.environ["FAKE_LAUNCH_LOG"]) / "scontrol.log", "a") as log:
        log.write(" ".join(sys.argv[1:]) + "\\n")
"""


@pytest.mark.parametrize(
    "sent, how, launcher, received",
    [
        ("INT", "group", "torchrun", "SIGINT"),  # Ctrl-C in a terminal: the script's whole process group
        ("INT", "script", "torchrun", "SIGINT"),  # kill -INT <script>
        ("INT", "group", "srun", "SIGUSR1"),  # srun would print task states on one SIGINT, not pass it on
        ("TERM", "script", "srun", "SIGUSR1"),  # srun would SIGKILL its tasks on SIGTERM
        ("USR1", "script", "srun", "SIGUSR1"),  # --signal=B:USR1@300
    ],
)
def test_signal_reaches_the_launch_once_and_the_script_stops_cleanly(sent, how, launcher, received, tmp_path):
    bin_dir, log_dir = tmp_path / "bin", tmp_path / "log"
    log_dir.mkdir()
    fake_command(bin_dir, launcher, RECORDING_LAUNCHER)
    fake_command(bin_dir, "scontrol", FAKE_SCONTROL)
    slurm = {"SLURM_JOB_ID": "4242", "SLURM_NNODES": "1", "SLURM_JOB_NODELIST": "gpu1"} if launcher == "srun" else {}
    env = script_env(
        **slurm,
        OUTPUT_DIR=str(tmp_path / "run"),
        FAKE_LAUNCH_LOG=str(log_dir),
        MTP_DS_ACTIVATE=f"source {REPO}/.venv/bin/activate; PATH={bin_dir}:$PATH",
    )
    process = start_in_a_terminal(["bash", "slurm/train_tiny.sh", "train.steps=200"], env)
    try:
        wait_for(lambda: (log_dir / "argv.json").exists() or process.poll() is not None, 120, "the launch")
        assert process.poll() is None, process.communicate()
        number = getattr(signal, f"SIG{sent}")
        if how == "group":
            os.killpg(process.pid, number)
        else:
            os.kill(process.pid, number)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 0, (process.returncode, stdout, stderr)
    assert json.loads((log_dir / "signals.json").read_text()) == [received]  # once: never twice
    if launcher == "srun":
        assert f"preempted (SIG{sent}): checkpoint saved at step 7; requeueing job 4242" in stdout, stdout
        assert (log_dir / "scontrol.log").read_text() == "requeue 4242\n"
    else:
        assert f"stopped (SIG{sent}): checkpoint saved at step 7; run the same command again to resume" in stdout, (
            stdout
        )
        argv = " ".join(json.loads((log_dir / "argv.json").read_text()))
        assert re.search(r"--signals-to-handle=\S*SIGINT", argv) and "--shutdown-timeout=240" in argv, argv


def fake_old_torch(root: Path) -> Path:
    """A `torch` for PYTHONPATH whose torchrun table (torch/distributed/run.py) has neither --signals-to-handle
    nor --shutdown-timeout, as torch < 2.9; mtp_ds/config/launch.py reads that table as text."""
    (root / "torch" / "distributed").mkdir(parents=True)
    (root / "torch" / "__init__.py").write_text("")
    (root / "torch" / "distributed" / "__init__.py").write_text("")
    (root / "torch" / "distributed" / "run.py").write_text('parser.add_argument("--nnodes")\n')
    return root


def test_an_old_torchrun_gets_no_flags_it_lacks_and_usr1_reaches_it_as_term(tmp_path):
    result = run_script("train_tiny.sh", MTP_DS_DRY_RUN="1", PYTHONPATH=str(fake_old_torch(tmp_path / "dry")))
    assert result.returncode == 0, result.stderr
    assert "--signals-to-handle" not in result.stdout and "--shutdown-timeout" not in result.stdout
    assert "torchrun --nnodes=1 --nproc_per_node=2 --standalone -m mtp_ds.train" in result.stdout, result.stdout
    warnings = [line for line in result.stderr.splitlines() if line.startswith("mtp-ds: this torchrun has no")]
    assert len(warnings) == 2, result.stderr
    # without Slurm, USR1 to the script reaches such a torchrun (started with USR1 ignored) as TERM, once; the
    # launch itself needs the real torch (the data step), so the old torchrun's flags are given: none
    bin_dir, log_dir = tmp_path / "bin", tmp_path / "log"
    log_dir.mkdir()
    fake_command(bin_dir, "torchrun", RECORDING_LAUNCHER)
    env = script_env(
        OUTPUT_DIR=str(tmp_path / "run"),
        FAKE_LAUNCH_LOG=str(log_dir),
        MTP_DS_TORCHRUN_FLAGS="",
        MTP_DS_ACTIVATE=f"source {REPO}/.venv/bin/activate; PATH={bin_dir}:$PATH",
    )
    process = start_in_a_terminal(["bash", "slurm/train_tiny.sh", "train.steps=200"], env)
    try:
        wait_for(lambda: (log_dir / "argv.json").exists() or process.poll() is not None, 120, "the launch")
        os.kill(process.pid, signal.SIGUSR1)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 0, (process.returncode, stdout, stderr)
    assert json.loads((log_dir / "signals.json").read_text()) == ["SIGTERM"]
    assert "stopped (SIGUSR1): checkpoint saved at step 7" in stdout, stdout
    assert "--signals-to-handle" not in " ".join(json.loads((log_dir / "argv.json").read_text()))


def test_without_slurm_ctrl_c_saves_and_the_same_command_resumes_to_the_end(tmp_path):
    """`bash slurm/train_tiny.sh` on a machine without Slurm launches the real 2-rank run here. Ctrl-C (SIGINT to
    the script's process group) saves a checkpoint at the next step boundary and exits 0 saying which step (the
    ranks handle SIGINT like SIGTERM: mtp_ds/train/tracking.py StopRequest; before, they died of KeyboardInterrupt
    and no checkpoint was written); the same command again resumes and finishes, not requeued."""
    out, steps = tmp_path / "run", 40  # the tiny run's steps take ~0.1 s: Ctrl-C after 3 lands long before the end
    arguments = [f"train.steps={steps}", "checkpoint.every=0", "train.eval_every=0"]
    env = script_env(OUTPUT_DIR=str(out), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    process = start_in_a_terminal(["bash", "slurm/train_tiny.sh", *arguments], env)
    try:
        wait_for(
            lambda: process.poll() is not None or ((out / "metrics.jsonl").exists() and len(metric_steps(out)) >= 3),
            300,
            "3 training steps",
        )
        assert process.poll() is None, process.communicate()
        os.killpg(process.pid, signal.SIGINT)
        stdout, stderr = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 0, (process.returncode, stdout[-3000:], stderr[-3000:])
    saved = sorted(
        path for path in out.glob("step*") if re.fullmatch(r"step\d{8}", path.name) and (path / "COMPLETE").exists()
    )
    assert saved, (sorted(p.name for p in out.iterdir()), stderr[-3000:])
    stopped_at = int(saved[-1].name[4:])
    assert 3 <= stopped_at < steps and not (out / "DONE").exists() and "--standalone" not in stdout
    assert f"stopped (SIGINT): checkpoint saved at step {stopped_at}; run the same command again to resume" in stdout, (
        stdout[-3000:]
    )

    resumed = subprocess.run(
        ["bash", "slurm/train_tiny.sh", *arguments], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"training finished ({steps} steps); not requeued" in resumed.stdout
    assert (out / "DONE").read_text().strip() == str(steps)
    assert metric_steps(out) == list(range(1, steps + 1))  # no duplicated or lost steps


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


@needs_cluster
def test_sbatch_trains_and_a_preemption_requeues_and_resumes_without_losing_or_repeating_steps(tmp_path):
    """`sbatch slurm/train_qwen3.sh` (on the tiny recipe) trains on 2 ranks of the CI node; USR1 to the batch shell,
    as Slurm sends before a time limit (--signal=B:USR1@300), checkpoints, requeues, and the requeued job resumes
    and finishes with every step logged exactly once."""
    out, steps = tmp_path / "run", 120
    submitted = subprocess.run(
        [
            "sbatch",
            "--parsable",
            *SBATCH_FOR_CI,
            "slurm/train_qwen3.sh",
            f"train.steps={steps}",
            "train.eval_every=0",
            "checkpoint.every=1000",
        ],
        cwd=REPO,
        env=script_env(**TINY, OUTPUT_DIR=str(out)),
        capture_output=True,
        text=True,
        check=True,
    )
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
    assert re.search(rf"preempted \(SIGUSR1\): checkpoint saved at step \d+; requeueing job {job_id}", log), log[-3000:]
    assert 10 <= saved < steps and (out / f"step{saved:08d}" / "COMPLETE").exists()
    assert f"training finished ({steps} steps); not requeued" in log and "2 rank(s)" in log
    assert metric_steps(out) == list(range(1, steps + 1))  # no duplicated or lost steps
    assert (out / f"step{steps:08d}" / "COMPLETE").exists() and (out / "DONE").read_text().strip() == str(steps)
