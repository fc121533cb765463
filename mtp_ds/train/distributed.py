"""Process-group setup for the trainer (torchrun / srun launch, or a single process without a launcher).

Why a module of its own: launch details (the launcher's environment, the device chosen before NCCL starts,
the backend per device type, a DeepSpeed CPU kernel that must be switched off) stay out of the training loop.
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch


def _single_process_environment() -> None:
    """`python -m mtp_ds.train ...` without a launcher: a world of one on a free local port."""
    if "RANK" in os.environ:
        return
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    os.environ.update(
        RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )


def setup_distributed(device_type: str, timeout_minutes: float | None = None) -> tuple[int, int, int]:
    """Start the process group; returns (rank, world size, local rank).

    On CUDA the rank's device is selected BEFORE the process group starts: NCCL binds its communicator to the
    current device, and ranks that all start on cuda:0 would share one GPU (or hang in the first collective).
    `timeout_minutes` (the recipe's `train.distributed_timeout_minutes`) bounds every collective's wait, e.g.
    the other ranks' barrier while rank 0 tokenises; None keeps DeepSpeed's default (10, or $DEEPSPEED_TIMEOUT).
    """
    import deepspeed

    _single_process_environment()
    local_rank = int(os.environ.get("LOCAL_RANK", os.environ.get("RANK", "0")))
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
    backend = "nccl" if device_type == "cuda" else "gloo"
    if timeout_minutes is None:
        deepspeed.init_distributed(dist_backend=backend)
    else:
        deepspeed.init_distributed(dist_backend=backend, timeout=timedelta(minutes=timeout_minutes))
    if device_type == "cpu":
        # DeepSpeed's shared-memory all-reduce kernel crashes (SIGSEGV) under AutoTP on CPU; plain gloo is exact.
        import deepspeed.comm.comm as ds_comm

        if hasattr(ds_comm.cdb, "shm_vector_kernel_level"):
            ds_comm.cdb.shm_vector_kernel_level = 0
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    return rank, world, local_rank
