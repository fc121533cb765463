"""FlexAttention (the opt-in for long sequences) against sdpa with the dense mask, on packed batches.

The same attention rule (`layout._attention_rule`) reaches the model two ways: a dense additive mask under
sdpa, and a BlockMask built from the rule's `mask_mod` under FlexAttention. Forward only and without grad:
torch has no FlexAttention backward on CPU. The packed length is padded to the plan's one bucket, as the
trainer does, so every batch has the same shape and the kernel compiles once.
"""

import pytest
import torch
from helpers import make_mtp_model

from mtp_ds.batching import collate
from mtp_ds.config import load_recipe, plan_run
from mtp_ds.data import SampleBatch, pack_micro_batches
from mtp_ds.layout import pack
from mtp_ds.models.teacher import LocalTeacher
from mtp_ds.objective import packed_hidden_states, slot_coordinates, student_forced_inputs

EOS = 2
K_MAX = 8
DRAWS = [(2, 1), (5, 3), (8, 0), (3, 9)]  # mixed k and offsets in one batch
PAD_TO = 128  # one FlexAttention block: 64 + 4 * 7 = 92 tokens at most


def _batch(tokenizer, mask_tokens, seed=0):
    ids = torch.randint(4, len(tokenizer) - 1, (len(DRAWS), 64), generator=torch.Generator().manual_seed(seed))
    ids[1, 30] = EOS  # a sample that ends early: the rest of row 1 is padding
    packs = [
        pack(ids[row], k=k, offset=offset, mtp_token_id=mask_tokens, k_max=K_MAX, eos_token_id=EOS)
        for row, (k, offset) in enumerate(DRAWS)
    ]
    return collate(packs, pad_token_id=0, pad_to=PAD_TO)


def _flex_copy(model):
    import copy

    flex = copy.deepcopy(model)
    flex.set_attn_implementation("flex_attention")
    return flex


@pytest.mark.parametrize("arch", ["qwen3", "llama"])
def test_flex_block_mask_forward_equals_sdpa_dense_mask(arch):
    model, tokenizer, mask_tokens = make_mtp_model(arch)
    batch = _batch(tokenizer, mask_tokens)
    assert batch.input_ids.shape[1] == PAD_TO and not bool(batch.valid[:, -1].any())
    flex = _flex_copy(model)
    with torch.no_grad():
        dense = packed_hidden_states(model, batch)
        block = packed_hidden_states(flex, batch)
    torch.testing.assert_close(block[batch.valid], dense[batch.valid], rtol=1e-4, atol=1e-5)


def test_teacher_through_flex_gives_the_sdpa_teachers_targets():
    """The trainer's teacher call (LocalTeacher on student-forced inputs): argmax ids and log-probs agree."""
    model, tokenizer, mask_tokens = make_mtp_model("llama")
    batch = _batch(tokenizer, mask_tokens, seed=1)
    rows, regions, slots, cols = slot_coordinates(batch)
    proposals = torch.randint(4, len(tokenizer) - 1, (rows.numel(),), generator=torch.Generator().manual_seed(2))
    teacher_ids = student_forced_inputs(batch, proposals, rows, regions, slots, cols)
    sdpa_teacher, flex_teacher = LocalTeacher(model), LocalTeacher(_flex_copy(model))
    ids = mask_tokens.ids
    assert torch.equal(
        flex_teacher(batch, teacher_ids, rows, cols, want="argmax", mask_token_ids=ids),
        sdpa_teacher(batch, teacher_ids, rows, cols, want="argmax", mask_token_ids=ids),
    )
    torch.testing.assert_close(
        flex_teacher(batch, teacher_ids, rows, cols, want="log_probs", mask_token_ids=ids),
        sdpa_teacher(batch, teacher_ids, rows, cols, want="log_probs", mask_token_ids=ids),
        rtol=1e-4,
        atol=1e-5,
    )


def test_auto_is_sdpa_everywhere_and_flex_pads_to_one_length():
    for device_type in ("cuda", "cpu"):
        plan = plan_run(load_recipe("recipes/qwen3_4b_metamath.yaml", validate=False), 4, device_type=device_type)
        assert plan.attn_implementation == "sdpa" and plan.packing.pad_to is None
    ablation = plan_run(load_recipe("recipes/llama31_8b_magpie_ablation.yaml", validate=False), 4, device_type="cuda")
    assert ablation.attn_implementation == "flex_attention"
    assert ablation.packing.pad_to == 1536  # 1024 + 32 * 15 = 1504 rounded up to 128-token blocks


def test_flex_plan_packs_every_k_to_the_same_length():
    recipe = load_recipe("recipes/tiny_cpu.yaml", ["model.attn_implementation=flex_attention"])
    plan = plan_run(recipe, 1, device_type="cpu")
    assert plan.packing.pad_to == 128  # 64 + 4 * 7 = 92
    lengths = set()
    for k in range(plan.packing.k_min, plan.packing.k_max + 1):
        micro = SampleBatch(
            token_ids=torch.randint(4, 40, (2, 64)),
            first_anchor=torch.zeros(2, dtype=torch.long),
            response_start=torch.zeros(2, dtype=torch.long),
            lengths=torch.full((2,), 64),
            indices=[0, 1],
            draws=[(k, 0), (k, 5)],
        )
        (batch,) = pack_micro_batches(
            [micro], plan.packing, mask_tokens=200, eos_token_id=EOS, pad_token_id=0, device="cpu"
        )
        lengths.add(batch.input_ids.shape[1])
    assert lengths == {128}
    with pytest.raises(ValueError, match="does not fit pad_to=8"):
        collate([pack(torch.arange(4, 68), k=2, offset=0, mtp_token_id=200, k_max=8)], pad_token_id=0, pad_to=8)
