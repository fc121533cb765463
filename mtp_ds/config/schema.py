"""The recipe's schema: one dataclass per section, each field with its default and its meaning.

Why a file of its own: these classes are the documentation of every recipe key (recipes/*.yaml use exactly
these names), and everything else in `mtp_ds.config` (loading, validation, DeepSpeed JSON, the run plan) only
reads them. Stdlib only.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

from mtp_ds.config import values as config_values


@dataclass
class ModelConfig:
    """The initial checkpoint (student and teacher both start from it)."""

    name_or_path: str | None = None  # hub id ("Qwen/Qwen3-4B-Instruct-2507") or local directory
    tiny_config: dict | None = (
        None  # instead of name_or_path: random weights from mtp_ds.models.tiny.tiny_model_config(**this); needs "arch"
    )
    tokenizer: str | None = (
        None  # tokenizer path/hub id; "builtin:word" = mtp_ds.models.tiny.word_tokenizer(); default name_or_path
    )
    dtype: str = "auto"  # auto (follow the DeepSpeed precision) | bfloat16 | float16 | float32
    attn_implementation: str = (
        "auto"  # auto (= sdpa, dense packed mask) | flex_attention (block mask; for long seq_len) | sdpa | eager
    )
    gradient_checkpointing: bool = False
    distinct_slot_tokens: bool = False  # <MTP_0>..<MTP_{k_max-1}> instead of one shared <MTP> token
    pad_vocab_to_multiple_of: int = 128  # rows after adding <MTP> (Llama: 128384, the authors'); 1: no padding


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
    chat_template: bool = (
        False  # True: tokenizer.apply_chat_template(user, assistant); False: BOS + prompt + separator + response
    )
    separator: str = "\n\n"
    prompt_template: str | None = (
        None  # chat_template off: the prompt text is this with {prompt} filled in (e.g. an lm-eval task's doc_to_text)
    )
    add_bos: bool = True  # chat_template off only; tokenizers without a BOS (Qwen3) add nothing
    eos_token: str | None = None  # end-of-sample token appended and used as padding; default tokenizer.eos_token
    seq_len: int = 160  # N: every sample is cut or EOS-padded to exactly this many tokens
    max_dropped_fraction: float = 0.5  # refuse a run where more rows than this share are not samples (dropped, skipped)
    response_only_anchors: bool = False  # True: first anchor = last prompt token, so only response tokens are targets
    max_samples: int | None = None  # keep only the first n rows of the source (debugging)
    cache_dir: str | None = None  # datasets cache (raw + tokenized); default: the datasets library's cache
    num_proc: int | None = None  # processes for tokenisation


@dataclass
class PackingConfig:
    """MTP regions per packed sequence (docs/METHOD.md section 4); see mtp_ds.layout.pack and batching.KOffsetSampler."""

    k_min: int = 2
    k_max: int = 16
    static_k: int | None = None  # ablation: always this k
    per_sequence_k: bool = False  # draw k per sequence instead of once per step
    bidirectional: bool = False  # BDA ablation: masks of a region attend each other both ways
    num_regions: int | None = None  # default data.seq_len // (2 * k_max)


@dataclass
class ObjectiveConfig:
    """What the student's k slots are trained against (docs/METHOD.md section 3)."""

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
    deepspeed_overrides: dict = field(
        default_factory=dict
    )  # deep-merged into the JSON, e.g. {scheduler: {params: {warmup_num_steps: 10}}}
    eval_every: int = 1000  # 0 = never
    eval_batches: int = 8  # global batches of the validation split per evaluation
    log_every: int = 10
    distributed_timeout_minutes: float = 30.0  # how long a rank waits in a collective (rank 0 tokenising, a save) before the job fails; DeepSpeed's default is 10


@dataclass
class CheckpointConfig:
    dir: str = "outputs/run"  # checkpoints, effective config and (by default) metrics go here
    every: int = 1000  # steps; 0 = only at the end
    keep_last: int = 3  # 0 = keep all
    resume: str = "auto"  # auto (newest intact in dir, if any) | never | path of a checkpoint
    overwrite: bool = (
        False  # a new run into a dir holding one: move the old run into <dir>/replaced/<time>/ (else refused)
    )
    on_corrupt: str = (
        "fallback"  # newest checkpoint fails its manifest: fallback (resume the newest intact one) | refuse
    )
    verify: str = "checksum"  # resume checks every file's size + SHA-256 (checksum) or size only (size)
    allow_recipe_change: bool = False  # resume though packing/objective/model/data changed since the checkpoint


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
    """Apply `section.key=value` overrides to nested plain values; see mtp_ds.config.values.apply_overrides."""
    return config_values.apply_overrides(Recipe, values, overrides)
