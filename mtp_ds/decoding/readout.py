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


def sampling_probs(logits: torch.Tensor, temperature: float, mask_tokens: MaskTokens) -> torch.Tensor:
    """softmax(logits / T) over the vocabulary without the mask ids: the distribution k=1 sampling draws from."""
    return torch.softmax(without_mask_ids(logits, mask_tokens) / temperature, dim=-1)


def draw(probs: torch.Tensor, generator: torch.Generator | None) -> int:
    """One token from a (V,) distribution, with the caller's generator (on the generator's device)."""
    if generator is not None:
        probs = probs.to(generator.device)
    return int(torch.multinomial(probs, 1, generator=generator))


def sample(logits: torch.Tensor, temperature: float, mask_tokens: MaskTokens, generator) -> int:
    return draw(sampling_probs(logits, temperature, mask_tokens), generator)
