"""From a recipe's data section to per-step micro-batches of packed token ids.

`mtp-ds prepare-data` (or, without it, rank 0 first) tokenises and fills the cache; the ranks then read it.
"""

from mtp_ds.data.build import TokenizedData, build_datasets
from mtp_ds.data.micro_batches import (
    SampleBatch,
    gather_batch,
    pack_micro_batches,
    rank_slice,
    split_micro,
    step_micro_batches,
)
from mtp_ds.data.samplers import EpochShuffleSampler, validation_batches
from mtp_ds.data.sources import group_hash, load_raw_dataset, source_paths, split_indices
from mtp_ds.data.tokenize import (
    DroppedRows,
    SkippedRow,
    SkippedRows,
    encode_example,
    eos_token_id,
    format_text,
    tokenize_dataset,
    tokenize_with_skips,
    tokenizer_fingerprint,
)

__all__ = [
    "DroppedRows",
    "EpochShuffleSampler",
    "SampleBatch",
    "SkippedRow",
    "SkippedRows",
    "TokenizedData",
    "build_datasets",
    "encode_example",
    "eos_token_id",
    "format_text",
    "gather_batch",
    "group_hash",
    "load_raw_dataset",
    "pack_micro_batches",
    "rank_slice",
    "source_paths",
    "split_indices",
    "split_micro",
    "step_micro_batches",
    "tokenize_dataset",
    "tokenize_with_skips",
    "tokenizer_fingerprint",
    "validation_batches",
]
