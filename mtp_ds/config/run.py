"""The run plan: everything a training run derives from its recipe and its world, resolved once.

Why: the DeepSpeed JSON, the teacher's settings, the gradient-accumulation count, the load dtype, the attention
kernel and the packing numbers each follow from (recipe, world size, device type). `plan_run` computes all of
them in one place, before any process group or model exists, so a conflict stops the run with one line; the
trainer then reads the plan and never the raw sections again (`k_max` walks recipe -> plan.packing ->
sampler / pack / objective -> the exported config.json -> the decoder).
"""

from __future__ import annotations

from dataclasses import dataclass

from mtp_ds.config.deepspeed_json import (
    gradient_accumulation_steps,
    resolve_deepspeed_config,
    resolve_model_dtype,
    resolve_teacher_config,
)
from mtp_ds.config.recipe import effective_config
from mtp_ds.config.schema import Recipe

FLEX_BLOCK = 128  # FlexAttention's default block size (torch.nn.attention.flex_attention)


@dataclass(frozen=True)
class PackingPlan:
    """What `layout.pack` and the (k, offset) sampler need: the packing section with `num_regions` resolved."""

    k_min: int
    k_max: int
    static_k: int | None
    per_sequence_k: bool
    bidirectional: bool
    num_regions: int  # R = packing.num_regions or data.seq_len // (2 * k_max)
    pad_to: int | None = None  # every packed batch padded to this length (FlexAttention: one compiled shape)

    @classmethod
    def from_recipe(cls, recipe: Recipe, *, attn_implementation: str = "sdpa") -> PackingPlan:
        packing = recipe.packing
        pad_to = None
        if attn_implementation == "flex_attention":
            # the longest packed sequence, N + R*(k_max-1), rounded up to FlexAttention's 128-token block: the
            # packed length changes with k every step, and a compiled kernel would recompile for each new one
            longest = recipe.data.seq_len + recipe.num_regions * (packing.k_max - 1)
            pad_to = -(-longest // FLEX_BLOCK) * FLEX_BLOCK
        return cls(
            k_min=packing.k_min,
            k_max=packing.k_max,
            static_k=packing.static_k,
            per_sequence_k=packing.per_sequence_k,
            bidirectional=packing.bidirectional,
            num_regions=recipe.num_regions,
            pad_to=pad_to,
        )


@dataclass(frozen=True)
class RunPlan:
    world_size: int
    device_type: str  # "cuda" or "cpu"
    gradient_accumulation_steps: int
    deepspeed: dict  # the student's resolved DeepSpeed config (deepspeed.initialize)
    teacher: dict  # the teacher's settings for its mode (see resolve_teacher_config)
    dtype: str  # torch dtype name the models load in
    attn_implementation: str  # the HF attention kernel of both models
    packing: PackingPlan

    def effective_config(self, recipe: Recipe) -> dict:
        """What every checkpoint saves next to its weights (see mtp_ds.config.recipe.effective_config)."""
        return effective_config(
            recipe,
            self.deepspeed,
            world_size=self.world_size,
            device_type=self.device_type,
            teacher_deepspeed=self.teacher,
            gradient_accumulation_steps=self.gradient_accumulation_steps,
        )


def resolve_attn_implementation(recipe: Recipe) -> str:
    """`auto` is sdpa with the dense packed mask, on every device.

    Why not FlexAttention by default: at the paper's N=160 the packed length is ~235 tokens, a 2x2 grid of
    128-token blocks, so block sparsity saves nothing, and a compiled flex kernel costs a compile. Flex is the
    opt-in for long sequences (the 1024-token ablation recipe), with the packed length padded to one bucket
    (`PackingPlan.pad_to`) so it compiles once."""
    if recipe.model.attn_implementation != "auto":
        return recipe.model.attn_implementation
    return "sdpa"


def plan_run(recipe: Recipe, world_size: int, *, device_type: str) -> RunPlan:
    """Resolve the run; raises a one-line ConfigError on a batch, tensor-parallel or precision conflict."""
    accumulation = gradient_accumulation_steps(recipe, world_size)
    attention = resolve_attn_implementation(recipe)
    deepspeed = resolve_deepspeed_config(recipe, world_size, device_type=device_type)
    return RunPlan(
        world_size=world_size,
        device_type=device_type,
        gradient_accumulation_steps=accumulation,
        deepspeed=deepspeed,
        teacher=resolve_teacher_config(recipe, world_size, device_type=device_type),
        dtype=resolve_model_dtype(recipe, deepspeed),
        attn_implementation=attention,
        packing=PackingPlan.from_recipe(recipe, attn_implementation=attention),
    )
