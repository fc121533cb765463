"""`custom_generate/generate.py` of every export: stock `model.generate(**inputs, custom_generate=EXPORT_DIR,
trust_remote_code=True)` decodes with this repo's batched multi-token decoder, its settings as keywords.

`mtp-ds export` copies this module and the decoding modules it imports into OUT_DIR/custom_generate/ with their
imports made relative (`mtp_ds/decoding/bundle.py`), so an export runs on torch and transformers alone. Defaults:
the export config's `mtp_decoding` (selfspec, lossless). A generation setting it cannot honour is refused by name.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from transformers.generation.utils import GenerateDecoderOnlyOutput

from mtp_ds.decoding.decoder import generate as mtp_generate
from mtp_ds.decoding.spec import DecodeSpec
from mtp_ds.tokens import as_mask_tokens, has_mask_tokens, mask_tokens_from_config

# The lossless default's K, at most the trained k_max: on the demo's model trained at k_max 8, selfspec's linear
# layout kept 5.45 tokens per pass at K=8 and was fastest at c=1 and c=16 (bench/serve.py, docs/PERFORMANCE.md);
# past the trained k_max the slots are untrained (trained at 4: 3.60 tokens per pass at K=4, 3.12 at K=8)
SELFSPEC_K_MAX = 8
# The call's decoding keywords: the DecodeSpec fields a strategy reads (sampling comes from the generation config)
DECODING_FIELDS = ("strategy", "k", "k_max", "threshold", "mask_layout", "propose_threshold", "max_groups")
# Stock generate's own defaults for what a generation config leaves unset (GenerationConfig, transformers 5)
DEFAULT_MAX_LENGTH, DEFAULT_TOP_K = 20, 50
# Generation settings that change what stock generate emits and that this decoder does not implement, with the
# values that mean "off": anything else is refused, naming the field, rather than silently ignored.
UNSUPPORTED = {
    "num_beams": (None, 1),
    "num_return_sequences": (None, 1),
    "repetition_penalty": (None, 1.0),
    "encoder_repetition_penalty": (None, 1.0),
    "no_repeat_ngram_size": (None, 0),
    "bad_words_ids": (None,),
    "min_length": (None, 0),
    "min_new_tokens": (None, 0),
    "forced_bos_token_id": (None,),
    "forced_eos_token_id": (None,),
    "begin_suppress_tokens": (None,),
    "sequence_bias": (None,),
    "guidance_scale": (None, 1.0),
    "exponential_decay_length_penalty": (None,),
    "renormalize_logits": (None, False),
    "watermarking_config": (None,),
    "penalty_alpha": (None, 0.0),
    "dola_layers": (None,),
    "prompt_lookup_num_tokens": (None,),
    "max_time": (None,),
    "token_healing": (None, False),
    "output_scores": (None, False),
    "output_logits": (None, False),
    "output_attentions": (None, False),
    "output_hidden_states": (None, False),
}
UNSUPPORTED_WHEN_SAMPLING = {
    "min_p": (None, 0.0),
    "top_h": (None,),
    "typical_p": (None, 1.0),
    "epsilon_cutoff": (None, 0.0),
    "eta_cutoff": (None, 0.0),
}
# stock generate's own arguments, passed to a custom_generate function as keywords (None when not given)
UNSUPPORTED_ARGUMENTS = (
    "logits_processor",
    "stopping_criteria",
    "prefix_allowed_tokens_fn",
    "assistant_model",
    "negative_prompt_ids",
    "negative_prompt_attention_mask",
    "synced_gpus",
)
IGNORED_ARGUMENTS = ("use_model_defaults", "use_cache")  # the decoder keeps its own KV cache


@dataclass
class MTPGenerateOutput(GenerateDecoderOnlyOutput):
    """`return_dict_in_generate=True`: stock generate's output (`sequences`) plus, per row, the tokens each forward
    pass kept, and the batched forward passes run."""

    tokens_per_pass: list[list[int]] | None = None
    num_forward_passes: int | None = None


def _refuse(message: str):
    raise ValueError(f"custom_generate (mtp-ds): {message}")


def default_decoding(config) -> dict:
    """What an export records as `mtp_decoding` (and what a config without one gets): selfspec, the lossless
    mode, at K = the smaller of SELFSPEC_K_MAX and the k_max the model was trained with."""
    trained = getattr(config, "mtp_k_max", None)
    return DecodeSpec(strategy="selfspec", k_max=min(int(trained or SELFSPEC_K_MAX), SELFSPEC_K_MAX)).settings()


def decode_spec(model, settings: dict, generation) -> DecodeSpec:
    """The `DecodeSpec` of one call: the config's `mtp_decoding` (its lossless default), then the call's keywords;
    sampling as stock generate reads its config (do_sample, temperature, top_k 50 unless set, top_p)."""
    config = model.config
    given = {key: value for key, value in settings.items() if value is not None}
    trained_k_max = getattr(config, "mtp_k_max", None)
    chosen = dict(getattr(config, "mtp_decoding", None) or default_decoding(config))
    if "strategy" in given and given["strategy"] != chosen.get("strategy"):
        chosen = {}  # another strategy: none of the default's settings carry over
    if trained_k_max and "k_max" not in chosen:
        chosen["k_max"] = int(trained_k_max)
    chosen.update(given)
    if chosen.get("strategy", "static") == "static" and "k" in chosen and "k_max" not in given:
        chosen["k_max"] = max(chosen.get("k_max", 1), chosen["k"])
    if generation.do_sample:
        top_k = DEFAULT_TOP_K if generation.top_k is None else generation.top_k
        top_p = generation.top_p
        chosen.update(
            temperature=1.0 if generation.temperature is None else float(generation.temperature),
            top_k=int(top_k) if top_k else None,  # top_k=0: no cut, as in stock generate
            top_p=float(top_p) if top_p is not None and top_p < 1.0 else None,
        )
    return DecodeSpec.from_settings(chosen)


def _check_settings(generation, arguments: dict, never_emitted: tuple[int, ...]) -> None:
    for name in UNSUPPORTED_ARGUMENTS:
        value = arguments.get(name)
        if value is not None and value is not False and not (isinstance(value, list) and not value):
            _refuse(f"{name} is not supported (the decoder reads its own logits; pass it to stock generate)")
    checked = dict(UNSUPPORTED, **(UNSUPPORTED_WHEN_SAMPLING if generation.do_sample else {}))
    for name, off in checked.items():
        value = getattr(generation, name, None)
        if value not in off:
            _refuse(f"{name}={value!r} is not supported by MTP decoding; leave it unset (or {off[-1]!r})")
    extra = sorted(set(generation.suppress_tokens or ()) - set(never_emitted))
    if extra:
        _refuse(f"suppress_tokens {extra[:5]} are not supported (the mask ids and padding rows are always suppressed)")


def generate(
    model,
    inputs: torch.Tensor | None = None,
    generation_config=None,
    streamer=None,
    *,
    mtp_token_id=None,
    tokenizer=None,
    generator: torch.Generator | None = None,
    **kwargs,
):
    """What stock `generate` returns (sequences: prompt + new tokens, finished rows padded with pad_token_id; with
    return_dict_in_generate an `MTPGenerateOutput`), decoded by the keywords among DECODING_FIELDS (`strategy`:
    static, confadapt, selfspec; `k`, `k_max`, `threshold`, `mask_layout`, `propose_threshold`, `max_groups`).

    `input_ids` (or `inputs`) left-padded per `attention_mask`; max_new_tokens / max_length, eos_token_id,
    stop_strings (with `tokenizer`), do_sample / temperature / top_k / top_p come from the call or the model's
    generation config, as stock generate reads them. `streamer`: one `put` per forward pass (one row).
    """
    decoding = {name: kwargs.pop(name) for name in DECODING_FIELDS if name in kwargs}
    input_ids = kwargs.pop("input_ids", None) if inputs is None else inputs
    attention_mask = kwargs.pop("attention_mask", None)
    arguments = {name: kwargs.pop(name, None) for name in UNSUPPORTED_ARGUMENTS}
    for name in IGNORED_ARGUMENTS:
        kwargs.pop(name, None)
    if input_ids is None:
        _refuse("pass input_ids (a left-padded (batch, length) tensor), e.g. model.generate(**tokenizer(...))")
    generation = copy.deepcopy(generation_config if generation_config is not None else model.generation_config)
    unknown = generation.update(**kwargs)
    if unknown:
        _refuse(f"unexpected argument {sorted(unknown)[0]!r}")
    if mtp_token_id is not None:
        mask_tokens = as_mask_tokens(mtp_token_id)
    elif has_mask_tokens(model.config):
        mask_tokens = mask_tokens_from_config(model.config)
    else:
        _refuse("the model config has no mtp_token_id: pass mtp_token_id=ID (the checkpoint's mask token)")
    _check_settings(generation, arguments, mask_tokens.never_emitted)
    spec = decode_spec(model, decoding, generation)
    prompt_length = input_ids.shape[1]
    if generation.max_new_tokens is not None:
        max_new_tokens = int(generation.max_new_tokens)
    else:
        max_new_tokens = max(int(generation.max_length or DEFAULT_MAX_LENGTH) - prompt_length, 0)
    eos = generation.eos_token_id
    result = mtp_generate(
        model,
        input_ids,
        spec,
        max_new_tokens=max_new_tokens,
        attention_mask=attention_mask,
        eos_token_id=eos,
        tokenizer=tokenizer,
        stop_strings=generation.stop_strings,
        generator=generator,
        mtp_token_id=mask_tokens,
        streamer=streamer,
    )
    pad = generation.pad_token_id
    if pad is None:
        pad = (eos if isinstance(eos, int) else (list(eos) or [0])[0]) if eos is not None else 0
    longest = max((len(row) for row in result.sequences), default=0)
    new = torch.full((input_ids.shape[0], longest), int(pad), dtype=input_ids.dtype, device=input_ids.device)
    for row, tokens in enumerate(result.sequences):
        new[row, : len(tokens)] = torch.tensor(tokens, dtype=input_ids.dtype)
    sequences = torch.cat([input_ids, new], dim=1)
    if not generation.return_dict_in_generate:
        return sequences
    return MTPGenerateOutput(
        sequences=sequences, tokens_per_pass=result.tokens_per_pass, num_forward_passes=result.num_forward_passes
    )
