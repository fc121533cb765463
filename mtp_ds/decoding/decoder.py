"""Multi-token decoding with `<MTP>` mask tokens: Static k and ConfAdapt, batched, on the HF KV cache.

Why this module exists: an MTP model predicts k tokens per forward pass when its input ends with k-1 mask
tokens (docs/METHOD.md section 2). Decoding must give exactly what a plain causal model would give on
prompt + accepted + masks (the contract the tests hold), yet never recompute the prompt and never fall back
to decoding rows one by one when rows of a batch accept different numbers of tokens.

Ragged KV cache design (one HF cache shared by the batch, plus a per-row "key is real" vector; the cache's
layers append in place instead of concatenating, `kv_cache.py`; the bookkeeping is `ragged_cache.py`):
- A pass feeds, per row, its pending inputs (the tokens accepted last pass; the prompt on the first pass)
  followed by the mask tokens, right-padded to the longest row. Position ids are explicit per row, so
  left padding and holes in the cache never shift a row's positions.
- After the pass the cache is cropped by the tail no row needs (everything past the longest row's pending
  inputs); what is left of a shorter row's masks/padding stays in the cache as holes, marked False in
  `key_valid` and hidden by the 4D additive attention mask (causal among new tokens + key validity).
- When holes exceed `COMPACT_MIN_HOLES` columns, the cache is compacted: per row, real entries are moved
  to the right (stable order, so attention is unchanged: keys already carry their rotary positions) and the
  all-hole columns on the left are dropped.
- Finished rows leave the batch (the cache is index-selected), so they cost nothing afterwards.
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass, field

import torch

from mtp_ds.acceptance import confident_run_length
from mtp_ds.decoding.attention import decoding_attention
from mtp_ds.decoding.kv_cache import cache_argument, make_cache
from mtp_ds.decoding.ragged_cache import RaggedCache
from mtp_ds.tokens import MaskTokens, as_mask_tokens, has_mask_tokens, mask_tokens_from_config

STRATEGIES = ("static", "confadapt")


@dataclass
class GenerationResult:
    """What `generate` produced, per row, plus the counters that the paper's speed-up figures need."""

    sequences: list[list[int]]  # generated ids per row, up to and including the first stop token
    tokens_per_pass: list[list[int]]  # per row: how many kept tokens each forward pass contributed
    num_forward_passes: int = 0  # batched forward calls actually run (one per step for the whole batch)
    wall_time_s: float = 0.0
    stop_reasons: list[str] = field(default_factory=list)  # per row: "stop_token", "stop_string" or "length"

    @property
    def acceleration_factor(self) -> float:
        """Mean tokens per pass over all passes of all rows (the paper's "effective k")."""
        passes = sum(len(counts) for counts in self.tokens_per_pass)
        return sum(sum(counts) for counts in self.tokens_per_pass) / passes if passes else 0.0

    @property
    def num_new_tokens(self) -> int:
        return sum(len(row) for row in self.sequences)

    @property
    def tokens_per_second(self) -> float:
        return self.num_new_tokens / self.wall_time_s if self.wall_time_s > 0 else 0.0

    def chunks(self, row: int = 0) -> list[list[int]]:
        """The row's generated tokens split into the chunk each forward pass contributed."""
        out, start = [], 0
        for count in self.tokens_per_pass[row]:
            out.append(self.sequences[row][start:start + count])
            start += count
        return out


def _as_stop_ids(eos_token_id) -> set[int]:
    if eos_token_id is None:
        return set()
    if isinstance(eos_token_id, torch.Tensor):
        return {int(i) for i in eos_token_id.flatten().tolist()}
    if isinstance(eos_token_id, int):
        return {eos_token_id}
    return {int(i) for i in eos_token_id}


def _validate(input_ids, attention_mask, strategy, k, k_max, threshold, max_new_tokens, temperature,
              stop_strings, tokenizer) -> None:
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if not isinstance(k_max, int) or k_max < 1:
        raise ValueError(f"k_max must be an int >= 1, got {k_max!r}")
    if not isinstance(k, int) or not 1 <= k <= k_max:
        raise ValueError(f"k must be an int with 1 <= k <= k_max={k_max}, got {k!r}")
    if not 0.0 <= float(threshold) <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold!r}")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
    if temperature is not None and temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 or None = greedy), got {temperature!r}")
    if stop_strings and tokenizer is None:
        raise ValueError("stop_strings needs tokenizer= to decode the generated text")
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.shape[1] == 0:
        shape = tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
        raise ValueError(f"input_ids must be a (batch, len) tensor with len >= 1, got {shape}")
    if attention_mask is not None:
        if attention_mask.shape != input_ids.shape:
            raise ValueError(f"attention_mask shape {tuple(attention_mask.shape)} != input_ids shape "
                             f"{tuple(input_ids.shape)}")
        if not bool(attention_mask[:, -1].all()):
            raise ValueError("attention_mask must describe LEFT-padded prompts (every row's last position is real)")


@dataclass
class _Row:
    """Decoding state of one prompt."""

    pending: list[int]  # tokens accepted last pass, not yet in the cache
    next_position: int  # position id of pending[0]
    generated: list[int] = field(default_factory=list)
    tokens_per_pass: list[int] = field(default_factory=list)
    stop_reason: str = ""


def _accept_count(strategy: str, confident_run: int | None, num_predictions: int, k: int) -> int:
    """How many leading predictions a pass keeps: k for Static; for ConfAdapt the confident run computed by
    `mtp_ds.acceptance.confident_run_length` (the paper's rule, shared with the training metric)."""
    if strategy == "static":
        return min(k, num_predictions)
    return confident_run


def _stop_string_cut(tokenizer, generated: list[int], block: list[int], stop_strings) -> int | None:
    """Index in `block` of the token that completes a stop string, or None. Earlier text had none."""
    if stop_strings is None or not any(s in tokenizer.decode(generated + block) for s in stop_strings):
        return None
    for end in range(1, len(block) + 1):
        if any(s in tokenizer.decode(generated + block[:end]) for s in stop_strings):
            return end - 1
    return len(block) - 1


def _finish_block(row: _Row, block: list[int], stop_ids: set[int], max_new_tokens: int, tokenizer,
                  stop_strings) -> list[int]:
    """Trim a pass's accepted tokens at the first stop token / stop string / length budget; set stop_reason."""
    for i, token in enumerate(block):
        if token in stop_ids:
            block, row.stop_reason = block[:i + 1], "stop_token"
            break
    cut = _stop_string_cut(tokenizer, row.generated, block, stop_strings) if stop_strings else None
    if cut is not None:
        block, row.stop_reason = block[:cut + 1], "stop_string"
    room = max_new_tokens - len(row.generated)
    if len(block) >= room:
        if len(block) > room or not row.stop_reason:
            row.stop_reason = "length"
        block = block[:room]
    return block


def generate(model, input_ids: torch.Tensor, *, mtp_token_id=None, strategy: str = "static", k: int = 1,
             k_max: int = 16, threshold: float = 0.9, max_new_tokens: int = 256, eos_token_id=None,
             attention_mask: torch.Tensor | None = None, temperature: float | None = None,
             generator: torch.Generator | None = None, tokenizer=None,
             stop_strings: list[str] | None = None) -> GenerationResult:
    """Decode `input_ids` (batch, len; LEFT-padded per `attention_mask`) with Static k or ConfAdapt.

    `mtp_token_id`: int, per-slot ids, or MaskTokens; None reads it from `model.config`.
    `eos_token_id`: int or list of stop ids (None: stop only on length / stop strings).
    `temperature` > 0 samples the token of a pass that accepts exactly one token; otherwise greedy.
    `stop_strings` (needs `tokenizer`): stop at the token that completes any of these strings.
    """
    _validate(input_ids, attention_mask, strategy, k, k_max, threshold, max_new_tokens, temperature,
              stop_strings, tokenizer)
    k_run = k if strategy == "static" else k_max
    if mtp_token_id is None and k_run == 1 and not has_mask_tokens(model.config):
        mtp_token_id = 0  # plain greedy decoding of any causal LM (a teacher): k=1 never places a mask token
    mask_tokens: MaskTokens = (mask_tokens_from_config(model.config) if mtp_token_id is None
                               else as_mask_tokens(mtp_token_id))
    mask_tokens.ids_for_masks(k_run - 1)  # one-line error now if distinct slot tokens are too few
    stop_ids = _as_stop_ids(eos_token_id)
    started = time.perf_counter()
    batch = input_ids.shape[0]
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    attention_mask = attention_mask.to(device=input_ids.device, dtype=torch.bool)
    rows = [_Row(pending=[], next_position=int(n)) for n in attention_mask.sum(dim=1).tolist()]
    if max_new_tokens == 0:
        return GenerationResult([[] for _ in rows], [[] for _ in rows], 0, 0.0, ["length"] * batch)

    # sdpa_gqa: MTP passes attend over the cached KV heads without copying them per query head (attention.py)
    with torch.inference_mode(), decoding_attention(model):
        # room for the prompt, every new token and one pass's masks: a decode that keeps its cache dense never
        # reallocates it (holes left by ragged acceptance may still grow it)
        cache = make_cache(reserve=input_ids.shape[1] + max_new_tokens + k_run)
        decoder = _BatchDecoder(model, mask_tokens, cache, batch, input_ids.device)
        active = list(range(batch))
        first = True
        while active:
            room = max(max_new_tokens - len(rows[b].generated) for b in active)
            num_masks = min(k_run, room) - 1  # masks past the budget cannot change the kept tokens
            if first:
                logits = decoder.first_pass(input_ids, attention_mask, num_masks)
                first = False
            else:
                logits = decoder.step([rows[b] for b in active], num_masks)
            tokens, confident_runs = _read_predictions(logits, mask_tokens,
                                                       threshold if strategy == "confadapt" else None)
            sample_from = logits[:, 0] if temperature else None
            for slot, b in enumerate(active):
                row = rows[b]
                count = _accept_count(strategy, confident_runs and confident_runs[slot], len(tokens[slot]), k_run)
                block = tokens[slot][:count]
                # sample only when the strategy itself chose one token, not when the budget cut the block
                if sample_from is not None and count == 1 and (k_run == 1 or len(tokens[slot]) > 1):
                    block = [_sample(sample_from[slot], temperature, mask_tokens, generator)]
                block = _finish_block(row, block, stop_ids, max_new_tokens, tokenizer, stop_strings)
                row.generated += block
                row.tokens_per_pass.append(len(block))
                row.pending = block
            still = [slot for slot, b in enumerate(active) if not rows[b].stop_reason]
            if len(still) < len(active) and still:
                decoder.kv.select_rows(still, input_ids.device)
            active = [active[slot] for slot in still]
    return GenerationResult(
        sequences=[row.generated for row in rows], tokens_per_pass=[row.tokens_per_pass for row in rows],
        num_forward_passes=decoder.num_forward_passes, wall_time_s=time.perf_counter() - started,
        stop_reasons=[row.stop_reason for row in rows],
    )


def _read_predictions(logits: torch.Tensor, mask_tokens: MaskTokens, threshold: float | None = None
                      ) -> tuple[list[list[int]], list[int] | None]:
    """Greedy token per position, with the mask ids never eligible, and (with a ConfAdapt `threshold`) each
    row's confident run length from the softmax top-1 probabilities.

    One device-to-host transfer per pass (tokens and run lengths travel together); Static k needs no softmax.
    """
    logits = logits.float()
    logits[..., list(mask_tokens.ids)] = float("-inf")
    if threshold is None:
        return logits.argmax(dim=-1).tolist(), None
    confidences, tokens = torch.softmax(logits, dim=-1).max(dim=-1)
    runs = confident_run_length(confidences, threshold)
    both = torch.cat([tokens, runs[:, None]], dim=1).tolist()
    return [row[:-1] for row in both], [row[-1] for row in both]


def _sample(logits: torch.Tensor, temperature: float, mask_tokens: MaskTokens, generator) -> int:
    logits = logits.float().clone()
    logits[list(mask_tokens.ids)] = float("-inf")
    probs = torch.softmax(logits / temperature, dim=-1)
    if generator is not None:
        probs = probs.to(generator.device)
    return int(torch.multinomial(probs, 1, generator=generator))


class _BatchDecoder:
    """Builds each pass's inputs, positions and 4D mask, runs the model, and returns the logits to read."""

    def __init__(self, model, mask_tokens: MaskTokens, cache, batch_size: int, device):
        self.model = model
        self.mask_tokens = mask_tokens
        self.kv = RaggedCache(cache, batch_size, device)
        self.device = device
        self.dtype = next(model.parameters()).dtype
        self.num_forward_passes = 0
        # Only the anchor..last-mask logits are read; models that can skip the rest of the lm_head should.
        self.takes_logits_to_keep = "logits_to_keep" in inspect.signature(model.forward).parameters
        self.cache_argument = cache_argument(model)

    def _forward(self, ids: torch.Tensor, positions: torch.Tensor, new_valid: torch.Tensor | None,
                 anchors: list[int], num_predictions: int) -> torch.Tensor:
        """Run one pass; return logits (B, num_predictions, V) at anchor .. anchor+num_predictions-1 per row.

        `new_valid` None: every new entry is real and the cache has no hole, so plain causal attention is exact
        and the model builds its own mask (what HF generate does; no (B, 1, q, cache+q) mask to allocate).
        """
        mask = None if new_valid is None else self.kv.attention_mask(new_valid, self.dtype)
        width = ids.shape[1]
        keep = width - min(anchors)
        extra = {"logits_to_keep": keep} if self.takes_logits_to_keep else {}
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions,
                         **{self.cache_argument: self.kv.cache}, use_cache=True, **extra)
        self.num_forward_passes += 1
        logits = out.logits
        offset = width - logits.shape[1]  # logits[:, j] is the prediction at input column offset + j
        if len(set(anchors)) == 1:  # same anchor in every row: a slice, no gather
            start = anchors[0] - offset
            return logits[:, start:start + num_predictions]
        index = (torch.tensor(anchors, device=logits.device)[:, None] - offset
                 + torch.arange(num_predictions, device=logits.device))
        return logits[torch.arange(logits.shape[0], device=logits.device)[:, None], index]

    def first_pass(self, input_ids, attention_mask, num_masks: int):
        """Prompt (left-padded) + masks; every row's anchor is the last prompt column."""
        batch, prompt_len = input_ids.shape
        masks = torch.tensor(self.mask_tokens.ids_for_masks(num_masks), dtype=input_ids.dtype,
                             device=self.device).expand(batch, -1)
        ids = torch.cat([input_ids, masks], dim=1)
        positions = (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)
        lengths = attention_mask.sum(dim=1, keepdim=True)
        positions = torch.cat([positions, lengths + torch.arange(num_masks, device=self.device)], dim=1)
        real_counts = lengths.flatten().tolist()
        padded = any(count != prompt_len for count in real_counts)
        new_valid = torch.cat([attention_mask, torch.ones_like(masks, dtype=torch.bool)], dim=1) if padded else None
        logits = self._forward(ids, positions, new_valid, [prompt_len - 1] * batch, num_masks + 1)
        self.kv.commit(ids.shape[1], attention_mask, real_counts)
        return logits

    def step(self, rows: list[_Row], num_masks: int):
        """Each row's pending tokens + masks, right-padded to the longest row."""
        pending = [len(row.pending) for row in rows]
        kept_width = max(pending)
        width = kept_width + num_masks
        pad_id = self.mask_tokens.ids[0]  # any id: padded entries are hidden and dropped
        mask_ids = self.mask_tokens.ids_for_masks(num_masks)
        ids, positions, new_valid, kept_valid = [], [], [], []
        for row, n in zip(rows, pending):
            real = n + num_masks
            ids.append(row.pending + mask_ids + [pad_id] * (width - real))
            positions.append(list(range(row.next_position, row.next_position + real)) + [0] * (width - real))
            new_valid.append([1] * real + [0] * (width - real))
            kept_valid.append([1] * n + [0] * (width - n))
        ragged = kept_width != min(pending)  # rows accepted different counts last pass: padding, then holes
        needs_mask = ragged or not self.kv.dense
        # one host-to-device copy for everything the pass needs
        planes = torch.tensor([ids, positions] + ([new_valid] if needs_mask else []) + ([kept_valid] if ragged else []),
                              device=self.device)
        ids, positions = planes[0], planes[1]
        logits = self._forward(ids, positions, planes[2].bool() if needs_mask else None, [n - 1 for n in pending],
                               num_masks + 1)
        kept = (planes[-1, :, :kept_width].bool() if ragged
                else torch.ones((len(rows), kept_width), dtype=torch.bool, device=self.device))
        self.kv.commit(width, kept, pending)
        for row, n in zip(rows, pending):
            row.next_position += n
        return logits
