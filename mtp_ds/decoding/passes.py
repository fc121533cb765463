"""One batched forward pass of the decoder: each row's inputs, position ids and 4D mask, the model call, the cache.

Why apart from the strategies: Static k, ConfAdapt and selfspec differ in what they feed and keep, not in how a
ragged batch goes through the model. A strategy builds a pass's `PassInputs` here (`prompt_inputs`,
`pending_inputs`, or its own), and `BatchDecoder.forward` runs it: the one place the model is called.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch

from mtp_ds.decoding.kv_cache import cache_argument
from mtp_ds.decoding.ragged_cache import RaggedCache
from mtp_ds.decoding.result import RowState
from mtp_ds.tokens import MaskTokens

Prompt = tuple[torch.Tensor, torch.Tensor]  # (input_ids, attention_mask) of a first pass, left-padded


@dataclass
class PassInputs:
    """One pass, (B, width): what to feed, where each row's predictions are read, what the cache keeps."""

    ids: torch.Tensor
    positions: torch.Tensor
    # None: every new entry is real, the cache has no hole and attention among the new tokens is causal, so the
    # model builds its own mask (what HF generate does; no (B, 1, q, cache+q) mask to allocate)
    new_valid: torch.Tensor | None
    # per row, the column of its first read prediction (num_predictions read from there); None: read every column
    anchors: list[int] | None = None
    num_predictions: int = 0
    new_allowed: torch.Tensor | None = None  # (B, q, q) bool: which new tokens each new token sees, if not causal
    # committed right after the forward: (B, kept width) bool of the new entries kept, and per-row counts; None:
    # the strategy commits later (selfspec knows what it keeps only after reading the pass)
    kept: torch.Tensor | None = None
    kept_counts: list[int] | None = None
    # (B,) the anchors as a device tensor when they differ, made from what the pass copied to the device anyway:
    # a copy of the host list after the forward would wait for the forward before the read could be queued
    anchor_index: torch.Tensor | None = None

    @property
    def width(self) -> int:
        return self.ids.shape[1]


class BatchDecoder:
    """Builds each pass's inputs, positions and 4D mask, runs the model, and returns the logits to read."""

    def __init__(self, model, mask_tokens: MaskTokens, cache, batch_size: int, device):
        self.model = model
        self.mask_tokens = mask_tokens
        self.kv = RaggedCache(cache, batch_size, device)
        self.device = device
        self.dtype = next(model.parameters()).dtype
        self.num_forward_passes = 0
        self.num_query_tokens = 0
        # Only the anchor..last-mask logits are read; models that can skip the rest of the lm_head should.
        self.takes_logits_to_keep = "logits_to_keep" in inspect.signature(model.forward).parameters
        self.cache_argument = cache_argument(model)

    def forward(self, inputs: PassInputs) -> torch.Tensor:
        """Run one pass: (B, num_predictions, V) logits from each row's anchor, or (B, width, V) without anchors."""
        width = inputs.width
        keep = width if inputs.anchors is None else width - min(inputs.anchors)
        mask = (
            None
            if inputs.new_valid is None
            else self.kv.attention_mask(inputs.new_valid, self.dtype, inputs.new_allowed)
        )
        extra = {"logits_to_keep": keep} if self.takes_logits_to_keep else {}
        out = self.model(
            input_ids=inputs.ids,
            attention_mask=mask,
            position_ids=inputs.positions,
            **{self.cache_argument: self.kv.cache},
            use_cache=True,
            **extra,
        )
        self.num_forward_passes += 1
        self.num_query_tokens += inputs.ids.numel()
        logits = out.logits[:, -keep:]
        if inputs.kept is not None:
            self.kv.commit(width, inputs.kept, inputs.kept_counts)
        if inputs.anchors is None:
            return logits
        return _read_from_anchors(logits, width, inputs.anchors, inputs.num_predictions, inputs.anchor_index)

    def prompt_inputs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, num_masks: int) -> PassInputs:
        """Prompt (left-padded) + masks; every row's anchor is the last prompt column; the prompt is kept."""
        batch, prompt_len = input_ids.shape
        masks = torch.tensor(
            self.mask_tokens.ids_for_masks(num_masks), dtype=input_ids.dtype, device=self.device
        ).expand(batch, -1)
        ids = torch.cat([input_ids, masks], dim=1)
        positions = (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)
        lengths = attention_mask.sum(dim=1, keepdim=True)
        positions = torch.cat([positions, lengths + torch.arange(num_masks, device=self.device)], dim=1)
        real_counts = lengths.flatten().tolist()
        padded = any(count != prompt_len for count in real_counts)
        new_valid = torch.cat([attention_mask, torch.ones_like(masks, dtype=torch.bool)], dim=1) if padded else None
        return PassInputs(
            ids,
            positions,
            new_valid,
            anchors=[prompt_len - 1] * batch,
            num_predictions=num_masks + 1,
            kept=attention_mask,
            kept_counts=real_counts,
        )

    def pending_inputs(self, rows: list[RowState], num_masks: int) -> PassInputs:
        """Each row's pending tokens + masks, right-padded to the longest row; all pending tokens are kept
        (and the rows' positions advance past them)."""
        pending = [len(row.pending) for row in rows]
        kept_width = max(pending)
        width = kept_width + num_masks
        pad_id = self.mask_tokens.ids[0]  # any id: padded entries are hidden and dropped
        mask_ids = self.mask_tokens.ids_for_masks(num_masks)
        ids, positions, new_valid, kept_valid = [], [], [], []
        for row, n in zip(rows, pending):
            real = n + num_masks
            ids.append(row.pending + mask_ids + [pad_id] * (width - real))
            positions.append(list(range(row.next_position, row.next_position + real)) + [0] * (width - real))
            new_valid.append([1] * real + [0] * (width - real))
            kept_valid.append([1] * n + [0] * (width - n))
            row.next_position += n
        ragged = kept_width != min(pending)  # rows accepted different counts last pass: padding, then holes
        needs_mask = ragged or not self.kv.dense
        # one host-to-device copy for everything the pass needs
        planes = torch.tensor(
            [ids, positions] + ([new_valid] if needs_mask else []) + ([kept_valid] if ragged else []),
            device=self.device,
        )
        kept = (
            planes[-1, :, :kept_width].bool()
            if ragged
            else torch.ones((len(rows), kept_width), dtype=torch.bool, device=self.device)
        )
        return PassInputs(
            planes[0],
            planes[1],
            planes[2].bool() if needs_mask else None,
            anchors=[n - 1 for n in pending],
            num_predictions=num_masks + 1,
            kept=kept,
            kept_counts=pending,
            anchor_index=kept.sum(dim=1) - 1 if ragged else None,
        )

    def keep_prefixes(self, width: int, kept_counts: list[int]) -> None:
        """After a pass over `width` new columns, keep each row's first kept_counts[b] of them (selfspec)."""
        kept_width = max(kept_counts)
        kept = (
            torch.arange(kept_width, device=self.device)[None, :]
            < torch.tensor(kept_counts, device=self.device)[:, None]
        )
        self.kv.commit(width, kept, kept_counts)


def _read_from_anchors(
    logits: torch.Tensor, width: int, anchors: list[int], num_predictions: int, anchor_index=None
) -> torch.Tensor:
    """(B, num_predictions, V): each row's logits at its anchor .. anchor + num_predictions - 1 (`anchor_index`:
    the anchors already on the device, if the pass has them)."""
    offset = width - logits.shape[1]  # logits[:, j] is the prediction at input column offset + j
    if len(set(anchors)) == 1:  # same anchor in every row: a slice, no gather
        start = anchors[0] - offset
        return logits[:, start : start + num_predictions]
    index = (
        (torch.tensor(anchors, device=logits.device) if anchor_index is None else anchor_index)[:, None]
        - offset
        + torch.arange(num_predictions, device=logits.device)
    )
    return logits[torch.arange(logits.shape[0], device=logits.device)[:, None], index]
