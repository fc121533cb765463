"""What a decode returns and the per-row bookkeeping every strategy shares: stop ids, stop strings, budgets.

Why a module of its own: Static k, ConfAdapt (`decoder.py`) and selfspec (`selfspec.py`) keep different tokens
per pass, but a row's end (the first stop token, the token that completes a stop string, the length budget cut
inside a block) must be decided the same way for all of them, or their outputs stop being comparable.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class GenerationResult:
    """What `generate` produced, per row, plus the counters that the paper's speed-up figures need."""

    sequences: list[list[int]]  # generated ids per row, up to and including the first stop token
    tokens_per_pass: list[list[int]]  # per row: how many kept tokens each forward pass contributed
    num_forward_passes: int = 0  # batched forward calls actually run (one per step for the whole batch)
    wall_time_s: float = 0.0
    stop_reasons: list[str] = field(default_factory=list)  # per row: "stop_token", "stop_string" or "length"
    num_query_tokens: int = 0  # input columns of all passes (rows x width, padding included): the forward's cost
    # selfspec only, per row and pass: how many of the kept tokens were the model's own proposals that it verified
    # (the rest of the pass's tokens is its correction or bonus token); empty for the other strategies
    verified_per_pass: list[list[int]] = field(default_factory=list)

    @classmethod
    def from_rows(cls, rows: list[RowState], *, passes: int, query_tokens: int, seconds: float, strategy: str, **extra):
        """The result of decoding `rows` (every strategy's rows end the same way; `extra`: a subclass's fields)."""
        return cls(
            sequences=[row.generated for row in rows],
            tokens_per_pass=[row.tokens_per_pass for row in rows],
            num_forward_passes=passes,
            wall_time_s=seconds,
            stop_reasons=[row.stop_reason for row in rows],
            num_query_tokens=query_tokens,
            verified_per_pass=[row.verified_per_pass for row in rows] if strategy == "selfspec" else [],
            **extra,
        )

    @property
    def acceleration_factor(self) -> float:
        """Mean tokens per pass over all passes of all rows (the paper's "effective k")."""
        passes = sum(len(counts) for counts in self.tokens_per_pass)
        return sum(sum(counts) for counts in self.tokens_per_pass) / passes if passes else 0.0

    @property
    def query_tokens_per_pass(self) -> float:
        """Mean input columns per forward pass (all rows together)."""
        return self.num_query_tokens / self.num_forward_passes if self.num_forward_passes else 0.0

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
            out.append(self.sequences[row][start : start + count])
            start += count
        return out


@dataclass
class RowState:
    """Decoding state of one prompt."""

    pending: list[int]  # tokens to feed next pass, not yet in the cache (selfspec: the last kept token + proposals)
    next_position: int  # position id of pending[0]
    generated: list[int] = field(default_factory=list)
    tokens_per_pass: list[int] = field(default_factory=list)
    verified_per_pass: list[int] = field(default_factory=list)
    stop_reason: str = ""
    draft_probs: torch.Tensor | None = None  # selfspec sampling: (proposals, V) distributions they were drawn from
    proposal_confidences: list[float] | None = None  # selfspec: each proposal's draft probability (where read)


@dataclass(frozen=True)
class StopRule:
    """Where a row ends: the first stop id, the token completing a stop string, or its length budget."""

    stop_ids: frozenset[int] = frozenset()
    tokenizer: object = None
    stop_strings: tuple[str, ...] = ()

    @classmethod
    def of(cls, eos_token_id=None, tokenizer=None, stop_strings=None) -> StopRule:
        if stop_strings and tokenizer is None:
            raise ValueError("stop_strings needs tokenizer= to decode the generated text")
        return cls(frozenset(as_stop_ids(eos_token_id)), tokenizer, tuple(stop_strings or ()))

    def finish(self, row: RowState, block: list[int], budget: int) -> list[int]:
        """The pass's kept tokens trimmed at the row's end (sets its stop_reason)."""
        return finish_block(row, block, self.stop_ids, budget, self.tokenizer, list(self.stop_strings) or None)


def as_stop_ids(eos_token_id) -> set[int]:
    if eos_token_id is None:
        return set()
    if isinstance(eos_token_id, torch.Tensor):
        return {int(i) for i in eos_token_id.flatten().tolist()}
    if isinstance(eos_token_id, int):
        return {eos_token_id}
    return {int(i) for i in eos_token_id}


STOP_STRING_MARGIN = 8  # characters of text kept before the longest stop string (see `_stop_string_cut`)


def _stop_string_cut(tokenizer, generated: list[int], block: list[int], stop_strings) -> int | None:
    """Index in `block` of the token that completes a stop string, or None. Earlier text had none.

    The rule is "the first prefix of the block after which decode(generated + prefix) contains a stop string".
    Earlier text had none, so a stop string that appears must end in the text the block adds: only a tail window
    is decoded, `generated`'s last tokens whose text is longer than the longest stop string plus a margin (the
    first token of a window may decode differently alone: a leading space, a split multi-byte character). An
    occurrence counts when it ends past the text the window already had without the block (the block's first
    token may complete a character the window ended with). The work per pass is bounded by the window, not the
    output's length.
    """
    if stop_strings is None:
        return None
    window, before = _tail_window(tokenizer, generated, max(map(len, stop_strings)) + STOP_STRING_MARGIN)

    def completes(tokens: list[int]) -> bool:
        text = tokenizer.decode(window + tokens)
        added_from = _shared_prefix_length(before, text)
        return any(s in text[max(0, added_from - len(s) + 1) :] for s in stop_strings)

    if not completes(block):
        return None
    for end in range(1, len(block) + 1):
        if completes(block[:end]):
            return end - 1
    return len(block) - 1


def _shared_prefix_length(a: str, b: str) -> int:
    if b.startswith(a):
        return len(a)
    length = 0
    while length < min(len(a), len(b)) and a[length] == b[length]:
        length += 1
    return length


def _tail_window(tokenizer, generated: list[int], chars: int) -> tuple[list[int], str]:
    """The last tokens of `generated` whose decoded text has at least `chars` characters (all of it when shorter),
    and that text. Starts from `chars` tokens and doubles, so a few decodes of about that many tokens."""
    count = max(chars, 1)
    while True:
        window = generated[-count:] if count < len(generated) else generated
        text = tokenizer.decode(window)
        if len(text) >= chars or len(window) == len(generated):
            return window, text
        count *= 2


def finish_block(
    row: RowState, block: list[int], stop_ids: set[int], max_new_tokens: int, tokenizer, stop_strings
) -> list[int]:
    """Trim a pass's kept tokens at the first stop token / stop string / length budget; set stop_reason."""
    for i, token in enumerate(block):
        if token in stop_ids:
            block, row.stop_reason = block[: i + 1], "stop_token"
            break
    cut = _stop_string_cut(tokenizer, row.generated, block, stop_strings) if stop_strings else None
    if cut is not None:
        block, row.stop_reason = block[: cut + 1], "stop_string"
    room = max_new_tokens - len(row.generated)
    if len(block) >= room:
        if len(block) > room or not row.stop_reason:
            row.stop_reason = "length"
        block = block[:room]
    return block


def keep_block(row: RowState, block: list[int], verified: int | None = None) -> None:
    """Append a pass's (already trimmed) block to the row's output and counters."""
    row.generated += block
    row.tokens_per_pass.append(len(block))
    if verified is not None:
        row.verified_per_pass.append(min(verified, len(block)))
