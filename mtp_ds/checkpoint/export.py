"""`mtp-ds export CHECKPOINT OUT_DIR`: a ZeRO-3 training checkpoint -> a plain Hugging Face checkpoint.

Usage:
    mtp-ds export outputs/qwen3/step00100000 outputs/qwen3-mtp            # bf16, sharded safetensors

Offline (DeepSpeed's zero_to_fp32 on CPU, no ranks), every shard through torch's safe unpickler; argument mistakes
are refused with one line before DeepSpeed or a model is touched. Why and how: docs/CHECKPOINTS.md, "Exporting".
"""

from __future__ import annotations

import argparse
import logging
import pickle
import sys
from pathlib import Path

import torch

from mtp_ds.checkpoint.safe_load import deepspeed_shard_types, refused_shard, weights_only_loads

log = logging.getLogger("mtp_ds")
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def consolidated_state_dict(checkpoint: Path, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """zero_to_fp32's state dict of the checkpoint in `dtype`, every pickle in it read with weights_only=True.

    Host memory: zero_to_fp32's lazy mode maps the shards' fp32 partitions from disk (page cache, not process
    memory) and gathers one tensor at a time; each is converted to `dtype` before the next is gathered, so its
    fp32 copy is freed at once. The peak is the result (2 bytes per parameter in bf16, 4 in fp32) plus one fp32
    tensor, instead of the whole fp32 state dict plus its converted copy (6 bytes per parameter in bf16).
    """
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    with weights_only_loads():
        try:
            lazy = get_fp32_state_dict_from_zero_checkpoint(str(checkpoint.parent), tag=checkpoint.name, lazy_mode=True)
            return _gathered(lazy, dtype)
        except (pickle.UnpicklingError, RuntimeError):  # RuntimeError: torch cannot mmap a non-zip pickle
            refused = refused_shard(checkpoint)
            if refused is None:
                raise
    shard, reason = refused
    allowed = ", ".join(kind.__name__ for kind in deepspeed_shard_types())
    raise ValueError(
        f"{shard}: refusing to unpickle it ({reason}): export reads DeepSpeed's shards with "
        f"torch.load(weights_only=True), which allows tensors, plain containers and {allowed} only"
    )


def _gathered(lazy: dict, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Each (lazy) tensor gathered once (names sharing one, e.g. tied weights, share the result), floating ones
    converted to `dtype` while only that tensor's fp32 copy is alive; integer buffers keep their dtype."""
    out, done = {}, {}
    for name, source in lazy.items():
        if id(source) not in done:
            tensor = source.contiguous()
            done[id(source)] = (source, tensor.to(dtype) if tensor.is_floating_point() else tensor)
            del tensor
        out[name] = done[id(source)][1]
    return out


def _check_arguments(checkpoint: Path, out_dir: Path, dtype: str) -> None:
    """What is wrong with the arguments, as a one-line ValueError, before DeepSpeed or any model is touched."""
    from mtp_ds.checkpoint.store import COMPLETE

    if dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    existing = next(path for path in (out_dir, *out_dir.parents) if path.exists())
    if not existing.is_dir():
        where = "is an existing file" if existing == out_dir else f"is inside {str(existing)!r}, an existing file"
        raise ValueError(f"OUT_DIR {str(out_dir)!r} {where}, not a directory")
    if not (checkpoint / COMPLETE).exists():
        raise ValueError(f"CHECKPOINT {str(checkpoint)!r} is not a complete mtp-ds checkpoint (no {COMPLETE} file)")
    if not (checkpoint / "hf" / "config.json").is_file():
        raise ValueError(
            f"CHECKPOINT {str(checkpoint)!r} has {COMPLETE} but no hf/ folder with config.json (the "
            "model config with mtp_token_id and the tokenizer, saved with every mtp-ds checkpoint)"
        )


def export_checkpoint(
    checkpoint: str | Path, out_dir: str | Path, *, dtype: str = "bfloat16", max_shard_size: str = "5GB"
) -> Path:
    """Consolidate, load into the HF class of the checkpoint's config, and save_pretrained."""
    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    _check_arguments(checkpoint, out_dir, dtype)
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from mtp_ds.objective import HiddenStatesModel

    config = AutoConfig.from_pretrained(checkpoint / "hf")
    if getattr(config, "mtp_token_id", None) is None:
        raise ValueError(f"{checkpoint / 'hf' / 'config.json'} has no mtp_token_id")
    prefix = HiddenStatesModel.PREFIX  # the trainer's engine wraps the HF model
    state_dict = {
        name.removeprefix(prefix): value for name, value in consolidated_state_dict(checkpoint, DTYPES[dtype]).items()
    }
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(state_dict, strict=False, assign=True)
    del state_dict  # the model holds the tensors now
    model.tie_weights()
    # A tied output embedding is stored once (as the input embedding); nothing else may be missing.
    output_key = (
        next(name for name, module in model.named_modules() if module is model.get_output_embeddings()) + ".weight"
    )
    still_missing = [name for name in missing if not (config.tie_word_embeddings and name == output_key)]
    if unexpected or still_missing:
        raise RuntimeError(
            f"checkpoint does not match its config: missing {still_missing[:3]}, unexpected {unexpected[:3]}"
        )
    model = model.to(DTYPES[dtype])
    model.config.torch_dtype = DTYPES[dtype]
    model.config.use_cache = True
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, max_shard_size=max_shard_size, safe_serialization=True)
    AutoTokenizer.from_pretrained(checkpoint / "hf").save_pretrained(out_dir)
    return out_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mtp-ds export", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="a checkpoint directory, e.g. outputs/run/step00001000")
    parser.add_argument("out_dir")
    parser.add_argument("--dtype", default="bfloat16", choices=sorted(DTYPES))
    parser.add_argument("--max-shard-size", default="5GB")
    args = parser.parse_args(argv)
    try:
        out = export_checkpoint(args.checkpoint, args.out_dir, dtype=args.dtype, max_shard_size=args.max_shard_size)
    except ValueError as error:
        print(f"mtp-ds export: {error}", file=sys.stderr)
        return 2
    print(f"exported {args.checkpoint} -> {out} ({args.dtype})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
