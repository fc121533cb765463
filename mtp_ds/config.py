"""The training recipe: typed sections, YAML loading, `key=value` overrides, validation, effective config.

Why: a run is described by one YAML file (recipes/*.yaml) plus a few command-line overrides, and every mistake
in it should fail before any GPU time is spent, with one line that names the field. The dataclasses below are
the schema and its documentation; `load_recipe` is the only way in, and `effective_config` is what gets saved
next to every checkpoint (loading that file back gives the same recipe).

Stdlib + yaml only, so `import mtp_ds.config` is instant. Type checking and `key=value` parsing live in
`config_values.py`, DeepSpeed JSON handling in `ds_config.py`.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from mtp_ds import config_values
from mtp_ds.config_values import ConfigError, yaml_load  # noqa: F401 - ConfigError re-exported: the error type of every config check

REPO_ROOT = Path(__file__).resolve().parent.parent
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # "owner/name": never checked, never downloaded here


@dataclass
class ModelConfig:
    """The initial checkpoint (student and teacher both start from it)."""

    name_or_path: str | None = None  # hub id ("Qwen/Qwen3-4B-Instruct-2507") or local directory
    tiny_config: dict | None = None  # instead of name_or_path: random weights from mtp_ds.tiny.tiny_model_config(**this); needs "arch"
    tokenizer: str | None = None  # tokenizer path/hub id; "builtin:word" = mtp_ds.tiny.word_tokenizer(); default name_or_path
    dtype: str = "auto"  # auto (follow the DeepSpeed precision) | bfloat16 | float16 | float32
    attn_implementation: str = "auto"  # auto (flex_attention on GPU, sdpa on CPU) | flex_attention | sdpa | eager
    gradient_checkpointing: bool = False
    distinct_slot_tokens: bool = False  # <MTP_0>..<MTP_{k_max-1}> instead of one shared <MTP> token


@dataclass
class DataConfig:
    """Where samples come from, how they become token ids, and the seed-question-stratified split."""

    source: str = "metamathqa"  # metamathqa | magpie | jsonl | parquet
    path: str | list[str] | None = None  # hub id(s) or local file(s)/dir; metamathqa default: meta-math/MetaMathQA
    split: str = "train"  # split of the source data set; our train/validation split is made from it
    prompt_field: str | None = None  # defaults per source: metamathqa query, magpie instruction, else prompt
    response_field: str | None = None  # defaults: response
    group_field: str | None = None  # split stratum; defaults: metamathqa original_question, else the prompt itself
    conversations_field: str | None = None  # magpie: list of {from, value} turns (default "conversations" if present)
    validation_fraction: float = 0.01  # fraction of GROUPS (seed questions) held out
    split_seed: int = 0
    chat_template: bool = False  # True: tokenizer.apply_chat_template(user, assistant); False: BOS + prompt + separator + response
    separator: str = "\n\n"
    prompt_template: str | None = None  # chat_template off: the prompt text is this with {prompt} filled in (e.g. an lm-eval task's doc_to_text)
    add_bos: bool = True  # chat_template off only; tokenizers without a BOS (Qwen3) add nothing
    eos_token: str | None = None  # end-of-sample token appended and used as padding; default tokenizer.eos_token
    seq_len: int = 160  # N: every sample is cut or EOS-padded to exactly this many tokens
    response_only_anchors: bool = False  # True: first anchor = last prompt token, so only response tokens are targets
    max_samples: int | None = None  # keep only the first n rows of the source (debugging)
    cache_dir: str | None = None  # datasets cache (raw + tokenized); default: the datasets library's cache
    num_proc: int | None = None  # processes for tokenisation


@dataclass
class PackingConfig:
    """MTP regions per packed sequence (METHOD.md 4); see mtp_ds.layout.pack and batching.KOffsetSampler."""

    k_min: int = 2
    k_max: int = 16
    static_k: int | None = None  # ablation: always this k
    per_sequence_k: bool = False  # draw k per sequence instead of once per step
    bidirectional: bool = False  # BDA ablation: masks of a region attend each other both ways
    num_regions: int | None = None  # default data.seq_len // (2 * k_max)


@dataclass
class ObjectiveConfig:
    """What the student's k slots are trained against (METHOD.md 3)."""

    kind: str = "hard"  # hard (teacher argmax) | soft (KL to teacher) | ground_truth (offline MTP)
    temperature: float = 1.0  # soft teacher temperature
    prefix_ntp_weight: float = 0.0  # NTP loss (ground truth) on prefix (non-region) positions from the first anchor on
    entropy_weight: float = 0.0  # ablation: student entropy penalty
    logits_chunk_size: int | None = None  # compute lm_head/loss over this many slots at a time (memory)
    accept_thresholds: list[float] = field(default_factory=lambda: [0.9, 0.8, 0.6])  # ConfAdapt tau logged as metrics


@dataclass
class TeacherConfig:
    """The frozen teacher (a copy of the initial checkpoint)."""

    mode: str = "inference"  # inference (deepspeed.init_inference) | zero3 (ZeRO-3 engine, no optimizer) | replica (plain copy per rank)
    tp_size: int = 1  # tensor parallel degree of the inference engine
    ds_config: str = "ds_configs/teacher_inference.json"
    offload: bool = False  # zero3 mode: offload teacher params to CPU


@dataclass
class TrainConfig:
    """Batching, length and cadence. Optimizer and LR schedule live in the DeepSpeed JSON."""

    global_batch_size: int = 128  # sequences per optimizer step, over all ranks
    micro_batch_size: int = 8  # sequences per rank per forward
    steps: int = 100_000
    seed: int = 0  # k/offset draws, data order, mask-token init
    deepspeed_config: str = "ds_configs/zero3_bf16.json"
    deepspeed_overrides: dict = field(default_factory=dict)  # deep-merged into the JSON, e.g. {scheduler: {params: {warmup_num_steps: 10}}}
    eval_every: int = 1000  # 0 = never
    eval_batches: int = 8  # global batches of the validation split per evaluation
    log_every: int = 10


@dataclass
class CheckpointConfig:
    dir: str = "outputs/run"  # checkpoints, effective config and (by default) metrics go here
    every: int = 1000  # steps; 0 = only at the end
    keep_last: int = 3  # 0 = keep all
    resume: str = "auto"  # auto (latest in dir, if any) | never | path of a checkpoint


@dataclass
class LoggingConfig:
    metrics_file: str | None = None  # JSON lines; default <checkpoint.dir>/metrics.jsonl
    tensorboard: bool = False
    wandb: bool = False
    wandb_project: str = "mtp-ds"
    wandb_run_name: str | None = None


@dataclass
class Recipe:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    packing: PackingConfig = field(default_factory=PackingConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    @property
    def num_regions(self) -> int:
        return self.packing.num_regions or self.data.seq_len // (2 * self.packing.k_max)

    @property
    def metrics_file(self) -> str:
        return self.logging.metrics_file or os.path.join(self.checkpoint.dir, "metrics.jsonl")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


SECTIONS = [f.name for f in dataclasses.fields(Recipe)]


def recipe_from_dict(values: dict, origin: str = "<dict>") -> Recipe:
    """Build (not yet validate) a recipe from nested plain values."""
    return config_values.build_config(Recipe, values, origin)


def apply_overrides(values: dict, overrides: list[str]) -> dict:
    """Apply `section.key=value` overrides to nested plain values; see config_values.apply_overrides."""
    return config_values.apply_overrides(Recipe, values, overrides)


# ---------------------------------------------------------------- loading

def resolve_path(path: str) -> Path:
    """A recipe path: absolute as is; relative to the working directory if it exists there, else to the repo."""
    candidate = Path(os.path.expanduser(path))
    if candidate.is_absolute() or candidate.exists():
        return candidate
    in_repo = REPO_ROOT / candidate
    return in_repo if in_repo.exists() else candidate


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
        raise ConfigError("model: set exactly one of model.name_or_path (a checkpoint) and model.tiny_config (random weights)")
    if model.name_or_path is not None and not resolve_path(model.name_or_path).exists() and _looks_like_path(model.name_or_path):
        raise ConfigError(f"model.name_or_path: local path {model.name_or_path!r} does not exist (and it is not a hub id owner/name)")
    if model.tiny_config is not None:
        _one_of("model.tiny_config.arch", model.tiny_config.get("arch"), ("qwen3", "llama"))
        if model.tokenizer is None:
            raise ConfigError("model.tokenizer: required with model.tiny_config (a path, hub id or builtin:word)")
    tokenizer = model.tokenizer
    if tokenizer and not tokenizer.startswith("builtin:") and not resolve_path(tokenizer).exists() and _looks_like_path(tokenizer):
        raise ConfigError(f"model.tokenizer: local path {tokenizer!r} does not exist (and it is not a hub id owner/name)")
    if tokenizer and tokenizer.startswith("builtin:"):
        _one_of("model.tokenizer", tokenizer, ("builtin:word",))
    _one_of("model.dtype", model.dtype, ("auto", "bfloat16", "float16", "float32"))
    _one_of("model.attn_implementation", model.attn_implementation, ("auto", "flex_attention", "sdpa", "eager"))


def _check_data(data: DataConfig) -> None:
    _one_of("data.source", data.source, ("metamathqa", "magpie", "jsonl", "parquet"))
    if data.path is None and data.source != "metamathqa":
        raise ConfigError(f"data.path: required for data.source={data.source}")
    paths = [data.path] if isinstance(data.path, str) else (data.path or [])
    for path in paths:
        local_only = data.source in ("jsonl", "parquet") or path.endswith((".jsonl", ".json", ".parquet"))
        if not resolve_path(path).exists() and (local_only or _looks_like_path(path)):
            raise ConfigError(f"data.path: file {path!r} does not exist")
    if not 0.0 <= data.validation_fraction < 1.0:
        raise ConfigError(f"data.validation_fraction: must be in [0, 1), got {data.validation_fraction}")
    if data.prompt_template is not None and "{prompt}" not in data.prompt_template:
        raise ConfigError(f"data.prompt_template: must contain {{prompt}}, got {data.prompt_template!r}")
    _at_least("data.seq_len", data.seq_len, 2)
    _at_least("data.max_samples", data.max_samples, 1)
    _at_least("data.num_proc", data.num_proc, 1)


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
    if train.micro_batch_size > train.global_batch_size:
        raise ConfigError(
            f"train.micro_batch_size={train.micro_batch_size} is larger than train.global_batch_size={train.global_batch_size}"
        )
    _check_existing_file("train.deepspeed_config", train.deepspeed_config)
    _at_least("checkpoint.every", checkpoint.every, 0)
    _at_least("checkpoint.keep_last", checkpoint.keep_last, 0)
    if checkpoint.resume not in ("auto", "never") and not resolve_path(checkpoint.resume).exists():
        raise ConfigError(f"checkpoint.resume: must be auto, never or an existing checkpoint path, got {checkpoint.resume!r}")
    return recipe


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


def resolve_attn_implementation(recipe: Recipe, device_type: str) -> str:
    if recipe.model.attn_implementation != "auto":
        return recipe.model.attn_implementation
    return "flex_attention" if device_type == "cuda" else "sdpa"


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
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def resolve_deepspeed_config(recipe: Recipe, world_size: int, *, device_type: str) -> dict:
    """See mtp_ds.ds_config.resolve_deepspeed_config (re-exported here; imported lazily)."""
    from mtp_ds.ds_config import resolve_deepspeed_config as resolve

    return resolve(recipe, world_size, device_type=device_type)


def resolve_teacher_config(recipe: Recipe, world_size: int, *, device_type: str) -> dict:
    """See mtp_ds.ds_config.resolve_teacher_config."""
    from mtp_ds.ds_config import resolve_teacher_config as resolve

    return resolve(recipe, world_size, device_type=device_type)
