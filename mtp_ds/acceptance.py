"""ConfAdapt's acceptance rule, in one function: the decoder keeps what it says, the training metric reports it.

Why one place: a decoder and a metric that disagree make `accept_length@tau` promise an acceleration the decoder
never delivers. The paper's rule (its released decoding code; docs/METHOD.md section 2): of k_max predictions keep
the leading run whose top-1 probability is at least tau, starting at slot 0 (the anchor's own next-token
prediction); keep at least one token. Confidences [0.5, 0.95, 0.95, 0.2] at tau 0.9 keep 1 token;
[0.95, 0.92, 0.85, 0.97] keep 2.
"""

from __future__ import annotations

import torch


def confident_run_length(
    confidences: torch.Tensor, threshold: float, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """(..., K) top-1 probabilities -> (...,) long: tokens ConfAdapt keeps (the confident leading run, >= 1).

    `valid` (..., K) bool, optional: slots that exist (a region cut short by the sequence end, or a pass with
    fewer predictions than K); the run stops at the first invalid slot.
    """
    confident = confidences >= threshold
    if valid is not None:
        confident = confident & valid
    return confident.long().cumprod(dim=-1).sum(dim=-1).clamp(min=1)
