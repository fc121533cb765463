"""The student-forced online distillation objective (docs/METHOD.md section 3; docs/TRAINING.md).

The student proposes y' at the k slots of every region; the teacher scores them on the student-forced
sequence; each slot learns the teacher's argmax ("hard"), its distribution ("soft") or the ground truth
("ground_truth"), plus optional prefix NTP and entropy terms. Vocabulary-sized tensors exist only for
supervised rows; every term is normalised by the GLOBAL batch's supervision counts (`combine_loss`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from mtp_ds.batching import PackedBatch, model_attention_mask
from mtp_ds.layout import IGNORE_INDEX

if TYPE_CHECKING:  # imported where used: metrics is not needed to import the objective
    from mtp_ds.metrics import MetricSums

OBJECTIVE_KINDS = ("hard", "soft", "ground_truth")


@dataclass(frozen=True)
class ObjectiveConfig:
    kind: str = "hard"
    temperature: float = 1.0  # soft teacher only
    prefix_ntp_weight: float = 0.0
    entropy_weight: float = 0.0
    logits_chunk_size: int = 4096  # rows of (rows, vocab) logits alive at once
    accept_thresholds: tuple[float, ...] = (0.9, 0.8, 0.6)

    def __post_init__(self) -> None:
        if self.kind not in OBJECTIVE_KINDS:
            raise ValueError(f"objective kind must be one of {OBJECTIVE_KINDS}, got {self.kind!r}")
        if self.temperature <= 0:
            raise ValueError(f"objective temperature must be > 0, got {self.temperature}")
        if self.logits_chunk_size < 1:
            raise ValueError(f"logits_chunk_size must be >= 1, got {self.logits_chunk_size}")


# ----------------------------------------------------------------------------------------------- models --


def hidden_states(
    model: torch.nn.Module, input_ids: torch.Tensor, position_ids: torch.Tensor, attention_mask: object
) -> torch.Tensor:
    """Final (normed) hidden states (B, T, H) of a Hugging Face causal LM, without its LM head."""
    output = model.get_decoder()(
        input_ids=input_ids, position_ids=position_ids, attention_mask=attention_mask, use_cache=False
    )
    return output.last_hidden_state


class HiddenStatesModel(torch.nn.Module):
    """A causal LM whose forward returns final hidden states (B, T, H) instead of logits.

    Why: the trainer's DeepSpeed engine must run the student's forward itself (`engine(...)`): ZeRO-3 counts
    micro-steps there, and without it gradient accumulation silently keeps only the last micro-batch. Logits
    over every position would break the memory rule, so the engine runs this wrapper and the objective applies
    the LM head at supervised rows only. State-dict keys gain the prefix `causal_lm.` (export strips it)."""

    PREFIX = "causal_lm."

    def __init__(self, causal_lm: torch.nn.Module) -> None:
        super().__init__()
        self.causal_lm = causal_lm

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor, attention_mask: object) -> torch.Tensor:
        return hidden_states(self.causal_lm, input_ids, position_ids, attention_mask)


def model_dtype(model: torch.nn.Module) -> torch.dtype:
    return next(model.parameters()).dtype


def packed_hidden_states(
    model: torch.nn.Module,
    batch: PackedBatch,
    input_ids: torch.Tensor | None = None,
    *,
    bidirectional: torch.Tensor | None = None,
    forward: Callable[..., torch.Tensor] | None = None,
) -> torch.Tensor:
    """Run `model` on the packed batch (or on `input_ids` laid out like it) with the right mask kind.
    `forward(input_ids=, position_ids=, attention_mask=)`, when given, computes the hidden states instead
    (the trainer passes its DeepSpeed engine wrapping `HiddenStatesModel(model)`)."""
    mask = model_attention_mask(
        batch, model.config._attn_implementation, model_dtype(model), bidirectional=bidirectional
    )
    input_ids = batch.input_ids if input_ids is None else input_ids
    if forward is not None:
        return forward(input_ids=input_ids, position_ids=batch.position_ids, attention_mask=mask)
    return hidden_states(model, input_ids, batch.position_ids, mask)


SUPPRESSED_LOGIT = -1e9  # finite, so 0 * log 0 terms in KL and entropy stay 0 instead of NaN


def suppress_mask_tokens(logits: torch.Tensor, mask_token_ids: Sequence[int]) -> torch.Tensor:
    """Mask tokens are never a proposal, a target, or probability mass: the decoder never emits them."""
    banned = [i for i in mask_token_ids if i < logits.shape[-1]]
    if not banned:
        return logits
    logits = logits.clone()
    logits[..., banned] = SUPPRESSED_LOGIT
    return logits


# ------------------------------------------------------------------------------------------ supervision --


def slot_coordinates(batch: PackedBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(rows, regions, slots, cols) of every slot in the batch, flattened in a fixed order."""
    rows, regions, slots = batch.slot_valid.nonzero(as_tuple=True)
    return rows, regions, slots, batch.slot_index[rows, regions, slots]


def prefix_coordinates(batch: PackedBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(rows, cols, targets) of ground-truth positions outside every region whose next token is real.

    Only from each sequence's first anchor on: with response-only anchors the prompt carries no loss, as in
    SFT (and as in a teacher trained that way), so the term keeps the student's next-token behaviour where it
    decodes instead of teaching it to model prompts.
    """
    gt = (batch.region_of < 0) & batch.valid
    if batch.first_anchor is not None:
        gt &= batch.source_index >= batch.first_anchor.to(gt.device).unsqueeze(1)
    anchors = torch.zeros_like(gt)
    rows, regions, _ = batch.slot_valid[..., :1].nonzero(as_tuple=True)
    anchors[rows, batch.slot_index[rows, regions, 0]] = True
    length = int(batch.source_index.max().item()) + 2 if batch.source_index.numel() else 1
    packed_of_source = torch.full((batch.batch_size, length), -1, dtype=torch.long, device=gt.device)
    gt_rows, gt_cols = gt.nonzero(as_tuple=True)
    packed_of_source[gt_rows, batch.source_index[gt_rows, gt_cols]] = gt_cols
    candidate = gt & ~anchors
    rows, cols = candidate.nonzero(as_tuple=True)
    next_cols = packed_of_source[rows, batch.source_index[rows, cols] + 1]
    keep = next_cols >= 0
    rows, cols, next_cols = rows[keep], cols[keep], next_cols[keep]
    return rows, cols, batch.input_ids[rows, next_cols]


@dataclass(frozen=True)
class SupervisionCounts:
    """Rows each loss term supervises: the denominators of `combine_loss`."""

    slots: float  # supervised slots
    prefix: float  # prefix NTP rows (0 without the prefix term)


def supervision_counts(batch: PackedBatch, config: ObjectiveConfig) -> SupervisionCounts:
    """How many rows each loss term supervises in this micro-batch (known before any forward pass)."""
    slots = batch.slot_valid
    if config.kind == "ground_truth":
        slots = slots & (batch.target_ids != IGNORE_INDEX)
    prefix = int(prefix_coordinates(batch)[0].numel()) if config.prefix_ntp_weight > 0 else 0
    return SupervisionCounts(slots=float(int(slots.sum())), prefix=float(prefix))


def global_supervision_counts(
    micro_batches: list[PackedBatch],
    config: ObjectiveConfig,
    *,
    group: torch.distributed.ProcessGroup | None = None,
    device: torch.device | None = None,
) -> SupervisionCounts:
    """Counts summed over this rank's micro-batches of a step and all-reduced over the data-parallel group."""
    slots = prefix = 0.0
    for batch in micro_batches:
        counts = supervision_counts(batch, config)
        slots, prefix = slots + counts.slots, prefix + counts.prefix
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        packed = torch.tensor([slots, prefix], dtype=torch.float64, device=device)
        torch.distributed.all_reduce(packed, group=group)
        slots, prefix = packed[0].item(), packed[1].item()
    return SupervisionCounts(slots=slots, prefix=prefix)


Loss = TypeVar("Loss", torch.Tensor, float)


def combine_loss(
    slot_sum: Loss, entropy_sum: Loss, prefix_sum: Loss | None, counts: SupervisionCounts, config: ObjectiveConfig
) -> Loss:
    """The loss from its summed terms: (slot + entropy_weight * entropy) per supervised slot, plus
    prefix_ntp_weight * prefix NTP per prefix row. Tensors in `mtp_objective`, the logged floats in the trainer."""
    loss = (slot_sum + config.entropy_weight * entropy_sum) / max(counts.slots, 1.0)
    if config.prefix_ntp_weight > 0:
        loss = loss + config.prefix_ntp_weight * prefix_sum / max(counts.prefix, 1.0)
    return loss


# ----------------------------------------------------------------------------------------------- losses --


@dataclass
class ObjectiveOutput:
    loss: torch.Tensor  # scalar, already divided by the global counts (times loss_multiplier)
    proposals: torch.Tensor  # (S,) student argmax per slot
    targets: torch.Tensor  # (S,) target id per slot (teacher argmax for soft), IGNORE_INDEX if unsupervised
    metrics: MetricSums | None = field(repr=False, default=None)


def _slot_loss_terms(
    logits: torch.Tensor,
    hard_targets: torch.Tensor,
    teacher_log_probs: torch.Tensor | None,
    soft_rows: torch.Tensor | None,
    temperature: float,
    mask_token_ids: Sequence[int],
    entropy_grad: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-chunk sums: (slot loss, entropy). Hard rows: CE; soft rows: tau^2 * KL(teacher || student).
    The entropy is a metric only (no graph) unless `entropy_grad` (a non-zero entropy weight). Rows are
    selected by ignore_index / per-row masks, never by gathering (rows, V) copies: each boolean-indexed copy
    costs a (rows, V) gather forward and a (rows, V) scatter-add backward."""
    logits = suppress_mask_tokens(logits, mask_token_ids)
    log_probs = F.log_softmax(logits, -1)
    hard_rows = hard_targets != IGNORE_INDEX
    supervised = hard_rows
    if soft_rows is not None:
        hard_rows = hard_rows & ~soft_rows
        supervised = hard_rows | soft_rows
    entropy_source = log_probs if entropy_grad else log_probs.detach()
    entropy = -torch.where(supervised, (entropy_source.exp() * entropy_source).sum(-1), 0.0).sum()
    # reduction="sum" over no target at all is 0, still attached to the graph
    loss = F.nll_loss(
        log_probs, torch.where(hard_rows, hard_targets, IGNORE_INDEX), ignore_index=IGNORE_INDEX, reduction="sum"
    )
    if soft_rows is not None and soft_rows.any():
        student = F.log_softmax(logits / temperature, -1)[:, : teacher_log_probs.shape[-1]]
        kl = (teacher_log_probs.exp() * (teacher_log_probs - student)).sum(-1)
        loss = loss + temperature**2 * torch.where(soft_rows, kl, 0.0).sum()
    return loss, entropy


def _chunked_loss(
    head: torch.nn.Module,
    hidden: torch.Tensor,
    first_chunk_logits: torch.Tensor | None,
    hard_targets: torch.Tensor,
    teacher_log_probs: torch.Tensor | None,
    soft_rows: torch.Tensor | None,
    config: ObjectiveConfig,
    mask_token_ids: Sequence[int],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum the slot terms over row chunks; recompute each chunk's logits in backward when there are several."""
    chunk = config.logits_chunk_size
    entropy_grad = config.entropy_weight != 0
    if first_chunk_logits is not None:  # everything fitted in one chunk: reuse the logits of the proposal pass
        return _slot_loss_terms(
            first_chunk_logits,
            hard_targets,
            teacher_log_probs,
            soft_rows,
            config.temperature,
            mask_token_ids,
            entropy_grad,
        )

    def chunk_terms(
        hidden_chunk: torch.Tensor,
        targets_chunk: torch.Tensor,
        teacher_chunk: torch.Tensor | None,
        soft_chunk: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return _slot_loss_terms(
            head(hidden_chunk).float(),
            targets_chunk,
            teacher_chunk,
            soft_chunk,
            config.temperature,
            mask_token_ids,
            entropy_grad,
        )

    loss_sum = entropy_sum = hidden.sum() * 0
    for start in range(0, hidden.shape[0], chunk):
        part = slice(start, start + chunk)
        loss, entropy = checkpoint(
            chunk_terms,
            hidden[part],
            hard_targets[part],
            None if teacher_log_probs is None else teacher_log_probs[part],
            None if soft_rows is None else soft_rows[part],
            use_reentrant=False,
        )
        loss_sum, entropy_sum = loss_sum + loss, entropy_sum + entropy
    return loss_sum, entropy_sum


@torch.no_grad()
def _proposals(
    head: torch.nn.Module, hidden: torch.Tensor, banned_ids: Sequence[int], chunk_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy proposals and top-1 confidences per slot (mask tokens are never proposed)."""
    proposals, confidences = [], []
    for chunk in hidden.split(chunk_size):
        probs = F.softmax(suppress_mask_tokens(head(chunk).float(), banned_ids), -1)
        confidence, proposal = probs.max(-1)
        proposals.append(proposal)
        confidences.append(confidence)
    return torch.cat(proposals), torch.cat(confidences)


def student_forced_inputs(
    batch: PackedBatch,
    proposals: torch.Tensor,
    rows: torch.Tensor,
    regions: torch.Tensor,
    slots: torch.Tensor,
    cols: torch.Tensor,
) -> torch.Tensor:
    """The packed input ids with mask j of each region replaced by the student's proposal at slot j-1."""
    proposal_grid = torch.zeros_like(batch.slot_index)
    proposal_grid[rows, regions, slots] = proposals
    is_mask = slots >= 1
    teacher_ids = batch.input_ids.clone()
    teacher_ids[rows[is_mask], cols[is_mask]] = proposal_grid[rows[is_mask], regions[is_mask], slots[is_mask] - 1]
    return teacher_ids


def mtp_objective(
    student: torch.nn.Module,
    teacher: Callable[..., torch.Tensor] | None,
    batch: PackedBatch,
    config: ObjectiveConfig,
    *,
    mask_token_ids: Sequence[int],
    global_counts: SupervisionCounts | None = None,
    loss_multiplier: float = 1.0,
    num_slot_metrics: int | None = None,
    student_forward: Callable[..., torch.Tensor] | None = None,
) -> ObjectiveOutput:
    """Loss and metrics for one micro-batch. `teacher(batch, input_ids, rows, cols, want=, temperature=)`
    returns teacher argmax ids or log-probs at (rows, cols) (see mtp_ds.models.teacher); unused for ground_truth.

    `global_counts` defaults to this micro-batch's own counts (single micro-batch, single rank).
    `loss_multiplier` undoes an engine's own averaging (DeepSpeed divides by gradient-accumulation steps
    and averages over data-parallel ranks: pass dp_world_size * grad_accum_steps there).
    `student_forward`: see `packed_hidden_states` (a DeepSpeed engine around `HiddenStatesModel(student)`).
    """
    from mtp_ds.metrics import MetricSums

    mask_token_ids = tuple(mask_token_ids)
    counts = global_counts if global_counts is not None else supervision_counts(batch, config)
    rows, regions, slots, cols = slot_coordinates(batch)
    hidden = packed_hidden_states(student, batch, forward=student_forward)
    slot_hidden = hidden[rows, cols]
    head = student.get_output_embeddings()

    single_chunk = slot_hidden.shape[0] <= config.logits_chunk_size
    first_chunk_logits = head(slot_hidden).float() if single_chunk else None
    if single_chunk:
        with torch.no_grad():
            probs = F.softmax(suppress_mask_tokens(first_chunk_logits.detach(), mask_token_ids), -1)
            confidences, proposals = probs.max(-1)
    else:
        proposals, confidences = _proposals(head, slot_hidden, mask_token_ids, config.logits_chunk_size)

    slot_targets_gt = batch.target_ids[rows, regions, slots]
    eos_fill = batch.eos_fill[rows, regions, slots]
    teacher_log_probs = soft_rows = None
    if config.kind == "ground_truth":
        hard_targets = slot_targets_gt
        agreement_targets = slot_targets_gt
    else:
        teacher_ids = student_forced_inputs(batch, proposals, rows, regions, slots, cols)
        if bool(torch.isin(teacher_ids[batch.valid], torch.tensor(mask_token_ids, device=teacher_ids.device)).any()):
            raise RuntimeError("internal error: the teacher's input still contains a mask token id")
        if config.kind == "hard":
            teacher_argmax = teacher(batch, teacher_ids, rows, cols, want="argmax", mask_token_ids=mask_token_ids)
        else:
            teacher_log_probs = teacher(
                batch,
                teacher_ids,
                rows,
                cols,
                want="log_probs",
                mask_token_ids=mask_token_ids,
                temperature=config.temperature,
            )
            teacher_argmax = teacher_log_probs.argmax(-1)
            soft_rows = ~eos_fill  # the EOS rule: slots past the sample's EOS learn EOS outright
        hard_targets = torch.where(eos_fill, slot_targets_gt, teacher_argmax)
        agreement_targets = hard_targets

    slot_loss, entropy = _chunked_loss(
        head, slot_hidden, first_chunk_logits, hard_targets, teacher_log_probs, soft_rows, config, mask_token_ids
    )
    prefix_loss = None
    if config.prefix_ntp_weight > 0:
        prefix_rows, prefix_cols, prefix_targets = prefix_coordinates(batch)
        prefix_loss, _ = _chunked_loss(
            head,
            hidden[prefix_rows, prefix_cols],
            head(hidden[prefix_rows, prefix_cols]).float() if prefix_rows.numel() <= config.logits_chunk_size else None,
            prefix_targets,
            None,
            None,
            config,
            mask_token_ids,
        )
    loss = combine_loss(slot_loss, entropy, prefix_loss, counts, config)

    metrics = MetricSums.from_slots(
        batch,
        regions=regions,
        rows=rows,
        slots=slots,
        proposals=proposals,
        targets=agreement_targets,
        confidences=confidences,
        thresholds=config.accept_thresholds,
        num_slot_metrics=num_slot_metrics or batch.slot_index.shape[-1],
        slot_loss=slot_loss.detach(),
        entropy=entropy.detach(),
        prefix_loss=None if prefix_loss is None else prefix_loss.detach(),
    )
    return ObjectiveOutput(loss=loss * loss_multiplier, proposals=proposals, targets=agreement_targets, metrics=metrics)
