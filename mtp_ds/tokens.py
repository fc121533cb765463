"""The `<MTP>` mask token: adding it to a tokenizer + causal LM and finding it again later.

Why: every later stage (trainer, export, decoder, lm-eval) must agree on which ids are mask tokens without being
told. They are recorded in the model config (`mtp_token_id`; `mtp_token_ids` for distinct slot tokens), which
survives `save_pretrained` / `from_pretrained` with no custom code. New embedding rows are drawn, seeded, with the
existing rows' mean and per-dimension variance (docs/METHOD.md section 2), also for an untied output embedding.
A resize pads the rows to a multiple of 128 (aligned GPU matmuls; the authors' Llama has 128384 rows); the padding
rows (`mtp_padding_rows` in the config) are zero and, like mask tokens, never emitted nor probability mass.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

SHARED_TOKEN = "<MTP>"
VOCAB_ROW_MULTIPLE = 128  # a resized vocabulary is padded to this many rows


def slot_token_texts(k_max: int) -> list[str]:
    """Texts of the distinct per-slot mask tokens: `<MTP_0>` .. `<MTP_{k_max-1}>`."""
    return [f"<MTP_{slot}>" for slot in range(k_max)]


@dataclass(frozen=True)
class MaskTokens:
    """Which ids are mask tokens. `ids[j-1]` fills mask slot j (j = 1..k-1); one id means it is shared.
    `padding`: [start, stop) of the rows a resize added only to align the vocabulary (no token has them)."""

    ids: tuple[int, ...]
    padding: tuple[int, int] | None = field(default=None, compare=False)  # equal ids: the same mask tokens

    @property
    def never_emitted(self) -> tuple[int, ...]:
        """Every id that is never a proposal, a target or probability mass: the mask ids and the padding rows."""
        return self.ids + (tuple(range(*self.padding)) if self.padding else ())

    @property
    def distinct(self) -> bool:
        return len(self.ids) > 1

    def for_slot(self, slot: int) -> int:
        """Id of the mask token at mask slot `slot` (1-based: slot 1 is the first mask after the anchor)."""
        if not self.distinct:
            return self.ids[0]
        if slot - 1 >= len(self.ids):
            raise ValueError(f"mask slot {slot} needs more distinct mask tokens than the {len(self.ids)} defined")
        return self.ids[slot - 1]

    def ids_for_masks(self, num_masks: int) -> list[int]:
        return [self.for_slot(slot) for slot in range(1, num_masks + 1)]


def as_mask_tokens(mtp_token_id: int | list[int] | tuple[int, ...] | MaskTokens) -> MaskTokens:
    """Accept the forms callers hold: an int (shared token), a list of per-slot ids, or MaskTokens."""
    if isinstance(mtp_token_id, MaskTokens):
        return mtp_token_id
    if isinstance(mtp_token_id, bool) or mtp_token_id is None:
        raise ValueError(f"mtp_token_id must be an int or a list of ints, got {mtp_token_id!r}")
    if isinstance(mtp_token_id, int):
        ids = (mtp_token_id,)
    elif isinstance(mtp_token_id, torch.Tensor):
        ids = tuple(int(i) for i in mtp_token_id.flatten().tolist())
    else:
        ids = tuple(int(i) for i in mtp_token_id)
    if not ids or any(i < 0 for i in ids):
        raise ValueError(f"mtp_token_id must be non-negative token id(s), got {mtp_token_id!r}")
    return MaskTokens(ids)


def has_mask_tokens(config) -> bool:
    return (getattr(config, "mtp_token_ids", None) or getattr(config, "mtp_token_id", None)) is not None


def mask_tokens_from_config(config) -> MaskTokens:
    """The mask tokens recorded in a model config by `add_mtp_tokens`; a one-line error if there are none."""
    ids = getattr(config, "mtp_token_ids", None) or getattr(config, "mtp_token_id", None)
    if ids is None:
        raise ValueError(
            "model config has no mtp_token_id: this is not an MTP checkpoint "
            "(add the mask token with mtp_ds.tokens.add_mtp_tokens, or pass mtp_token_id explicitly)"
        )
    padding = getattr(config, "mtp_padding_rows", None)
    return MaskTokens(as_mask_tokens(ids).ids, tuple(padding) if padding else None)


def _existing_token_id(tokenizer, text: str) -> int | None:
    vocab = tokenizer.get_vocab()
    return vocab.get(text)


def _num_rows(weight: torch.Tensor) -> int:
    """Rows of an embedding weight, also when ZeRO-3 has partitioned it (then `ds_shape` is the full shape)."""
    return int(getattr(weight, "ds_shape", weight.shape)[0])


def _gathered(parameters, gather):
    """Full, writable parameters for the duration of the block: a no-op unless ZeRO-3 partitioned them.

    The partitioned case needs the caller's `gather` (mtp_ds.models.student.gathered_for_write): this module
    stays free of DeepSpeed."""
    import contextlib

    if not any(hasattr(p, "ds_id") for p in parameters):
        return contextlib.nullcontext()
    if gather is None:
        raise ValueError(
            "the model's embeddings are ZeRO-3 partitioned: pass gather= "
            "(mtp_ds.models.student.gathered_for_write) to add_mtp_tokens"
        )
    return gather(parameters)


def _init_rows(weight: torch.Tensor, rows: list[int], num_existing: int, generator: torch.Generator) -> None:
    """Draw `rows` of `weight` from N(mean, var) of rows [0, num_existing), per dimension."""
    with torch.no_grad():
        existing = weight[:num_existing].float()
        mean = existing.mean(dim=0)
        std = existing.std(dim=0, unbiased=False)
        # drawn by the seeded CPU generator (the same rows on every device and rank), then moved to the weight
        noise = torch.randn((len(rows), weight.shape[1]), generator=generator, dtype=torch.float32)
        weight[rows] = (mean + std * noise.to(mean.device)).to(dtype=weight.dtype)


def add_mtp_tokens(
    tokenizer,
    model,
    *,
    distinct_slots: bool = False,
    k_max: int = 16,
    seed: int = 0,
    gather=None,
    pad_to_multiple_of: int = VOCAB_ROW_MULTIPLE,
) -> MaskTokens:
    """Add `<MTP>` (or `<MTP_0>..<MTP_{k_max-1}>`) to `tokenizer` and `model`, in place; return the ids.

    `gather(parameters)`: a context manager making partitioned parameters whole and writable (needed only for a
    ZeRO-3 partitioned model). `pad_to_multiple_of`: a resize grows the rows to a multiple of it (1: max id + 1).
    Idempotent: calling it on a model whose config already records these tokens returns them unchanged.
    Raises ValueError if a token text already exists in the tokenizer with another meaning.
    """
    texts = slot_token_texts(k_max) if distinct_slots else [SHARED_TOKEN]
    recorded = getattr(model.config, "mtp_token_ids", None) or (
        [model.config.mtp_token_id] if getattr(model.config, "mtp_token_id", None) is not None else None
    )
    existing_ids = [_existing_token_id(tokenizer, text) for text in texts]
    if all(i is not None for i in existing_ids) and recorded is not None and list(recorded) == existing_ids:
        return mask_tokens_from_config(model.config)
    if recorded is not None:
        raise ValueError(
            f"model config already records mtp_token_id(s) {list(recorded)} that do not match the tokenizer's "
            f"{texts[0]}{'..' if len(texts) > 1 else ''}: refusing to add a second set of mask tokens"
        )
    for text, token_id in zip(texts, existing_ids):
        if token_id is not None:
            raise ValueError(
                f"token text {text!r} already exists in the tokenizer as id {token_id} with another meaning; "
                "rename or remove it before adding MTP mask tokens"
            )

    num_existing = len(tokenizer)  # rows of real tokens; padded rows past it are never used for statistics
    # add_tokens(special_tokens=True): never split, skipped when decoding, and leaves the tokenizer's own
    # additional_special_tokens list alone (add_special_tokens would replace it on transformers 5).
    tokenizer.add_tokens(texts, special_tokens=True)
    ids = [tokenizer.convert_tokens_to_ids(text) for text in texts]

    input_embeddings = model.get_input_embeddings()
    padding = None
    if max(ids) >= _num_rows(input_embeddings.weight):
        # Models whose embedding is padded past the tokenizer (Qwen3) already have rows for the new ids;
        # resize only when they do not, and never shrink.
        rows = -(-(max(ids) + 1) // pad_to_multiple_of) * pad_to_multiple_of
        model.resize_token_embeddings(rows, mean_resizing=False)
        input_embeddings = model.get_input_embeddings()
        padding = (max(ids) + 1, rows) if rows > max(ids) + 1 else None

    generator = torch.Generator().manual_seed(seed)
    output_embeddings = model.get_output_embeddings()
    untied = output_embeddings is not None and output_embeddings.weight is not input_embeddings.weight
    to_gather = [input_embeddings.weight] + ([output_embeddings.weight] if untied else [])
    bias = getattr(output_embeddings, "bias", None) if untied else None
    with _gathered(to_gather + ([bias] if bias is not None else []), gather):
        _init_rows(input_embeddings.weight, ids, num_existing, generator)
        if untied:
            _init_rows(output_embeddings.weight, ids, num_existing, generator)
            if bias is not None:
                with torch.no_grad():
                    bias[ids] = bias[:num_existing].mean()
        if padding is not None:
            with torch.no_grad():  # deterministic, and never read: these rows are suppressed everywhere
                for weight in to_gather:
                    weight[padding[0] : padding[1]] = 0

    model.config.mtp_token_id = ids[0]
    if distinct_slots:
        model.config.mtp_token_ids = ids
    model.config.mtp_base_vocab_size = num_existing
    if padding is not None:
        model.config.mtp_padding_rows = list(padding)
    return MaskTokens(tuple(ids), padding)


def mask_tokens_from_tokenizer(tokenizer, *, distinct_slots: bool = False, k_max: int = 16) -> MaskTokens:
    """The ids of `<MTP>` (or the per-slot tokens) in `tokenizer`; a one-line error if it lacks them."""
    texts = slot_token_texts(k_max) if distinct_slots else [SHARED_TOKEN]
    ids = [_existing_token_id(tokenizer, text) for text in texts]
    missing = [text for text, token_id in zip(texts, ids) if token_id is None]
    if missing:
        raise ValueError(
            f"tokenizer has no mask token {missing[0]!r}: add it with mtp_ds.tokens.add_mtp_tokens(tokenizer, model)"
        )
    return MaskTokens(tuple(ids))


# The mask token of the paper authors' released checkpoints (HF collection tomg-group-umd/mtp-lm): their script adds
# `<|mtp_special_token_0|>` .. `_31|>` and uses only the first, shared by every mask slot; their config.json records
# no mask id (it is passed at call time).
AUTHORS_MASK_TOKEN = "<|mtp_special_token_0|>"


def vocabulary_rows(config) -> int | None:
    """Rows of the model's embedding as its config states them (a multimodal config: its text config's)."""
    rows = getattr(config, "vocab_size", None)
    if rows is None and hasattr(config, "get_text_config"):
        rows = getattr(config.get_text_config(), "vocab_size", None)
    return int(rows) if rows is not None else None


def adopt_mask_tokens(config, tokenizer, mtp_token_id: int | None = None) -> MaskTokens | None:
    """The mask tokens of a checkpoint, recorded into `config` (in memory) so every decoder path reads them there.

    A config that records them (an mtp-ds export) wins; `mtp_token_id`, if also given, must agree. Else the id is
    `mtp_token_id`, or `<MTP>`, or the authors' `<|mtp_special_token_0|>` found in `tokenizer`; None when there is
    none (a plain causal LM). Embedding rows past the tokenizer (a resize padded to a multiple of 128) are
    padding: never emitted. One-line ValueError for a disagreeing or out-of-range id.
    """
    if has_mask_tokens(config):
        recorded = mask_tokens_from_config(config)
        if mtp_token_id is not None and as_mask_tokens(mtp_token_id).ids != recorded.ids[:1]:
            raise ValueError(
                f"mtp_token_id={mtp_token_id} disagrees with the checkpoint config's mtp_token_id="
                f"{recorded.ids[0]}; leave mtp_token_id unset (the config's is used)"
            )
        return recorded
    if mtp_token_id is None:
        mtp_token_id = _existing_token_id(tokenizer, SHARED_TOKEN)
    if mtp_token_id is None:
        mtp_token_id = _existing_token_id(tokenizer, AUTHORS_MASK_TOKEN)
    if mtp_token_id is None:
        return None
    (mask_id,) = as_mask_tokens(int(mtp_token_id)).ids
    rows = vocabulary_rows(config)
    if rows is not None and mask_id >= rows:
        raise ValueError(
            f"mtp_token_id={mask_id} is out of range: the model has {rows} vocabulary rows (ids 0..{rows - 1})"
        )
    padding = (len(tokenizer), rows) if rows is not None and rows > len(tokenizer) else None
    config.mtp_token_id = mask_id
    if padding is not None:
        config.mtp_padding_rows = list(padding)
    return MaskTokens((mask_id,), padding)
