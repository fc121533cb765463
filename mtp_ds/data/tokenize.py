"""From raw (prompt, response, group) rows to fixed-length token ids: formatting, cached tokenisation, split.

Every sequence is exactly `data.seq_len` tokens, ends with the recipe's EOS (then EOS padding, docs/METHOD.md
section 4) and carries the index of its first response token (`first_anchor` keeps anchors out of the prompt).
Tokenising (395k rows: minutes) runs once through `datasets.map`, cached under a fingerprint of (raw data,
tokenizer, formatting); `mtp-ds prepare-data` fills that cache before a launch. Dropped and counted by reason
(`DroppedRows`): a sample whose prompt fills the window (no response left) or with an empty response. Skipped and
counted (`SkippedRow`, the first one named in a warning): a row that cannot become a sample, e.g. its prompt holds
the end-of-sample token. `build_datasets` says both at start-up and refuses past `data.max_dropped_fraction`.

Special-token text inside a row (`</s>`, `<|eot_id|>` written in a prompt or response) stays text: it is
tokenised as with `split_special_tokens=True`, while the special tokens the chat template, the prompt template or
the separator write stay special.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import weakref
from dataclasses import dataclass

from mtp_ds.config import ConfigError, DataConfig
from mtp_ds.data.sources import group_hash

FORMAT_VERSION = 3  # bump when the meaning of the tokenised columns changes (invalidates caches)
log = logging.getLogger("mtp_ds.data")

# Stand-ins for a row's prompt and response while the chat template's own text around them is read off
# (private-use characters: no template trims or rewrites them).
_PROMPT_MARK, _RESPONSE_MARK = "\ue000", "\ue001"


class SkippedRow(ValueError):
    """A row that cannot become a sample; its message says why. `build_datasets` skips and counts such rows."""


# why a row of the cached map output is not a sample (its `outcome` column; "" for a sample)
SKIPPED, EMPTY_RESPONSE, PROMPT_FILLS_WINDOW = "skipped", "empty_response", "prompt_fills_window"


class DroppedRow(Exception):
    """Raised by `encode_example(..., raise_dropped=True)` for a row it would drop: why, and the prompt's tokens."""

    def __init__(self, outcome: str, prompt_tokens: int = 0) -> None:
        super().__init__(outcome)
        self.outcome, self.prompt_tokens = outcome, prompt_tokens


# ---------------------------------------------------------------- formatting


def _render(prompt: str, response: str, tokenizer, data: DataConfig) -> tuple[str, int, str]:
    """(full text, character index where the response starts, the text before the response)."""
    if not data.chat_template:
        if data.prompt_template is not None:
            prompt = data.prompt_template.replace("{prompt}", prompt)
        prefix = prompt + data.separator
        return prefix + response, len(prefix), prefix
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError("data.chat_template: true, but the tokenizer has no chat template")
    user = [{"role": "user", "content": prompt}]
    prefix = tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
    text = tokenizer.apply_chat_template(user + [{"role": "assistant", "content": response}], tokenize=False)
    if text.startswith(prefix):
        return text, len(prefix), prefix
    start = text.rfind(response)  # templates that rewrite the generation prompt (e.g. thinking blocks)
    if start < 0:
        raise SkippedRow("the chat template's rendering of it does not contain its response text")
    return text, start, text[:start]


def format_text(prompt: str, response: str, tokenizer, data: DataConfig) -> tuple[str, int]:
    """(full text, character index where the response starts); specials like BOS are not in the text when off."""
    text, response_char, _ = _render(prompt, response, tokenizer, data)
    return text, response_char


def _content_spans(prompt: str, text: str, response_char: int, prefix: str, tokenizer, data: DataConfig):
    """Character spans of `text` that hold the row's own prompt and response (the rest is the recipe's or the
    chat template's text); None where a chat template renders them in a way these spans cannot follow."""
    if not data.chat_template:
        parts = (data.prompt_template or "{prompt}").split("{prompt}")
        spans, cursor = [], 0
        for part in parts[:-1]:
            cursor += len(part)
            spans.append((cursor, cursor + len(prompt)))
            cursor += len(prompt)
        return [*spans, (response_char, len(text))]
    user = [{"role": "user", "content": _PROMPT_MARK}]
    frame_prefix = tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
    frame = tokenizer.apply_chat_template(user + [{"role": "assistant", "content": _RESPONSE_MARK}], tokenize=False)
    if frame_prefix.count(_PROMPT_MARK) != 1 or frame.count(_RESPONSE_MARK) != 1 or not text.startswith(prefix):
        return None
    before, after = frame_prefix.split(_PROMPT_MARK)
    tail = frame.split(_RESPONSE_MARK)[1]
    framed = prefix.startswith(before) and prefix.endswith(after) and len(before) + len(after) <= len(prefix)
    if not framed or not text.endswith(tail) or len(prefix) + len(tail) > len(text):
        return None
    return [(len(before), len(prefix) - len(after)), (len(prefix), len(text) - len(tail))]


# ---------------------------------------------------------------- special tokens written inside a row

_SPECIALS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _special_tokens(tokenizer) -> tuple[frozenset[int], re.Pattern | None]:
    """(ids, pattern of their texts) of the tokens that `split_special_tokens=True` reads as plain text."""
    cached = _SPECIALS.get(tokenizer)
    if cached is not None and cached[0] == len(tokenizer):
        return cached[1], cached[2]
    texts = {token_id: token.content for token_id, token in tokenizer.added_tokens_decoder.items() if token.special}
    for token_id in tokenizer.all_special_ids:
        texts.setdefault(token_id, tokenizer.convert_ids_to_tokens(token_id))
    alternatives = sorted({text for text in texts.values() if text}, key=len, reverse=True)
    pattern = re.compile("|".join(map(re.escape, alternatives))) if alternatives else None
    _SPECIALS[tokenizer] = (len(tokenizer), frozenset(texts), pattern)
    return frozenset(texts), pattern


def _overlaps(text: str, start: int, end: int, spans) -> bool:
    """Whether the token at text[start:end], without the whitespace an added token may absorb, touches a span."""
    piece = text[start:end]
    start, end = start + len(piece) - len(piece.lstrip()), end - len(piece) + len(piece.rstrip())
    return any(start < span_end and span_start < end for span_start, span_end in spans)


def _encode_text(text: str, tokenizer, **kwargs) -> tuple[list[int], list[tuple[int, int]] | None]:
    """Token ids of `text` (no added specials) and each one's character span (None: a tokenizer without offsets)."""
    if not getattr(tokenizer, "is_fast", False):
        return list(tokenizer(text, add_special_tokens=False, **kwargs)["input_ids"]), None
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, **kwargs)
    return list(encoded["input_ids"]), [tuple(span) for span in encoded["offset_mapping"]]


def _literal_specials_as_text(text: str, ids: list[int], offsets, spans, tokenizer, special_ids) -> tuple[list, list]:
    """Re-tokenise `text` so that special tokens inside the row's spans are plain text: the text between the
    special tokens the template wrote is tokenised with `split_special_tokens=True`, piece by piece, exactly
    where the tokenizer itself would split it."""
    kept = [
        (start, end, token)
        for token, (start, end) in zip(ids, offsets)
        if token in special_ids and not _overlaps(text, start, end, spans)
    ]
    new_ids, new_offsets, cursor = [], [], 0
    for start, end, token in [*kept, (len(text), len(text), None)]:
        if start > cursor:
            piece_ids, piece_offsets = _encode_text(text[cursor:start], tokenizer, split_special_tokens=True)
            new_ids += piece_ids
            new_offsets += [(a + cursor, b + cursor) for a, b in piece_offsets]
        if token is not None:
            new_ids.append(token)
            new_offsets.append((start, end))
        cursor = max(cursor, end)
    return new_ids, new_offsets


def _tokenize_row(prompt: str, response: str, tokenizer, data: DataConfig, eos_id: int) -> tuple[list[int], int]:
    """Token ids of the formatted row (no BOS) and the index of the first token that reaches into the response.

    Raises ConfigError when the recipe's own text (chat template, prompt template, separator) puts the
    end-of-sample token into the prompt, SkippedRow when the row's own text does."""
    text, response_char, prefix = _render(prompt, response, tokenizer, data)
    if not getattr(tokenizer, "is_fast", False):  # no offsets: the prompt's length in tokens, as the prefix's
        ids, _ = _encode_text(text, tokenizer)
        start = len(_encode_text(text[:response_char], tokenizer)[0])
        if eos_id in ids[:start]:
            raise SkippedRow(_eos_reason(prompt, tokenizer, eos_id))
        return ids, start
    ids, offsets = _encode_text(text, tokenizer)
    start = _first_reaching(offsets, response_char)
    special_ids, pattern = _special_tokens(tokenizer)
    literal = pattern is not None and bool(pattern.search(prompt) or pattern.search(response))
    if not literal and eos_id not in ids[:start]:
        return ids, start  # nearly every row
    spans = _content_spans(prompt, text, response_char, prefix, tokenizer, data)
    if literal and spans is not None:
        ids, offsets = _literal_specials_as_text(text, ids, offsets, spans, tokenizer, special_ids)
        start = _first_reaching(offsets, response_char)
    in_prompt = [offsets[i] for i in range(start) if ids[i] == eos_id]
    if spans is not None and any(not _overlaps(text, a, b, spans) for a, b in in_prompt):
        raise ConfigError(
            f"data.eos_token: id {eos_id} ({tokenizer.convert_ids_to_tokens(eos_id)!r}) occurs inside the "
            "prompt, so packing would treat the rest of the sample as padding; set data.eos_token to a token "
            "that only ends samples"
        )
    if in_prompt:
        raise SkippedRow(_eos_reason(prompt, tokenizer, eos_id))
    return ids, start


def _first_reaching(offsets, response_char: int) -> int:
    return next((i for i, (_, end) in enumerate(offsets) if end > response_char), len(offsets))


def _eos_reason(prompt: str, tokenizer, eos_id: int) -> str:
    excerpt = prompt if len(prompt) <= 60 else prompt[:57] + "..."
    return (
        f"its prompt holds the end-of-sample token {tokenizer.convert_ids_to_tokens(eos_id)!r} (id {eos_id}), "
        f"which would end the sample there (prompt: {excerpt!r})"
    )


def eos_token_id(tokenizer, data: DataConfig) -> int:
    """The end-of-sample id: data.eos_token, else the tokenizer's EOS."""
    token = data.eos_token or tokenizer.eos_token
    # membership, not "id != unk": some tokenizers (SmolLM2) make their end-of-text token the unk token too
    token_id = tokenizer.get_vocab().get(token) if token is not None else None
    if token_id is None:
        raise ConfigError(f"data.eos_token: {token!r} is not a token of this tokenizer")
    return int(token_id)


def encode_example(
    prompt: str, response: str, tokenizer, data: DataConfig, eos_id: int, *, raise_dropped: bool = False
) -> dict | None:
    """One sample as {input_ids (seq_len, EOS-padded), response_start, first_anchor, length}; None = dropped
    (`raise_dropped`: DroppedRow instead, saying why).

    Raises SkippedRow for a row that cannot become a sample (the message says why)."""
    if not response:
        if raise_dropped:
            raise DroppedRow(EMPTY_RESPONSE)
        return None
    ids, response_start = _tokenize_row(prompt, response, tokenizer, data, eos_id)
    if not data.chat_template and data.add_bos and tokenizer.bos_token_id is not None:
        if tokenizer.bos_token_id == eos_id:
            raise ConfigError(
                f"data.add_bos: the BOS token is the end-of-sample token (id {eos_id}), so every sample would end "
                "before it starts; set data.add_bos=false or data.eos_token to a token that only ends samples"
            )
        ids, response_start = [tokenizer.bos_token_id, *ids], response_start + 1
    if not ids or ids[-1] != eos_id:
        ids.append(eos_id)
    if eos_id in ids[:-1]:
        ids = ids[: ids.index(eos_id) + 1]  # an EOS inside the response ends the sample there (as pack would)
    seq_len = data.seq_len
    if response_start >= seq_len:
        if raise_dropped:
            raise DroppedRow(PROMPT_FILLS_WINDOW, response_start)
        return None
    length = min(len(ids), seq_len)
    ids = ids[:seq_len] + [eos_id] * (seq_len - length)
    first_anchor = max(response_start - 1, 0) if data.response_only_anchors else 0
    return {"input_ids": ids, "response_start": response_start, "first_anchor": first_anchor, "length": length}


# ---------------------------------------------------------------- cached tokenisation

# only in the cached map output; length 0 marks a row that is not a sample, `outcome` says why
_REPORT_COLUMNS = ("source_row", "skip_reason", "outcome")


def _tokenize_batch(batch, indices, *, tokenizer, data: DataConfig, eos_id: int):
    names = ("input_ids", "response_start", "first_anchor", "length", "group_id", *_REPORT_COLUMNS)
    columns = {name: [] for name in names}
    for row, prompt, response, group in zip(indices, batch["prompt"], batch["response"], batch["group"]):
        reason = outcome = ""
        try:
            encoded = encode_example(prompt, response, tokenizer, data, eos_id, raise_dropped=True)
        except SkippedRow as skipped:
            encoded, reason, outcome = _NOT_A_SAMPLE, str(skipped), SKIPPED
        except DroppedRow as dropped:  # the prompt's length kept where a sample keeps its response start
            encoded, outcome = {**_NOT_A_SAMPLE, "response_start": dropped.prompt_tokens}, dropped.outcome
        for name, value in encoded.items():
            columns[name].append(value)
        columns["group_id"].append(group_hash(group))
        columns["source_row"].append(row)
        columns["skip_reason"].append(reason)
        columns["outcome"].append(outcome)
    return columns


_NOT_A_SAMPLE = {"input_ids": [], "response_start": 0, "first_anchor": 0, "length": 0}


def tokenizer_fingerprint(tokenizer) -> str:
    """A stable hash of everything that decides token ids (vocabulary, merges, specials, chat template)."""
    parts = [
        type(tokenizer).__name__,
        json.dumps(tokenizer.get_vocab(), sort_keys=True),
        str(getattr(tokenizer, "chat_template", None)),
        str(tokenizer.special_tokens_map),
    ]
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        parts.append(backend.to_str())
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()


def _format_settings(data: DataConfig) -> dict:
    keys = ("chat_template", "separator", "prompt_template", "add_bos", "eos_token", "seq_len", "response_only_anchors")
    return {key: getattr(data, key) for key in keys}


@dataclass(frozen=True)
class SkippedRows:
    """Rows that could not become samples: how many, and the first one (`row N: why`, N counted from 0)."""

    count: int = 0
    first: str | None = None


@dataclass(frozen=True)
class DroppedRows:
    """Rows dropped by reason; `prompt_tokens`: the shortest and longest prompt of those that fill the window."""

    prompt_fills_window: int = 0
    empty_response: int = 0
    prompt_tokens: tuple[int, int] | None = None

    @property
    def count(self) -> int:
        return self.prompt_fills_window + self.empty_response


def tokenize_with_skips(raw, tokenizer, data: DataConfig):
    """(samples, SkippedRows, DroppedRows): a normalised (prompt, response, group) dataset tokenised, cached on disk
    next to the raw data's cache; rows that are not samples are left out and counted, the first skipped one is
    logged."""
    import datasets

    eos_id = eos_token_id(tokenizer, data)
    fingerprint = hashlib.sha256(
        json.dumps(
            [FORMAT_VERSION, raw._fingerprint, tokenizer_fingerprint(tokenizer), _format_settings(data)],
            sort_keys=True,
        ).encode()
    ).hexdigest()[:32]
    list_of = getattr(datasets, "List", None) or datasets.Sequence  # datasets < 4 has only Sequence
    features = datasets.Features(
        {
            "input_ids": list_of(datasets.Value("int32")),
            "response_start": datasets.Value("int32"),
            "first_anchor": datasets.Value("int32"),
            "length": datasets.Value("int32"),
            "group_id": datasets.Value("int64"),
            "source_row": datasets.Value("int64"),
            "skip_reason": datasets.Value("string"),
            "outcome": datasets.Value("string"),
        }
    )
    mapped = raw.map(
        _tokenize_batch,
        batched=True,
        with_indices=True,
        remove_columns=raw.column_names,
        features=features,
        num_proc=data.num_proc,
        fn_kwargs=dict(tokenizer=tokenizer, data=data, eos_id=eos_id),
        new_fingerprint=fingerprint,
        desc="tokenise",
    )
    lengths = mapped.data.column("length").to_pylist()
    outcomes = mapped.data.column("outcome").to_pylist()
    skipped = [row for row, outcome in enumerate(outcomes) if outcome == SKIPPED]
    report, dropped = SkippedRows(), _dropped_rows(outcomes, mapped.data.column("response_start").to_pylist())
    if skipped:
        first = mapped[skipped[0]]
        report = SkippedRows(len(skipped), f"row {first['source_row']}: {first['skip_reason']}")
        if os.environ.get("RANK", "0") == "0":  # every rank reads the same cache: say it once
            log.warning(
                "data: skipped %d of %d rows that cannot become samples; the first: %s",
                report.count,
                len(raw),
                report.first,
            )
    if skipped or dropped.count:
        mapped = mapped.select([row for row, length in enumerate(lengths) if length > 0])
    return mapped.remove_columns(list(_REPORT_COLUMNS)), report, dropped


def _dropped_rows(outcomes: list[str], prompt_tokens: list[int]) -> DroppedRows:
    long = [tokens for outcome, tokens in zip(outcomes, prompt_tokens) if outcome == PROMPT_FILLS_WINDOW]
    return DroppedRows(
        prompt_fills_window=len(long),
        empty_response=outcomes.count(EMPTY_RESPONSE),
        prompt_tokens=(min(long), max(long)) if long else None,
    )


def tokenize_dataset(raw, tokenizer, data: DataConfig):
    """The samples of `tokenize_with_skips` (columns input_ids, response_start, first_anchor, length, group_id)."""
    return tokenize_with_skips(raw, tokenizer, data)[0]
