"""The student: the initial checkpoint with the `<MTP>` token(s), ZeRO-3 partitioned in a DeepSpeed engine.

Order matters, and is why this module exists: the teacher is built FIRST, as a plain model (while transformers'
`HfDeepSpeedConfig` is alive every model created is ZeRO-3 partitioned, and the teacher must not be); the student
is then loaded under it (weights land partitioned, never whole on one rank), gets the `<MTP>` token (rows gathered
for the write) and is wrapped by `deepspeed.initialize` with the optimizer and LR schedule of the DeepSpeed JSON.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from dataclasses import dataclass

import torch

from mtp_ds.models.loading import load_base_model, memory_report
from mtp_ds.models.teacher import build_teacher
from mtp_ds.objective import HiddenStatesModel
from mtp_ds.tokens import MaskTokens, add_mtp_tokens

log = logging.getLogger("mtp_ds")


def gathered_for_write(parameters):
    """Full, writable parameters for the duration of the block: a no-op unless ZeRO-3 partitioned them."""
    partitioned = [p for p in parameters if hasattr(p, "ds_id")]
    if not partitioned:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(partitioned, modifier_rank=0)


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
        raise RuntimeError(
            f"vocabulary mismatch: teacher has {teacher_rows} rows, student {student_rows}, "
            f"tokenizer {base_vocab_size} tokens before the mask token(s)"
        )
    if min(mask_tokens.ids) < base_vocab_size:
        raise RuntimeError(f"mask token ids {mask_tokens.ids} overlap the teacher's vocabulary of {base_vocab_size}")


def build_models(recipe, plan, *, tokenizer, device: torch.device) -> Models:
    """Teacher first (plain), then the ZeRO-3 student with the mask token(s); see the module docstring.

    `plan`: the run's `mtp_ds.config.RunPlan` (DeepSpeed config, teacher settings, dtype, attention, k_max)."""
    import deepspeed
    from transformers.integrations import HfDeepSpeedConfig

    dtype = getattr(torch, plan.dtype)
    base_vocab_size = len(tokenizer)
    teacher_base = load_base_model(
        recipe.model,
        dtype=dtype,
        attn_implementation=plan.attn_implementation,
        vocab_size=base_vocab_size,
        seed=recipe.train.seed,
        device=device,
    )
    # random-init (tiny) models are built whole and partitioned by deepspeed.initialize: transformers 5
    # cannot run weight init under zero.Init, and a copy keeps teacher == student at step 0 exactly
    student_from_copy = copy.deepcopy(teacher_base) if recipe.model.tiny_config else None
    teacher, teacher_module = build_teacher(teacher_base, recipe.teacher, plan.teacher, device=device)
    log.info(memory_report(f"teacher built ({recipe.teacher.mode})", device))

    ds_config = plan.deepspeed
    zero_stage = ds_config.get("zero_optimization", {}).get("stage", 0)
    keep_alive = HfDeepSpeedConfig(ds_config) if zero_stage == 3 and student_from_copy is None else None
    student = student_from_copy or load_base_model(
        recipe.model,
        dtype=dtype,
        attn_implementation=plan.attn_implementation,
        vocab_size=base_vocab_size,
        seed=recipe.train.seed,
    )
    mask_tokens = add_mtp_tokens(
        tokenizer,
        student,
        distinct_slots=recipe.model.distinct_slot_tokens,
        k_max=plan.packing.k_max,
        seed=recipe.train.seed,
        gather=gathered_for_write,
        pad_to_multiple_of=recipe.model.pad_vocab_to_multiple_of,
    )
    # the block size it is trained for, carried by every checkpoint's hf/config.json and the export:
    # `mtp-ds generate` takes it as its default k_max
    student.config.mtp_k_max = plan.packing.k_max
    if recipe.model.gradient_checkpointing:
        student.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    student.config.use_cache = False
    check_teacher_and_student(teacher_module, student, mask_tokens, base_vocab_size)
    engine, *_ = deepspeed.initialize(
        model=HiddenStatesModel(student),
        config=ds_config,
        model_parameters=[p for p in student.parameters() if p.requires_grad],
    )
    del keep_alive
    log.info(memory_report(f"student engine built (ZeRO stage {zero_stage})", device))
    return Models(
        engine=engine,
        student=student,
        teacher=teacher,
        teacher_module=teacher_module,
        tokenizer=tokenizer,
        mask_tokens=mask_tokens,
        device=device,
    )
