"""Reading DeepSpeed's ZeRO shards with torch's safe unpickler, for export and for resume.

Why: DeepSpeed reads its shards (`*_model_states.pt`, `*_optim_states.pt`) with `torch.load(...,
weights_only=False)`, i.e. full pickle, so a crafted shard would run its own code on the machine that exports or
resumes it. `weights_only_loads()` sets torch's documented switch TORCH_FORCE_WEIGHTS_ONLY_LOAD (torch.load then
uses its safe unpickler whatever the call site passes) only for the duration of the call, and allowlists with
`torch.serialization.safe_globals` exactly the non-tensor types DeepSpeed stores in those files.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from contextlib import contextmanager
from pathlib import Path

import torch

FORCE_WEIGHTS_ONLY = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"  # torch.load: weights_only=True, whatever the caller passes
FORCE_FULL_PICKLE = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"  # its opposite: torch.load refuses to run with both set
SHARD_PATTERNS = ("*_model_states.pt", "*_optim_states.pt")  # what DeepSpeed unpickles, in zero_to_fp32's order


def deepspeed_shard_types() -> list[type]:
    """The non-tensor types DeepSpeed pickles into a ZeRO checkpoint's shards (found by loading a real one).

    Model states hold only tensors and plain containers. The ZeRO optimizer's state in `*_optim_states.pt` adds
    `zero_stage` (a ZeroStageEnum) and `loss_scaler`: what DeepSpeed's CreateLossScaler built, a LossScaler
    (fp32, bf16: scale 1) or, with fp16 dynamic loss scaling, a DynamicLossScaler.
    """
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum

    return [ZeroStageEnum, LossScaler, DynamicLossScaler]


@contextmanager
def weights_only_loads():
    """Inside: every torch.load uses the safe unpickler, which also accepts DeepSpeed's shard types.

    Process-wide while it lasts (an environment variable, read by each torch.load call): export and resume call
    it from their one working thread (the trainer's lock-heartbeat and launcher-watch threads never load), and
    the previous environment and allowlist are restored on the way out.
    """
    saved = {name: os.environ.pop(name, None) for name in (FORCE_WEIGHTS_ONLY, FORCE_FULL_PICKLE)}
    os.environ[FORCE_WEIGHTS_ONLY] = "1"
    try:
        with torch.serialization.safe_globals(deepspeed_shard_types()):
            yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _unpickler_reason(error: pickle.UnpicklingError) -> str:
    """torch's reason in one line, e.g. 'Unsupported global: GLOBAL getattr was not an allowed global by default'."""
    detail = str(error).split("WeightsUnpickler error:", 1)[-1]
    reason = next((line.strip() for line in detail.splitlines() if line.strip()), "")
    return reason.split(". Please use", 1)[0].rstrip(".") or "torch's safe unpickler refused it"


def refused_shard(checkpoint: Path) -> tuple[Path, str] | None:
    """The first shard the safe unpickler refuses, and why (zero_to_fp32's error does not say which file)."""
    for pattern in SHARD_PATTERNS:
        for shard in sorted(checkpoint.glob(pattern)):
            try:  # mmap where torch can: an optimizer shard's tensors are not read, only its pickle
                torch.load(shard, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(shard))
            except pickle.UnpicklingError as error:
                return shard, _unpickler_reason(error)
    return None
