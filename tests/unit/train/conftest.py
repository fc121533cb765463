"""Fixtures of the trainer's in-process tests (its entry point called as a world of one, no torchrun)."""

import os
import signal

import pytest
import torch
from helpers import REPO

RANK_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture
def trainer_process(monkeypatch):
    """The process state `main` changes as a launched trainer would (the rank variables of a world of one, the
    signal handlers of the loading phase, the working directory), put back afterwards."""
    monkeypatch.chdir(REPO)
    for name in RANK_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    handlers = {number: signal.getsignal(number) for number in (signal.SIGTERM, signal.SIGUSR1)}
    yield
    for number, handler in handlers.items():
        signal.signal(number, handler)
    for name in RANK_VARIABLES:
        os.environ.pop(name, None)
    assert not torch.distributed.is_initialized()
