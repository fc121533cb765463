"""DeepSpeed JSON configs (ds_configs/*.json) resolved against a recipe and a world size.

Why: batch sizes are stated once, in the recipe. JSON fields set to "auto" (or absent) are filled from it; an
explicit value that disagrees is a one-line error showing both numbers, never a silent winner. Precision "auto"
is bf16 on a GPU, fp32 on CPU. The optimizer (AdamW) and LR schedule stay in the JSON's own blocks; a decaying
schedule's `total_num_steps: "auto"` becomes `train.steps`. Stdlib only; DeepSpeed itself is not imported.
"""

from __future__ import annotations

import copy
import json

from mtp_ds.config.paths import resolve_path
from mtp_ds.config.schema import Recipe
from mtp_ds.config.values import ConfigError

AUTO = "auto"


def gradient_accumulation_steps(recipe: Recipe, world_size: int) -> int:
    """global = micro * accumulation * data-parallel size; a one-line error when that cannot hold."""
    train = recipe.train
    if world_size < 1:
        raise ConfigError(f"world_size must be >= 1, got {world_size}")
    per_step = train.micro_batch_size * world_size
    if train.global_batch_size % per_step:
        raise ConfigError(
            f"train.global_batch_size={train.global_batch_size} is not divisible by train.micro_batch_size * world_size "
            f"= {train.micro_batch_size} * {world_size} = {per_step}"
        )
    if recipe.teacher.mode == "inference" and world_size % recipe.teacher.tp_size:
        raise ConfigError(f"teacher.tp_size={recipe.teacher.tp_size} does not divide world_size={world_size}")
    return train.global_batch_size // per_step


def load_json_config(path: str, key: str) -> dict:
    """A DeepSpeed JSON file as a dict; `key` is the recipe field that named it (for the error)."""
    file = resolve_path(path)
    if not file.is_file():
        raise ConfigError(f"{key}: file {path!r} does not exist")
    try:
        values = json.loads(file.read_text())
    except json.JSONDecodeError as error:
        raise ConfigError(f"{key}: {path!r} is not valid JSON: {error}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{key}: {path!r} must hold a JSON object")
    return values


def deep_merge(base: dict, updates: dict) -> dict:
    """`base` with `updates` merged in recursively (a new dict; neither argument changes)."""
    merged = copy.deepcopy(base)
    for key, value in updates.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _fill(config: dict, field: str, wanted: int, recipe_says: str, source: str) -> None:
    current = config.get(field, AUTO)
    if current == AUTO:
        config[field] = wanted
    elif current != wanted:
        raise ConfigError(
            f'{source}: {field}={current!r} conflicts with the recipe ({recipe_says} gives {wanted}); set it to "auto"'
        )


def _half_precision(device_type: str) -> bool:
    return device_type not in ("cpu", "mps")


def _fill_precision(config: dict, device_type: str) -> None:
    for block, on_gpu in (("bf16", _half_precision(device_type)), ("fp16", False)):
        section = config.get(block)
        if isinstance(section, dict) and section.get("enabled") == AUTO:
            section["enabled"] = on_gpu
    if config.get("bf16", {}).get("enabled") and config.get("fp16", {}).get("enabled"):
        raise ConfigError("deepspeed config: bf16.enabled and fp16.enabled are both true")


def _reject_leftover_auto(value, where: str, source: str) -> None:
    if value == AUTO:
        raise ConfigError(
            f'{source}: "auto" is not supported at {where or "<root>"} (only batch sizes, precision and scheduler.params.total_num_steps)'
        )
    if isinstance(value, dict):
        for key, item in value.items():
            _reject_leftover_auto(item, f"{where}.{key}" if where else key, source)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _reject_leftover_auto(item, f"{where}[{index}]", source)


def _resolve_training_json(
    recipe: Recipe, path: str, key: str, world_size: int, device_type: str, overrides: dict
) -> dict:
    source = f"deepspeed config {path}"
    config = deep_merge(load_json_config(path, key), overrides)
    accumulation = gradient_accumulation_steps(recipe, world_size)
    train = recipe.train
    _fill(config, "train_batch_size", train.global_batch_size, "train.global_batch_size", source)
    _fill(config, "train_micro_batch_size_per_gpu", train.micro_batch_size, "train.micro_batch_size", source)
    _fill(
        config,
        "gradient_accumulation_steps",
        accumulation,
        f"train.global_batch_size / (train.micro_batch_size * world_size {world_size})",
        source,
    )
    _fill_precision(config, device_type)
    scheduler_params = (config.get("scheduler") or {}).get("params") or {}
    if scheduler_params.get("total_num_steps") == AUTO:  # WarmupDecayLR / WarmupCosineLR: the run's length
        scheduler_params["total_num_steps"] = train.steps
    _reject_leftover_auto(config, "", source)
    _check_learning_rates(config, source)
    return config


def _check_learning_rates(config: dict, source: str) -> None:
    """optimizer.params.lr and the scheduler's *_lr values: numbers >= 0 (DeepSpeed itself would only fail
    after the model is built, or train on a string)."""
    places = {
        "optimizer.params": (config.get("optimizer") or {}).get("params") or {},
        "scheduler.params": (config.get("scheduler") or {}).get("params") or {},
    }
    for where, params in places.items():
        for name, value in params.items():
            if name == "lr" or name.endswith("_lr"):
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise ConfigError(f"{source}: {where}.{name} must be a number, got {value!r}")
                if value < 0:
                    raise ConfigError(f"{source}: {where}.{name} must be >= 0, got {value}")


def check_optimizer_and_scheduler(
    config: dict, source: str, *, optimizers, torch_optimizers, schedulers, torch_schedulers
) -> None:
    """The JSON's optimizer.type / scheduler.type against what DeepSpeed accepts: its own names (any case for
    optimizers) or a torch.optim / torch.optim.lr_scheduler class name. The caller passes the names (this
    module does not import DeepSpeed); `mtp_ds.train.loop` does, before the process group starts."""
    optimizer = (config.get("optimizer") or {}).get("type")
    if optimizer is not None and str(optimizer).lower() not in optimizers and optimizer not in torch_optimizers:
        raise ConfigError(
            f"{source}: optimizer.type={optimizer!r} is not a DeepSpeed optimizer "
            f"({', '.join(sorted(optimizers))}) nor a torch.optim class"
        )
    scheduler = (config.get("scheduler") or {}).get("type")
    if scheduler is not None and scheduler not in schedulers and scheduler not in torch_schedulers:
        raise ConfigError(
            f"{source}: scheduler.type={scheduler!r} is not a DeepSpeed LR schedule "
            f"({', '.join(sorted(schedulers))}) nor a torch.optim.lr_scheduler class"
        )


def resolve_deepspeed_config(recipe: Recipe, world_size: int, *, device_type: str) -> dict:
    """The student's DeepSpeed config dict for `deepspeed.initialize(config=...)`.

    Fills "auto"/absent train_batch_size, train_micro_batch_size_per_gpu, gradient_accumulation_steps from the
    recipe, bf16/fp16 `enabled: "auto"` from `device_type` ("cuda" -> bf16, "cpu" -> fp32), after merging
    `train.deepspeed_overrides`. Raises ConfigError on conflicts and on any other "auto".
    """
    return _resolve_training_json(
        recipe,
        recipe.train.deepspeed_config,
        "train.deepspeed_config",
        world_size,
        device_type,
        recipe.train.deepspeed_overrides,
    )


def resolve_teacher_config(recipe: Recipe, world_size: int, *, device_type: str) -> dict:
    """Settings for the frozen teacher, by `teacher.mode`.

    - inference: kwargs for `deepspeed.init_inference(model, **kwargs)`; `dtype: "auto"` -> "bf16" on GPU,
      "fp32" on CPU; `tensor_parallel.tp_size: "auto"` -> teacher.tp_size (an explicit other value is an error).
    - zero3: a training-style config for `deepspeed.initialize` without optimizer/scheduler (batch fields
      filled as for the student; `teacher.offload` adds CPU parameter offload).
    - replica: {"dtype": ...} only (a plain module copy per rank).
    """
    teacher = recipe.teacher
    dtype = "bf16" if _half_precision(device_type) else "fp32"
    if teacher.mode == "replica":
        return {"dtype": dtype}
    source = f"teacher deepspeed config {teacher.ds_config}"
    if teacher.mode == "zero3":
        config = _resolve_training_json(recipe, teacher.ds_config, "teacher.ds_config", world_size, device_type, {})
        config.pop("optimizer", None)
        config.pop("scheduler", None)
        if teacher.offload:
            config.setdefault("zero_optimization", {})["offload_param"] = {"device": "cpu", "pin_memory": True}
        return config
    gradient_accumulation_steps(recipe, world_size)  # checks tp_size | world_size too
    config = load_json_config(teacher.ds_config, "teacher.ds_config")
    if "train_batch_size" in config or "optimizer" in config:
        raise ConfigError(f"{source}: teacher.mode=inference needs init_inference settings, not a training config")
    if config.get("dtype", AUTO) == AUTO:
        config["dtype"] = dtype
    parallel = config.setdefault("tensor_parallel", {})
    if parallel.get("tp_size", AUTO) == AUTO:
        parallel["tp_size"] = teacher.tp_size
    elif parallel["tp_size"] != teacher.tp_size:
        raise ConfigError(
            f"{source}: tensor_parallel.tp_size={parallel['tp_size']!r} conflicts with the recipe "
            f'(teacher.tp_size gives {teacher.tp_size}); set it to "auto"'
        )
    _reject_leftover_auto(config, "", source)
    return config


def resolve_model_dtype(recipe: Recipe, resolved_ds: dict) -> str:
    """torch dtype name to load the student in: model.dtype, or (auto) the DeepSpeed precision."""
    precision = (
        "bfloat16"
        if resolved_ds.get("bf16", {}).get("enabled")
        else ("float16" if resolved_ds.get("fp16", {}).get("enabled") else "float32")
    )
    if recipe.model.dtype == AUTO:
        return precision
    if recipe.model.dtype != precision and precision != "float32":
        raise ConfigError(
            f"model.dtype={recipe.model.dtype} conflicts with the DeepSpeed precision ({precision}); use model.dtype=auto"
        )
    return recipe.model.dtype
