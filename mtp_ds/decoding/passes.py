"""One batched forward pass of the decoder: each row's inputs, position ids and 4D mask, the model call, the cache.

Why apart from the strategies: Static k, ConfAdapt and selfspec differ in what they feed and keep, not in how a
ragged batch goes through the model. Here rows of different lengths share one forward (right-padded, explicit
positions, holes hidden by `RaggedCache`'s mask), and after the pass the cache keeps, per row, exactly the
entries of the tokens the strategy kept.
"""

from __future__ import annotations

import inspect

import torch

from mtp_ds.decoding.kv_cache import cache_argument
from mtp_ds.decoding.ragged_cache import RaggedCache
from mtp_ds.decoding.result import RowState
from mtp_ds.tokens import MaskTokens


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

    def forward(
        self,
        ids: torch.Tensor,
        positions: torch.Tensor,
        new_valid: torch.Tensor | None,
        keep: int,
        new_allowed: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Run one pass; return the logits of the last `keep` input columns, (B, keep, V).

        `new_valid` None: every new entry is real, the cache has no hole and attention among the new tokens is
        causal, so the model builds its own mask (what HF generate does; no (B, 1, q, cache+q) mask to allocate).
        `new_allowed` (B, q, q) bool: which new tokens each new token sees, when that is not causal (selfspec).
        """
        mask = None if new_valid is None else self.kv.attention_mask(new_valid, self.dtype, new_allowed)
        extra = {"logits_to_keep": keep} if self.takes_logits_to_keep else {}
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            **{self.cache_argument: self.kv.cache},
            use_cache=True,
            **extra,
        )
        self.num_forward_passes += 1
        self.num_query_tokens += ids.numel()
        return out.logits[:, -keep:]

    def _anchored(self, ids, positions, new_valid, anchors: list[int], num_predictions: int) -> torch.Tensor:
        """A pass whose logits are read at anchor .. anchor+num_predictions-1 per row: (B, num_predictions, V)."""
        width = ids.shape[1]
        logits = self.forward(ids, positions, new_valid, width - min(anchors))
        offset = width - logits.shape[1]  # logits[:, j] is the prediction at input column offset + j
        if len(set(anchors)) == 1:  # same anchor in every row: a slice, no gather
            start = anchors[0] - offset
            return logits[:, start : start + num_predictions]
        index = (
            torch.tensor(anchors, device=logits.device)[:, None]
            - offset
            + torch.arange(num_predictions, device=logits.device)
        )
        return logits[torch.arange(logits.shape[0], device=logits.device)[:, None], index]

    def first_pass(self, input_ids, attention_mask, num_masks: int):
        """Prompt (left-padded) + masks; every row's anchor is the last prompt column."""
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
        logits = self._anchored(ids, positions, new_valid, [prompt_len - 1] * batch, num_masks + 1)
        self.kv.commit(ids.shape[1], attention_mask, real_counts)
        return logits

    def step(self, rows: list[RowState], num_masks: int):
        """Each row's pending tokens + masks, right-padded to the longest row; all pending tokens are kept."""
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
        ragged = kept_width != min(pending)  # rows accepted different counts last pass: padding, then holes
        needs_mask = ragged or not self.kv.dense
        # one host-to-device copy for everything the pass needs
        planes = torch.tensor(
            [ids, positions] + ([new_valid] if needs_mask else []) + ([kept_valid] if ragged else []),
            device=self.device,
        )
        ids, positions = planes[0], planes[1]
        logits = self._anchored(
            ids, positions, planes[2].bool() if needs_mask else None, [n - 1 for n in pending], num_masks + 1
        )
        kept = (
            planes[-1, :, :kept_width].bool()
            if ragged
            else torch.ones((len(rows), kept_width), dtype=torch.bool, device=self.device)
        )
        self.kv.commit(width, kept, pending)
        for row, n in zip(rows, pending):
            row.next_position += n
        return logits

    def keep_prefixes(self, width: int, kept_counts: list[int]) -> None:
        """After a pass over `width` new columns, keep each row's first kept_counts[b] of them (selfspec)."""
        kept_width = max(kept_counts)
        kept = (
            torch.arange(kept_width, device=self.device)[None, :]
            < torch.tensor(kept_counts, device=self.device)[:, None]
        )
        self.kv.commit(width, kept, kept_counts)
