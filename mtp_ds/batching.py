"""Batches of packed sequences, the (k, offset) sampler, and the attention masks handed to HF models.

Why separate from `layout`: `pack` defines one sequence; this file is about stacking sequences of different k
(so different packed lengths) into rectangular tensors, and about feeding the one attention rule to whatever
attention kernel the model runs (additive dense mask for eager/SDPA, a FlexAttention BlockMask on GPU).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from mtp_ds.layout import IGNORE_INDEX, PackedSequence, dense_attention_mask, flex_mask_mod


@dataclass
class PackedBatch:
    """B packed sequences padded to a common packed length T and a common (R, K) slot grid."""

    input_ids: torch.Tensor  # (B, T)
    position_ids: torch.Tensor  # (B, T)
    anchor_of: torch.Tensor  # (B, T)
    region_of: torch.Tensor  # (B, T)
    mask_slot: torch.Tensor  # (B, T)
    valid: torch.Tensor  # (B, T) bool
    source_index: torch.Tensor  # (B, T)
    slot_index: torch.Tensor  # (B, R, K): padded entries point at index 0 and are not slot_valid
    slot_valid: torch.Tensor  # (B, R, K) bool
    target_ids: torch.Tensor  # (B, R, K)
    eos_fill: torch.Tensor  # (B, R, K) bool
    ks: list[int]
    bidirectional: bool
    first_anchor: torch.Tensor | None = None  # (B,) long: positions before it carry no loss (prefix NTP included)

    @property
    def batch_size(self) -> int:
        return int(self.input_ids.shape[0])

    def to(self, device) -> PackedBatch:
        moved = {
            name: (value.to(device) if isinstance(value, torch.Tensor) else value) for name, value in vars(self).items()
        }
        return PackedBatch(**moved)

    def dense_mask(self, *, bidirectional: bool | None = None) -> torch.Tensor:
        """(B, T, T) bool. `bidirectional=False` gives the causal variant (the teacher always runs causal)."""
        bidirectional = self.bidirectional if bidirectional is None else bidirectional
        return dense_attention_mask(self.anchor_of, self.region_of, self.mask_slot, self.valid, bidirectional)

    def mask_mod(self, *, bidirectional: bool | None = None):
        bidirectional = self.bidirectional if bidirectional is None else bidirectional
        return flex_mask_mod(self.anchor_of, self.region_of, self.mask_slot, self.valid, bidirectional)


def collate(sequences: list[PackedSequence], *, pad_token_id: int, pad_to: int | None = None) -> PackedBatch:
    """Stack packed sequences; padding tokens are invalid (attend nothing, attended by nothing).

    `pad_to`: pad to this packed length instead of the longest sequence's (a fixed shape for compiled
    FlexAttention kernels); a longer sequence is an error."""
    if not sequences:
        raise ValueError("collate needs at least one packed sequence")
    if len({seq.bidirectional for seq in sequences}) != 1:
        raise ValueError("all sequences of a batch must share the bidirectional setting")
    batch = len(sequences)
    length = max(seq.input_ids.numel() for seq in sequences)
    if pad_to is not None:
        if length > pad_to:
            raise ValueError(f"a packed sequence of length {length} does not fit pad_to={pad_to}")
        length = pad_to
    regions = max(seq.num_regions for seq in sequences)
    block = max(seq.k for seq in sequences)

    def tokens(fill, dtype):
        return torch.full((batch, length), fill, dtype=dtype)

    input_ids, position_ids = tokens(pad_token_id, torch.long), tokens(0, torch.long)
    anchor_of, region_of, mask_slot = tokens(0, torch.long), tokens(-1, torch.long), tokens(0, torch.long)
    valid, source_index = tokens(False, torch.bool), tokens(-1, torch.long)
    slot_index = torch.zeros((batch, regions, block), dtype=torch.long)
    slot_valid = torch.zeros((batch, regions, block), dtype=torch.bool)
    target_ids = torch.full((batch, regions, block), IGNORE_INDEX, dtype=torch.long)
    eos_fill = torch.zeros((batch, regions, block), dtype=torch.bool)
    for row, seq in enumerate(sequences):
        n, r, k = seq.input_ids.numel(), seq.num_regions, seq.k
        input_ids[row, :n] = seq.input_ids
        position_ids[row, :n] = seq.position_ids
        anchor_of[row, :n] = seq.anchor_of
        region_of[row, :n] = seq.region_of
        mask_slot[row, :n] = seq.mask_slot
        valid[row, :n] = seq.valid
        source_index[row, :n] = seq.source_index
        slot_index[row, :r, :k] = seq.slot_index
        slot_valid[row, :r, :k] = True
        target_ids[row, :r, :k] = seq.target_ids
        eos_fill[row, :r, :k] = seq.eos_fill
    return PackedBatch(
        input_ids=input_ids,
        position_ids=position_ids,
        anchor_of=anchor_of,
        region_of=region_of,
        mask_slot=mask_slot,
        valid=valid,
        source_index=source_index,
        slot_index=slot_index,
        slot_valid=slot_valid,
        target_ids=target_ids,
        eos_fill=eos_fill,
        ks=[seq.k for seq in sequences],
        bidirectional=sequences[0].bidirectional,
        first_anchor=torch.tensor([seq.first_anchor for seq in sequences], dtype=torch.long),
    )


def model_attention_mask(
    batch: PackedBatch, attn_implementation: str, dtype: torch.dtype, *, bidirectional: bool | None = None
):
    """The mask to pass as `attention_mask=` to a Hugging Face model with this attention implementation.

    - flex_attention: a BlockMask built from the rule's mask_mod (block-sparse, no (T, T) tensor per head);
    - anything else: a (B, 1, T, T) additive float mask (0 / dtype-min). Additive rather than bool because
      eager attention adds the mask, and because a fully masked padding row then softmaxes to a uniform row
      instead of NaN under SDPA.
    """
    if attn_implementation == "flex_attention":
        from torch.nn.attention.flex_attention import create_block_mask

        length = batch.input_ids.shape[1]
        return create_block_mask(
            batch.mask_mod(bidirectional=bidirectional),
            batch.batch_size,
            None,
            length,
            length,
            device=batch.input_ids.device,
        )
    allowed = batch.dense_mask(bidirectional=bidirectional)
    additive = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    additive.masked_fill_(~allowed, torch.finfo(dtype).min)
    return additive.unsqueeze(1)


@dataclass(frozen=True)
class KOffsetSampler:
    """Block size k and region offset per sequence (docs/METHOD.md section 4), a pure function of (seed, step).

    Stateless on purpose: every data-parallel rank draws the same values for a step (lockstep), and resuming
    at step s reproduces exactly what an uninterrupted run would have drawn. `static_k` is the ablation that
    always uses one k; `per_sequence_k` draws k for every sequence instead of once per step.
    """

    k_min: int = 2
    k_max: int = 16
    static_k: int | None = None
    per_sequence_k: bool = False
    seed: int = 0

    def __post_init__(self):
        if not 1 <= self.k_min <= self.k_max:
            raise ValueError(f"k_min must be in [1, k_max={self.k_max}], got {self.k_min}")
        if self.static_k is not None and not 1 <= self.static_k <= self.k_max:
            raise ValueError(f"static_k must be in [1, k_max={self.k_max}], got {self.static_k}")

    def sample(self, step: int, num_sequences: int) -> list[tuple[int, int]]:
        """[(k, offset)] for the `num_sequences` sequences of global step `step`; offset in [0, 2*k_max)."""
        rng = random.Random(f"{self.seed}:{step}")
        spacing = 2 * self.k_max

        def draw_k() -> int:
            return self.static_k if self.static_k is not None else rng.randint(self.k_min, self.k_max)

        step_k = draw_k()
        draws = []
        for _ in range(num_sequences):
            k = draw_k() if self.per_sequence_k else step_k
            draws.append((k, rng.randrange(spacing)))
        return draws
