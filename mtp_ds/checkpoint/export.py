"""`mtp-ds export CHECKPOINT OUT_DIR`: a ZeRO-3 training checkpoint -> a plain Hugging Face checkpoint.

Usage:
    mtp-ds export outputs/qwen3/step00100000 outputs/qwen3-mtp            # bf16, sharded safetensors
    mtp-ds export outputs/qwen3/step00200000 outputs/qwen3-mtp --overwrite  # the old export -> OUT_DIR/replaced/

Offline (DeepSpeed's zero_to_fp32 on CPU, no ranks), every shard through torch's safe unpickler once the COMPLETE
manifest has vouched for it; argument mistakes, a damaged checkpoint and an OUT_DIR holding another model are
refused with one line before DeepSpeed or a model is touched. Why and how: docs/CHECKPOINTS.md, "Exporting".
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pickle
import sys
from pathlib import Path

import torch

from mtp_ds.checkpoint.manifest import COMPLETE, CheckpointDamaged, file_sha256, read_marker, verify
from mtp_ds.checkpoint.ownership import REPLACED_DIR, move_run_aside
from mtp_ds.checkpoint.safe_load import deepspeed_shard_types, refused_shard, weights_only_loads
from mtp_ds.fileio import atomic_write_json

log = logging.getLogger("mtp_ds")
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
VERIFY = ("checksum", "size")  # as checkpoint.verify: every file's size + SHA-256, or sizes only
EXPORT_MARKER = "mtp_ds_export.json"  # which checkpoint OUT_DIR is an export of; written before the weights


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
        except (pickle.UnpicklingError, RuntimeError, OSError, EOFError) as error:  # RuntimeError: also no mmap
            refused = refused_shard(checkpoint)
            if refused is None:
                if _has_manifest(checkpoint):  # its files are as saved: not damage, a real failure
                    raise
                reason = (str(error).splitlines() or [type(error).__name__])[0].split(". ")[0]
                raise ValueError(
                    f"CHECKPOINT {str(checkpoint)!r}: its shards cannot be read ({reason}); its {COMPLETE} has no "
                    "file manifest to name the damaged file"
                ) from None
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


def _has_manifest(checkpoint: Path) -> bool:
    try:
        return read_marker(checkpoint).get("files") is not None
    except CheckpointDamaged:
        return False


def _check_arguments(checkpoint: Path, out_dir: Path, dtype: str, verify_files: str = "checksum") -> None:
    """What is wrong with the arguments, as a one-line ValueError, before DeepSpeed or any model is touched."""
    if dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    if verify_files not in VERIFY:
        raise ValueError(f"--verify must be one of {list(VERIFY)}, got {verify_files!r}")
    try:
        existing = next(path for path in (out_dir, *out_dir.parents) if path.exists())
    except OSError as error:  # e.g. a name longer than the file system allows
        raise ValueError(f"cannot write the export into OUT_DIR {str(out_dir)!r}: {error}") from None
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
    if not os.access(existing, os.W_OK | os.X_OK):  # also False for root on a read-only mount
        raise ValueError(
            f"OUT_DIR {str(out_dir)!r} cannot be written: {str(existing)!r} is not writable (read-only, or not "
            "yours); choose another OUT_DIR"
        )


def _checkpoint_identity(checkpoint: Path) -> dict:
    """What OUT_DIR's marker records: the checkpoint's path, run, step and the SHA-256 of its COMPLETE (with a
    manifest, that names every file's bytes: the same checkpoint, wherever it was moved)."""
    try:
        marker = read_marker(checkpoint)
    except CheckpointDamaged:
        marker = {}  # the manifest's check names it
    return {
        "checkpoint": str(checkpoint.resolve()),
        "run_id": marker.get("run_id"),
        "step": marker.get("step"),
        "complete_sha256": file_sha256(checkpoint / COMPLETE),
    }


def _recorded_export(out_dir: Path) -> dict | None:
    try:
        recorded = json.loads((out_dir / EXPORT_MARKER).read_text())
    except (OSError, ValueError):
        return None
    return recorded if isinstance(recorded, dict) else None


def _check_out_dir(checkpoint: Path, out_dir: Path, identity: dict, overwrite: bool) -> bool:
    """One-line ValueError where exporting into `out_dir` could lose a model or the checkpoint itself; True
    where it holds another model that `overwrite` moves aside (into OUT_DIR/replaced/, as training does)."""
    source, target = checkpoint.resolve(), out_dir.resolve()
    overlap = (
        "is the checkpoint"
        if target == source
        else "holds the checkpoint"
        if target in source.parents
        else "is inside the checkpoint"
        if source in target.parents
        else None
    )
    if overlap:
        raise ValueError(f"OUT_DIR {str(out_dir)!r} {overlap} {str(checkpoint)!r}; export outside the checkpoint")
    if not out_dir.is_dir():
        return False
    held = sorted(entry.name for entry in out_dir.iterdir() if entry.name not in (REPLACED_DIR, EXPORT_MARKER))
    recorded = _recorded_export(out_dir)
    same = (
        recorded is not None
        and recorded.get("complete_sha256") == identity["complete_sha256"]
        and (identity["run_id"] is not None or recorded.get("checkpoint") == identity["checkpoint"])
    )
    if not held or same:
        return False
    if overwrite:
        return True
    if recorded is not None:
        what = f"holds an export of another checkpoint ({recorded.get('checkpoint')})"
    else:
        listed = ", ".join(held[:3]) + (f" and {len(held) - 3} more" if len(held) > 3 else "")
        what = f"is not empty ({listed}) and is not an export of this checkpoint"
    raise ValueError(
        f"OUT_DIR {str(out_dir)!r} {what}; choose another OUT_DIR, or pass --overwrite to move what it holds "
        f"into {out_dir / REPLACED_DIR}/"
    )


def _check_manifest(checkpoint: Path, verify_files: str) -> None:
    """The checkpoint's files against its COMPLETE manifest, as resume checks them (nothing to check in a marker
    from before manifests)."""
    problems = verify(checkpoint, 0, 1, lambda value: [value], checksums=verify_files == "checksum")
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ValueError(
            f"CHECKPOINT {str(checkpoint)!r} is damaged: {problems[0]}{more}; export an intact copy or an older "
            "checkpoint"
        )


def stock_generation_config(hf_dir: Path, config):
    """What stock `model.generate` reads from the export: the base model's generation config (its EOS list and
    sampling defaults, saved with each checkpoint; else one from the model config), with the KV cache on and every
    id no token owns suppressed (`<MTP>`, the padding rows), so plain next-token decoding never emits one."""
    from transformers import GenerationConfig

    from mtp_ds.tokens import mask_tokens_from_config

    if (hf_dir / "generation_config.json").is_file():
        generation = GenerationConfig.from_pretrained(hf_dir)
    else:
        generation = GenerationConfig.from_model_config(config)
    generation.use_cache = True
    generation.suppress_tokens = sorted(
        {*(generation.suppress_tokens or ()), *mask_tokens_from_config(config).never_emitted}
    )
    return generation


def export_checkpoint(
    checkpoint: str | Path,
    out_dir: str | Path,
    *,
    dtype: str = "bfloat16",
    max_shard_size: str = "5GB",
    overwrite: bool = False,
    verify_files: str = "checksum",
) -> Path:
    """Check, consolidate, load into the HF class of the checkpoint's config, and save_pretrained.

    OUT_DIR must be empty, or an export of this same checkpoint (its EXPORT_MARKER says so), or `overwrite`
    moves what it holds into OUT_DIR/replaced/<UTC time>/ just before the new export is written."""
    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    _check_arguments(checkpoint, out_dir, dtype, verify_files)
    identity = _checkpoint_identity(checkpoint)
    move_aside = _check_out_dir(checkpoint, out_dir, identity, overwrite)
    _check_manifest(checkpoint, verify_files)
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from mtp_ds.decoding.bundle import write_custom_generate
    from mtp_ds.decoding.hf_generate import default_decoding
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
    model.config.dtype = DTYPES[dtype]
    model.config.use_cache = True
    model.generation_config = stock_generation_config(checkpoint / "hf", model.config)
    model.config.mtp_decoding = default_decoding(model.config)  # what custom_generate runs when not told
    if not getattr(model.config, "mtp_token_ids", None):  # one shared mask token: vLLM's parallel drafting reads it
        model.config.pard_token = model.config.mtp_token_id
    tokenizer = AutoTokenizer.from_pretrained(checkpoint / "hf")
    try:
        if move_aside:
            aside = move_run_aside(out_dir)
            log.warning("mtp-ds export --overwrite: moved what was in %s to %s", out_dir, aside)
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out_dir / EXPORT_MARKER, {**identity, "dtype": dtype}, indent=1)
        model.save_pretrained(out_dir, max_shard_size=max_shard_size, safe_serialization=True)
        tokenizer.save_pretrained(out_dir)
        write_custom_generate(out_dir)
    except OSError as error:  # a read-only mount, a full disk, something in the way
        raise ValueError(f"cannot write the export into OUT_DIR {str(out_dir)!r}: {error}") from None
    return out_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mtp-ds export", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="a checkpoint directory, e.g. outputs/run/step00001000")
    parser.add_argument("out_dir")
    parser.add_argument("--dtype", default="bfloat16", choices=sorted(DTYPES))
    parser.add_argument("--max-shard-size", default="5GB")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="OUT_DIR holds another model: move it into OUT_DIR/replaced/<UTC time>/ (else refused)",
    )
    parser.add_argument(
        "--verify",
        default="checksum",
        choices=VERIFY,
        help="check the checkpoint's files against its COMPLETE manifest: size + SHA-256 (checksum) or size only",
    )
    args = parser.parse_args(argv)
    try:
        out = export_checkpoint(
            args.checkpoint,
            args.out_dir,
            dtype=args.dtype,
            max_shard_size=args.max_shard_size,
            overwrite=args.overwrite,
            verify_files=args.verify,
        )
    except ValueError as error:
        print(f"mtp-ds export: {error}", file=sys.stderr)
        return 2
    print(f"exported {args.checkpoint} -> {out} ({args.dtype})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
