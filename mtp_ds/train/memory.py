"""Per-step memory facts in metrics.jsonl: the step's CUDA peak and the ZeRO-3 parameters left gathered after it.

Why: DeepSpeed >= 0.19.3 can leave frozen ZeRO-3 parameters gathered after an activation-checkpoint recompute
(DeepSpeed #8148): memory that grows with every step. Here the student has no frozen parameter and the frozen
teacher runs without recompute, so the count must stay 0 (tested with teacher.mode=zero3 + gradient
checkpointing) and `memory/peak_gb` flat; both are logged so a real run shows it too.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


def gathered_zero3_parameters(modules: Iterable[torch.nn.Module | None]) -> int | None:
    """How many ZeRO-3 partitioned parameters of `modules` are still whole (persistent small ones excepted);
    None when none is partitioned (ZeRO stage < 3)."""
    partitioned = [
        p for module in modules if module is not None for p in module.parameters() if hasattr(p, "ds_status")
    ]
    if not partitioned:
        return None
    return sum(p.ds_status.name != "NOT_AVAILABLE" and not getattr(p, "ds_persist", False) for p in partitioned)


def step_memory(student: torch.nn.Module, teacher_module: torch.nn.Module | None, device: torch.device) -> dict:
    """The metrics of one step: `zero3/gathered_params` (ZeRO-3 only), `memory/peak_gb` (CUDA only, then reset)."""
    record = {}
    gathered = gathered_zero3_parameters([student, teacher_module])
    if gathered is not None:
        record["zero3/gathered_params"] = gathered
    if device.type == "cuda":
        record["memory/peak_gb"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
        torch.cuda.reset_peak_memory_stats(device)
    return record
