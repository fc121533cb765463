"""One step's samples on one rank: its share of the global batch, split into micro-batches, then packed.

Why: the global batch and its (k, offset) draws are the same on every rank (seeded, see samplers.py and
`batching.KOffsetSampler`); each rank takes its contiguous share, sequence i keeping draw i, and packs it with
the packing plan. The packing glue lives here, not in the trainer, so the benchmark and the tests build the
exact batches the trainer trains on.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mtp_ds.batching import collate
from mtp_ds.layout import pack


def rank_slice(global_indices: list, rank: int, world_size: int) -> list:
    """The contiguous share of a global batch (or of any per-sequence list) that data-parallel `rank` trains on."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
    if len(global_indices) % world_size:
        raise ValueError(f"a global batch of {len(global_indices)} does not split over {world_size} ranks")
    share = len(global_indices) // world_size
    return list(global_indices[rank * share : (rank + 1) * share])


def split_micro(items: list, micro_batch_size: int) -> list[list]:
    if len(items) % micro_batch_size:
        raise ValueError(f"{len(items)} sequences do not split into micro-batches of {micro_batch_size}")
    return [list(items[i : i + micro_batch_size]) for i in range(0, len(items), micro_batch_size)]


@dataclass
class SampleBatch:
    """Unpacked sequences of one micro-batch, ready for `layout.pack` row by row."""

    token_ids: object  # (b, seq_len) long
    first_anchor: object  # (b,) long
    response_start: object  # (b,) long
    lengths: object  # (b,) long: tokens up to and including EOS (or seq_len when cut)
    indices: list[int]  # rows of the dataset
    draws: list[tuple[int, int]] = field(default_factory=list)  # (k, offset) per sequence, when given


def gather_batch(dataset, indices: list[int], draws: list[tuple[int, int]] | None = None) -> SampleBatch:
    import torch

    rows = dataset[list(indices)]
    long = lambda name: torch.tensor(rows[name], dtype=torch.long)
    return SampleBatch(
        long("input_ids"),
        long("first_anchor"),
        long("response_start"),
        long("length"),
        list(indices),
        list(draws or []),
    )


def step_micro_batches(
    dataset,
    global_indices: list[int],
    *,
    rank: int,
    world_size: int,
    micro_batch_size: int,
    draws: list[tuple[int, int]] | None = None,
) -> list[SampleBatch]:
    """This rank's micro-batches of one global batch (gradient_accumulation_steps of them, in order).

    `draws`: the step's global (k, offset) list from batching.KOffsetSampler.sample(step, global_batch_size);
    it is sliced exactly like the indices, so sequence i always keeps draw i.
    """
    mine = rank_slice(global_indices, rank, world_size)
    my_draws = rank_slice(draws, rank, world_size) if draws is not None else None
    chunks = split_micro(mine, micro_batch_size)
    draw_chunks = split_micro(my_draws, micro_batch_size) if my_draws is not None else [None] * len(chunks)
    return [gather_batch(dataset, chunk, chunk_draws) for chunk, chunk_draws in zip(chunks, draw_chunks)]


def pack_micro_batches(
    micro_batches: list[SampleBatch], packing, *, mask_tokens, eos_token_id: int, pad_token_id: int, device
) -> list:
    """SampleBatch (unpacked token ids + draws) -> one `batching.PackedBatch` per micro-batch, on `device`.

    `packing`: a `mtp_ds.config.PackingPlan` (k_max, num_regions, bidirectional, pad_to are read)."""
    packed = []
    for micro in micro_batches:
        sequences = [
            pack(
                micro.token_ids[row],
                k=k,
                offset=offset,
                mtp_token_id=mask_tokens,
                k_max=packing.k_max,
                num_regions=packing.num_regions,
                first_anchor=int(micro.first_anchor[row]),
                bidirectional=packing.bidirectional,
                eos_token_id=eos_token_id,
            )
            for row, (k, offset) in enumerate(micro.draws)
        ]
        packed.append(collate(sequences, pad_token_id=pad_token_id, pad_to=packing.pad_to).to(device))
    return packed
