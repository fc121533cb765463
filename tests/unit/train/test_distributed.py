"""Process-group setup order: on CUDA the rank's device is selected before the NCCL process group starts."""

import pytest
import torch

from mtp_ds.train import distributed


def test_cuda_device_is_set_before_the_process_group_starts(monkeypatch):
    calls = []
    import deepspeed

    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setattr(torch.cuda, "set_device", lambda index: calls.append(("set_device", index)))
    monkeypatch.setattr(deepspeed, "init_distributed", lambda dist_backend: calls.append(("init", dist_backend)))
    monkeypatch.setattr(torch.distributed, "get_rank", lambda: 3)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 4)
    assert distributed.setup_distributed("cuda") == (3, 4, 1)
    assert calls == [("set_device", 1), ("init", "nccl")]


def test_cpu_never_touches_cuda(monkeypatch):
    import deepspeed

    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setattr(torch.cuda, "set_device", lambda index: pytest.fail("set_device on a CPU run"))
    monkeypatch.setattr(deepspeed, "init_distributed", lambda dist_backend: None)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda: 0)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 1)
    assert distributed.setup_distributed("cpu") == (0, 1, 0)
