"""Grouped-query attention for MTP passes without copying the KV cache: the `sdpa_gqa` attention implementation.

With a mask and q > 1 new tokens, transformers' `sdpa` copies every layer's cached keys and values to all query
heads (`repeat_kv`) on every pass. `sdpa_gqa` folds the query heads that share a KV head into rows instead: the
same softmax over the same keys, no copy. `decoding_attention(model)` switches a model to it for one decode and
restores it after. docs/DECODING.md has the why and the measurement.
"""

from __future__ import annotations

import contextlib

import torch

IMPLEMENTATION = "sdpa_gqa"
_stock_sdpa = None  # transformers' sdpa_attention_forward, set by register() (keeps the import lazy)


def fold_query_heads(query: torch.Tensor, mask: torch.Tensor, kv_heads: int):
    """(B, H, q, d) queries and a (B|1, 1, q, kv) mask -> (B, kv_heads, n_rep*q, d) and (B|1, 1, n_rep*q, kv).

    Query head h = kv_head * n_rep + r (the order `repeat_kv` expands keys in) becomes row r * q + i of KV head
    `kv_head`; the mask row i is repeated for every r.
    """
    batch, heads, q_len, dim = query.shape
    n_rep = heads // kv_heads
    folded = query.reshape(batch, kv_heads, n_rep * q_len, dim)
    rows, _, _, kv_len = mask.shape
    folded_mask = mask[:, :, None].expand(rows, 1, n_rep, q_len, kv_len).reshape(rows, 1, n_rep * q_len, kv_len)
    return folded, folded_mask


def unfold_query_heads(output: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, kv_heads, n_rep*q, d) attention output -> (B, q, H, d), the layout transformers' attention returns."""
    batch, _, rows, dim = output.shape
    q_len = rows * output.shape[1] // heads
    return output.reshape(batch, heads, q_len, dim).transpose(1, 2).contiguous()


def sdpa_gqa_attention_forward(
    module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, is_causal=None, **kwargs
):
    """transformers attention-interface function: `sdpa` with folded query heads where `sdpa` would copy K/V."""
    heads, kv_heads, q_len = query.shape[1], key.shape[1], query.shape[2]
    applies = (
        attention_mask is not None
        and q_len > 1
        and heads != kv_heads
        and attention_mask.dim() == 4
        and attention_mask.shape[1] == 1
        and kwargs.get("position_bias") is None
        and kwargs.get("cache") is None
        and key.shape[-1] == value.shape[-1]
    )
    if not applies:
        return _stock_sdpa(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs
        )
    folded, folded_mask = fold_query_heads(query, attention_mask, kv_heads)
    output = torch.nn.functional.scaled_dot_product_attention(
        folded, key, value, attn_mask=folded_mask, dropout_p=dropout, scale=scaling, is_causal=False
    )
    return unfold_query_heads(output, heads), None


def register() -> None:
    """Make `sdpa_gqa` a transformers attention implementation (masks built as for `sdpa`), this module's function.

    Registered again on every call: transformers' registry is global, and an export's `custom_generate/` copy of
    this module, loaded in the same process, registers its own function under the same name."""
    global _stock_sdpa
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(IMPLEMENTATION, sdpa_gqa_attention_forward)
    AttentionMaskInterface.register(IMPLEMENTATION, sdpa_mask)
    _stock_sdpa = sdpa_attention_forward


def _grouped(config) -> bool:
    heads = getattr(config, "num_attention_heads", None)
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    return bool(heads) and kv_heads != heads


@contextlib.contextmanager
def decoding_attention(model):
    """Run `sdpa_gqa` inside the block when the model runs `sdpa` with grouped KV heads; restore on exit."""
    config = getattr(model, "config", None)
    if config is None or getattr(config, "_attn_implementation", None) != "sdpa" or not _grouped(config):
        yield
        return
    register()
    config._attn_implementation = IMPLEMENTATION
    try:
        yield
    finally:
        config._attn_implementation = "sdpa"
