"""Multi-token decoding with `<MTP>` mask tokens: Static k, ConfAdapt and selfspec, batched, on the HF KV cache.

Why this module exists: an MTP model predicts k tokens per forward pass when its input ends with k-1 mask
tokens (docs/METHOD.md section 2). Decoding must give exactly what a plain causal model would give on
prompt + accepted + masks (the contract the tests hold), yet never recompute the prompt and never fall back
to decoding rows one by one when rows of a batch accept different numbers of tokens. Static k and ConfAdapt
keep mask predictions as they are; selfspec (`selfspec.py`) verifies them first and so equals k=1 decoding.

Ragged KV cache design (one HF cache shared by the batch, plus a per-row "key is real" vector; the cache's
layers append in place instead of concatenating, `kv_cache.py`; the bookkeeping is `ragged_cache.py`; one
pass's inputs and mask, `passes.py`):
- A pass feeds, per row, its pending inputs (the tokens accepted last pass; the prompt on the first pass)
  followed by the mask tokens, right-padded to the longest row. Position ids are explicit per row, so
  left padding and holes in the cache never shift a row's positions.
- After the pass the cache is cropped by the tail no row needs (everything past the longest row's kept
  inputs); what is left of a shorter row's masks/padding stays in the cache as holes, marked False in
  `key_valid` and hidden by the 4D additive attention mask (causal among new tokens + key validity).
- When holes exceed `COMPACT_MIN_HOLES` columns, the cache is compacted: per row, real entries are moved
  to the right (stable order, so attention is unchanged: keys already carry their rotary positions) and the
  all-hole columns on the left are dropped.
- Finished rows leave the batch (the cache is index-selected), so they cost nothing afterwards.

Each strategy is a per-pass function (`block_pass` here, `selfspec.selfspec_pass`: one forward over the given rows,
their states updated, per-row budgets): `generate` drives it over a fixed batch (`run_to_end`), `generate_many`
(`stream.py`) over a stream where new prompts join the running batch (`RaggedCache.add_rows`).
"""

from __future__ import annotations

import functools
import time

import torch

from mtp_ds.decoding.attention import decoding_attention
from mtp_ds.decoding.kv_cache import make_cache
from mtp_ds.decoding.passes import BatchDecoder
from mtp_ds.decoding.readout import read_predictions, sample
from mtp_ds.decoding.result import GenerationResult, RowState, as_stop_ids, finish_block, keep_block
from mtp_ds.decoding.selfspec import DEFAULT_MASK_LAYOUT, MASK_LAYOUTS, selfspec_pass
from mtp_ds.tokens import MaskTokens, as_mask_tokens, has_mask_tokens, mask_tokens_from_config

STRATEGIES = ("static", "confadapt", "selfspec")


def validate_settings(strategy, k, k_max, threshold, temperature, stop_strings, tokenizer, mask_layout) -> None:
    """One-line ValueErrors for the decoding settings that `generate` and `generate_many` share."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if not isinstance(k_max, int) or k_max < 1:
        raise ValueError(f"k_max must be an int >= 1, got {k_max!r}")
    if not isinstance(k, int) or not 1 <= k <= k_max:
        raise ValueError(f"k must be an int with 1 <= k <= k_max={k_max}, got {k!r}")
    if not 0.0 <= float(threshold) <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold!r}")
    if temperature is not None and temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 or None = greedy), got {temperature!r}")
    if stop_strings and tokenizer is None:
        raise ValueError("stop_strings needs tokenizer= to decode the generated text")
    if mask_layout not in MASK_LAYOUTS:
        raise ValueError(f"mask_layout must be one of {MASK_LAYOUTS}, got {mask_layout!r}")


def _validate(input_ids, attention_mask, max_new_tokens) -> None:
    if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.shape[1] == 0:
        shape = tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
        raise ValueError(f"input_ids must be a (batch, len) tensor with len >= 1, got {shape}")
    if attention_mask is not None:
        if attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"attention_mask shape {tuple(attention_mask.shape)} != input_ids shape {tuple(input_ids.shape)}"
            )
        if not bool(attention_mask[:, -1].all()):
            raise ValueError("attention_mask must describe LEFT-padded prompts (every row's last position is real)")


def resolve_mask_tokens(model, mtp_token_id, k_run: int) -> MaskTokens:
    if mtp_token_id is None and k_run == 1 and not has_mask_tokens(model.config):
        mtp_token_id = 0  # plain greedy decoding of any causal LM (a teacher): k=1 never places a mask token
    mask_tokens: MaskTokens = (
        mask_tokens_from_config(model.config) if mtp_token_id is None else as_mask_tokens(mtp_token_id)
    )
    mask_tokens.ids_for_masks(k_run - 1)  # one-line error now if distinct slot tokens are too few
    return mask_tokens


def pass_function(
    strategy: str,
    *,
    k: int,
    k_max: int,
    threshold: float,
    mask_layout: str,
    temperature,
    generator,
    stop_ids,
    tokenizer,
    stop_strings,
):
    """`one_pass(decoder, rows, budgets, prompt=None)`: one forward of the strategy over `rows` (the batch's
    rows in cache order, `budgets` their max_new_tokens; `prompt` = (input_ids, attention_mask) for a first
    pass), updating the rows' states. `generate` and `generate_many` (`stream.py`) both drive it."""
    finish = dict(
        stop_ids=stop_ids, tokenizer=tokenizer, stop_strings=stop_strings, temperature=temperature, generator=generator
    )
    if strategy == "selfspec":
        return functools.partial(selfspec_pass, k_max=k_max, mask_layout=mask_layout, **finish)
    return functools.partial(
        block_pass, strategy=strategy, k_run=k if strategy == "static" else k_max, threshold=threshold, **finish
    )


def run_to_end(decoder: BatchDecoder, rows: list[RowState], budgets: list[int], one_pass, prompt) -> None:
    """Drive `one_pass` until every row has stopped; finished rows leave the cache."""
    active = list(range(len(rows)))
    while active:
        one_pass(decoder, [rows[b] for b in active], [budgets[b] for b in active], prompt)
        prompt = None
        still = [slot for slot, b in enumerate(active) if not rows[b].stop_reason]
        if len(still) < len(active) and still:
            decoder.kv.select_rows(still, decoder.device)
        active = [active[slot] for slot in still]


def _accept_count(strategy: str, confident_run: int | None, num_predictions: int, k: int) -> int:
    """How many leading predictions a pass keeps: k for Static; for ConfAdapt the confident run computed by
    `mtp_ds.acceptance.confident_run_length` (the paper's rule, shared with the training metric)."""
    if strategy == "static":
        return min(k, num_predictions)
    return confident_run


def generate(
    model,
    input_ids: torch.Tensor,
    *,
    mtp_token_id=None,
    strategy: str = "static",
    k: int = 1,
    k_max: int = 16,
    threshold: float = 0.9,
    max_new_tokens: int = 256,
    eos_token_id=None,
    attention_mask: torch.Tensor | None = None,
    temperature: float | None = None,
    generator: torch.Generator | None = None,
    tokenizer=None,
    stop_strings: list[str] | None = None,
    mask_layout: str = DEFAULT_MASK_LAYOUT,
) -> GenerationResult:
    """Decode `input_ids` (batch, len; LEFT-padded per `attention_mask`) with Static k, ConfAdapt or selfspec.

    `strategy`: "static" keeps k tokens per pass; "confadapt" the confident run of k_max predictions at
    `threshold`; "selfspec" verifies the previous pass's k_max-1 proposals (greedy: exactly the model's k=1
    output; `mask_layout` "linear" or "per_proposal", `selfspec.py`).
    `mtp_token_id`: int, per-slot ids, or MaskTokens; None reads it from `model.config`.
    `eos_token_id`: int or list of stop ids (None: stop only on length / stop strings).
    `temperature` > 0: Static k / ConfAdapt sample the token of a pass that keeps exactly one token; selfspec
    samples by speculative sampling, distributed exactly as k=1 sampling. 0 or None: greedy.
    `stop_strings` (needs `tokenizer`): stop at the token that completes any of these strings.
    """
    validate_settings(strategy, k, k_max, threshold, temperature, stop_strings, tokenizer, mask_layout)
    _validate(input_ids, attention_mask, max_new_tokens)
    k_run = k if strategy == "static" else k_max
    mask_tokens = resolve_mask_tokens(model, mtp_token_id, k_run)
    stop_ids = as_stop_ids(eos_token_id)
    started = time.perf_counter()
    batch = input_ids.shape[0]
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    attention_mask = attention_mask.to(device=input_ids.device, dtype=torch.bool)
    rows = [RowState(pending=[], next_position=int(n)) for n in attention_mask.sum(dim=1).tolist()]
    if max_new_tokens == 0:
        return GenerationResult([[] for _ in rows], [[] for _ in rows], 0, 0.0, ["length"] * batch)

    # sdpa_gqa: MTP passes attend over the cached KV heads without copying them per query head (attention.py)
    with torch.inference_mode(), decoding_attention(model):
        # room for the prompt, every new token and one pass's inputs: a decode that keeps its cache dense never
        # reallocates it (holes left by ragged acceptance may still grow it)
        cache = make_cache(reserve=input_ids.shape[1] + max_new_tokens + cache_headroom(strategy, k_run))
        decoder = BatchDecoder(model, mask_tokens, cache, batch, input_ids.device)
        one_pass = pass_function(
            strategy,
            k=k,
            k_max=k_max,
            threshold=threshold,
            mask_layout=mask_layout,
            temperature=temperature,
            generator=generator,
            stop_ids=stop_ids,
            tokenizer=tokenizer,
            stop_strings=stop_strings,
        )
        run_to_end(decoder, rows, [max_new_tokens] * batch, one_pass, (input_ids, attention_mask))
    return GenerationResult(
        sequences=[row.generated for row in rows],
        tokens_per_pass=[row.tokens_per_pass for row in rows],
        num_forward_passes=decoder.num_forward_passes,
        wall_time_s=time.perf_counter() - started,
        stop_reasons=[row.stop_reason for row in rows],
        num_query_tokens=decoder.num_query_tokens,
        verified_per_pass=[row.verified_per_pass for row in rows] if strategy == "selfspec" else [],
    )


def cache_headroom(strategy: str, k_run: int) -> int:
    """Cache entries one pass adds on top of the kept tokens."""
    return k_run * k_run if strategy == "selfspec" else k_run


def block_pass(
    decoder: BatchDecoder,
    rows: list[RowState],
    budgets: list[int],
    prompt=None,
    *,
    strategy: str,
    k_run: int,
    threshold: float,
    temperature,
    generator,
    stop_ids,
    tokenizer,
    stop_strings,
) -> None:
    """Static k / ConfAdapt, one pass: feed each row's last kept tokens (or the prompt) + k-1 masks, keep a block."""
    mask_tokens = decoder.mask_tokens
    room = max(budget - len(row.generated) for row, budget in zip(rows, budgets))
    num_masks = min(k_run, room) - 1  # masks past the budget cannot change the kept tokens
    logits = decoder.first_pass(*prompt, num_masks) if prompt is not None else decoder.step(rows, num_masks)
    tokens, confident_runs = read_predictions(logits, mask_tokens, threshold if strategy == "confadapt" else None)
    sample_from = logits[:, 0] if temperature else None
    for slot, (row, budget) in enumerate(zip(rows, budgets)):
        count = _accept_count(strategy, confident_runs and confident_runs[slot], len(tokens[slot]), k_run)
        block = tokens[slot][:count]
        # sample only when the strategy itself chose one token, not when the budget cut the block
        if sample_from is not None and count == 1 and (k_run == 1 or len(tokens[slot]) > 1):
            block = [sample(sample_from[slot], temperature, mask_tokens, generator)]
        block = finish_block(row, block, stop_ids, budget, tokenizer, stop_strings)
        keep_block(row, block)
        row.pending = block
