"""The recipe: schema, `key=value` overrides, validation, DeepSpeed JSON and the run plan (stdlib + yaml only).

`load_recipe(path, overrides)` validates with one-line errors; `plan_run(recipe, world_size, device_type=...)`
resolves DeepSpeed and the teacher once per run.
"""

from mtp_ds.config.deepspeed_json import (
    gradient_accumulation_steps,
    resolve_deepspeed_config,
    resolve_model_dtype,
    resolve_teacher_config,
)
from mtp_ds.config.paths import REPO_ROOT, resolve_path
from mtp_ds.config.recipe import (
    effective_config,
    load_recipe,
    parse_cli,
    read_recipe_file,
    save_effective_config,
    validate_recipe,
)
from mtp_ds.config.run import PackingPlan, RunPlan, plan_run, resolve_attn_implementation
from mtp_ds.config.schema import (
    SECTIONS,
    CheckpointConfig,
    DataConfig,
    LoggingConfig,
    ModelConfig,
    ObjectiveConfig,
    PackingConfig,
    Recipe,
    TeacherConfig,
    TrainConfig,
    apply_overrides,
    recipe_from_dict,
)
from mtp_ds.config.values import ConfigError

__all__ = [
    "REPO_ROOT",
    "SECTIONS",
    "CheckpointConfig",
    "ConfigError",
    "DataConfig",
    "LoggingConfig",
    "ModelConfig",
    "ObjectiveConfig",
    "PackingConfig",
    "PackingPlan",
    "Recipe",
    "RunPlan",
    "TeacherConfig",
    "TrainConfig",
    "apply_overrides",
    "effective_config",
    "gradient_accumulation_steps",
    "load_recipe",
    "parse_cli",
    "plan_run",
    "read_recipe_file",
    "recipe_from_dict",
    "resolve_attn_implementation",
    "resolve_deepspeed_config",
    "resolve_model_dtype",
    "resolve_path",
    "resolve_teacher_config",
    "save_effective_config",
    "validate_recipe",
]
