"""The student-forced objective: teacher inputs, loss kinds, memory rule, global normalisation."""

import copy

import pytest
import torch
import torch.nn.functional as F
from helpers import make_mtp_model

from mtp_ds.batching import KOffsetSampler, collate
from mtp_ds.layout import pack
from mtp_ds.models.teacher import LocalTeacher
from mtp_ds.objective import (
    ObjectiveConfig,
    SupervisionCounts,
    combine_loss,
    global_supervision_counts,
    mtp_objective,
    prefix_coordinates,
    slot_coordinates,
    supervision_counts,
    suppress_mask_tokens,
)

EOS = 2


def make_batch(tokenizer, tokens, *, rows=4, length=64, k_max=8, step=0, per_sequence_k=True, eos_row=None, seed=0):
    token_ids = torch.randint(4, len(tokenizer) - 1, (rows, length), generator=torch.Generator().manual_seed(seed))
    if eos_row is not None:
        token_ids[eos_row, length // 2] = EOS
    sampler = KOffsetSampler(k_min=1, k_max=k_max, per_sequence_k=per_sequence_k, seed=seed)
    packs = [
        pack(token_ids[row], k=k, offset=offset, mtp_token_id=tokens, k_max=k_max, eos_token_id=EOS)
        for row, (k, offset) in enumerate(sampler.sample(step, rows))
    ]
    return collate(packs, pad_token_id=0), token_ids, packs


def student_and_teacher(arch):
    student, tokenizer, tokens = make_mtp_model(arch, seed=0)
    teacher, _, _ = make_mtp_model(arch, seed=1)  # a different model, so proposals and targets differ
    for parameter in teacher.parameters():
        parameter.requires_grad_(False)
    with torch.no_grad():  # sharpen the student so its proposals are not near-ties
        student.get_output_embeddings().weight.mul_(4)
    return student, teacher, tokenizer, tokens


def test_student_forced_teacher_matches_plain_forward(arch):
    student, teacher, tokenizer, tokens = student_and_teacher(arch)
    batch, token_ids, packs = make_batch(tokenizer, tokens, eos_row=1)
    config = ObjectiveConfig(kind="soft")
    captured = {}

    def recording_teacher(batch, input_ids, rows, cols, **kwargs):
        captured["input_ids"] = input_ids
        out = LocalTeacher(teacher)(batch, input_ids, rows, cols, **kwargs)
        captured["log_probs"] = out
        return out

    output = mtp_objective(student, recording_teacher, batch, config, mask_token_ids=tokens.ids)
    rows, regions, slots, _cols = slot_coordinates(batch)
    proposals = torch.zeros_like(batch.slot_index)
    proposals[rows, regions, slots] = output.proposals
    assert not torch.isin(captured["input_ids"][batch.valid], torch.tensor(tokens.ids)).any()
    log_probs = torch.zeros((*batch.slot_index.shape, captured["log_probs"].shape[-1]))
    log_probs[rows, regions, slots] = captured["log_probs"]
    checked = 0
    for row, packed in enumerate(packs):
        for region, anchor in enumerate(packed.anchor_positions.tolist()):
            k = packed.k
            ids = token_ids[row, : anchor + 1].tolist() + proposals[row, region, : k - 1].tolist()
            with torch.no_grad():
                expected = F.log_softmax(
                    suppress_mask_tokens(teacher(torch.tensor([ids])).logits[0, -k:], tokens.ids), -1
                )
            torch.testing.assert_close(log_probs[row, region, :k], expected, rtol=1e-4, atol=1e-4)
            checked += 1
    assert checked >= 8


@pytest.mark.parametrize("kind", ["hard", "soft"])
def test_student_equals_teacher_at_k1_gives_zero_soft_loss_and_full_agreement(arch, kind):
    student, tokenizer, tokens = make_mtp_model(arch)
    teacher = copy.deepcopy(student)
    token_ids = torch.randint(4, len(tokenizer) - 1, (3, 64), generator=torch.Generator().manual_seed(0))
    batch = collate([pack(row, k=1, offset=5, mtp_token_id=tokens, k_max=8) for row in token_ids], pad_token_id=0)
    output = mtp_objective(student, LocalTeacher(teacher), batch, ObjectiveConfig(kind=kind), mask_token_ids=tokens.ids)
    summary = output.metrics.summary()
    assert summary["agreement"] == 1.0
    if kind == "soft":
        assert abs(float(output.loss.detach())) < 1e-6


def test_ground_truth_kind_is_cross_entropy_on_targets(arch):
    student, _teacher, tokenizer, tokens = student_and_teacher(arch)
    batch, _, _ = make_batch(tokenizer, tokens, eos_row=2)
    output = mtp_objective(student, None, batch, ObjectiveConfig(kind="ground_truth"), mask_token_ids=tokens.ids)
    rows, regions, slots, cols = slot_coordinates(batch)
    targets = batch.target_ids[rows, regions, slots]
    with torch.no_grad():
        logits = student(
            input_ids=batch.input_ids, position_ids=batch.position_ids, attention_mask=_additive(batch)
        ).logits[rows, cols]
    expected = F.cross_entropy(suppress_mask_tokens(logits, tokens.ids), targets, ignore_index=-100)
    torch.testing.assert_close(output.loss.detach(), expected, rtol=1e-5, atol=1e-6)


def _additive(batch):
    from mtp_ds.batching import model_attention_mask

    return model_attention_mask(batch, "sdpa", torch.float32)


def test_prefix_and_entropy_terms(arch):
    student, teacher, tokenizer, tokens = student_and_teacher(arch)
    batch, _, _ = make_batch(tokenizer, tokens, eos_row=0)
    base = mtp_objective(student, LocalTeacher(teacher), batch, ObjectiveConfig(), mask_token_ids=tokens.ids)
    with_prefix = mtp_objective(
        student, LocalTeacher(teacher), batch, ObjectiveConfig(prefix_ntp_weight=0.5), mask_token_ids=tokens.ids
    )
    rows, cols, targets = prefix_coordinates(batch)
    row0_anchors = set(batch.slot_index[0, :, 0][batch.slot_valid[0, :, 0]].tolist())
    assert rows.numel() > 0 and row0_anchors and not row0_anchors & set(cols[rows == 0].tolist())
    with torch.no_grad():
        logits = student(
            input_ids=batch.input_ids, position_ids=batch.position_ids, attention_mask=_additive(batch)
        ).logits[rows, cols]
    prefix_ce = F.cross_entropy(suppress_mask_tokens(logits, tokens.ids), targets)
    torch.testing.assert_close(with_prefix.loss.detach() - base.loss.detach(), 0.5 * prefix_ce, rtol=1e-4, atol=1e-5)
    with_entropy = mtp_objective(
        student, LocalTeacher(teacher), batch, ObjectiveConfig(entropy_weight=0.1), mask_token_ids=tokens.ids
    )
    entropy = with_entropy.metrics.summary()["entropy"]
    torch.testing.assert_close(
        with_entropy.loss.detach() - base.loss.detach(), torch.tensor(0.1 * entropy), rtol=1e-4, atol=1e-5
    )


def test_memory_rule_and_chunking_give_the_same_loss_and_gradient(arch):
    student, teacher, tokenizer, tokens = student_and_teacher(arch)
    batch, _, _ = make_batch(tokenizer, tokens)
    head_rows = []
    hooks = [
        m.get_output_embeddings().register_forward_hook(lambda _m, args, _o: head_rows.append(args[0].shape))
        for m in (student, teacher)
    ]
    results = []
    for chunk in (100000, 7):
        student.zero_grad()
        out = mtp_objective(
            student,
            LocalTeacher(teacher, chunk_size=chunk),
            batch,
            ObjectiveConfig(kind="soft", logits_chunk_size=chunk),
            mask_token_ids=tokens.ids,
        )
        out.loss.backward()
        results.append((out.loss.detach(), [p.grad.clone() for p in student.parameters()]))
    for hook in hooks:
        hook.remove()
    num_slots = int(batch.slot_valid.sum())
    # the LM heads only ever see slot rows (never B*T rows), at most one chunk at a time; the teacher's head
    # gets (1, rows, H) because DeepSpeed's tensor-parallel LM head slices a 3-D input
    rows = [shape[0] if len(shape) == 2 else shape[1] for shape in head_rows]
    assert all(len(shape) == 2 or (len(shape) == 3 and shape[0] == 1) for shape in head_rows)
    assert all(r <= num_slots for r in rows)
    assert max(rows[len(rows) // 2 :]) == 7
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-5, atol=1e-6)
    for full, chunked in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(full, chunked, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("kind", ["hard", "soft", "ground_truth"])
def test_global_normalisation_one_batch_of_8_equals_4_micro_batches_of_2(kind):
    student, teacher, tokenizer, tokens = student_and_teacher("qwen3")
    config = ObjectiveConfig(kind=kind, prefix_ntp_weight=0.3)
    _, _, packs = make_batch(tokenizer, tokens, rows=8, per_sequence_k=True, eos_row=5, seed=3)

    def gradients(micro_batches):
        student.zero_grad()
        counts = global_supervision_counts(micro_batches, config)
        assert counts == SupervisionCounts(
            slots=sum(supervision_counts(micro, config).slots for micro in micro_batches),
            prefix=sum(supervision_counts(micro, config).prefix for micro in micro_batches),
        )
        total = 0.0
        for micro in micro_batches:
            out = mtp_objective(
                student, LocalTeacher(teacher), micro, config, mask_token_ids=tokens.ids, global_counts=counts
            )
            out.loss.backward()
            total += float(out.loss.detach())
        return total, [p.grad.clone() for p in student.parameters()]

    whole_loss, whole = gradients([collate(packs, pad_token_id=0)])
    split_loss, split = gradients([collate(packs[i : i + 2], pad_token_id=0) for i in range(0, 8, 2)])
    assert abs(whole_loss - split_loss) < 1e-5
    for a, b in zip(whole, split):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_combine_loss_normalises_each_term_by_its_own_count():
    counts = SupervisionCounts(slots=4.0, prefix=2.0)
    assert combine_loss(1.0, 2.0, 3.0, counts, ObjectiveConfig(entropy_weight=0.5)) == 0.5  # no prefix term
    assert combine_loss(1.0, 2.0, 3.0, counts, ObjectiveConfig(prefix_ntp_weight=0.5)) == 0.25 + 0.75
    assert combine_loss(1.0, 2.0, None, SupervisionCounts(slots=0.0, prefix=0.0), ObjectiveConfig()) == 1.0


@pytest.mark.parametrize("kind", ["hard", "soft", "ground_truth"])
def test_combine_loss_of_the_logged_sums_is_the_objectives_loss(kind):
    """The loss a step logs (`combine_loss` on the metric sums) is the loss it differentiates."""
    student, teacher, tokenizer, tokens = student_and_teacher("qwen3")
    config = ObjectiveConfig(kind=kind, prefix_ntp_weight=0.3, entropy_weight=0.05)
    batch, _, _ = make_batch(tokenizer, tokens, eos_row=1)
    out = mtp_objective(student, LocalTeacher(teacher), batch, config, mask_token_ids=tokens.ids)
    counts, sums = supervision_counts(batch, config), out.metrics
    assert counts.prefix > 0 and counts.slots == float(sums.slot_count.sum())
    exact = combine_loss(sums.slot_loss, sums.entropy, sums.prefix_loss, counts, config)
    assert torch.equal(out.loss.detach(), exact)
    logged = combine_loss(float(sums.slot_loss), float(sums.entropy), float(sums.prefix_loss), counts, config)
    assert logged == pytest.approx(float(exact), rel=1e-6)


def test_metrics_accept_length_proxy():
    student, teacher, tokenizer, tokens = student_and_teacher("llama")
    batch, _, _ = make_batch(tokenizer, tokens, per_sequence_k=False, step=2)
    out = mtp_objective(
        student,
        LocalTeacher(teacher),
        batch,
        ObjectiveConfig(accept_thresholds=(0.0, 1.01)),
        mask_token_ids=tokens.ids,
        num_slot_metrics=8,
    )
    summary = out.metrics.summary()
    k = batch.ks[0]
    assert summary["accept_length@0"] == k  # threshold 0 accepts the whole block
    assert summary["accept_length@1.01"] == 1  # nothing is that confident: ConfAdapt still accepts one
    assert out.metrics.slot_count.numel() == 8 and int(out.metrics.slot_count[:k].min()) > 0
    combined = out.metrics + out.metrics
    assert combined.summary()["agreement"] == summary["agreement"]


def test_bad_objective_config():
    with pytest.raises(ValueError, match="objective kind must be one of"):
        ObjectiveConfig(kind="medium")
    with pytest.raises(ValueError, match="temperature must be > 0"):
        ObjectiveConfig(temperature=0)
