"""`sdpa_gqa` (mtp_ds/attention.py): folding query heads equals transformers' sdpa with repeated KV heads, on
tensors and on whole models with ragged 4D masks; the decoder switches to it only for the decode and restores."""

import pytest
import torch
from helpers import make_mtp_model

import mtp_ds.decoding.attention as attention
from mtp_ds.decoding import generate
from mtp_ds.decoding.kv_cache import cache_argument
from mtp_ds.models.tiny import tiny_model


def _reference_sdpa(query, key, value, mask):
    n_rep = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(n_rep, dim=1), value.repeat_interleave(n_rep, dim=1)
    return torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=mask).transpose(1, 2)


@pytest.mark.parametrize("mask_kind", ["bool", "additive"])
@pytest.mark.parametrize("mask_rows", [1, 3])
def test_folded_heads_equal_repeated_kv(mask_kind, mask_rows):
    batch, heads, kv_heads, q_len, cached, dim = 3, 8, 2, 5, 11, 16
    query = torch.randn(batch, q_len, heads, dim).transpose(1, 2)  # the strided layout the models hand over
    key, value = torch.randn(batch, kv_heads, cached + q_len, dim), torch.randn(batch, kv_heads, cached + q_len, dim)
    allowed = torch.ones(mask_rows, 1, q_len, cached + q_len, dtype=torch.bool)
    allowed[..., cached:] = torch.ones(q_len, q_len, dtype=torch.bool).tril()
    allowed[-1, ..., :4] = False  # a row with holes in its cache
    mask = allowed if mask_kind == "bool" else torch.zeros(allowed.shape).masked_fill(~allowed, -1e30)

    folded, folded_mask = attention.fold_query_heads(query, mask, kv_heads)
    assert folded.shape == (batch, kv_heads, 4 * q_len, dim) and folded_mask.shape[2] == 4 * q_len
    output = torch.nn.functional.scaled_dot_product_attention(folded, key, value, attn_mask=folded_mask)
    ours = attention.unfold_query_heads(output, heads)
    torch.testing.assert_close(ours, _reference_sdpa(query, key, value, mask), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("arch", ["qwen3", "llama"])
def test_model_logits_equal_sdpa_with_ragged_mask(arch, monkeypatch):
    from transformers import DynamicCache

    model = tiny_model(arch, num_heads=4, num_kv_heads=2)
    folds = []
    monkeypatch.setattr(
        attention, "fold_query_heads", lambda *a, _fold=attention.fold_query_heads: folds.append(1) or _fold(*a)
    )
    batch, cached, q_len = 3, 9, 4
    ids = torch.randint(4, 120, (batch, cached + q_len))
    mask = torch.zeros(batch, 1, q_len, cached + q_len)
    mask[..., cached:] = torch.full((q_len, q_len), torch.finfo(torch.float32).min).triu(1)
    mask[1, ..., :3] = torch.finfo(torch.float32).min  # row 1: left padding
    positions = torch.arange(cached, cached + q_len).expand(batch, -1)
    logits = []
    with torch.inference_mode():
        for fold in (False, True):
            cache = DynamicCache()
            model(input_ids=ids[:, :cached], **{cache_argument(model): cache}, use_cache=True)
            with attention.decoding_attention(model) if fold else torch.inference_mode():
                logits.append(
                    model(
                        input_ids=ids[:, cached:],
                        attention_mask=mask,
                        position_ids=positions,
                        **{cache_argument(model): cache},
                        use_cache=True,
                    ).logits
                )
    assert len(folds) == model.config.num_hidden_layers  # the folded path really ran, once per layer
    torch.testing.assert_close(logits[1], logits[0], rtol=1e-5, atol=1e-5)
    assert model.config._attn_implementation == "sdpa"


def test_decoder_switches_only_during_generate_and_restores_after_an_error():
    model, _tokenizer, mask_tokens = make_mtp_model("qwen3")
    seen = []
    hook = model.model.layers[0].self_attn.register_forward_pre_hook(
        lambda module, args: seen.append(module.config._attn_implementation)
    )
    generate(model, torch.tensor([[5, 6, 7]]), mtp_token_id=mask_tokens, k=3, max_new_tokens=6)
    assert set(seen) == {attention.IMPLEMENTATION} and model.config._attn_implementation == "sdpa"

    def fail(module, args):
        raise RuntimeError("boom")

    hook.remove()
    model.model.layers[0].self_attn.register_forward_pre_hook(fail)
    with pytest.raises(RuntimeError, match="boom"):
        generate(model, torch.tensor([[5, 6, 7]]), mtp_token_id=mask_tokens, k=3, max_new_tokens=6)
    assert model.config._attn_implementation == "sdpa"


@pytest.mark.parametrize("kwargs", [dict(num_kv_heads=4), dict(attn_implementation="eager")])
def test_models_without_the_copy_are_left_alone(kwargs):
    model = tiny_model("qwen3", **kwargs)  # no grouped KV heads / not sdpa: nothing to fold
    before = model.config._attn_implementation
    with attention.decoding_attention(model):
        assert model.config._attn_implementation == before
