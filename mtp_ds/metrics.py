"""Teacher-forced training metrics, kept as sums so they reduce exactly across micro-batches and ranks.

Why these: per-slot agreement between the student's proposal and the teacher's target says how far into a
block the student is right; per-slot top-1 confidence and the accepted length ConfAdapt would take at a few
thresholds are a cheap proxy for the acceleration factor the decoder will reach (docs/METHOD.md section 2).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from mtp_ds.acceptance import confident_run_length
from mtp_ds.batching import PackedBatch


@dataclass
class MetricSums:
    slot_agree: torch.Tensor  # (K,) float: proposals equal to targets, per slot index
    slot_confidence: torch.Tensor  # (K,) float: sum of student top-1 probabilities
    slot_count: torch.Tensor  # (K,) float: supervised slots per slot index
    accept_length: torch.Tensor  # (num_thresholds,) float: sum over regions of ConfAdapt's accepted length
    regions: torch.Tensor  # () float: supervised regions
    slot_loss: torch.Tensor  # () float: slot loss summed over supervised slots
    entropy: torch.Tensor  # () float: student entropy summed over supervised slots
    prefix_loss: torch.Tensor  # () float: prefix NTP loss summed over its rows (0 without the term)
    thresholds: tuple[float, ...]

    @classmethod
    def from_slots(
        cls,
        batch: PackedBatch,
        *,
        rows: torch.Tensor,
        regions: torch.Tensor,
        slots: torch.Tensor,
        proposals: torch.Tensor,
        targets: torch.Tensor,
        confidences: torch.Tensor,
        thresholds: tuple[float, ...],
        num_slot_metrics: int,
        slot_loss: torch.Tensor,
        entropy: torch.Tensor,
        prefix_loss: torch.Tensor | None = None,
    ) -> MetricSums:
        device = proposals.device
        supervised = targets != -100
        agree = ((proposals == targets) & supervised).float()
        slot_agree = torch.zeros(num_slot_metrics, device=device).index_add_(0, slots, agree)
        slot_confidence = torch.zeros(num_slot_metrics, device=device).index_add_(0, slots, confidences.float())
        slot_count = torch.zeros(num_slot_metrics, device=device).index_add_(0, slots, supervised.float())
        confidence_grid = torch.zeros(batch.slot_index.shape, device=device)
        confidence_grid[rows, regions, slots] = confidences.float()
        region_valid = batch.slot_valid[..., 0]
        accept = [
            confident_run_length(confidence_grid, threshold, batch.slot_valid)[region_valid].float().sum()
            for threshold in thresholds
        ]
        accept_length = torch.stack(accept) if accept else torch.zeros(0, device=device)
        return cls(
            slot_agree,
            slot_confidence,
            slot_count,
            accept_length,
            regions=region_valid.sum().float().to(device),
            slot_loss=slot_loss.float(),
            entropy=entropy.float(),
            prefix_loss=(prefix_loss if prefix_loss is not None else torch.zeros((), device=device)).float(),
            thresholds=tuple(thresholds),
        )

    def _sums(self) -> list[torch.Tensor]:
        """Every sum, in field order (all but `thresholds`)."""
        return [getattr(self, item.name) for item in fields(self) if item.name != "thresholds"]

    def __add__(self, other: MetricSums) -> MetricSums:
        size = max(self.slot_count.numel(), other.slot_count.numel())

        def padded(tensor: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.pad(tensor, (0, size - tensor.numel()))

        return MetricSums(
            padded(self.slot_agree) + padded(other.slot_agree),
            padded(self.slot_confidence) + padded(other.slot_confidence),
            padded(self.slot_count) + padded(other.slot_count),
            self.accept_length + other.accept_length,
            self.regions + other.regions,
            self.slot_loss + other.slot_loss,
            self.entropy + other.entropy,
            self.prefix_loss + other.prefix_loss,
            self.thresholds,
        )

    def all_reduce(self, group: torch.distributed.ProcessGroup | None = None) -> MetricSums:
        """Sum over the data-parallel group (all ranks must hold the same K; pad to k_max before)."""
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return self
        sums = self._sums()
        flat = torch.cat([tensor.reshape(-1) for tensor in sums])
        torch.distributed.all_reduce(flat, group=group)
        parts = [part.reshape(tensor.shape) for part, tensor in zip(flat.split([t.numel() for t in sums]), sums)]
        return MetricSums(*parts, thresholds=self.thresholds)

    def summary(self) -> dict[str, float]:
        """Plain floats for logging: agreement/confidence per slot, mean accepted length per threshold."""
        count = self.slot_count.clamp(min=1)
        total = float(self.slot_count.sum().clamp(min=1))
        regions = float(self.regions.clamp(min=1))
        out = {
            "agreement": float(self.slot_agree.sum()) / total,
            "slot_loss": float(self.slot_loss) / total,
            "entropy": float(self.entropy) / total,
        }
        for slot in range(self.slot_count.numel()):
            if self.slot_count[slot] > 0:
                out[f"agreement/slot{slot}"] = float(self.slot_agree[slot] / count[slot])
                out[f"confidence/slot{slot}"] = float(self.slot_confidence[slot] / count[slot])
        for threshold, accepted in zip(self.thresholds, self.accept_length.tolist()):
            out[f"accept_length@{threshold:g}"] = accepted / regions
        return out
