"""Self-speculative ("selfspec") decoding: the MTP model verifies its own proposals in the pass that makes the next.

The mask slots only propose; the next pass feeds the proposals as ordinary tokens and the model's own next-token
prediction at each one checks the proposal after it. Greedy it equals the model's k=1 decoding token for token;
sampled (speculative sampling) it is distributed exactly as k=1 sampling. One pass feeds `ground` = [last kept
token, proposals] plus mask groups (`MASK_LAYOUTS`: after the last, the first and last, or every ground token),
proposing every slot or, with `propose_threshold`, ConfAdapt's confident run; docs/DECODING.md says more.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mtp_ds.acceptance import confident_run_length
from mtp_ds.decoding.passes import BatchDecoder, PassInputs, Prompt
from mtp_ds.decoding.readout import draw, sampling_probs, without_mask_ids
from mtp_ds.decoding.result import RowState, StopRule, keep_block
from mtp_ds.decoding.spec import DecodeSpec
from mtp_ds.layout import dense_attention_mask


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
    rows: list[RowState], num_masks: int, layout: str, mask_ids: list[int], pad_id: int, max_groups: int | None = None
) -> VerifyPass:
    """Columns: every row's ground tokens, right-padded to the longest, then the mask groups (padded alike)."""
    ground_width = max(len(row.pending) for row in rows)
    groups = (
        max(len(group_anchors(layout, len(row.pending), row.proposal_confidences, max_groups)) for row in rows)
        if num_masks
        else 0
    )
    width = ground_width + groups * num_masks
    planes = VerifyPass([], [], [], [], [], [], [], [])
    for row in rows:
        ground, start = row.pending, row.next_position
        ids, positions, valid = [pad_id] * width, [0] * width, [0] * width
        anchor_of, region_of, mask_slot = [0] * width, [-1] * width, [0] * width
        for column, token in enumerate(ground):
            ids[column], positions[column], valid[column], anchor_of[column] = token, start + column, 1, start + column
        anchors = group_anchors(layout, len(ground), row.proposal_confidences, max_groups) if num_masks else []
        group_column = {}
        for group, anchor in enumerate(anchors):
            first = ground_width + group * num_masks
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


def group_anchors(
    layout: str, ground: int, confidences: list[float] | None = None, max_groups: int | None = None
) -> list[int]:
    """Ground indices a mask group is anchored at: the next pass's proposals come from the group at the index
    where verification stops (all accepted: the last; first proposal refused: 0). No group there: no proposals.

    per_proposal with `max_groups`: the `max_groups` indices where verification most likely stops, read from the
    proposals' own `confidences` (draft side only, so the output stays exact): P(stop at a) = c_1 .. c_a (1 - c_a+1).
    """
    if layout == "linear":
        return [ground - 1]
    if layout == "ends":
        return sorted({0, ground - 1})
    if max_groups is None or max_groups >= ground or confidences is None:
        return list(range(ground))
    stop, reach = [], 1.0
    for index in range(ground):
        passes_on = confidences[index] if index < ground - 1 else 0.0  # proposal index + 1 (ground[index + 1])
        stop.append(reach * (1.0 - passes_on))
        reach *= passes_on
    return sorted(sorted(range(ground), key=lambda index: -stop[index])[:max_groups])


def verify_inputs(plan: VerifyPass, device, causal: bool) -> PassInputs:
    """The pass's columns as `PassInputs`, every column's logits read. The cache keeps nothing new until
    `decoder.keep_prefixes` says how much of each row was verified."""
    tensors = torch.tensor(
        [plan.input_ids, plan.positions, plan.valid, plan.anchor_of, plan.region_of, plan.mask_slot], device=device
    )
    ids, positions, valid = tensors[0], tensors[1], tensors[2].bool()
    if causal:  # ground then one group, same length in every row, cache without holes: the model's causal mask
        return PassInputs(ids, positions, None)
    allowed = dense_attention_mask(tensors[3], tensors[4], tensors[5], valid, bidirectional=False)
    return PassInputs(ids, positions, valid, new_allowed=allowed)


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


class SelfSpecStrategy:
    """The `Strategy` of selfspec: each pass verifies the row's proposals and proposes the next k_max - 1."""

    def __init__(self, spec: DecodeSpec, stop: StopRule, generator: torch.Generator | None = None):
        self.spec, self.stop, self.generator = spec, stop, generator
        self.cache_headroom = spec.k_max * spec.k_max  # per_proposal feeds up to k_max groups of k_max - 1 masks

    def step(self, decoder: BatchDecoder, rows: list[RowState], budgets: list[int], prompt: Prompt | None = None):
        """With `prompt` the first pass (prompt + masks), otherwise a verify-and-propose pass."""
        mask_tokens, layout, temperature = decoder.mask_tokens, self.spec.mask_layout, self.spec.temperature
        first = prompt is not None
        # a pass keeps >= 1 token, so proposals past room-2 (for after the next kept token) cannot be kept
        room = max(budget - len(row.generated) for row, budget in zip(rows, budgets))
        num_masks = max(0, min(self.spec.k_max - 1, room - 2))
        if first:
            logits = decoder.forward(decoder.prompt_inputs(*prompt, num_masks))
            group_column = [{0: 1} if num_masks else {} for _ in rows]
            grounds = [[None] for _ in rows]  # the last prompt token: nothing to verify
        else:
            plan = build_verify_pass(
                rows,
                num_masks,
                layout,
                mask_tokens.ids_for_masks(num_masks),
                pad_id=mask_tokens.ids[0],
                max_groups=self.spec.max_groups,
            )
            causal = layout == "linear" and len(set(plan.ground_counts)) == 1 and decoder.kv.dense
            logits = decoder.forward(verify_inputs(plan, decoder.device, causal))
            group_column, grounds = plan.group_column, [row.pending for row in rows]
        if temperature:
            outcomes = [
                _sample_row(
                    logits[slot],
                    grounds[slot],
                    row.draft_probs,
                    group_column[slot],
                    num_masks,
                    self.spec,
                    mask_tokens,
                    self.generator,
                )
                for slot, row in enumerate(rows)
            ]
        else:
            predicted, confidences = _greedy_read(logits, mask_tokens, self.spec.reads_confidences)
            outcomes = [
                _greedy_row(predicted[slot], grounds[slot], group_column[slot], num_masks, confidences[slot], self.spec)
                for slot in range(len(rows))
            ]
        if not first:
            decoder.keep_prefixes(plan.width, [outcome[0] + 1 for outcome in outcomes])
        for row, budget, (accepted, block, proposals, draft, sureness) in zip(rows, budgets, outcomes):
            block = self.stop.finish(row, block, budget)
            keep_block(row, block, verified=accepted)
            row_room = budget - len(row.generated)
            useful = max(0, min(len(proposals), row_room - 1))  # the next pass keeps at most `row_room` tokens
            if not first:
                row.next_position += accepted + 1
            row.pending = [block[-1]] + proposals[:useful] if block else []
            row.draft_probs = draft[:useful] if draft is not None else None
            row.proposal_confidences = sureness[:useful] if sureness is not None else None


def _greedy_read(logits: torch.Tensor, mask_tokens, with_confidences: bool):
    """Per row and column: the argmax without mask ids, and (to size proposals or choose anchors) its softmax
    probability; one device-to-host transfer either way."""
    clean = without_mask_ids(logits, mask_tokens)
    if not with_confidences:
        predicted = clean.argmax(dim=-1).tolist()
        return predicted, [None] * len(predicted)
    confidences, tokens = torch.softmax(clean, dim=-1).max(dim=-1)
    both = torch.stack([tokens.double(), confidences.double()]).tolist()  # ids < 2**53: exact in float64
    return [[int(token) for token in row] for row in both[0]], both[1]


def proposal_count(confidences: list[float], anchor: int, column: int, num_masks: int, threshold) -> int:
    """How many of a group's `num_masks` predictions to propose: all without a threshold; else ConfAdapt's rule
    (`acceptance.confident_run_length`) over the anchor's prediction and the group's, minus the anchor's own
    token, which the pass keeps anyway. Read from this pass's distributions only, so verification stays exact."""
    if threshold is None:
        return num_masks
    run = [confidences[anchor], *confidences[column : column + num_masks]]
    return int(confident_run_length(torch.tensor([run]), threshold)[0]) - 1


def _greedy_row(predicted: list[int], ground: list, group_column: dict[int, int], num_masks: int, confidences, spec):
    """(proposals kept, kept tokens, next proposals, None, their confidences) from the pass's argmax per column."""
    accepted = 0 if ground[0] is None else accepted_greedy(ground, predicted)
    column = group_column.get(accepted)
    if column is None:
        return accepted, predicted[: accepted + 1], [], None, None
    count = proposal_count(confidences, accepted, column, num_masks, spec.propose_threshold)
    sureness = confidences[column : column + count] if confidences is not None else None
    return accepted, predicted[: accepted + 1], predicted[column : column + count], None, sureness


def _sample_row(
    logits: torch.Tensor,
    ground: list,
    draft,
    group_column: dict[int, int],
    num_masks: int,
    spec: DecodeSpec,
    mask_tokens,
    generator,
):
    """(proposals kept, kept tokens, next proposals, their draft distributions, the drafts' probabilities of
    them) by speculative sampling."""
    count = len(ground)
    target = sampling_probs(logits[:count], spec.temperature, mask_tokens, spec.top_k, spec.top_p)
    if ground[0] is None:
        accepted, last = 0, draw(target[0], generator)
    else:
        accepted, last = accepted_sampled(ground, target, draft, generator)
    column = group_column.get(accepted)
    if column is None:
        return accepted, list(ground[1 : accepted + 1]) + [last], [], None, None
    next_draft = sampling_probs(
        logits[column : column + num_masks], spec.temperature, mask_tokens, spec.top_k, spec.top_p
    )
    if spec.propose_threshold is not None:  # the top-1 probabilities of the anchor's and the slots' distributions
        confidences = [float(target[accepted].max()), *next_draft.max(dim=-1).values.tolist()]
        next_draft = next_draft[: proposal_count(confidences, 0, 1, num_masks, spec.propose_threshold)]

    proposals = [draw(probs, generator) for probs in next_draft]
    sureness = [float(probs[token]) for probs, token in zip(next_draft, proposals)]
    return accepted, list(ground[1 : accepted + 1]) + [last], proposals, next_draft, sureness
