"""Loading a recipe: YAML + `key=value` overrides -> a validated `Recipe`, and the effective config saved with it.

Why: every mistake in a run's description (one YAML file + overrides) should fail before any GPU time is spent,
with one line naming the field. `load_recipe` is the only way in (the schema: `schema.py`); `effective_config` is
saved next to every checkpoint and loads back to the same recipe. Stdlib + yaml only; checks that need the world
size (batch arithmetic, DeepSpeed JSON) run in `run.py`'s `plan_run`.
"""

from __future__ import annotations

import importlib.util
import os
import re
import tempfile
from pathlib import Path

from mtp_ds.config.paths import resolve_path
from mtp_ds.config.schema import (
    DataConfig,
    ModelConfig,
    ObjectiveConfig,
    PackingConfig,
    Recipe,
    apply_overrides,
    recipe_from_dict,
)
from mtp_ds.config.values import ConfigError, yaml_load
from mtp_ds.fileio import atomic_write_text

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # "owner/name": never checked, never downloaded here
# recipe switch -> (the module it imports, pyproject's extra that installs it); none is in the default install
OPTIONAL_DEPENDENCIES = {
    "logging.tensorboard": ("tensorboard", "tensorboard"),  # torch.utils.tensorboard imports it
    "logging.wandb": ("wandb", "wandb"),
}


# ---------------------------------------------------------------- loading


def read_recipe_file(path: str | os.PathLike) -> dict:
    """Nested plain values of a recipe YAML, or of a saved effective config (its `recipe` part)."""
    import yaml

    file = resolve_path(str(path))
    if not file.is_file():
        raise ConfigError(f"recipe file {str(path)!r} does not exist")
    try:
        values = yaml_load(file.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"recipe file {str(path)!r} is not valid YAML: {error}") from None
    if not isinstance(values, dict):
        raise ConfigError(
            f"recipe file {str(path)!r} must hold a mapping of sections (model:, data:, ...), "
            f"not a YAML {type(values).__name__}"
        )
    if isinstance(values, dict) and "recipe" in values and "deepspeed" in values:
        values = values["recipe"]  # an effective config saved next to a checkpoint
    return values


def load_recipe(path: str | os.PathLike | None = None, overrides: list[str] = (), *, validate: bool = True) -> Recipe:
    """THE entry point: a recipe YAML (or saved effective config) + `key=value` overrides -> validated Recipe."""
    values = read_recipe_file(path) if path is not None else {}
    values = apply_overrides(values, list(overrides))
    recipe = recipe_from_dict(values, origin=str(path))
    if validate:
        validate_recipe(recipe)
    return recipe


def parse_cli(argv: list[str]) -> Recipe:
    """`RECIPE.yaml [key=value ...]` (what `mtp-ds train` and `python -m mtp_ds.train` receive)."""
    if not argv or "=" in argv[0]:
        raise ConfigError("usage: mtp-ds train RECIPE.yaml [section.key=value ...]")
    return load_recipe(argv[0], argv[1:])


# ---------------------------------------------------------------- validation


def _one_of(key: str, value, choices) -> None:
    if value not in choices:
        raise ConfigError(f"{key}: must be one of {', '.join(map(str, choices))}, got {value!r}")


def _at_least(key: str, value, minimum) -> None:
    if value is not None and value < minimum:
        raise ConfigError(f"{key}: must be >= {minimum}, got {value}")


def _looks_like_path(value: str) -> bool:
    """Anything but a plain hub id `owner/name` is a local path (and so must exist)."""
    return value.startswith(("/", ".", "~")) or not HUB_ID.match(value)


def _check_model(model: ModelConfig) -> None:
    if (model.name_or_path is None) == (model.tiny_config is None):
        raise ConfigError(
            "model: set exactly one of model.name_or_path (a checkpoint) and model.tiny_config (random weights)"
        )
    if (
        model.name_or_path is not None
        and not resolve_path(model.name_or_path).exists()
        and _looks_like_path(model.name_or_path)
    ):
        raise ConfigError(
            f"model.name_or_path: local path {model.name_or_path!r} does not exist (and it is not a hub id owner/name)"
        )
    if model.tiny_config is not None:
        _one_of("model.tiny_config.arch", model.tiny_config.get("arch"), ("qwen3", "llama"))
        if model.tokenizer is None:
            raise ConfigError("model.tokenizer: required with model.tiny_config (a path, hub id or builtin:word)")
    tokenizer = model.tokenizer
    if (
        tokenizer
        and not tokenizer.startswith("builtin:")
        and not resolve_path(tokenizer).exists()
        and _looks_like_path(tokenizer)
    ):
        raise ConfigError(
            f"model.tokenizer: local path {tokenizer!r} does not exist (and it is not a hub id owner/name)"
        )
    if tokenizer and tokenizer.startswith("builtin:"):
        _one_of("model.tokenizer", tokenizer, ("builtin:word",))
    _one_of("model.dtype", model.dtype, ("auto", "bfloat16", "float16", "float32"))
    _one_of("model.attn_implementation", model.attn_implementation, ("auto", "flex_attention", "sdpa", "eager"))
    _at_least("model.pad_vocab_to_multiple_of", model.pad_vocab_to_multiple_of, 1)


def _check_data(data: DataConfig) -> None:
    _one_of("data.source", data.source, ("metamathqa", "magpie", "jsonl", "parquet"))
    if data.path is None and data.source != "metamathqa":
        raise ConfigError(f"data.path: required for data.source={data.source}")
    paths = [data.path] if isinstance(data.path, str) else (data.path or [])
    for path in paths:
        local_only = data.source in ("jsonl", "parquet") or path.endswith((".jsonl", ".json", ".parquet"))
        if not resolve_path(path).exists() and (local_only or _looks_like_path(path)):
            raise ConfigError(f"data.path: file {path!r} does not exist")
        if resolve_path(path).is_dir() and not _holds_files(resolve_path(path)):
            raise ConfigError(f"data.path: directory {path!r} holds no files; put the data set's files there")
    if not 0.0 <= data.validation_fraction < 1.0:
        raise ConfigError(f"data.validation_fraction: must be in [0, 1), got {data.validation_fraction}")
    if data.prompt_template is not None and "{prompt}" not in data.prompt_template:
        raise ConfigError(f"data.prompt_template: must contain {{prompt}}, got {data.prompt_template!r}")
    if not 0.0 <= data.max_dropped_fraction <= 1.0:
        raise ConfigError(f"data.max_dropped_fraction: must be in [0, 1], got {data.max_dropped_fraction}")
    _at_least("data.seq_len", data.seq_len, 2)
    _at_least("data.max_samples", data.max_samples, 1)
    _at_least("data.num_proc", data.num_proc, 1)


def _holds_files(directory: Path) -> bool:
    """Whether a data directory holds any file outside hidden folders (stops at the first one found)."""
    for _, folders, files in os.walk(directory):
        folders[:] = [name for name in folders if not name.startswith(".")]
        if any(not name.startswith(".") for name in files):
            return True
    return False


def _check_packing(packing: PackingConfig, seq_len: int) -> None:
    _at_least("packing.k_max", packing.k_max, 1)
    if not 1 <= packing.k_min <= packing.k_max:
        raise ConfigError(f"packing.k_min: must be in [1, packing.k_max={packing.k_max}], got {packing.k_min}")
    if packing.static_k is not None and not 1 <= packing.static_k <= packing.k_max:
        raise ConfigError(f"packing.static_k: must be in [1, packing.k_max={packing.k_max}], got {packing.static_k}")
    if 2 * packing.k_max > seq_len:
        raise ConfigError(
            f"packing.k_max={packing.k_max} needs data.seq_len >= 2*k_max = {2 * packing.k_max}, got data.seq_len={seq_len}"
        )
    _at_least("packing.num_regions", packing.num_regions, 1)


def _check_objective(objective: ObjectiveConfig) -> None:
    _one_of("objective.kind", objective.kind, ("hard", "soft", "ground_truth"))
    if objective.temperature <= 0:
        raise ConfigError(f"objective.temperature: must be > 0, got {objective.temperature}")
    _at_least("objective.prefix_ntp_weight", objective.prefix_ntp_weight, 0.0)
    _at_least("objective.entropy_weight", objective.entropy_weight, 0.0)
    _at_least("objective.logits_chunk_size", objective.logits_chunk_size, 1)
    for tau in objective.accept_thresholds:
        if not 0.0 < tau <= 1.0:
            raise ConfigError(f"objective.accept_thresholds: every threshold must be in (0, 1], got {tau}")


def _check_optional_dependencies(recipe: Recipe) -> None:
    """A switched-on extra that is not installed stops here, not on rank 0 after the models have loaded."""
    for key, (module, extra) in OPTIONAL_DEPENDENCIES.items():
        section, name = key.split(".")
        if getattr(getattr(recipe, section), name) and importlib.util.find_spec(module) is None:
            raise ConfigError(
                f"{key}=true needs the {module} package, which this environment lacks: "
                f"pip install -e '.[{extra}]' (in the repository), or set {key}=false"
            )


def _check_existing_file(key: str, path: str) -> None:
    if not resolve_path(path).is_file():
        raise ConfigError(f"{key}: file {path!r} does not exist")


def validate_recipe(recipe: Recipe) -> Recipe:
    """Every check that needs no world size, no network and no weights; raises a one-line ConfigError."""
    _check_model(recipe.model)
    _check_data(recipe.data)
    _check_packing(recipe.packing, recipe.data.seq_len)
    _check_objective(recipe.objective)
    teacher, train, checkpoint = recipe.teacher, recipe.train, recipe.checkpoint
    _one_of("teacher.mode", teacher.mode, ("inference", "zero3", "replica"))
    _at_least("teacher.tp_size", teacher.tp_size, 1)
    if teacher.mode != "replica":
        _check_existing_file("teacher.ds_config", teacher.ds_config)
    for name in ("global_batch_size", "micro_batch_size", "steps", "log_every"):
        _at_least(f"train.{name}", getattr(train, name), 1)
    _at_least("train.eval_every", train.eval_every, 0)
    _at_least("train.eval_batches", train.eval_batches, 1)
    if not 0 < train.distributed_timeout_minutes < float("inf"):
        raise ConfigError(f"train.distributed_timeout_minutes: must be > 0, got {train.distributed_timeout_minutes}")
    if train.micro_batch_size > train.global_batch_size:
        raise ConfigError(
            f"train.micro_batch_size={train.micro_batch_size} is larger than train.global_batch_size={train.global_batch_size}"
        )
    _check_existing_file("train.deepspeed_config", train.deepspeed_config)
    _at_least("checkpoint.every", checkpoint.every, 0)
    _at_least("checkpoint.keep_last", checkpoint.keep_last, 0)
    _check_checkpoint(checkpoint)
    _check_optional_dependencies(recipe)
    return recipe


def _check_checkpoint(checkpoint) -> None:
    _one_of("checkpoint.on_corrupt", checkpoint.on_corrupt, ("fallback", "refuse"))
    _one_of("checkpoint.verify", checkpoint.verify, ("checksum", "size"))
    directory = Path(checkpoint.dir)
    if directory.exists() and not directory.is_dir():
        raise ConfigError(f"checkpoint.dir: {checkpoint.dir!r} is a file, not a directory")
    existing = next(parent for parent in (directory, *directory.absolute().parents) if parent.exists())
    try:  # a real probe: permission bits say nothing for root or on a read-only mount
        descriptor, probe = tempfile.mkstemp(prefix=".mtp-ds-write-probe-", dir=existing)
        os.close(descriptor)
        os.unlink(probe)
    except OSError as error:
        raise ConfigError(
            f"checkpoint.dir: {checkpoint.dir!r} is not writable ({str(existing)!r}: {error.strerror})"
        ) from None
    if checkpoint.resume not in ("auto", "never"):
        resume = resolve_path(checkpoint.resume)
        if not resume.exists():
            raise ConfigError(
                f"checkpoint.resume: must be auto, never or an existing checkpoint path, got {checkpoint.resume!r}"
            )
        if not (resume / "COMPLETE").is_file():
            raise ConfigError(
                f"checkpoint.resume: {checkpoint.resume!r} is not a complete checkpoint (no COMPLETE file)"
            )


# ---------------------------------------------------------------- effective config


def effective_config(recipe: Recipe, resolved_ds: dict, **extra) -> dict:
    """What to save next to every checkpoint: the recipe (with overrides applied) and the resolved DeepSpeed config.

    `extra` adds run facts (world_size, device_type, teacher_deepspeed, ...). `load_recipe(saved_file)` gives
    back the same Recipe.
    """
    from mtp_ds import __version__

    return {"recipe": recipe.to_dict(), "deepspeed": resolved_ds, "mtp_ds_version": __version__, **extra}


def save_effective_config(path: str | os.PathLike, config: dict) -> None:
    """Write YAML (.yaml/.yml) or JSON (anything else), atomically."""
    import json

    import yaml

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(config, sort_keys=False) if path.suffix in (".yaml", ".yml") else json.dumps(config, indent=2)
    atomic_write_text(path, text)
