"""`TrainState`: everything a training step reads, built once before the first step (`TrainState.build`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from mtp_ds.batching import KOffsetSampler
from mtp_ds.objective import ObjectiveConfig
from mtp_ds.train.console import RunConsole

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from mtp_ds.config import Recipe, RunPlan
    from mtp_ds.data import EpochShuffleSampler, TokenizedData
    from mtp_ds.models.student import Models
    from mtp_ds.tokens import MaskTokens


def objective_config(recipe: Recipe) -> ObjectiveConfig:
    """The recipe's `objective` section as the objective's own config."""
    settings = recipe.objective
    return ObjectiveConfig(
        kind=settings.kind,
        temperature=settings.temperature,
        prefix_ntp_weight=settings.prefix_ntp_weight,
        entropy_weight=settings.entropy_weight,
        logits_chunk_size=settings.logits_chunk_size or 4096,
        accept_thresholds=tuple(settings.accept_thresholds),
    )


@dataclass
class TrainState:
    recipe: Recipe
    plan: RunPlan  # resolved before the process group started (mtp_ds.config.plan_run)
    engine: Any  # DeepSpeed engine around HiddenStatesModel(student): the student's forward runs through it
    student: PreTrainedModel  # the HF causal LM inside the engine (config, LM head, save_pretrained)
    teacher: Callable[..., torch.Tensor]  # scores the student's proposals (mtp_ds.models.teacher)
    mask_tokens: MaskTokens
    tokenizer: PreTrainedTokenizerBase  # with the mask token(s)
    device: torch.device
    rank: int
    world_size: int
    eos_id: int  # end of a sample: data.eos_token, else the tokenizer's EOS
    pad_id: int  # the tokenizer's pad id, else eos_id
    objective: ObjectiveConfig
    k_sampler: KOffsetSampler  # (k, offset) for every sequence of a step
    effective_config: dict  # saved next to every checkpoint's weights
    data: TokenizedData | None = None  # None: batches come from elsewhere (bench/train_step.py)
    sampler: EpochShuffleSampler | None = None  # the global batches of data.train, resumable
    run_id: str | None = None  # what this run's checkpoints are saved under (mtp_ds.checkpoint.resume)

    @classmethod
    def build(
        cls,
        recipe: Recipe,
        plan: RunPlan,
        rank: int,
        local_rank: int,
        *,
        run_id: str | None = None,
        console: RunConsole | None = None,
    ) -> TrainState:
        """Everything before the first step: tokenizer, data (rank 0 first), models, samplers; each a stage of
        `console` (mtp_ds.train.console: rank 0 says it and its time)."""
        from mtp_ds.checkpoint.store import rank_zero_first
        from mtp_ds.data import build_datasets
        from mtp_ds.models.loading import device_for_rank, load_tokenizer
        from mtp_ds.models.student import build_models

        console = console or RunConsole(speak=False)
        with console.stage("tokenizer"):
            tokenizer = load_tokenizer(recipe.model)
        with console.stage("data"), rank_zero_first():  # rank 0 tokenises and fills the cache, then the others read
            data = build_datasets(recipe, tokenizer)
        with console.stage("teacher and student"):
            models = build_models(recipe, plan, tokenizer=tokenizer, device=device_for_rank(local_rank))
        return cls.from_models(recipe, plan, models, rank=rank, data=data, run_id=run_id)

    @classmethod
    def from_models(
        cls,
        recipe: Recipe,
        plan: RunPlan,
        models: Models,
        *,
        rank: int,
        data: TokenizedData | None = None,
        run_id: str | None = None,
    ) -> TrainState:
        """The state around models built by `mtp_ds.models.student.build_models`; without `data` (the bench's
        random batches) there is no epoch sampler."""
        from mtp_ds.data import EpochShuffleSampler, eos_token_id

        tokenizer, packing = models.tokenizer, plan.packing
        eos_id = data.eos_token_id if data is not None else eos_token_id(tokenizer, recipe.data)
        return cls(
            recipe=recipe,
            plan=plan,
            engine=models.engine,
            student=models.student,
            teacher=models.teacher,
            mask_tokens=models.mask_tokens,
            tokenizer=tokenizer,
            device=models.device,
            rank=rank,
            world_size=plan.world_size,
            eos_id=eos_id,
            pad_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_id,
            objective=objective_config(recipe),
            k_sampler=KOffsetSampler(
                k_min=packing.k_min,
                k_max=packing.k_max,
                static_k=packing.static_k,
                per_sequence_k=packing.per_sequence_k,
                seed=recipe.train.seed,
            ),
            effective_config=plan.effective_config(recipe),
            data=data,
            sampler=None
            if data is None
            else EpochShuffleSampler(
                len(data.train), global_batch_size=recipe.train.global_batch_size, seed=recipe.train.seed
            ),
            run_id=run_id,
        )
