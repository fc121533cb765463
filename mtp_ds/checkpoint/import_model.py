"""`mtp-ds import SOURCE OUT_DIR`: a Hugging Face MTP checkpoint made elsewhere (the paper authors' release) as one
every entry point and stock transformers read without remote code.

Usage:
    mtp-ds import SOURCE OUT_DIR [--mtp-token-id N] [--copy]

The authors' config.json records no mask id and maps AutoModel to their own modeling code (`auto_map`, which
overrides generate). OUT_DIR gets config.json with `mtp_token_id` / `mtp_padding_rows` / `mtp_decoding` recorded and
`auto_map` removed, a generation_config.json that never emits the mask id or padding rows, the tokenizer, this
repo's custom_generate/, and the weights symlinked (or copied with --copy; never loaded). SOURCE's .py files are not
copied: nothing of theirs runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import uuid
from pathlib import Path

from mtp_ds.decoding.model_dir import SAFETENSORS_INDEX, check_model_dir

CONFIG_JSON = "config.json"
TOKENIZER_CONFIG = "tokenizer_config.json"


def _weight_files(source: Path) -> list[Path]:
    files = sorted(source.glob("*.safetensors"))
    if not files:
        raise ValueError(f"SOURCE {str(source)!r} has no *.safetensors weights; convert them to safetensors first")
    index = source / SAFETENSORS_INDEX
    return files + ([index] if index.is_file() else [])


def _check_out_dir(out_dir: Path) -> None:
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ValueError(f"OUT_DIR {str(out_dir)!r} is not empty; choose a new directory (nothing was written)")


def _drop_auto_map(path: Path) -> None:
    """No `auto_map` in a written JSON file: Auto classes then never look for remote code."""
    if path.is_file():
        data = json.loads(path.read_text())
        if data.pop("auto_map", None) is not None:
            path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def import_checkpoint(source: str | Path, out_dir: str | Path, *, mtp_token_id: int | None = None, copy=False):
    """Write OUT_DIR (empty or absent) from SOURCE; returns (OUT_DIR, the mask tokens). One-line ValueError when
    SOURCE is not a model, has no mask token (and no `mtp_token_id`), or OUT_DIR holds anything."""
    source, out_dir = Path(source), Path(out_dir)
    try:
        check_model_dir(source)
    except ValueError as error:
        raise ValueError(f"SOURCE {error}") from None
    _check_out_dir(out_dir)
    weights = _weight_files(source)
    from transformers import AutoConfig, AutoTokenizer

    from mtp_ds.checkpoint.export import stock_generation_config
    from mtp_ds.decoding.bundle import write_custom_generate
    from mtp_ds.decoding.hf_generate import default_decoding
    from mtp_ds.tokens import AUTHORS_MASK_TOKEN, SHARED_TOKEN, adopt_mask_tokens

    # never trust_remote_code: the config's auto_map names code we do not run (llama / qwen3 are transformers')
    config = AutoConfig.from_pretrained(source)
    tokenizer = AutoTokenizer.from_pretrained(source)
    try:
        mask_tokens = adopt_mask_tokens(config, tokenizer, mtp_token_id)
    except ValueError as error:
        raise ValueError(f"--mtp-token-id: {error}" if mtp_token_id is not None else str(error)) from None
    if mask_tokens is None:
        raise ValueError(
            f"SOURCE {str(source)!r} has no mask token (no mtp_token_id in config.json, no {SHARED_TOKEN} or "
            f"{AUTHORS_MASK_TOKEN} in the tokenizer): pass --mtp-token-id N, the id of its mask token"
        )
    if hasattr(config, "auto_map"):
        del config.auto_map
    config.use_cache = True
    config.mtp_decoding = default_decoding(config)  # what custom_generate runs when not told (selfspec, lossless)
    config.pard_token = mask_tokens.ids[0]  # vLLM's parallel drafting reads its mask id here (as export records)
    generation = stock_generation_config(source, config)

    staging = out_dir.parent / f".{out_dir.name}.import-{uuid.uuid4().hex[:8]}"
    try:  # written aside, then renamed into place: a failed import leaves no half-made OUT_DIR
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        staging.mkdir()  # the umask's permissions (a tempfile.mkdtemp folder would be private to its owner)
        config.save_pretrained(staging)
        generation.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        for name in (CONFIG_JSON, TOKENIZER_CONFIG):
            _drop_auto_map(staging / name)
        for path in weights:
            if copy:
                shutil.copy2(path, staging / path.name)
            else:
                (staging / path.name).symlink_to(path.resolve())
        write_custom_generate(staging)
        if out_dir.exists():
            out_dir.rmdir()  # empty (checked above)
        os.replace(staging, out_dir)
    except OSError as error:
        shutil.rmtree(staging, ignore_errors=True)
        raise ValueError(f"cannot write OUT_DIR {str(out_dir)!r}: {error}") from None
    return out_dir, mask_tokens


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mtp-ds import", description=__doc__.split("\n\n")[0])
    parser.add_argument("source", metavar="SOURCE", help="a local Hugging Face checkpoint directory (a download)")
    parser.add_argument("out_dir", metavar="OUT_DIR", help="where to write the import (empty or absent)")
    parser.add_argument(
        "--mtp-token-id",
        type=int,
        default=None,
        metavar="N",
        help="the mask token's id; default: the config's mtp_token_id, else <MTP> or <|mtp_special_token_0|> in "
        "the tokenizer",
    )
    parser.add_argument("--copy", action="store_true", help="copy the weight files (default: absolute symlinks)")
    args = parser.parse_args(argv)
    try:
        out_dir, mask_tokens = import_checkpoint(
            args.source, args.out_dir, mtp_token_id=args.mtp_token_id, copy=args.copy
        )
    except ValueError as error:
        print(f"mtp-ds import: {error}", file=sys.stderr)
        return 2
    padding = f", padding rows {list(mask_tokens.padding)}" if mask_tokens.padding else ""
    print(
        f"imported {args.source} -> {out_dir} (mask token id {mask_tokens.ids[0]}{padding}); stock transformers: "
        f"AutoModelForCausalLM.from_pretrained({str(out_dir)!r}).generate(**inputs, "
        f"custom_generate={str(out_dir)!r}, trust_remote_code=True)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
