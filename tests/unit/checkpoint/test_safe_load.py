"""`weights_only_loads`: inside it, every torch.load (also weights_only=False, as DeepSpeed's zero_to_fp32 calls
it) uses torch's safe unpickler, so a crafted checkpoint file is refused instead of running its code, while what
DeepSpeed stores still loads; outside it, torch.load is as it was. `mtp-ds export` on a real run's shards is in
tests/integration/test_cli_errors.py.
"""

import os
import pickle

import pytest
import torch
from helpers import TouchOnUnpickle


def test_safe_loading_refuses_code_accepts_deepspeed_types_and_is_undone_afterwards(tmp_path):
    """Inside, even torch.load(weights_only=False) (what zero_to_fp32 calls) uses the safe unpickler; it accepts
    what DeepSpeed stores, also the DynamicLossScaler of fp16 dynamic loss scaling (the tiny run has a
    LossScaler); afterwards torch.load and its allowlist are as they were."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum

    from mtp_ds.checkpoint.safe_load import FORCE_WEIGHTS_ONLY, weights_only_loads

    scaler = DynamicLossScaler(
        init_scale=2.0**16, scale_window=1000, min_scale=1, delayed_shift=2, consecutive_hysteresis=False
    )
    torch.save(
        {"zero_stage": ZeroStageEnum.weights, "loss_scaler": scaler, "flat": [torch.ones(3)]}, tmp_path / "optim.pt"
    )
    marker = tmp_path / "the_payload_ran"
    torch.save(TouchOnUnpickle(marker), tmp_path / "crafted.pt")
    before = (os.environ.get(FORCE_WEIGHTS_ONLY), set(torch.serialization.get_safe_globals()))
    with weights_only_loads():
        loaded = torch.load(tmp_path / "optim.pt", weights_only=False)
        with pytest.raises(pickle.UnpicklingError, match="getattr"):
            torch.load(tmp_path / "crafted.pt", weights_only=False)
    assert not marker.exists()
    assert vars(loaded["loss_scaler"]) == vars(scaler) and loaded["zero_stage"] is ZeroStageEnum.weights
    assert (os.environ.get(FORCE_WEIGHTS_ONLY), set(torch.serialization.get_safe_globals())) == before
