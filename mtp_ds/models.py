"""Building the student (DeepSpeed ZeRO-3 engine) and the frozen teacher on the same ranks.

Order matters, and is why this module exists:
1. the teacher is built FIRST, as a plain model: while transformers' `HfDeepSpeedConfig` is alive every model
   created is ZeRO-3 partitioned, and the teacher must not be;
2. the student is then loaded under `HfDeepSpeedConfig` (weights land partitioned, never whole on one rank),
   gets the `<MTP>` token (rows gathered for the write), and is wrapped by `deepspeed.initialize` with the
   optimizer and LR schedule of the user's DeepSpeed JSON.

Teacher modes: `inference` (deepspeed.init_inference; tensor parallel over `tp_size` consecutive ranks via
AutoTP, where the forward is collective: a TP group gathers its ranks' compact packed inputs, runs once, and
each rank keeps only its own slots' argmax ids or log-probs), `zero3` (an optimizer-less ZeRO-3 engine,
optionally offloading parameters to CPU) and `replica` (a plain copy per rank).
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

import torch

from mtp_ds.batching import PackedBatch
from mtp_ds.objective import HiddenStatesModel, LocalTeacher
from mtp_ds.tokens import MaskTokens, add_mtp_tokens

log = logging.getLogger("mtp_ds")


def device_for_rank(local_rank: int) -> torch.device:
    return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")


def load_base_model(model_config, *, dtype: torch.dtype, attn_implementation: str, vocab_size: int, seed: int):
    """The initial checkpoint as a plain HF model: from a hub id / local dir, or random from `tiny_config`."""
    from transformers import AutoModelForCausalLM

    if model_config.tiny_config:
        from mtp_ds.tiny import tiny_model_config

        fields = dict(model_config.tiny_config)
        arch = fields.pop("arch", "qwen3")
        fields.setdefault("vocab_size", vocab_size)
        torch.manual_seed(seed)  # identical random weights on every rank
        config = tiny_model_config(arch, **fields)
        return AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation, dtype=dtype)
    return AutoModelForCausalLM.from_pretrained(
        model_config.name_or_path, dtype=dtype, attn_implementation=attn_implementation
    )


def memory_report(label: str, device: torch.device) -> str:
    """One log line with allocated/peak accelerator memory (or process RSS on CPU)."""
    if device.type == "cuda":
        gib = 1024**3
        return (f"{label}: allocated {torch.cuda.memory_allocated(device) / gib:.2f} GiB, "
                f"peak {torch.cuda.max_memory_allocated(device) / gib:.2f} GiB")
    import resource

    return f"{label}: peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB"


# -------------------------------------------------------------------------------------------- teachers --

DESCRIPTOR_FIELDS = ("position_ids", "anchor_of", "region_of", "mask_slot", "valid")


def _gather_padded(tensor: torch.Tensor, group, world: int, pad_value) -> list[torch.Tensor]:
    """all_gather of tensors whose first two dims differ across ranks (padded, then trimmed back)."""
    import torch.distributed as dist

    shape = torch.tensor(list(tensor.shape) + [0] * (2 - tensor.dim()), device=tensor.device)
    shapes = [torch.zeros_like(shape) for _ in range(world)]
    dist.all_gather(shapes, shape, group=group)
    target = [int(max(s[d] for s in shapes)) for d in range(tensor.dim())]
    padded = torch.full(target, pad_value, dtype=tensor.dtype, device=tensor.device)
    padded[tuple(slice(0, n) for n in tensor.shape)] = tensor
    gathered = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(gathered, padded, group=group)
    return [g[tuple(slice(0, int(s[d])) for d in range(tensor.dim()))] for g, s in zip(gathered, shapes)]


class TensorParallelTeacher:
    """A teacher whose weights are split over a TP group: all its ranks must run the same forward.

    Each rank contributes its micro-batch (teacher input ids, positions, mask descriptors, slot coordinates,
    a few KB), the group runs ONE forward on the concatenation, and each rank takes back only its slots."""

    def __init__(self, module, group, *, chunk_size: int = 4096):
        import torch.distributed as dist

        self.local = LocalTeacher(module, chunk_size=chunk_size)
        self.group = group
        self.world = dist.get_world_size(group)
        self.rank = dist.get_rank(group)

    @torch.no_grad()
    def __call__(self, batch: PackedBatch, input_ids, rows, cols, *, want: str, mask_token_ids=(), temperature=1.0):
        tokens = _gather_padded(input_ids, self.group, self.world, 0)
        descriptors = {name: _gather_padded(getattr(batch, name), self.group, self.world,
                                            False if name == "valid" else 0) for name in DESCRIPTOR_FIELDS}
        all_rows = _gather_padded(rows, self.group, self.world, 0)
        all_cols = _gather_padded(cols, self.group, self.world, 0)
        length = max(t.shape[1] for t in tokens)

        def stack(parts, fill):
            return torch.cat([torch.nn.functional.pad(p, (0, length - p.shape[1]), value=fill) for p in parts])

        combined = PackedBatch(
            input_ids=stack(tokens, 0), **{name: stack(descriptors[name], False if name == "valid" else 0)
                                           for name in DESCRIPTOR_FIELDS},
            source_index=None, slot_index=None, slot_valid=None, target_ids=None, eos_fill=None, ks=[],
            bidirectional=False,
        )
        row_offsets = [0]
        for part in tokens:
            row_offsets.append(row_offsets[-1] + part.shape[0])
        combined_rows = torch.cat([r + row_offsets[i] for i, r in enumerate(all_rows)])
        outputs = self.local(combined, combined.input_ids, combined_rows, torch.cat(all_cols), want=want,
                             mask_token_ids=mask_token_ids, temperature=temperature)
        start = sum(r.numel() for r in all_rows[: self.rank])
        return outputs[start: start + rows.numel()]


def tensor_parallel_group(tp_size: int):
    """Consecutive ranks [i*tp, (i+1)*tp) form one TP group (GPUs of one node with the launch scripts)."""
    import torch.distributed as dist

    world, rank = dist.get_world_size(), dist.get_rank()
    if world % tp_size:
        raise ValueError(f"teacher.tp_size={tp_size} must divide the world size {world}")
    mine = None
    for start in range(0, world, tp_size):
        group = dist.new_group(list(range(start, start + tp_size)))  # every rank creates every group
        if start <= rank < start + tp_size:
            mine = group
    return mine


def build_teacher(base_model, teacher_config, settings: dict, *, device):
    """Freeze `base_model` and wrap it for `teacher_config.mode`; returns (objective's teacher, module).

    `settings` is `mtp_ds.ds_config.resolve_teacher_config(...)`: init_inference kwargs (inference), a
    DeepSpeed config (zero3), or {"dtype"} (replica)."""
    base_model.eval()
    for parameter in base_model.parameters():
        parameter.requires_grad_(False)
    mode = teacher_config.mode
    if mode == "replica":
        return LocalTeacher(base_model.to(device)), base_model
    import deepspeed

    if mode == "inference":
        tp_size = teacher_config.tp_size
        group = tensor_parallel_group(tp_size) if tp_size > 1 else None
        settings = copy.deepcopy(settings)
        settings.setdefault("replace_with_kernel_inject", False)
        if group is not None:
            settings["tensor_parallel"]["tp_group"] = group
        engine = deepspeed.init_inference(base_model, **settings)
        module = engine.module.to(device)
        teacher = TensorParallelTeacher(module, group) if group is not None else LocalTeacher(module)
        return teacher, module
    if mode == "zero3":
        engine, *_ = deepspeed.initialize(model=base_model, config=settings)
        engine.eval()
        return LocalTeacher(engine.module), engine.module
    raise ValueError(f"teacher.mode must be inference, zero3 or replica, got {mode!r}")


# -------------------------------------------------------------------------------------------- together --

@dataclass
class Models:
    engine: object  # DeepSpeed engine around HiddenStatesModel(student): run the student's forward through it
    student: torch.nn.Module  # the HF causal LM inside the engine (config, LM head, save_pretrained)
    teacher: object  # callable for mtp_ds.objective.mtp_objective
    teacher_module: torch.nn.Module
    tokenizer: object
    mask_tokens: MaskTokens
    device: torch.device


def check_teacher_and_student(teacher_module, student_module, mask_tokens: MaskTokens, base_vocab_size: int):
    """Start-up assertions: frozen teacher, matching vocabularies (student = teacher + mask rows)."""
    trainable = [name for name, p in teacher_module.named_parameters() if p.requires_grad]
    if trainable:
        raise RuntimeError(f"teacher has trainable parameters: {trainable[:3]}")
    teacher_rows = int(teacher_module.config.vocab_size)
    student_rows = int(student_module.config.vocab_size)
    if teacher_rows < base_vocab_size or student_rows < teacher_rows:
        raise RuntimeError(f"vocabulary mismatch: teacher has {teacher_rows} rows, student {student_rows}, "
                           f"tokenizer {base_vocab_size} tokens before the mask token(s)")
    if min(mask_tokens.ids) < base_vocab_size:
        raise RuntimeError(f"mask token ids {mask_tokens.ids} overlap the teacher's vocabulary of {base_vocab_size}")


def build_models(recipe, ds_config: dict, teacher_settings: dict, *, tokenizer, dtype: torch.dtype,
                 attn_implementation: str, device: torch.device) -> Models:
    """Teacher first (plain), then the ZeRO-3 student with the mask token(s); see the module docstring."""
    import deepspeed
    from transformers.integrations import HfDeepSpeedConfig

    base_vocab_size = len(tokenizer)
    teacher_base = load_base_model(recipe.model, dtype=dtype, attn_implementation=attn_implementation,
                                   vocab_size=base_vocab_size, seed=recipe.train.seed)
    # random-init (tiny) models are built whole and partitioned by deepspeed.initialize: transformers 5
    # cannot run weight init under zero.Init, and a copy keeps teacher == student at step 0 exactly
    student_from_copy = copy.deepcopy(teacher_base) if recipe.model.tiny_config else None
    teacher, teacher_module = build_teacher(teacher_base, recipe.teacher, teacher_settings, device=device)
    log.info(memory_report(f"teacher built ({recipe.teacher.mode})", device))

    zero_stage = ds_config.get("zero_optimization", {}).get("stage", 0)
    keep_alive = HfDeepSpeedConfig(ds_config) if zero_stage == 3 and student_from_copy is None else None
    student = student_from_copy or load_base_model(recipe.model, dtype=dtype, attn_implementation=attn_implementation,
                                                   vocab_size=base_vocab_size, seed=recipe.train.seed)
    mask_tokens = add_mtp_tokens(tokenizer, student, distinct_slots=recipe.model.distinct_slot_tokens,
                                 k_max=recipe.packing.k_max, seed=recipe.train.seed)
    if recipe.model.gradient_checkpointing:
        student.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    student.config.use_cache = False
    check_teacher_and_student(teacher_module, student, mask_tokens, base_vocab_size)
    engine, *_ = deepspeed.initialize(model=HiddenStatesModel(student), config=ds_config,
                                      model_parameters=[p for p in student.parameters() if p.requires_grad])
    del keep_alive
    log.info(memory_report(f"student engine built (ZeRO stage {zero_stage})", device))
    return Models(engine=engine, student=student, teacher=teacher, teacher_module=teacher_module, tokenizer=tokenizer,
                  mask_tokens=mask_tokens, device=device)
