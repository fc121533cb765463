"""`check_model_dir`: is a directory a model the decoder can load (an export, not a training checkpoint)?

`mtp-ds generate MODEL_DIR` and `lm_eval --model mtp --model_args pretrained=DIR` call it before Hugging Face
reads anything, so a training step or run directory, a folder without config.json, or a truncated or damaged
safetensors file is one line that names it and says what to do, not "Unrecognized model" or a SafetensorError
traceback. It reads file names and safetensors headers only (no weights).
"""

from __future__ import annotations

import json
from pathlib import Path

# What a training run writes (mtp_ds/checkpoint/store.py; the method room may not import it): each step directory
# holds the model config and tokenizer under hf/, the run directory names its newest complete step here.
TRAINING_STEP_CONFIG = Path("hf") / "config.json"
RUN_LATEST = "latest_complete"
SAFETENSORS_INDEX = "model.safetensors.index.json"


def check_model_dir(path: str | Path) -> None:
    """A one-line ValueError, starting with the quoted path, unless `path` is a loadable Hugging Face checkpoint
    directory: config.json present, and every safetensors file (and every shard its index names) readable."""
    path = Path(path)
    name = repr(str(path))
    if not path.is_dir():
        raise ValueError(f"{name} does not exist or is not a directory")
    if not (path / "config.json").is_file():
        if (path / TRAINING_STEP_CONFIG).is_file():
            raise ValueError(
                f"{name} is a training checkpoint (DeepSpeed shards), not a model; export it first: "
                f"mtp-ds export {path} OUT_DIR, then use OUT_DIR"
            )
        if (path / RUN_LATEST).is_file():
            step = path / (path / RUN_LATEST).read_text().strip()
            raise ValueError(
                f"{name} is a training run directory, not a model; export a checkpoint of it first: "
                f"mtp-ds export {step} OUT_DIR, then use OUT_DIR"
            )
        raise ValueError(f"{name} is not a Hugging Face model directory (no config.json)")
    for weights in _safetensors_files(path):
        _check_safetensors(weights)


def _safetensors_files(path: Path) -> list[Path]:
    files = set(path.glob("*.safetensors"))
    index = path / SAFETENSORS_INDEX
    if index.is_file():
        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (ValueError, KeyError, TypeError, AttributeError):
            raise ValueError(f"{str(index)!r} is not a safetensors index (no weight_map); export again") from None
        missing = sorted(shard for shard in shards if not (path / shard).is_file())
        if missing:
            raise ValueError(
                f"{str(path / missing[0])!r} is missing ({len(missing)} of the {len(shards)} shards "
                f"{SAFETENSORS_INDEX} names); copy or export the model again"
            )
        files.update(path / shard for shard in shards)
    return sorted(files)


def _check_safetensors(weights: Path) -> None:
    """The header parses and covers the file exactly (safetensors checks both): a copy or export cut short fails."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(weights), framework="pt"):
            pass
    except (SafetensorError, OSError) as error:
        detail = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ValueError(
            f"{str(weights)!r} is not a readable safetensors file ({detail}): it is truncated or damaged; "
            "copy or export the model again"
        ) from None
