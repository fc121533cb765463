"""Self-speculative ("selfspec") decoding: the MTP model verifies its own proposals in the pass that makes the next.

Why: Static k and ConfAdapt keep mask-slot predictions unchecked and lose accuracy (the paper: -1.9 to -5.5
points at ConfAdapt 0.9). Here the mask slots only PROPOSE; the next pass feeds the proposals as ordinary tokens,
and the model's next-token prediction at each fed token checks the proposal after it. Every kept token is the
model's own causal prediction given the kept prefix, so greedy selfspec equals the same model's k=1 greedy
decoding token for token (and speculative sampling makes sampled output distributed exactly as k=1 sampling).
No draft model, no extra weights: one checkpoint, one forward per pass.

One pass per row feeds `ground` = [last kept token, q_1 .. q_m] (the proposals; read by the model like the
ground-truth stream in training) and groups of mask tokens; a group anchored at ground column j proposes what
follows the token the model predicts at column j. The layouts (`MASK_LAYOUTS`):
- "linear": one group, after the last proposal; a rejection leaves the next pass with no proposals.
- "per_proposal": a group after every ground column (the packed training layout with an anchor at every
  proposal), so whichever prefix is accepted, its continuation's proposals are already computed.
Attention among the new tokens is `mtp_ds.layout`'s rule (ground causal; a group sees ground up to its anchor
and its own earlier masks), through the decoder's 4D mask. Kept: the longest verified prefix plus the model's
correction (or bonus) token; the cache keeps the entries of the verified prefix only (`BatchDecoder.keep_prefixes`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mtp_ds.decoding.passes import BatchDecoder
from mtp_ds.decoding.readout import draw, sampling_probs, without_mask_ids
from mtp_ds.decoding.result import RowState, finish_block, keep_block
from mtp_ds.layout import dense_attention_mask

MASK_LAYOUTS = ("linear", "per_proposal")
DEFAULT_MASK_LAYOUT = "linear"


@dataclass
class VerifyPass:
    """The inputs of one verify-and-propose pass, (B, width) host lists, and where each row's groups sit."""

    input_ids: list[list[int]]
    positions: list[list[int]]
    valid: list[list[int]]
    anchor_of: list[list[int]]
    region_of: list[list[int]]
    mask_slot: list[list[int]]
    ground_counts: list[int]  # per row: 1 + proposals fed
    group_column: list[dict[int, int]]  # per row: ground column -> input column of the first mask anchored there

    @property
    def width(self) -> int:
        return len(self.input_ids[0])


def build_verify_pass(
    rows: list[RowState], num_masks: int, layout: str, mask_ids: list[int], pad_id: int
) -> VerifyPass:
    """Columns: every row's ground tokens, right-padded to the longest, then the mask groups (padded alike)."""
    ground_width = max(len(row.pending) for row in rows)
    groups = (1 if layout == "linear" else ground_width) if num_masks else 0
    width = ground_width + groups * num_masks
    planes = VerifyPass([], [], [], [], [], [], [], [])
    for row in rows:
        ground, start = row.pending, row.next_position
        ids, positions, valid = [pad_id] * width, [0] * width, [0] * width
        anchor_of, region_of, mask_slot = [0] * width, [-1] * width, [0] * width
        for column, token in enumerate(ground):
            ids[column], positions[column], valid[column], anchor_of[column] = token, start + column, 1, start + column
        anchors = ([len(ground) - 1] if layout == "linear" else list(range(len(ground)))) if num_masks else []
        group_column = {}
        for anchor in anchors:
            first = ground_width + (0 if layout == "linear" else anchor * num_masks)
            group_column[anchor] = first
            for slot in range(1, num_masks + 1):
                column = first + slot - 1
                ids[column], positions[column], valid[column] = mask_ids[slot - 1], start + anchor + slot, 1
                anchor_of[column], region_of[column], mask_slot[column] = start + anchor, anchor, slot
        for plane, values in zip(
            (planes.input_ids, planes.positions, planes.valid, planes.anchor_of, planes.region_of, planes.mask_slot),
            (ids, positions, valid, anchor_of, region_of, mask_slot),
        ):
            plane.append(values)
        planes.ground_counts.append(len(ground))
        planes.group_column.append(group_column)
    return planes


def run_verify_pass(decoder: BatchDecoder, plan: VerifyPass, causal: bool) -> torch.Tensor:
    """One forward over the pass's columns; (B, width, V) logits. The cache keeps nothing new until
    `decoder.keep_prefixes` says how much of each row was verified."""
    tensors = torch.tensor(
        [plan.input_ids, plan.positions, plan.valid, plan.anchor_of, plan.region_of, plan.mask_slot],
        device=decoder.device,
    )
    ids, positions, valid = tensors[0], tensors[1], tensors[2].bool()
    if causal:  # ground then one group, same length in every row, cache without holes: the model's causal mask
        return decoder.forward(ids, positions, None, plan.width)
    allowed = dense_attention_mask(tensors[3], tensors[4], tensors[5], valid, bidirectional=False)
    return decoder.forward(ids, positions, valid, plan.width, new_allowed=allowed)


def accepted_greedy(ground: list[int], predicted: list[int]) -> int:
    """Proposals ground[1:] kept: the longest run where each equals the model's prediction at the column before."""
    accepted = 0
    while accepted + 1 < len(ground) and ground[accepted + 1] == predicted[accepted]:
        accepted += 1
    return accepted


def accepted_sampled(ground: list[int], target: torch.Tensor, draft: torch.Tensor | None, generator) -> tuple[int, int]:
    """Speculative sampling (Leviathan et al. 2023; Chen et al. 2023) of one row's pass.

    `target` (len(ground), V): the model's k=1 distributions at the ground columns; `draft` (len(ground)-1, V):
    the distributions the proposals ground[1:] were drawn from. Proposal i is kept with probability
    min(1, p(q)/d(q)); the first one refused is replaced by a draw from the residual max(0, p - d) (normalised);
    if all are kept, a bonus token is drawn from p after the last one. Returns (proposals kept, last token).
    """
    for index, token in enumerate(ground[1:]):
        p, d = target[index], draft[index]
        ratio = float(p[token]) / float(d[token])
        if ratio >= 1.0 or float(torch.rand((), generator=generator, device=_device(generator))) < ratio:
            continue
        residual = (p - d).clamp(min=0)
        total = float(residual.sum())
        return index, draw(residual / total if total > 0 else p, generator)
    return len(ground) - 1, draw(target[len(ground) - 1], generator)


def _device(generator):
    return generator.device if generator is not None else None


def selfspec_pass(
    decoder: BatchDecoder,
    live: list[RowState],
    budgets: list[int],
    prompt=None,
    *,
    k_max: int,
    mask_layout: str,
    stop_ids: set[int],
    tokenizer,
    stop_strings,
    temperature: float | None,
    generator,
) -> None:
    """One pass over `live` (in cache order, `budgets` their max_new_tokens): with `prompt` = (input_ids,
    attention_mask) the first pass (prompt + masks), otherwise a verify-and-propose pass."""
    mask_tokens = decoder.mask_tokens
    first = prompt is not None
    # a pass keeps >= 1 token, so proposals past room-2 (for after the next kept token) cannot be kept
    room = max(budget - len(row.generated) for row, budget in zip(live, budgets))
    num_masks = max(0, min(k_max - 1, room - 2))
    if first:
        logits = decoder.first_pass(*prompt, num_masks)
        group_column = [{0: 1} if num_masks else {} for _ in live]
        grounds = [[None] for _ in live]  # the last prompt token: nothing to verify
    else:
        plan = build_verify_pass(
            live, num_masks, mask_layout, mask_tokens.ids_for_masks(num_masks), pad_id=mask_tokens.ids[0]
        )
        uniform = len(set(plan.ground_counts)) == 1
        logits = run_verify_pass(decoder, plan, causal=mask_layout == "linear" and uniform and decoder.kv.dense)
        group_column, grounds = plan.group_column, [r.pending for r in live]
    if temperature:
        outcomes = [
            _sample_row(
                logits[slot],
                grounds[slot],
                row.draft_probs,
                group_column[slot],
                num_masks,
                temperature,
                mask_tokens,
                generator,
            )
            for slot, row in enumerate(live)
        ]
    else:
        predicted = without_mask_ids(logits, mask_tokens).argmax(dim=-1).tolist()
        outcomes = [
            _greedy_row(predicted[slot], grounds[slot], group_column[slot], num_masks) for slot in range(len(live))
        ]
    if not first:
        decoder.keep_prefixes(plan.width, [accepted + 1 for accepted, _, _, _ in outcomes])
    for row, budget, (accepted, block, proposals, draft) in zip(live, budgets, outcomes):
        block = finish_block(row, block, stop_ids, budget, tokenizer, stop_strings)
        keep_block(row, block, verified=accepted)
        room = budget - len(row.generated)
        useful = max(0, min(len(proposals), room - 1))  # the next pass keeps at most `room` tokens
        if not first:
            row.next_position += accepted + 1
        row.pending = [block[-1]] + proposals[:useful] if block else []
        row.draft_probs = draft[:useful] if draft is not None else None


def _greedy_row(predicted: list[int], ground: list, group_column: dict[int, int], num_masks: int):
    """(proposals kept, kept tokens, next proposals, None) from the pass's argmax per column."""
    accepted = 0 if ground[0] is None else accepted_greedy(ground, predicted)
    column = group_column.get(accepted)
    proposals = predicted[column : column + num_masks] if column is not None else []
    return accepted, predicted[: accepted + 1], proposals, None


def _sample_row(
    logits: torch.Tensor,
    ground: list,
    draft,
    group_column: dict[int, int],
    num_masks: int,
    temperature: float,
    mask_tokens,
    generator,
):
    """(proposals kept, kept tokens, next proposals, their draft distributions) by speculative sampling."""
    count = len(ground)
    target = sampling_probs(logits[:count], temperature, mask_tokens)
    if ground[0] is None:
        accepted, last = 0, draw(target[0], generator)
    else:
        accepted, last = accepted_sampled(ground, target, draft, generator)
    column = group_column.get(accepted)
    if column is None:
        return accepted, list(ground[1 : accepted + 1]) + [last], [], None
    next_draft = sampling_probs(logits[column : column + num_masks], temperature, mask_tokens)
    proposals = [draw(probs, generator) for probs in next_draft]
    return accepted, list(ground[1 : accepted + 1]) + [last], proposals, next_draft
