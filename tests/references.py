"""Independent references the tests hold the code to: written from the method's statement (METHOD.md), never
by calling the code under test. Shared by both tiers (the real-weights test reuses the packing reference)."""

import torch

from mtp_ds.batching import collate, model_attention_mask


def paper_rule(confidences, tau) -> int:
    kept = 0
    for confidence in confidences:
        if confidence < tau:
            break
        kept += 1
    return max(kept, 1)


def additive(allowed: torch.Tensor) -> torch.Tensor:
    mask = torch.zeros(allowed.shape)
    mask.masked_fill_(~allowed, torch.finfo(torch.float32).min)
    return mask[None, None]


def packed_logits(model, packed):
    batch = collate([packed], pad_token_id=0)
    mask = model_attention_mask(batch, model.config._attn_implementation, torch.float32)
    with torch.no_grad():
        return model(input_ids=batch.input_ids, position_ids=batch.position_ids, attention_mask=mask).logits[0]


def reference_logits(model, ids: list[int], *, bidirectional_tail: int = 0):
    """Plain forward over `ids`; the last `bidirectional_tail` tokens may attend each other both ways."""
    length = len(ids)
    allowed = torch.tril(torch.ones(length, length, dtype=torch.bool))
    if bidirectional_tail:
        allowed[-bidirectional_tail:, -bidirectional_tail:] = True
    with torch.no_grad():
        return model(
            input_ids=torch.tensor([ids]), position_ids=torch.arange(length)[None], attention_mask=additive(allowed)
        ).logits[0]


def assert_packed_equals_unpacked(
    model, tokens, token_ids, packed, *, bidirectional=False, atol=1e-5, same_argmax=False
):
    """`atol`: fp32 noise grows with depth and logit scale (a trained 30-layer model needs ~1e-3);
    `same_argmax`: the greedy prediction at every slot and position must also be the same."""
    logits = packed_logits(model, packed)

    def check(actual, expected):
        torch.testing.assert_close(actual, expected, rtol=1e-4, atol=atol)
        if same_argmax:
            assert torch.equal(actual.argmax(-1), expected.argmax(-1))

    # every region: its k slots equal a causal forward over prefix + masks
    for region, anchor in enumerate(packed.anchor_positions.tolist()):
        masks = tokens.ids_for_masks(packed.k - 1)
        ids = token_ids[: anchor + 1].tolist() + masks
        expected = reference_logits(model, ids, bidirectional_tail=(packed.k - 1) if bidirectional else 0)
        check(logits[packed.slot_index[region]], expected[-packed.k :])
    # every real ground-truth position equals a plain forward over the unpacked sequence
    plain = reference_logits(model, token_ids.tolist())
    ground_truth = (packed.source_index >= 0) & packed.valid
    check(logits[ground_truth], plain[packed.source_index[ground_truth]])
