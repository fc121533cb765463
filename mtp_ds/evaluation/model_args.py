"""The model args of `lm_eval --model mtp` (mtp_ds/evaluation/lm_eval_model.py): casting and checking them, each
bad one a `ModelArgError` naming it, one stderr line and exit 2 in the lm_eval CLI.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from pathlib import Path

from mtp_ds.decoding.model_dir import check_model_dir
from mtp_ds.tokens import MaskTokens, adopt_mask_tokens

CLI_PREFIX = "lm_eval --model mtp: "


class ModelArgError(ValueError):
    """A bad model arg, named in the message; one line in the lm_eval CLI (see the module docstring)."""


def model_arg(name: str, value, cast, check, requirement: str):
    """Cast a model arg (it may arrive as a string from `--model_args`); one-line error naming it."""
    try:
        value = cast(value)
    except (TypeError, ValueError):
        raise ModelArgError(f"model arg {name}={value!r}: must be {requirement}") from None
    if not check(value):
        raise ModelArgError(f"model arg {name}={value!r}: must be {requirement}")
    return value


def as_bool(value) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text not in ("true", "false", "1", "0", "yes", "no"):
        raise ValueError(text)
    return text in ("true", "1", "yes")


def check_pretrained(pretrained) -> None:
    """A loadable local model directory (`check_model_dir`: an export, not a training checkpoint, readable
    safetensors), or a hub id (Hugging Face's own rule: name or owner/name); else a one-line error.

    Without this, a missing local directory reaches Hugging Face as a hub id and fails deep in HFLM with
    "Repo id must be in the form ...", after lm-eval has set everything up; a training step directory fails
    with "Unrecognized model", a truncated export with a SafetensorError traceback."""
    if not isinstance(pretrained, (str, os.PathLike)):
        return  # a loaded model object
    if Path(pretrained).is_dir():
        try:
            check_model_dir(pretrained)
        except ValueError as error:
            raise ModelArgError(f"model arg pretrained: {error}") from None
        return
    if Path(pretrained).exists():
        return  # a file: Hugging Face says what it makes of it
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(str(pretrained))
    except HFValidationError:
        raise ModelArgError(
            f"model arg pretrained={str(pretrained)!r}: the directory does not exist (and it is "
            "not a Hugging Face hub id, name or owner/name)"
        ) from None


@contextmanager
def exit_like_argparse():
    """A ModelArgError becomes one stderr line with the CLI prefix and exit 2 (what argparse does for a bad flag)."""
    try:
        yield
    except ModelArgError as error:
        print(f"{CLI_PREFIX}{error}", file=sys.stderr)
        raise SystemExit(2) from None


def adopt_mask_tokens_arg(config, tokenizer, mtp_token_id, pretrained_name: str) -> MaskTokens | None:
    """The checkpoint's mask tokens recorded into its loaded `config` (`tokens.adopt_mask_tokens`): the config's, or
    the model arg mtp_token_id, or the tokenizer's `<MTP>` / `<|mtp_special_token_0|>`; None for a plain model."""
    if mtp_token_id is not None:
        mtp_token_id = model_arg("mtp_token_id", mtp_token_id, int, lambda v: v >= 0, "a token id (an integer >= 0)")
    try:
        return adopt_mask_tokens(config, tokenizer, mtp_token_id)
    except ValueError as error:
        raise ModelArgError(f"model arg mtp_token_id of pretrained={pretrained_name!r}: {error}") from None
