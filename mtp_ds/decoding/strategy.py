"""The decoding strategies behind one protocol: `step(decoder, rows, budgets, prompt=None)` is one forward pass.

`generate` and `generate_many` only call `strategy.step`; a strategy builds its pass's inputs, calls
`decoder.forward` (the one model call) and updates each row's state. Static k and ConfAdapt live here
(`BlockStrategy`: keep mask predictions as they are); selfspec, which verifies them, lives in `selfspec.py`.
"""

from __future__ import annotations

from typing import Protocol

import torch

from mtp_ds.decoding.passes import BatchDecoder, Prompt
from mtp_ds.decoding.readout import read_predictions, sample
from mtp_ds.decoding.result import RowState, StopRule, keep_block
from mtp_ds.decoding.selfspec import SelfSpecStrategy
from mtp_ds.decoding.spec import DecodeSpec


class Strategy(Protocol):
    cache_headroom: int  # cache entries one pass adds on top of the kept tokens

    def step(self, decoder: BatchDecoder, rows: list[RowState], budgets: list[int], prompt: Prompt | None = None):
        """One forward over `rows` (the decoder's cache rows, in order; `budgets` their max_new_tokens), with
        `prompt` on a first pass; updates each row's tokens, pending inputs and stop reason."""


class BlockStrategy:
    """Static k (keep k predictions per pass) and ConfAdapt (keep the confident run of k_max, the paper's rule
    `mtp_ds.acceptance.confident_run_length`, shared with the training metric)."""

    def __init__(self, spec: DecodeSpec, stop: StopRule, generator: torch.Generator | None = None):
        self.spec, self.stop, self.generator = spec, stop, generator
        self.cache_headroom = spec.block
        self.threshold = spec.threshold if spec.strategy == "confadapt" else None

    def step(self, decoder: BatchDecoder, rows: list[RowState], budgets: list[int], prompt: Prompt | None = None):
        block_width, temperature = self.spec.block, self.spec.temperature
        room = max(budget - len(row.generated) for row, budget in zip(rows, budgets))
        num_masks = min(block_width, room) - 1  # masks past the budget cannot change the kept tokens
        inputs = (
            decoder.prompt_inputs(*prompt, num_masks) if prompt is not None else decoder.pending_inputs(rows, num_masks)
        )
        logits = decoder.forward(inputs)
        tokens, confident_runs = read_predictions(logits, decoder.mask_tokens, self.threshold)
        for slot, (row, budget) in enumerate(zip(rows, budgets)):
            count = confident_runs[slot] if confident_runs is not None else min(block_width, len(tokens[slot]))
            block = tokens[slot][:count]
            # sample only when the strategy itself chose one token, not when the budget cut the block
            if temperature and count == 1 and (block_width == 1 or len(tokens[slot]) > 1):
                block = [sample(logits[slot, 0], self.spec, decoder.mask_tokens, self.generator)]
            block = self.stop.finish(row, block, budget)
            keep_block(row, block)
            row.pending = block


def make_strategy(spec: DecodeSpec, stop: StopRule, generator: torch.Generator | None = None) -> Strategy:
    if spec.strategy == "selfspec":
        return SelfSpecStrategy(spec, stop, generator)
    return BlockStrategy(spec, stop, generator)
