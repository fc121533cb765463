"""Continuous batching: `generate_many(model, prompts, max_rows=R, ...)` decodes a stream of requests, R rows at a time.

`generate` decodes a fixed batch until its slowest row is done; here a finished request's slot is taken by the
next waiting prompt at the next pass. `StreamScheduler` runs four named steps per round (prefill, join, evict,
step), and every request's output is what `generate` gives for that prompt alone (strategies read only each
row's own state and budget). docs/DECODING.md says why prefill is batched and how joining rows share a cache.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

import torch

from mtp_ds.decoding.attention import decoding_attention
from mtp_ds.decoding.decoder import check_positions, resolve_mask_tokens
from mtp_ds.decoding.kv_cache import make_cache
from mtp_ds.decoding.passes import BatchDecoder
from mtp_ds.decoding.result import GenerationResult, RowState, StopRule
from mtp_ds.decoding.spec import DecodeSpec
from mtp_ds.decoding.strategy import Strategy, make_strategy
from mtp_ds.tokens import MaskTokens


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
    spec: DecodeSpec | None = None,
    *,
    max_rows: int = 8,
    max_new_tokens: int | list[int] = 256,
    eos_token_id=None,
    tokenizer=None,
    stop_strings: list[str] | None = None,
    generator: torch.Generator | None = None,
    mtp_token_id=None,
    prefill_rows: int | None = None,
    pad_token_id: int = 0,
    **settings,
) -> StreamResult:
    """Decode `prompts` (token-id lists) with at most `max_rows` decoding at once; results in input order.

    `spec` and the other settings are `generate`'s; greedy, every request's output equals `generate` on that
    prompt alone. `max_new_tokens`: one budget for all, or one per prompt. `prefill_rows` (default `max_rows`):
    how many waiting prompts one prefill pass takes when a slot is free and no prefilled prompt is ready; the
    ones that find no free slot yet wait, with their cache rows, for the next slots (so at most `max_rows +
    prefill_rows` rows hold cache at once). 1 prefills exactly the free slots' prompts, one pass per join.
    `pad_token_id` fills the left padding of a prefill (hidden by the attention mask; any id works).
    """
    spec = DecodeSpec.of(spec, "generate_many", **settings)
    stop = StopRule.of(eos_token_id, tokenizer, stop_strings)
    prompts, budgets = _budgets(prompts, max_rows, max_new_tokens)
    check_positions(model, [len(prompt) for prompt in prompts], budgets, "prompts[{}]")
    prefill_rows = max_rows if prefill_rows is None else prefill_rows
    if isinstance(prefill_rows, bool) or not isinstance(prefill_rows, int) or not 1 <= prefill_rows <= max_rows:
        raise ValueError(
            f"prefill_rows must be an int with 1 <= prefill_rows <= max_rows={max_rows}, got {prefill_rows!r}"
        )
    scheduler = StreamScheduler(
        model,
        make_strategy(spec, stop, generator),
        resolve_mask_tokens(model, mtp_token_id, spec.block),
        prompts,
        budgets,
        max_rows=max_rows,
        prefill_rows=prefill_rows,
        pad_token_id=pad_token_id,
    )
    started = time.perf_counter()
    with torch.inference_mode(), decoding_attention(model):
        scheduler.run()
    return StreamResult.from_rows(
        scheduler.rows,
        passes=scheduler.passes,
        query_tokens=scheduler.query_tokens,
        seconds=time.perf_counter() - started,
        strategy=spec.strategy,
        pass_spans=scheduler.spans,
        allocated_columns_per_pass=scheduler.columns_per_pass,
        peak_rows=scheduler.peak_rows,
        peak_kv_entries=scheduler.peak_entries,
    )


class StreamScheduler:
    """The request stream's state and its four steps, run in this order every round (`run`):

    prefill: when a slot is free and no prefilled request is ready, the prompt pass of up to `prefill_rows`
             waiting requests, left-padded, in a fresh cache (exactly as `generate` starts them);
    join:    ready requests take the finished requests' slots, then any free slots (their cache rows move in);
    evict:   finished requests nobody replaced leave the batch (their cache rows are dropped);
    step:    one pass of the strategy over the running batch.
    """

    def __init__(
        self,
        model,
        strategy: Strategy,
        mask_tokens: MaskTokens,
        prompts: list[list[int]],
        budgets: list[int],
        *,
        max_rows: int,
        prefill_rows: int,
        pad_token_id: int,
    ):
        self.model, self.strategy, self.mask_tokens = model, strategy, mask_tokens
        self.prompts, self.budgets = prompts, budgets
        self.max_rows, self.prefill_rows, self.pad_token_id = max_rows, prefill_rows, pad_token_id
        self.device = next(model.parameters()).device
        self.rows = [RowState(pending=[], next_position=len(prompt)) for prompt in prompts]
        for row, budget in zip(self.rows, budgets):
            if budget == 0:
                row.stop_reason = "length"
        self.waiting = deque(index for index, budget in enumerate(budgets) if budget > 0)
        self.running: list[int] = []  # requests in `decoder`'s cache rows, in row order (finished ones until replaced)
        self.finished: list[int] = []  # slots of `running` whose request ended in the last pass: free for joiners
        self.ready: list[int] = []  # requests prefilled, not yet decoding: rows ready_from.. of `prefilled`'s cache
        self.ready_from = 0
        self.decoder: BatchDecoder | None = None  # the running batch's
        self.prefilled: BatchDecoder | None = None  # the ready requests'
        # counters: per request (index of its prefill pass, index of its last pass); per pass, the running
        # cache's allocated columns; most rows held in caches at once and most rows x columns
        self.spans = [(-1, -1)] * len(prompts)
        self.columns_per_pass: list[int] = []
        self.passes = self.query_tokens = self.peak_rows = self.peak_entries = 0

    def run(self) -> None:
        while self.waiting or self.ready or self.running:
            self.prefill()
            self.join()
            self.evict()
            self.step()

    def prefill(self) -> None:
        free = self.max_rows - len(self.running) + len(self.finished)
        if not free or self.ready or not self.waiting:
            return
        joining = [self.waiting.popleft() for _ in range(min(max(self.prefill_rows, free), len(self.waiting)))]
        prompts = [self.prompts[i] for i in joining]
        cache = make_cache(
            reserve=max(map(len, prompts)) + max(self.budgets[i] for i in joining) + self.strategy.cache_headroom
        )
        self.prefilled = BatchDecoder(self.model, self.mask_tokens, cache, len(prompts), self.device)
        stopped = self._pass(self.prefilled, joining, _left_padded(prompts, self.pad_token_id, self.device))
        self.ready, self.ready_from = _drop(self.prefilled, joining, stopped), 0
        if not self.ready:  # all stopped in their first pass: nothing to hold
            self.prefilled = None
        self.columns_per_pass.append(self.decoder.kv.allocated_columns if self.running else 0)

    def join(self) -> None:
        if not self.ready:
            return
        if not self.running:  # an empty batch: the ready rows become the batch
            if self.ready_from:
                self.prefilled.kv.select_rows(
                    list(range(self.ready_from, self.ready_from + len(self.ready))), self.device
                )
            self.decoder, self.running, self.prefilled, self.ready = self.prefilled, self.ready, None, []
            return
        take = min(len(self.finished), len(self.ready))
        sources = list(range(self.ready_from, self.ready_from + take))
        if self.decoder.kv.replace_rows(self.finished[:take], self.prefilled.kv, sources):
            for slot, index in zip(self.finished[:take], self.ready[:take]):
                self.running[slot] = index
            self.finished, self.ready, self.ready_from = self.finished[take:], self.ready[take:], self.ready_from + take
        self.evict()
        if self.ready and len(self.running) < self.max_rows:
            take = min(self.max_rows - len(self.running), len(self.ready))
            self.decoder.kv.add_rows(self.prefilled.kv, list(range(self.ready_from, self.ready_from + take)))
            self.running, self.ready = self.running + self.ready[:take], self.ready[take:]
            self.ready_from += take
        if not self.ready:
            self.prefilled = None

    def evict(self) -> None:
        if self.finished:
            self.running, self.finished = _drop(self.decoder, self.running, self.finished), []

    def step(self) -> None:
        if not self.running:
            return
        self.finished = self._pass(self.decoder, self.running)
        if len(self.finished) == len(self.running):
            self.running, self.finished, self.decoder = [], [], None  # the last rows left: drop their cache
        self.columns_per_pass.append(self.decoder.kv.allocated_columns if self.running else 0)

    def _pass(self, decoder: BatchDecoder, members: list[int], prompt=None) -> list[int]:
        """One strategy pass over `members` (the rows of `decoder`'s cache); the slots of those that finished."""
        queries = decoder.num_query_tokens
        self.strategy.step(decoder, [self.rows[i] for i in members], [self.budgets[i] for i in members], prompt)
        self.query_tokens += decoder.num_query_tokens - queries
        for i in members:
            self.spans[i] = (self.spans[i][0] if self.spans[i][0] >= 0 else self.passes, self.passes)
        self.passes += 1
        held = {id(d): d for d in (decoder, self.decoder, self.prefilled) if d}.values()
        self.peak_rows = max(self.peak_rows, sum(len(d.kv.real_counts) for d in held))
        self.peak_entries = max(self.peak_entries, sum(len(d.kv.real_counts) * d.kv.allocated_columns for d in held))
        return [slot for slot, i in enumerate(members) if self.rows[i].stop_reason]


def _drop(decoder: BatchDecoder, members: list[int], slots: list[int]) -> list[int]:
    """`members` without `slots`, their cache rows dropped (a copy of the cache: only when rows leave)."""
    leaving = set(slots)
    keep = [slot for slot in range(len(members)) if slot not in leaving]
    if slots and keep:
        decoder.kv.select_rows(keep, decoder.device)
    return [members[slot] for slot in keep]


def _left_padded(prompts: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(prompt) for prompt in prompts)
    ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device, dtype=torch.bool)
    return ids, mask
