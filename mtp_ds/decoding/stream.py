"""Continuous batching: `generate_many(model, prompts, max_rows=R, ...)` decodes a stream of requests, R rows at a time.

Why: `generate` decodes a fixed batch until its slowest row is done, so rows that finish early leave their slot
idle (and with ragged acceptance, MTP rows finish at very different passes). Here at most `max_rows` requests
are in flight; when one finishes, the next waiting prompt joins at the next pass, and every request's output
(tokens, tokens per pass, stop reason) is what `generate` gives for that prompt alone: the strategies' per-pass
functions (`decoder.block_pass`, `selfspec.selfspec_pass`) read only each row's own state, and per-row budgets
are respected (a pass's mask count comes from the rooms of the rows in it; masks past a row's room only make
predictions its budget cuts away).

How a prompt joins: its prefill runs as a pass of its own (`first_pass` on the joining prompts, left-padded, in a
fresh cache, exactly as `generate` would start them), then `RaggedCache.add_rows` concatenates its cache rows to
the running batch's (the narrower cache gets hole columns on the left; keys carry their rotary positions, so
holes change no row's attention, and compaction later drops the columns that are holes in every row). The KV
memory is counted (rows x allocated columns after every pass): it stays bounded over a long stream, since finished
rows leave the cache and compaction bounds its width by the longest row's real entries.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

import torch

from mtp_ds.decoding.attention import decoding_attention
from mtp_ds.decoding.decoder import (cache_headroom, pass_function, resolve_mask_tokens, validate_settings)
from mtp_ds.decoding.kv_cache import make_cache
from mtp_ds.decoding.passes import BatchDecoder
from mtp_ds.decoding.result import GenerationResult, RowState, as_stop_ids
from mtp_ds.decoding.selfspec import DEFAULT_MASK_LAYOUT


@dataclass
class StreamResult(GenerationResult):
    """`GenerationResult` per request (input order), plus the scheduler's counters."""

    # per request: (index of its prefill pass, index of its last pass) among all passes; (-1, -1) if it ran none
    pass_spans: list[tuple[int, int]] = field(default_factory=list)
    allocated_columns_per_pass: list[int] = field(default_factory=list)  # the running cache's, after each pass
    peak_rows: int = 0  # most rows held in caches at once
    peak_kv_entries: int = 0  # max over passes of rows x allocated columns (per layer and head)

    @property
    def peak_allocated_columns(self) -> int:
        return max(self.allocated_columns_per_pass, default=0)


def _budgets(prompts, max_rows, max_new_tokens) -> tuple[list[list[int]], list[int]]:
    if not isinstance(prompts, (list, tuple)) or not prompts:
        raise ValueError(f"prompts must be a non-empty list of token-id lists, got {_describe(prompts)}")
    as_lists = []
    for index, prompt in enumerate(prompts):
        if isinstance(prompt, torch.Tensor):
            prompt = prompt.flatten().tolist()
        if not isinstance(prompt, (list, tuple)) or not prompt or not all(isinstance(t, int) for t in prompt):
            raise ValueError(f"prompts[{index}] must be a non-empty list of token ids, got {_describe(prompt)}")
        as_lists.append(list(prompt))
    if isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 1:
        raise ValueError(f"max_rows must be an int >= 1, got {max_rows!r}")
    budgets = max_new_tokens if isinstance(max_new_tokens, (list, tuple)) else [max_new_tokens] * len(as_lists)
    if len(budgets) != len(as_lists):
        raise ValueError(f"max_new_tokens has {len(budgets)} budgets for {len(as_lists)} prompts")
    for budget in budgets:
        if isinstance(budget, bool) or not isinstance(budget, int) or budget < 0:
            raise ValueError(f"max_new_tokens must be an int >= 0 or a list of them, got {max_new_tokens!r}")
    return as_lists, list(budgets)


def _describe(value) -> str:
    return repr(value) if isinstance(value, (list, tuple)) and len(value) < 8 else type(value).__name__


def generate_many(model, prompts, *, max_rows: int = 8, mtp_token_id=None, strategy: str = "static", k: int = 1,
                  k_max: int = 16, threshold: float = 0.9, max_new_tokens: int | list[int] = 256,
                  eos_token_id=None, temperature: float | None = None, generator: torch.Generator | None = None,
                  tokenizer=None, stop_strings: list[str] | None = None, mask_layout: str = DEFAULT_MASK_LAYOUT,
                  pad_token_id: int = 0) -> StreamResult:
    """Decode `prompts` (token-id lists) with at most `max_rows` in flight; results in input order.

    `max_new_tokens`: one budget for all, or one per prompt. The other settings are `generate`'s; greedy, every
    request's output equals `generate` on that prompt alone. `pad_token_id` fills the left padding of a prefill
    (hidden by the attention mask; any id works).
    """
    validate_settings(strategy, k, k_max, threshold, temperature, stop_strings, tokenizer, mask_layout)
    prompts, budgets = _budgets(prompts, max_rows, max_new_tokens)
    k_run = k if strategy == "static" else k_max
    mask_tokens = resolve_mask_tokens(model, mtp_token_id, k_run)
    one_pass = pass_function(strategy, k=k, k_max=k_max, threshold=threshold, mask_layout=mask_layout,
                             temperature=temperature, generator=generator, stop_ids=as_stop_ids(eos_token_id),
                             tokenizer=tokenizer, stop_strings=stop_strings)
    device = next(model.parameters()).device
    started = time.perf_counter()
    rows = [RowState(pending=[], next_position=len(prompt)) for prompt in prompts]
    spans = [(-1, -1)] * len(prompts)
    for index, budget in enumerate(budgets):
        if budget == 0:
            rows[index].stop_reason = "length"
    waiting = deque(index for index, budget in enumerate(budgets) if budget > 0)
    running: list[int] = []
    decoder: BatchDecoder | None = None
    counters = dict(passes=0, query_tokens=0, peak_rows=0, peak_entries=0)
    columns_per_pass: list[int] = []

    def run(dec: BatchDecoder, members: list[int], prompt=None) -> None:
        queries = dec.num_query_tokens
        one_pass(dec, [rows[i] for i in members], [budgets[i] for i in members], prompt)
        counters["query_tokens"] += dec.num_query_tokens - queries
        for i in members:
            spans[i] = (spans[i][0] if spans[i][0] >= 0 else counters["passes"], counters["passes"])
        counters["passes"] += 1

    def leave(dec: BatchDecoder, members: list[int]) -> list[int]:
        still = [slot for slot, i in enumerate(members) if not rows[i].stop_reason]
        if still and len(still) < len(members):
            dec.kv.select_rows(still, dec.device)
        return [members[slot] for slot in still]

    def count_memory(held_rows: int, entries: int) -> None:
        counters["peak_rows"] = max(counters["peak_rows"], held_rows)
        counters["peak_entries"] = max(counters["peak_entries"], entries)

    with torch.inference_mode(), decoding_attention(model):
        while waiting or running:
            if waiting and len(running) < max_rows:
                joining = [waiting.popleft() for _ in range(min(max_rows - len(running), len(waiting)))]
                joiner = _prefill_decoder(model, mask_tokens, [prompts[i] for i in joining],
                                          max(budgets[i] for i in joining) + cache_headroom(strategy, k_run), device)
                run(joiner, joining, _left_padded([prompts[i] for i in joining], pad_token_id, device))
                held = len(running) * (decoder.kv.allocated_columns if decoder is not None and running else 0)
                count_memory(len(running) + len(joining), held + len(joining) * joiner.kv.allocated_columns)
                joining = leave(joiner, joining)
                if joining and running:
                    decoder.kv.add_rows(joiner.kv)
                elif joining:
                    decoder = joiner
                running += joining
                del joiner
                columns_per_pass.append(decoder.kv.allocated_columns if running else 0)
            if running:
                run(decoder, running)
                count_memory(len(running), len(running) * decoder.kv.allocated_columns)
                running = leave(decoder, running)
                columns_per_pass.append(decoder.kv.allocated_columns if running else 0)
            if not running:
                decoder = None  # the last rows left: drop their cache
    return StreamResult(
        sequences=[row.generated for row in rows], tokens_per_pass=[row.tokens_per_pass for row in rows],
        num_forward_passes=counters["passes"], wall_time_s=time.perf_counter() - started,
        stop_reasons=[row.stop_reason for row in rows], num_query_tokens=counters["query_tokens"],
        verified_per_pass=[row.verified_per_pass for row in rows] if strategy == "selfspec" else [],
        pass_spans=spans, allocated_columns_per_pass=columns_per_pass, peak_rows=counters["peak_rows"],
        peak_kv_entries=counters["peak_entries"],
    )


def _prefill_decoder(model, mask_tokens, prompts: list[list[int]], new_entries: int, device) -> BatchDecoder:
    """A fresh decoder (own cache) for the joining prompts, with room for their prompt and decode entries."""
    cache = make_cache(reserve=max(len(prompt) for prompt in prompts) + new_entries)
    return BatchDecoder(model, mask_tokens, cache, len(prompts), device)


def _left_padded(prompts: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(prompt) for prompt in prompts)
    ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device, dtype=torch.bool)
    return ids, mask
