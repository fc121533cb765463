"""Packing many MTP problems into one training sequence (docs/METHOD.md section 4), so one forward trains R of them.

Ground-truth tokens stay in order at their positions; after each anchor x_i come k-1 mask tokens at positions
i+1..i+k-1; a blocked-causal mask keeps regions blind to each other and the ground truth blind to all masks, so
every slot sees what an ordinary causal forward over `x_1..x_i + [MTP]*(k-1)` would. The rule is written once
(`_attention_rule`) and evaluated as a dense (T, T) bool mask (eager/SDPA, CPU) and as a FlexAttention `mask_mod`
(block-sparse, GPU). Pure torch, no DeepSpeed: all of it is tested on CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mtp_ds.tokens import MaskTokens, as_mask_tokens

IGNORE_INDEX = -100  # target id of a slot with no ground-truth next token (region cut by the sequence end)


@dataclass
class PackedSequence:
    """One packed sequence. T = N + R*(k-1) packed tokens, R regions of k prediction slots each.

    Per-token descriptors (`anchor_of`, `region_of`, `mask_slot`, `valid`) are what the attention rule reads:
    a ground-truth token's `anchor_of` is its own position and its `region_of` is -1; mask j of region r has
    `anchor_of` = the anchor's position, `region_of` = r and `mask_slot` = j.
    """

    input_ids: torch.Tensor  # (T,) long
    position_ids: torch.Tensor  # (T,) long: RoPE positions
    attention_mask: torch.Tensor  # (T, T) bool: True where query (row) may attend key (column)
    slot_index: torch.Tensor  # (R, k) long: packed index of each region's anchor and its k-1 masks
    target_ids: torch.Tensor  # (R, k) long: ground-truth next token per slot (IGNORE_INDEX past the end)
    anchor_positions: torch.Tensor  # (R,) long: original-sequence position of each region's anchor
    eos_fill: torch.Tensor  # (R, k) bool: slots past the sample's EOS, whose target is EOS (the EOS rule)
    anchor_of: torch.Tensor  # (T,) long
    region_of: torch.Tensor  # (T,) long
    mask_slot: torch.Tensor  # (T,) long: 0 for ground truth, j for mask j
    valid: torch.Tensor  # (T,) bool: False for padding after the sample's EOS
    source_index: torch.Tensor  # (T,) long: index into the unpacked sequence of a ground-truth token, else -1
    k: int
    offset: int
    bidirectional: bool
    first_anchor: int = 0  # no anchor before this position (the last prompt token with response-only anchors)

    @property
    def num_regions(self) -> int:
        return int(self.slot_index.shape[0])


def _attention_rule(q_anchor, q_region, q_slot, q_valid, kv_anchor, kv_region, kv_slot, kv_valid, bidirectional: bool):
    """THE blocked-causal rule, on broadcastable descriptor tensors of queries and keys.

    - a key that is ground truth is visible iff its position <= the query's anchor (for a ground-truth query,
      its own position): ground truth is causal, masks see ground truth up to and including their anchor;
    - a key that is a mask is visible only to masks of its own region, earlier ones only unless bidirectional
      (a ground-truth query has region -1, so it never sees a mask);
    - padding is neither query nor key.
    """
    kv_is_ground_truth = kv_region < 0
    sees_ground_truth = kv_is_ground_truth & (kv_anchor <= q_anchor)
    same_region_mask = (~kv_is_ground_truth) & (kv_region == q_region)
    if not bidirectional:
        same_region_mask = same_region_mask & (kv_slot <= q_slot)
    return q_valid & kv_valid & (sees_ground_truth | same_region_mask)


def dense_attention_mask(anchor_of, region_of, mask_slot, valid, bidirectional: bool) -> torch.Tensor:
    """(..., T, T) bool mask from (..., T) descriptors (batched or not)."""
    q = lambda x: x.unsqueeze(-1)
    kv = lambda x: x.unsqueeze(-2)
    return _attention_rule(
        q(anchor_of),
        q(region_of),
        q(mask_slot),
        q(valid),
        kv(anchor_of),
        kv(region_of),
        kv(mask_slot),
        kv(valid),
        bidirectional,
    )


def flex_mask_mod(anchor_of, region_of, mask_slot, valid, bidirectional: bool):
    """FlexAttention `mask_mod(b, h, q_idx, kv_idx)` for (B, T) descriptors: the same rule, indexed."""

    def mask_mod(b, h, q_idx, kv_idx):
        return _attention_rule(
            anchor_of[b, q_idx],
            region_of[b, q_idx],
            mask_slot[b, q_idx],
            valid[b, q_idx],
            anchor_of[b, kv_idx],
            region_of[b, kv_idx],
            mask_slot[b, kv_idx],
            valid[b, kv_idx],
            bidirectional,
        )

    return mask_mod


def _check_pack_arguments(token_ids, k, offset, k_max, num_regions, first_anchor, mask_tokens: MaskTokens):
    if not isinstance(token_ids, torch.Tensor) or token_ids.dim() != 1:
        raise ValueError(
            f"token_ids must be a 1-D tensor of token ids, got {getattr(token_ids, 'shape', type(token_ids))}"
        )
    if k_max < 1:
        raise ValueError(f"k_max must be >= 1, got {k_max}")
    if not 1 <= k <= k_max:
        raise ValueError(f"k must be in [1, k_max={k_max}], got {k}")
    if offset < 0:
        raise ValueError(f"offset must be >= 0, got {offset}")
    if first_anchor < 0:
        raise ValueError(f"first_anchor must be >= 0, got {first_anchor}")
    if num_regions is not None and num_regions < 1:
        raise ValueError(f"num_regions must be >= 1, got {num_regions}")
    if mask_tokens.distinct and len(mask_tokens.ids) < k - 1:
        raise ValueError(f"k={k} needs {k - 1} distinct mask tokens, only {len(mask_tokens.ids)} given")
    length = token_ids.numel()
    if num_regions is None and length < 2 * k_max:
        raise ValueError(
            f"sequence of length {length} is too short for one MTP region (regions are 2*k_max = {2 * k_max} tokens apart)"
        )
    if first_anchor >= length:
        raise ValueError(
            f"sequence of length {length} is too short for one MTP region after first_anchor={first_anchor}"
        )
    is_mask = torch.isin(token_ids, torch.tensor(mask_tokens.ids, dtype=token_ids.dtype))
    if bool(is_mask.any()):
        where = int(is_mask.nonzero()[0, 0])
        raise ValueError(f"token_ids already contains a mask token id ({int(token_ids[where])}) at position {where}")


def pack(
    token_ids: torch.Tensor,
    *,
    k: int,
    offset: int,
    mtp_token_id: int | list[int] | MaskTokens,
    k_max: int = 16,
    num_regions: int | None = None,
    first_anchor: int = 0,
    bidirectional: bool = False,
    eos_token_id: int | None = None,
) -> PackedSequence:
    """Pack one ground-truth sequence (N,) into R MTP regions of block size k (docs/METHOD.md section 4).

    Anchors sit at `first_anchor + offset + r * 2*k_max` for r < num_regions (default N // (2*k_max)); an
    anchor at or past the end of the sample (its first EOS, else N) is dropped. With `eos_token_id`, ground
    truth after the first EOS is padding (no attention, no loss) and the slots of the last region that lie
    past the EOS get the target EOS (`eos_fill`).
    """
    mask_tokens = as_mask_tokens(mtp_token_id)
    _check_pack_arguments(token_ids, k, offset, k_max, num_regions, first_anchor, mask_tokens)
    token_ids = token_ids.long()
    length = token_ids.numel()
    spacing = 2 * k_max
    if num_regions is None:
        num_regions = length // spacing

    eos_index = None  # the sample's first EOS: ground truth after it is padding
    if eos_token_id is not None:
        eos_hits = (token_ids == eos_token_id).nonzero()
        if eos_hits.numel():
            eos_index = int(eos_hits[0, 0])
    end = length if eos_index is None else eos_index + 1
    anchors = first_anchor + offset + spacing * torch.arange(num_regions)
    # An anchor on the EOS (or past it, or past the sequence) would predict only padding.
    anchors = anchors[anchors < (length if eos_index is None else eos_index)]
    num_kept = int(anchors.numel())
    num_masks = k - 1
    total = length + num_kept * num_masks

    # Packed index of ground-truth token p: p plus the masks inserted after all anchors before it.
    source = torch.arange(length)
    anchors_before = torch.searchsorted(anchors, source, right=False)
    ground_truth_index = source + num_masks * anchors_before
    slot_offsets = torch.arange(k)
    slot_index = ground_truth_index[anchors].unsqueeze(1) + slot_offsets.unsqueeze(0)  # (R, k)

    input_ids = torch.empty(total, dtype=torch.long)
    position_ids = torch.empty(total, dtype=torch.long)
    anchor_of = torch.empty(total, dtype=torch.long)
    region_of = torch.full((total,), -1, dtype=torch.long)
    mask_slot = torch.zeros(total, dtype=torch.long)
    valid = torch.ones(total, dtype=torch.bool)
    source_index = torch.full((total,), -1, dtype=torch.long)

    input_ids[ground_truth_index] = token_ids
    position_ids[ground_truth_index] = source
    anchor_of[ground_truth_index] = source
    source_index[ground_truth_index] = source
    valid[ground_truth_index] = source < end
    if num_masks:
        mask_index = slot_index[:, 1:]  # (R, k-1)
        mask_ids = torch.tensor(mask_tokens.ids_for_masks(num_masks), dtype=torch.long)
        input_ids[mask_index] = mask_ids.unsqueeze(0).expand_as(mask_index)
        position_ids[mask_index] = anchors.unsqueeze(1) + slot_offsets[1:].unsqueeze(0)
        anchor_of[mask_index] = anchors.unsqueeze(1).expand_as(mask_index)
        region_of[mask_index] = torch.arange(num_kept).unsqueeze(1).expand_as(mask_index)
        mask_slot[mask_index] = slot_offsets[1:].unsqueeze(0).expand_as(mask_index)

    # Slot j of an anchor at i predicts x_{i+1+j}.
    target_positions = anchors.unsqueeze(1) + 1 + slot_offsets.unsqueeze(0)  # (R, k)
    in_sequence = target_positions < length
    target_ids = torch.where(in_sequence, token_ids[target_positions.clamp(max=length - 1)], IGNORE_INDEX)
    eos_fill = target_positions > eos_index if eos_index is not None else torch.zeros_like(in_sequence)
    if eos_index is not None:
        target_ids = torch.where(eos_fill, eos_token_id, target_ids)

    attention_mask = dense_attention_mask(anchor_of, region_of, mask_slot, valid, bidirectional)
    return PackedSequence(
        input_ids=input_ids,
        position_ids=position_ids,
        attention_mask=attention_mask,
        slot_index=slot_index,
        target_ids=target_ids,
        anchor_positions=anchors,
        eos_fill=eos_fill,
        anchor_of=anchor_of,
        region_of=region_of,
        mask_slot=mask_slot,
        valid=valid,
        source_index=source_index,
        k=k,
        offset=offset,
        bidirectional=bidirectional,
        first_anchor=first_anchor,
    )
