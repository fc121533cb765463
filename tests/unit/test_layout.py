"""Packing: the packed forward equals ordinary causal forwards over each MTP problem, unpacked."""

import pytest
import torch
from helpers import make_mtp_model
from references import assert_packed_equals_unpacked

from mtp_ds.batching import KOffsetSampler, collate
from mtp_ds.layout import IGNORE_INDEX, pack

EOS = 2


@pytest.mark.parametrize("k", range(2, 17))
def test_packed_equals_unpacked_every_k(arch, k):
    model, tokens, _ = None, None, None
    model, tokenizer, tokens = make_mtp_model(arch)
    token_ids = torch.randint(4, len(tokenizer) - 1, (96,), generator=torch.Generator().manual_seed(k))
    offset = (7 * k) % 32
    packed = pack(token_ids, k=k, offset=offset, mtp_token_id=tokens, k_max=16)
    assert packed.num_regions == 3 and packed.anchor_positions.tolist() == [offset, offset + 32, offset + 64]
    assert_packed_equals_unpacked(model, tokens, token_ids, packed)


@pytest.mark.parametrize(
    "case", ["eos_inside_region", "cut_by_end", "bidirectional", "distinct_tokens", "first_anchor"]
)
def test_packed_equals_unpacked_special_cases(arch, case):
    model, tokenizer, tokens = make_mtp_model(arch, distinct_slots=case == "distinct_tokens", k_max=8)
    token_ids = torch.randint(4, len(tokenizer) - 9, (48,), generator=torch.Generator().manual_seed(1))
    kwargs = dict(k=6, offset=3, mtp_token_id=tokens, k_max=8)
    if case == "eos_inside_region":
        token_ids[22] = EOS  # anchors at 3, 19, 35: region 1 (targets 20..25) contains the EOS at 22
        kwargs["eos_token_id"] = EOS
    if case == "cut_by_end":
        kwargs.update(offset=15, num_regions=3)  # anchors 15, 31, 47: the last one is the final token
    if case == "bidirectional":
        kwargs["bidirectional"] = True
    if case == "first_anchor":
        kwargs["first_anchor"] = 10
    packed = pack(token_ids, **kwargs)
    assert_packed_equals_unpacked(model, tokens, token_ids, packed, bidirectional=case == "bidirectional")
    if case == "eos_inside_region":
        assert packed.anchor_positions.tolist() == [3, 19]  # the EOS region is the last supervised one
        assert packed.target_ids[1].tolist() == token_ids[20:23].tolist() + [EOS] * 3
        assert packed.eos_fill[1].tolist() == [False] * 3 + [True] * 3
        assert not packed.valid[packed.source_index > 22].any() and packed.valid[packed.source_index == 22].all()
        padding = ~packed.valid
        assert not packed.attention_mask[:, padding].any() and not packed.attention_mask[padding].any()
    if case == "cut_by_end":
        assert packed.anchor_positions.tolist() == [15, 31, 47]
        assert packed.target_ids[2].tolist() == [IGNORE_INDEX] * 6
        assert packed.position_ids[packed.slot_index[2]].tolist() == list(range(47, 53))
    if case == "first_anchor":
        assert packed.anchor_positions.tolist() == [13, 29, 45]


def test_layout_fields_are_exact():
    token_ids = torch.arange(10, 42)  # N = 32, k_max = 4: regions every 8 tokens
    packed = pack(token_ids, k=3, offset=1, mtp_token_id=99, k_max=4)
    assert packed.anchor_positions.tolist() == [1, 9, 17, 25]
    assert packed.input_ids.numel() == 32 + 4 * 2
    assert packed.input_ids[:6].tolist() == [10, 11, 99, 99, 12, 13]
    assert packed.position_ids[:6].tolist() == [0, 1, 2, 3, 2, 3]
    assert packed.slot_index.tolist()[:2] == [[1, 2, 3], [11, 12, 13]]
    assert packed.target_ids[0].tolist() == [12, 13, 14]
    mask = packed.attention_mask
    assert mask[2].tolist()[:6] == [True, True, True, False, False, False]  # mask 1 sees x0, x1 (anchor), itself
    assert mask[3].tolist()[:6] == [True, True, True, True, False, False]  # mask 2 also sees mask 1
    assert mask[4].tolist()[:6] == [True, True, False, False, True, False]  # ground truth never sees masks
    assert not mask[12, 2] and not mask[2, 12]  # regions are blind to each other
    bidirectional = pack(token_ids, k=3, offset=1, mtp_token_id=99, k_max=4, bidirectional=True)
    assert bidirectional.attention_mask[2, 3] and not packed.attention_mask[2, 3]


def reference_mask(token_ids: list[int], *, k: int, offset: int, k_max: int, eos: int, bidirectional: bool):
    """The blocked-causal rule from its words (docs/METHOD.md section 4), one packed token at a time, without
    `mtp_ds.layout`: ground truth sees earlier ground truth only; mask j of the region anchored at a sees ground
    truth up to a and the masks of its own region up to j (all of them when bidirectional); ground truth after
    the sample's EOS is padding, which sees nothing and is seen by nothing."""
    length, spacing = len(token_ids), 2 * k_max
    eos_at = token_ids.index(eos) if eos in token_ids else None
    anchors = [offset + spacing * r for r in range(length // spacing)]
    anchors = [a for a in anchors if a < (length if eos_at is None else eos_at)]
    packed = []  # (is_mask, position seen up to, region, slot, real)
    for position in range(length):
        packed.append((False, position, -1, 0, eos_at is None or position <= eos_at))
        if position in anchors:
            packed += [(True, position, anchors.index(position), j, True) for j in range(1, k)]
    allowed = torch.zeros(len(packed), len(packed), dtype=torch.bool)
    for q, (q_mask, q_upto, q_region, q_slot, q_real) in enumerate(packed):
        for key, (k_mask, k_pos, k_region, k_slot, k_real) in enumerate(packed):
            if not (q_real and k_real):
                continue
            if not k_mask:
                allowed[q, key] = k_pos <= q_upto
            else:
                allowed[q, key] = q_mask and k_region == q_region and (bidirectional or k_slot <= q_slot)
    return allowed


def test_dense_mask_and_flex_mask_mod_match_the_rule_written_out():
    from torch.nn.attention.flex_attention import create_mask

    sampler = KOffsetSampler(k_min=1, k_max=8, per_sequence_k=True, seed=5)
    token_ids = torch.randint(4, 90, (4, 40), generator=torch.Generator().manual_seed(0))
    token_ids[1, 25] = EOS
    for bidirectional in (False, True):
        draws = sampler.sample(step=3, num_sequences=4)
        packs = [
            pack(
                token_ids[row],
                k=k,
                offset=offset,
                mtp_token_id=[100 + j for j in range(8)],
                k_max=8,
                bidirectional=bidirectional,
                eos_token_id=EOS,
            )
            for row, (k, offset) in enumerate(draws)
        ]
        batch = collate(packs, pad_token_id=0)
        length = batch.input_ids.shape[1]
        flex = create_mask(batch.mask_mod(), batch.batch_size, 1, length, length, device="cpu")[:, 0]
        for row, (packed, (k, offset)) in enumerate(zip(packs, draws)):
            expected = reference_mask(
                token_ids[row].tolist(), k=k, offset=offset, k_max=8, eos=EOS, bidirectional=bidirectional
            )
            n = expected.shape[0]
            assert torch.equal(packed.attention_mask, expected), (row, k, offset)
            for grid in (batch.dense_mask()[row], flex[row]):  # collated (right-padded) and FlexAttention's
                assert torch.equal(grid[:n, :n], expected) and not grid[n:].any() and not grid[:, n:].any()


def test_sampler_is_seeded_uniform_and_resumable():
    sampler = KOffsetSampler(k_min=2, k_max=16, seed=7)
    assert sampler.sample(11, 8) == KOffsetSampler(k_min=2, k_max=16, seed=7).sample(11, 8)
    assert sampler.sample(11, 8) != sampler.sample(12, 8)
    draws = [draw for step in range(2000) for draw in sampler.sample(step, 2)]
    ks = [k for k, _ in draws]
    offsets = [offset for _, offset in draws]
    assert set(ks) == set(range(2, 17)) and set(offsets) == set(range(32))
    assert all(len({k for k, _ in sampler.sample(step, 8)}) == 1 for step in range(50))  # one k per step
    assert {k for k, _ in KOffsetSampler(static_k=16, seed=1).sample(0, 64)} == {16}
    per_sequence = KOffsetSampler(per_sequence_k=True, seed=1).sample(0, 64)
    assert len({k for k, _ in per_sequence}) > 1


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(k=0, offset=0), r"k must be in \[1, k_max=16\], got 0"),
        (dict(k=17, offset=0), r"k must be in \[1, k_max=16\], got 17"),
        (dict(k=2, offset=-1), r"offset must be >= 0, got -1"),
        (dict(k=2, offset=0, token_ids=torch.arange(4, 20)), r"sequence of length 16 is too short for one MTP region"),
        (dict(k=2, offset=0, first_anchor=64), r"too short for one MTP region after first_anchor=64"),
        (dict(k=4, offset=0, mtp_token_id=[7, 8]), r"k=4 needs 3 distinct mask tokens, only 2 given"),
        (dict(k=2, offset=0, token_ids=torch.full((40,), 99)), r"already contains a mask token id \(99\)"),
    ],
)
def test_bad_input_one_line_errors(kwargs, message):
    kwargs = {"token_ids": torch.arange(4, 44), "mtp_token_id": 99, **kwargs}
    with pytest.raises(ValueError, match=message) as error:
        pack(kwargs.pop("token_ids"), **kwargs)
    assert "\n" not in str(error.value)
