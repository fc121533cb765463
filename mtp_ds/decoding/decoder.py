"""`generate`: multi-token decoding of a fixed batch, `generate -> strategy.step -> decoder.forward -> model`.

An MTP model predicts k tokens per forward when its input ends with k-1 `<MTP>` mask tokens (docs/METHOD.md
section 2). `generate` decodes a left-padded batch with any `DecodeSpec` on one ragged KV cache (rows keep
different numbers of tokens per pass; finished rows leave the batch), and must give exactly what a plain causal
model gives on prompt + kept tokens + masks: the contract the tests hold. docs/DECODING.md says how.
"""

from __future__ import annotations

import time

import torch

from mtp_ds.decoding.attention import decoding_attention
from mtp_ds.decoding.kv_cache import make_cache
from mtp_ds.decoding.passes import BatchDecoder
from mtp_ds.decoding.result import GenerationResult, RowState, StopRule
from mtp_ds.decoding.spec import DecodeSpec
from mtp_ds.decoding.strategy import Strategy, make_strategy
from mtp_ds.tokens import MaskTokens, as_mask_tokens, has_mask_tokens, mask_tokens_from_config


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


def max_positions(model) -> int | None:
    """The `max_position_embeddings` of a model or its config (a composite config's text model's), or None."""
    config = getattr(model, "config", model)
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    limit = getattr(text_config, "max_position_embeddings", None)
    return limit if isinstance(limit, int) and limit > 0 else None


def check_positions(model, lengths: list[int], budgets: list[int], name: str) -> None:
    """A one-line ValueError when a prompt plus its max_new_tokens needs more positions than the model has: past
    `max_position_embeddings` a model decodes garbage without a word. `name` formats a row index ("prompts[{}]").
    lm-eval left-truncates its contexts to max_length - max_gen_toks itself (and says so) before they get here."""
    limit = max_positions(model)
    if limit is None:
        return
    over = [row for row, (length, budget) in enumerate(zip(lengths, budgets)) if length + budget > limit]
    if not over:
        return
    row, more = over[0], f" (and {len(over) - 1} more)" if len(over) > 1 else ""
    length, budget = lengths[row], budgets[row]
    raise ValueError(
        f"{name.format(row)}{more} has {length} tokens: with max_new_tokens={budget} it needs {length + budget} "
        f"positions, more than the model's max_position_embeddings={limit}; shorten the prompt to at most "
        f"{max(limit - budget, 0)} tokens (e.g. keep its last ones) or lower max_new_tokens"
    )


FLASH_ATTENTION = ("flash_attention", "flash-attn", "flash_attn")  # in transformers' kernel names (2, 3, hub ones)


def check_model(model, *, ragged: bool = True) -> None:
    """A one-line ValueError, before any pass, for a model the decoder cannot run a `ragged` batch on (several rows,
    left padding, selfspec's mask groups, a stream whose rows join): one whose parameters live on more than one
    device (`device_map` / lm-eval's `parallelize=True`: the ragged cache's bookkeeping indexes every layer's KV
    on the decoder's device), or one that runs flash attention (it takes a 2-D padding mask, not the 4-D mask
    that hides a ragged batch's holes)."""
    if not ragged:
        return
    device_map = getattr(model, "hf_device_map", None) or {}
    devices = {str(value) for value in device_map.values()} or {str(p.device) for p in model.parameters()}
    if len(devices) > 1:
        raise ValueError(
            f"the model is spread over {len(devices)} devices ({', '.join(sorted(devices))}): MTP decoding runs a "
            "model on one device; load it without device_map (lm-eval: without parallelize=True)"
        )
    kernel = str(getattr(getattr(model, "config", None), "_attn_implementation", None) or "")
    if any(name in kernel for name in FLASH_ATTENTION):
        raise ValueError(
            f"attn_implementation={kernel!r} cannot take the 4-D attention mask that batched MTP decoding needs "
            "(ragged rows, padding, mask groups): load the model with attn_implementation='sdpa'"
        )


def resolve_mask_tokens(model, mtp_token_id, block: int, *, ragged: bool = True) -> MaskTokens:
    check_model(model, ragged=ragged)
    if mtp_token_id is None and block == 1 and not has_mask_tokens(model.config):
        mtp_token_id = 0  # plain greedy decoding of any causal LM (a teacher): k=1 never places a mask token
    mask_tokens: MaskTokens = (
        mask_tokens_from_config(model.config) if mtp_token_id is None else as_mask_tokens(mtp_token_id)
    )
    mask_tokens.ids_for_masks(block - 1)  # one-line error now if distinct slot tokens are too few
    return mask_tokens


def generate(
    model,
    input_ids: torch.Tensor,
    spec: DecodeSpec | None = None,
    *,
    max_new_tokens: int = 256,
    attention_mask: torch.Tensor | None = None,
    eos_token_id=None,
    tokenizer=None,
    stop_strings: list[str] | None = None,
    generator: torch.Generator | None = None,
    mtp_token_id=None,
    streamer=None,
    **settings,
) -> GenerationResult:
    """Decode `input_ids` (batch, len; LEFT-padded per `attention_mask`) with `spec` (a `DecodeSpec`, or its
    fields as keywords: strategy=, k=, k_max=, threshold=, mask_layout=, temperature=).

    `eos_token_id`: int or list of stop ids (None: stop only on length / stop strings); `stop_strings` (needs
    `tokenizer`): stop at the token that completes any of them. `mtp_token_id`: int, per-slot ids, or MaskTokens;
    None reads it from `model.config`. Sampling (`temperature` > 0, `top_k`, `top_p`) draws with `generator`.
    `streamer` (a transformers TextStreamer / TextIteratorStreamer, one row only): `put` the prompt, then each
    pass's kept tokens as one chunk, then `end`, as stock `generate` does per token.
    """
    spec = DecodeSpec.of(spec, "generate", **settings)
    stop = StopRule.of(eos_token_id, tokenizer, stop_strings)
    _validate(input_ids, attention_mask, max_new_tokens)
    batch = input_ids.shape[0]
    if streamer is not None and batch > 1:
        raise ValueError(f"a streamer shows one row: got {batch} rows (stream one prompt per generate call)")
    lengths = [input_ids.shape[1]] * batch if attention_mask is None else attention_mask.sum(dim=1).tolist()
    check_positions(model, lengths, [max_new_tokens] * batch, "input_ids row {}")
    single_row = input_ids.shape[0] == 1 and (attention_mask is None or bool(attention_mask.all()))
    ragged = not single_row or (spec.strategy == "selfspec" and spec.mask_layout != "linear")
    mask_tokens = resolve_mask_tokens(model, mtp_token_id, spec.block, ragged=ragged)
    strategy: Strategy = make_strategy(spec, stop, generator)
    started = time.perf_counter()
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    attention_mask = attention_mask.to(device=input_ids.device, dtype=torch.bool)
    rows = [RowState(pending=[], next_position=int(n)) for n in lengths]
    if streamer is not None:
        streamer.put(input_ids.cpu())
    if max_new_tokens == 0:
        if streamer is not None:
            streamer.end()
        return GenerationResult([[] for _ in rows], [[] for _ in rows], 0, 0.0, ["length"] * batch)

    # sdpa_gqa: MTP passes attend over the cached KV heads without copying them per query head (attention.py)
    with torch.inference_mode(), decoding_attention(model):
        # room for the prompt, every new token and one pass's inputs: a decode that keeps its cache dense never
        # reallocates it (holes left by ragged acceptance may still grow it)
        cache = make_cache(reserve=input_ids.shape[1] + max_new_tokens + strategy.cache_headroom)
        decoder = BatchDecoder(model, mask_tokens, cache, batch, input_ids.device)
        active, prompt = list(range(batch)), (input_ids, attention_mask)
        while active:
            strategy.step(decoder, [rows[b] for b in active], [max_new_tokens] * len(active), prompt)
            prompt = None
            if streamer is not None:
                kept = rows[0].tokens_per_pass[-1]
                streamer.put(torch.tensor(rows[0].generated[len(rows[0].generated) - kept :]))
            still = [slot for slot, b in enumerate(active) if not rows[b].stop_reason]
            if len(still) < len(active) and still:  # finished rows leave the cache
                decoder.kv.select_rows(still, decoder.device)
            active = [active[slot] for slot in still]
    if streamer is not None:
        streamer.end()
    return GenerationResult.from_rows(
        rows,
        passes=decoder.num_forward_passes,
        query_tokens=decoder.num_query_tokens,
        seconds=time.perf_counter() - started,
        strategy=spec.strategy,
    )
