"""`MTP_DS_DRY_RUN=1 bash slurm/train_*.sh` names each node by its host in the node list (not this machine's name)
and says where the ranks per node came from. Plain bash, no torch import: well under a second per run. The real
launches are in tests/integration/test_slurm.py."""

import os
import shutil
import subprocess

import pytest
from helpers import REPO

NO_TORCH_IMPORT = {"MTP_DS_TORCHRUN_FLAGS": "", "MASTER_PORT": "29400"}  # both are otherwise asked of python


def _bash(command: list[str], **env) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "GPUS_")) and k != "VIRTUAL_ENV"}
    return subprocess.run(
        command, cwd=REPO, env={**clean, **env}, capture_output=True, text=True, timeout=60, check=False
    )


def _dry_run(**env) -> subprocess.CompletedProcess:
    env = {"MTP_DS_DRY_RUN": "1", "SLURM_JOB_ID": "7", "SLURM_NNODES": "2", **NO_TORCH_IMPORT, **env}
    return _bash(["bash", "slurm/train_qwen3.sh"], **env)


def test_each_node_line_names_its_host_from_the_node_list():
    result = _dry_run(SLURM_JOB_NODELIST="gpu[07-08]")
    assert result.returncode == 0, result.stderr
    nodes = result.stdout.splitlines()[1:]
    assert [line.split(":", 1)[0] for line in nodes] == ["node 0 (gpu07)", "node 1 (gpu08)"], result.stdout


def test_the_ranks_per_node_say_where_they_came_from():
    result = _dry_run(SLURM_JOB_NODELIST="gpu[1-2]", GPUS_PER_NODE="8")
    assert result.returncode == 0, result.stderr
    assert (
        "mtp-ds: dry run: 2 node(s) x 8 rank(s) (--nproc_per_node), from GPUS_PER_NODE=8; set GPUS_PER_NODE to the "
        "GPUs of a compute node"
    ) in result.stderr.splitlines()
    result = _dry_run(SLURM_JOB_NODELIST="gpu[1-2]")  # a login node: nvidia-smi's count here, or the default 1
    expected = "--nproc_per_node=1" if shutil.which("nvidia-smi") is None else "--nproc_per_node="
    assert expected in result.stdout and "rank(s) (--nproc_per_node), from " in result.stderr, result.stderr
    if shutil.which("nvidia-smi") is None:
        assert "from the default: no GPUS_PER_NODE, no SLURM_GPUS_ON_NODE, no GPU seen by nvidia-smi" in result.stderr


@pytest.mark.parametrize(
    "nodelist, hosts",
    [
        ("gpu[1-2]", ["gpu1", "gpu2"]),
        ("gpu[01-03,07],cpu3", ["gpu01", "gpu02", "gpu03", "gpu07", "cpu3"]),
        ("rack[2-3]-n[005-006]", ["rack2-n005", "rack2-n006", "rack3-n005", "rack3-n006"]),
        ("x[8-11]", ["x8", "x9", "x10", "x11"]),
        ("node-7,n[1-2]", ["node-7", "n1", "n2"]),
    ],
)
def test_node_lists_expand_without_scontrol_as_scontrol_does(nodelist, hosts):
    result = _bash(["bash", "-c", f'source slurm/common.sh && mtp_expand_hosts "{nodelist}" 100'])
    assert result.returncode == 0 and result.stdout.split() == hosts, (result.stdout, result.stderr)
    first_two = _bash(["bash", "-c", f'source slurm/common.sh && mtp_expand_hosts "{nodelist}" 2'])
    assert first_two.stdout.split() == hosts[:2]
    if shutil.which("scontrol"):  # the real client, where installed, agrees
        real = _bash(["scontrol", "show", "hostnames", nodelist])
        assert real.stdout.split() == hosts
