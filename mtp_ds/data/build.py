"""`build_datasets`: the recipe's data tokenised and split, with what did not become a sample said and checked.

Why its own step: a recipe whose `data.seq_len` is shorter than most prompts used to train on the few rows left
(4 of 237) without a word. Rank 0 logs how many rows were dropped and why; more than `data.max_dropped_fraction`
of rows that are not samples, or an empty validation split that `train.eval_every` would validate on, stops the
run here in one line, before any model is built.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

from mtp_ds.config import ConfigError, Recipe
from mtp_ds.data.sources import load_raw_dataset, source_paths, split_indices
from mtp_ds.data.tokenize import DroppedRows, SkippedRows, eos_token_id, tokenize_with_skips

log = logging.getLogger("mtp_ds.data")


@dataclass
class TokenizedData:
    """The two sides of the split, each a datasets.Dataset of fixed-length samples."""

    train: object
    validation: object
    eos_token_id: int
    num_raw: int  # rows before tokenisation
    num_dropped: int  # rows dropped (prompt fills the window, or empty response)
    skipped: SkippedRows = field(default_factory=SkippedRows)  # rows that could not become samples, the first named
    dropped: DroppedRows = field(default_factory=DroppedRows)  # the dropped rows by reason


def not_samples(dropped: DroppedRows, skipped: SkippedRows, seq_len: int) -> str:
    """Why rows are not samples, e.g. `233 whose prompt fills data.seq_len=16 (prompts of 16 to 26 tokens)`."""
    parts = []
    if dropped.prompt_fills_window:
        low, high = dropped.prompt_tokens
        lengths = f"{low} tokens" if low == high else f"{low} to {high} tokens"
        parts.append(f"{dropped.prompt_fills_window} whose prompt fills data.seq_len={seq_len} (prompts of {lengths})")
    if dropped.empty_response:
        parts.append(f"{dropped.empty_response} with an empty response")
    if skipped.count:
        parts.append(f"{skipped.count} skipped (the first: {skipped.first})")
    return ", ".join(parts)


def build_datasets(recipe: Recipe, tokenizer) -> TokenizedData:
    """Recipe -> tokenised train/validation datasets (columns input_ids, response_start, first_anchor, length, group_id)."""
    data, train = recipe.data, recipe.train
    raw = load_raw_dataset(data)
    tokenized, skipped, dropped = tokenize_with_skips(raw, tokenizer, data)
    name = ", ".join(source_paths(data))
    if len(tokenized) == 0:
        if skipped.count == len(raw):
            raise ConfigError(f"no row of {name!r} can become a sample; the first: {skipped.first}")
        raise ConfigError(f"no row of {name!r} is a sample: {not_samples(dropped, skipped, data.seq_len)}")
    lost = dropped.count + skipped.count
    if lost > data.max_dropped_fraction * len(raw):
        hint = "raise data.seq_len, or" if dropped.prompt_fills_window else "fix the data, or raise"
        raise ConfigError(
            f"data: {lost} of {len(raw)} rows of {name!r} ({lost / len(raw):.0%}) are not samples: "
            f"{not_samples(dropped, skipped, data.seq_len)}; more than data.max_dropped_fraction="
            f"{data.max_dropped_fraction:g}; {hint} data.max_dropped_fraction to train on the rest"
        )
    train_rows, validation_rows = split_indices(tokenized["group_id"], data.validation_fraction, data.split_seed)
    if not train_rows:
        raise ConfigError(f"data.validation_fraction={data.validation_fraction} leaves no training sample of {name!r}")
    if not validation_rows and 0 < train.eval_every <= train.steps:
        raise ConfigError(
            f"data.validation_fraction={data.validation_fraction:g} leaves no validation sample of {name!r} "
            f"({len(tokenized)} samples) but train.eval_every={train.eval_every} validates on it; raise "
            "data.validation_fraction, or set train.eval_every=0"
        )
    if os.environ.get("RANK", "0") == "0":  # every rank builds the same split: say it once
        split = f"{len(tokenized)} samples: {len(train_rows)} train, {len(validation_rows)} validation"
        if dropped.count:
            log.warning(
                "data: dropped %d of %d rows of %r: %s; %s",
                dropped.count,
                len(raw),
                name,
                not_samples(dropped, SkippedRows(), data.seq_len),
                split,
            )
        else:
            log.info("data: %d rows of %r -> %s", len(raw), name, split)
    return TokenizedData(
        train=tokenized.select(train_rows),
        validation=tokenized.select(validation_rows),
        eos_token_id=eos_token_id(tokenizer, data),
        num_raw=len(raw),
        num_dropped=dropped.count,
        skipped=skipped,
        dropped=dropped,
    )
