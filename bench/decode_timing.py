"""bench/decode.py's timing parts: the forward-call counter/timer, and our decoder on transformers' stock parts.

Why apart: decode.py reads as settings -> runs -> report; how a forward is timed and how the "... stock" A/B
rows swap in DynamicCache and the stock sdpa are details each of its runs shares.
"""

from __future__ import annotations

import contextlib
import time

import torch


def sync_device(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


class ForwardCounter:
    """Counts model forward calls, their query tokens and the time spent inside them (HF generate and ours alike).

    query_tokens: input columns of all calls (batch x new tokens, padding included; what the decoder's
    `num_query_tokens` counts), first_query_tokens those of the first call (the prompt pass).
    wall - forward_s is what the decoding loop costs around the model: input/mask building, cache bookkeeping,
    reading the predictions. On CUDA the hooks synchronize, which both loops do once per pass anyway.
    """

    def __init__(self, model, device: str):
        self.count = 0
        self.forward_s = 0.0
        self.query_tokens = self.first_query_tokens = 0
        self._start = 0.0
        self._device = device
        self.handles = [
            model.register_forward_pre_hook(self._pre, with_kwargs=True),
            model.register_forward_hook(self._post),
        ]

    def reset(self) -> None:
        self.count, self.forward_s = 0, 0.0
        self.query_tokens = self.first_query_tokens = 0

    def _pre(self, module, args, kwargs):
        inputs = kwargs.get("input_ids", args[0] if args else None)
        if inputs is None:
            inputs = kwargs.get("inputs_embeds")
        columns = inputs.shape[0] * inputs.shape[1] if inputs is not None else 0
        self.query_tokens += columns
        if self.count == 0:
            self.first_query_tokens = columns
        sync_device(self._device)
        self._start = time.perf_counter()

    def _post(self, module, args, output):
        sync_device(self._device)
        self.forward_s += time.perf_counter() - self._start
        self.count += 1

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


STOCK_SDPA = "sdpa_stock"


@contextlib.contextmanager
def stock_attention(model):
    """Run transformers' own sdpa under another name, which the decoder's switch to sdpa_gqa leaves alone."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(STOCK_SDPA, sdpa_attention_forward)
    AttentionMaskInterface.register(STOCK_SDPA, sdpa_mask)
    own = model.config._attn_implementation
    model.config._attn_implementation = STOCK_SDPA
    try:
        yield
    finally:
        model.config._attn_implementation = own


@contextlib.contextmanager
def stock_decoder(model):
    """Our decoder as it would run on transformers' stock parts: DynamicCache and the stock sdpa (the A/B rows)."""
    from transformers import DynamicCache

    import mtp_ds.decoding.decoder as decoder

    own_cache = decoder.make_cache
    decoder.make_cache = lambda reserve=0: DynamicCache()
    try:
        with stock_attention(model):
            yield
    finally:
        decoder.make_cache = own_cache
