"""Turning a pass's logits into tokens: greedy with the mask ids never eligible, ConfAdapt's confidences, sampling.

Why one place: every strategy must read the same distribution (the mask ids removed, then argmax or
softmax(logits / T)), or "selfspec equals the model's own k=1" would compare two different models.
"""

from __future__ import annotations

import torch

from mtp_ds.acceptance import confident_run_length
from mtp_ds.tokens import MaskTokens


def without_mask_ids(logits: torch.Tensor, mask_tokens: MaskTokens) -> torch.Tensor:
    """float32 copy of `logits` with every mask id (and padding row) at -inf: never emitted nor proposed."""
    logits = logits.float().clone() if logits.dtype == torch.float32 else logits.float()
    logits[..., list(mask_tokens.never_emitted)] = float("-inf")
    return logits


def read_predictions(
    logits: torch.Tensor, mask_tokens: MaskTokens, threshold: float | None = None
) -> tuple[list[list[int]], list[int] | None]:
    """Greedy token per position, with the mask ids never eligible, and (with a ConfAdapt `threshold`) each
    row's confident run length from the softmax top-1 probabilities.

    One device-to-host transfer per pass (tokens and run lengths travel together); Static k needs no softmax.
    """
    logits = without_mask_ids(logits, mask_tokens)
    if threshold is None:
        return logits.argmax(dim=-1).tolist(), None
    confidences, tokens = torch.softmax(logits, dim=-1).max(dim=-1)
    runs = confident_run_length(confidences, threshold)
    both = torch.cat([tokens, runs[:, None]], dim=1).tolist()
    return [row[:-1] for row in both], [row[-1] for row in both]


def sampling_probs(
    logits: torch.Tensor,
    temperature: float,
    mask_tokens: MaskTokens,
    top_k: int | None = None,
    top_p: float | None = None,
) -> torch.Tensor:
    """softmax(logits / T) over the vocabulary without the mask ids, cut to the `top_k` most likely tokens and
    then to the fewest whose mass reaches `top_p` (ties at the top-k boundary kept), renormalised: the
    distribution k=1 sampling draws from. Selfspec drafts and verifies with this same distribution, so its
    speculative sampling stays exact for the cut one."""
    scaled = without_mask_ids(logits, mask_tokens) / temperature
    if top_k is not None and top_k < scaled.shape[-1]:
        kth = scaled.topk(top_k, dim=-1).values[..., -1:]
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    probs = torch.softmax(scaled, dim=-1)
    if top_p is not None and top_p < 1.0:
        ordered, order = probs.sort(dim=-1, descending=True)
        mass_before = ordered.cumsum(dim=-1) - ordered  # the most likely token always stays (mass before it is 0)
        cut = torch.zeros_like(probs, dtype=torch.bool).scatter(-1, order, mass_before >= top_p)
        probs = probs.masked_fill(cut, 0.0)
        probs = probs / probs.sum(dim=-1, keepdim=True)
    return probs


def draw(probs: torch.Tensor, generator: torch.Generator | None) -> int:
    """One token from a (V,) distribution, with the caller's generator (on the generator's device)."""
    if generator is not None:
        probs = probs.to(generator.device)
    return int(torch.multinomial(probs, 1, generator=generator))


def sample(logits: torch.Tensor, spec, mask_tokens: MaskTokens, generator) -> int:
    """One token from the distribution `spec` (a DecodeSpec: temperature, top_k, top_p) samples."""
    return draw(sampling_probs(logits, spec.temperature, mask_tokens, spec.top_k, spec.top_p), generator)
