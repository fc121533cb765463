"""Continuous batching: `generate_many(model, prompts, max_rows=R, ...)` decodes a stream of requests, R rows at a time.

Why: `generate` decodes a fixed batch until its slowest row is done, so rows that finish early leave their slot
idle (and with ragged acceptance, MTP rows finish at very different passes). Here at most `max_rows` requests
are in flight; when one finishes, the next waiting prompt joins at the next pass, and every request's output
(tokens, tokens per pass, stop reason) is what `generate` gives for that prompt alone: the strategies' per-pass
functions (`decoder.block_pass`, `selfspec.selfspec_pass`) read only each row's own state, and per-row budgets
are respected (a pass's mask count comes from the rooms of the rows in it; masks past a row's room only make
predictions its budget cuts away).

How a prompt joins: prompts are prefilled in batches, as passes of their own (`first_pass` on up to
`prefill_rows` waiting prompts, left-padded, in a fresh cache, exactly as `generate` would start them; it gives
each its first block). A prefill runs when a slot is free and no prefilled request is ready; the requests that
find no free slot wait with their cache rows and take the next free slots, one pass later each. Joining is
`RaggedCache.add_rows`: the prefilled rows' cache rows are concatenated to the running batch's (the narrower
cache gets hole columns on the left; keys carry their rotary positions, so holes change no row's attention, and
compaction later drops the columns that are holes in every row).
Why batched prefill and not one prefill pass per join: with joins at almost every pass (ConfAdapt rows finish
after ~20 passes; 16 rows), a pass per join would nearly double the pass count, while a prefill batch of R
prompts costs each request 1/R of a pass, which is what the ideal pass count (sum of the requests' passes / R)
charges it. Why not inside the decode step's forward: every decoding row would be padded to the prompt's width,
and on a compute-bound CPU that forward costs several decode passes (bench/serve.py measures it).
KV memory is counted (rows x allocated columns after every pass): it stays bounded over a long stream, since
finished rows leave the cache and compaction bounds its width by the longest row's real entries.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

import torch

from mtp_ds.decoding.attention import decoding_attention
from mtp_ds.decoding.decoder import cache_headroom, pass_function, resolve_mask_tokens, validate_settings
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


def generate_many(
    model,
    prompts,
    *,
    max_rows: int = 8,
    mtp_token_id=None,
    strategy: str = "static",
    k: int = 1,
    k_max: int = 16,
    threshold: float = 0.9,
    max_new_tokens: int | list[int] = 256,
    eos_token_id=None,
    temperature: float | None = None,
    generator: torch.Generator | None = None,
    tokenizer=None,
    stop_strings: list[str] | None = None,
    mask_layout: str = DEFAULT_MASK_LAYOUT,
    prefill_rows: int | None = None,
    pad_token_id: int = 0,
) -> StreamResult:
    """Decode `prompts` (token-id lists) with at most `max_rows` decoding at once; results in input order.

    `max_new_tokens`: one budget for all, or one per prompt. The other settings are `generate`'s; greedy, every
    request's output equals `generate` on that prompt alone. `prefill_rows` (default `max_rows`): how many
    waiting prompts one prefill pass takes when a slot is free and no prefilled prompt is ready; the ones that
    find no free slot yet wait, with their cache rows, for the next slots (so at most `max_rows +
    prefill_rows` rows hold cache at once: the batch's, finished ones included until a joiner takes their slot,
    and a prefill's). 1 prefills exactly the free slots' prompts, one pass per join.
    `pad_token_id` fills the left padding of a prefill (hidden by the attention mask; any id works).
    """
    validate_settings(strategy, k, k_max, threshold, temperature, stop_strings, tokenizer, mask_layout)
    prompts, budgets = _budgets(prompts, max_rows, max_new_tokens)
    prefill_rows = max_rows if prefill_rows is None else prefill_rows
    if isinstance(prefill_rows, bool) or not isinstance(prefill_rows, int) or not 1 <= prefill_rows <= max_rows:
        raise ValueError(
            f"prefill_rows must be an int with 1 <= prefill_rows <= max_rows={max_rows}, got {prefill_rows!r}"
        )
    k_run = k if strategy == "static" else k_max
    mask_tokens = resolve_mask_tokens(model, mtp_token_id, k_run)
    one_pass = pass_function(
        strategy,
        k=k,
        k_max=k_max,
        threshold=threshold,
        mask_layout=mask_layout,
        temperature=temperature,
        generator=generator,
        stop_ids=as_stop_ids(eos_token_id),
        tokenizer=tokenizer,
        stop_strings=stop_strings,
    )
    device = next(model.parameters()).device
    started = time.perf_counter()
    rows = [RowState(pending=[], next_position=len(prompt)) for prompt in prompts]
    spans = [(-1, -1)] * len(prompts)
    for index, budget in enumerate(budgets):
        if budget == 0:
            rows[index].stop_reason = "length"
    waiting = deque(index for index, budget in enumerate(budgets) if budget > 0)
    running: list[int] = []  # requests in `decoder`'s cache rows, in row order (finished ones until replaced)
    finished: list[int] = []  # slots of `running` whose request ended in the last pass: free for joiners
    ready: list[int] = []  # requests prefilled, not yet decoding: rows ready_from.. of `prefilled`'s cache
    ready_from = 0
    decoder = prefilled = None  # BatchDecoder of `running`, of `ready`
    counters = dict(passes=0, query_tokens=0, peak_rows=0, peak_entries=0)
    columns_per_pass: list[int] = []

    def run(dec: BatchDecoder, members: list[int], prompt=None) -> list[int]:
        """One pass over `members` (the rows of `dec`'s cache); returns the slots of those that finished."""
        queries = dec.num_query_tokens
        one_pass(dec, [rows[i] for i in members], [budgets[i] for i in members], prompt)
        counters["query_tokens"] += dec.num_query_tokens - queries
        for i in members:
            spans[i] = (spans[i][0] if spans[i][0] >= 0 else counters["passes"], counters["passes"])
        counters["passes"] += 1
        held = [(d, len(d.kv.real_counts)) for d in {id(x): x for x in (dec, decoder, prefilled) if x}.values()]
        counters["peak_rows"] = max(counters["peak_rows"], sum(n for _, n in held))
        counters["peak_entries"] = max(counters["peak_entries"], sum(n * d.kv.allocated_columns for d, n in held))
        return [slot for slot, i in enumerate(members) if rows[i].stop_reason]

    def drop(dec: BatchDecoder, members: list[int], slots: list[int]) -> list[int]:
        """`members` without `slots`, their cache rows dropped (a copy of the cache: only when rows leave)."""
        leaving = set(slots)
        keep = [slot for slot in range(len(members)) if slot not in leaving]
        if slots and keep:
            dec.kv.select_rows(keep, dec.device)
        return [members[slot] for slot in keep]

    with torch.inference_mode(), decoding_attention(model):
        while waiting or ready or running:
            free = max_rows - len(running) + len(finished)
            if free and not ready and waiting:  # prefill: the prompt pass of up to prefill_rows waiting requests
                joining = [waiting.popleft() for _ in range(min(max(prefill_rows, free), len(waiting)))]
                prefilled = _prefill_decoder(
                    model,
                    mask_tokens,
                    [prompts[i] for i in joining],
                    max(budgets[i] for i in joining) + cache_headroom(strategy, k_run),
                    device,
                )
                ready = drop(
                    prefilled,
                    joining,
                    run(prefilled, joining, _left_padded([prompts[i] for i in joining], pad_token_id, device)),
                )
                ready_from = 0
                prefilled = prefilled if ready else None  # all stopped in their first pass: nothing to hold
                columns_per_pass.append(decoder.kv.allocated_columns if running else 0)
            if ready and not running:  # an empty batch: the ready rows become the batch
                if ready_from:
                    prefilled.kv.select_rows(list(range(ready_from, ready_from + len(ready))), device)
                decoder, running, prefilled, ready = prefilled, ready, None, []
            elif ready:  # join: ready requests take the finished requests' slots, then any slots left free
                take = min(len(finished), len(ready))
                if decoder.kv.replace_rows(finished[:take], prefilled.kv, list(range(ready_from, ready_from + take))):
                    for slot, index in zip(finished[:take], ready[:take]):
                        running[slot] = index
                    finished, ready, ready_from = finished[take:], ready[take:], ready_from + take
                running, finished = drop(decoder, running, finished), []
                if ready and len(running) < max_rows:
                    take = min(max_rows - len(running), len(ready))
                    decoder.kv.add_rows(prefilled.kv, list(range(ready_from, ready_from + take)))
                    running, ready, ready_from = running + ready[:take], ready[take:], ready_from + take
                if not ready:
                    prefilled = None
            if finished:  # nobody to take their slots
                running, finished = drop(decoder, running, finished), []
            if running:
                finished = run(decoder, running)
                if len(finished) == len(running):
                    running, finished, decoder = [], [], None  # the last rows left: drop their cache
                columns_per_pass.append(decoder.kv.allocated_columns if running else 0)
    return StreamResult(
        sequences=[row.generated for row in rows],
        tokens_per_pass=[row.tokens_per_pass for row in rows],
        num_forward_passes=counters["passes"],
        wall_time_s=time.perf_counter() - started,
        stop_reasons=[row.stop_reason for row in rows],
        num_query_tokens=counters["query_tokens"],
        verified_per_pass=[row.verified_per_pass for row in rows] if strategy == "selfspec" else [],
        pass_spans=spans,
        allocated_columns_per_pass=columns_per_pass,
        peak_rows=counters["peak_rows"],
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
