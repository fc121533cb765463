"""From raw (prompt, response, group) rows to fixed-length token ids: formatting, cached tokenisation, split.

Every sequence is exactly `data.seq_len` tokens, ends with the recipe's EOS (then EOS padding, docs/METHOD.md
section 4) and carries the index of its first response token (`first_anchor` keeps anchors out of the prompt).
Tokenising (395k rows: minutes) runs once through `datasets.map`, cached under a fingerprint of (raw data,
tokenizer, formatting). Dropped: a sample whose prompt fills the window (no response left) or with an empty response.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from mtp_ds.config import ConfigError, DataConfig, Recipe
from mtp_ds.data.sources import group_hash, load_raw_dataset, source_paths, split_indices

FORMAT_VERSION = 1  # bump when the meaning of the tokenised columns changes (invalidates caches)


# ---------------------------------------------------------------- formatting


def format_text(prompt: str, response: str, tokenizer, data: DataConfig) -> tuple[str, int]:
    """(full text, character index where the response starts); specials like BOS are not in the text when off."""
    if not data.chat_template:
        if data.prompt_template is not None:
            prompt = data.prompt_template.replace("{prompt}", prompt)
        prefix = prompt + data.separator
        return prefix + response, len(prefix)
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError("data.chat_template: true, but the tokenizer has no chat template")
    user = [{"role": "user", "content": prompt}]
    prefix = tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
    text = tokenizer.apply_chat_template(user + [{"role": "assistant", "content": response}], tokenize=False)
    if text.startswith(prefix):
        return text, len(prefix)
    start = text.rfind(response)  # templates that rewrite the generation prompt (e.g. thinking blocks)
    if start < 0:
        raise ConfigError("data.chat_template: the rendered conversation does not contain the response text")
    return text, start


def _encode_text(text: str, response_char: int, tokenizer) -> tuple[list[int], int]:
    """Token ids of `text` (no added specials) and the index of the first token that reaches into the response."""
    if getattr(tokenizer, "is_fast", False):
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = encoded["input_ids"], encoded["offset_mapping"]
        start = next((i for i, (_, end) in enumerate(offsets) if end > response_char), len(ids))
        return list(ids), start
    prefix_ids = tokenizer(text[:response_char], add_special_tokens=False)["input_ids"]
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]), len(prefix_ids)


def eos_token_id(tokenizer, data: DataConfig) -> int:
    """The end-of-sample id: data.eos_token, else the tokenizer's EOS."""
    token = data.eos_token or tokenizer.eos_token
    # membership, not "id != unk": some tokenizers (SmolLM2) make their end-of-text token the unk token too
    token_id = tokenizer.get_vocab().get(token) if token is not None else None
    if token_id is None:
        raise ConfigError(f"data.eos_token: {token!r} is not a token of this tokenizer")
    return int(token_id)


def encode_example(prompt: str, response: str, tokenizer, data: DataConfig, eos_id: int) -> dict | None:
    """One sample as {input_ids (seq_len, EOS-padded), response_start, first_anchor, length}; None = dropped."""
    if not response:
        return None
    text, response_char = format_text(prompt, response, tokenizer, data)
    ids, response_start = _encode_text(text, response_char, tokenizer)
    if not data.chat_template and data.add_bos and tokenizer.bos_token_id is not None:
        ids, response_start = [tokenizer.bos_token_id, *ids], response_start + 1
    if not ids or ids[-1] != eos_id:
        ids.append(eos_id)
    if eos_id in ids[:response_start]:
        raise ConfigError(
            f"data.eos_token: id {eos_id} ({tokenizer.convert_ids_to_tokens(eos_id)!r}) occurs inside the prompt, so "
            "packing would treat the rest of the sample as padding; set data.eos_token to a token that only ends samples"
        )
    if eos_id in ids[:-1]:
        ids = ids[: ids.index(eos_id) + 1]  # an EOS inside the response ends the sample there (as pack would)
    seq_len = data.seq_len
    if response_start >= seq_len:
        return None
    length = min(len(ids), seq_len)
    ids = ids[:seq_len] + [eos_id] * (seq_len - length)
    first_anchor = max(response_start - 1, 0) if data.response_only_anchors else 0
    return {"input_ids": ids, "response_start": response_start, "first_anchor": first_anchor, "length": length}


def _tokenize_batch(batch, *, tokenizer, data: DataConfig, eos_id: int):
    columns = {"input_ids": [], "response_start": [], "first_anchor": [], "length": [], "group_id": []}
    for prompt, response, group in zip(batch["prompt"], batch["response"], batch["group"]):
        encoded = encode_example(prompt, response, tokenizer, data, eos_id)
        if encoded is None:
            continue
        for name, value in encoded.items():
            columns[name].append(value)
        columns["group_id"].append(group_hash(group))
    return columns


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


def tokenize_dataset(raw, tokenizer, data: DataConfig):
    """Tokenise a normalised (prompt, response, group) dataset; cached on disk next to the raw data's cache."""
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
        }
    )
    return raw.map(
        _tokenize_batch,
        batched=True,
        remove_columns=raw.column_names,
        features=features,
        num_proc=data.num_proc,
        fn_kwargs=dict(tokenizer=tokenizer, data=data, eos_id=eos_id),
        new_fingerprint=fingerprint,
        desc="tokenise",
    )


@dataclass
class TokenizedData:
    """The two sides of the split, each a datasets.Dataset of fixed-length samples."""

    train: object
    validation: object
    eos_token_id: int
    num_raw: int  # rows before tokenisation
    num_dropped: int  # rows dropped (prompt fills the window, or empty response)


def build_datasets(recipe: Recipe, tokenizer) -> TokenizedData:
    """Recipe -> tokenised train/validation datasets (columns input_ids, response_start, first_anchor, length, group_id)."""
    data = recipe.data
    raw = load_raw_dataset(data)
    tokenized = tokenize_dataset(raw, tokenizer, data)
    name = ", ".join(source_paths(data))
    if len(tokenized) == 0:
        raise ConfigError(f"no sample of {name!r} fits data.seq_len={data.seq_len}: every prompt fills the window")
    train_rows, validation_rows = split_indices(tokenized["group_id"], data.validation_fraction, data.split_seed)
    if not train_rows:
        raise ConfigError(f"data.validation_fraction={data.validation_fraction} leaves no training sample of {name!r}")
    return TokenizedData(
        train=tokenized.select(train_rows),
        validation=tokenized.select(validation_rows),
        eos_token_id=eos_token_id(tokenizer, data),
        num_raw=len(raw),
        num_dropped=len(raw) - len(tokenized),
    )
