"""What `lm_eval --model mtp` counts while it decodes: per task and per run, summed over data-parallel ranks.

The acceleration factor (mean tokens kept per sequence pass), forward passes, query tokens per pass, tokens/s and,
for selfspec, verified proposals per pass; they land in the results JSON under `config.mtp_decoding`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass
class DecodingStats:
    """Counters of one task (or a whole run): what the acceleration factor and tokens/s are computed from."""

    tokens_per_pass: list[int] = field(default_factory=list)  # flattened over every sequence's passes
    forward_passes: int = 0  # batched model calls (one call serves every row of a batch)
    generated_tokens: int = 0
    sequences: int = 0
    generate_seconds: float = 0.0
    query_tokens: int = 0  # input columns of all batched forward passes (padding included)
    verified_per_pass: list[int] = field(default_factory=list)  # selfspec: verified proposals kept, per sequence pass

    def add(self, result, seconds: float) -> None:
        for counts in result.tokens_per_pass:
            self.tokens_per_pass.extend(counts)
        for counts in getattr(result, "verified_per_pass", None) or []:
            self.verified_per_pass.extend(counts)
        self.query_tokens += getattr(result, "num_query_tokens", 0) or 0
        self.generated_tokens += sum(len(row) for row in result.sequences)
        self.sequences += len(result.sequences)
        self.forward_passes += getattr(result, "num_forward_passes", None) or max(
            (len(counts) for counts in result.tokens_per_pass), default=0
        )
        self.generate_seconds += seconds

    def merge(self, other: DecodingStats) -> None:
        self.tokens_per_pass.extend(other.tokens_per_pass)
        self.forward_passes += other.forward_passes
        self.generated_tokens += other.generated_tokens
        self.sequences += other.sequences
        self.generate_seconds += other.generate_seconds
        self.query_tokens += other.query_tokens
        self.verified_per_pass.extend(other.verified_per_pass)

    def summary(self) -> dict:
        passes = len(self.tokens_per_pass)
        mean = sum(self.tokens_per_pass) / passes if passes else float("nan")
        var = sum((c - mean) ** 2 for c in self.tokens_per_pass) / passes if passes else float("nan")
        return {
            "acceleration_factor": mean,
            "acceleration_factor_std": math.sqrt(var),
            "sequence_passes": passes,  # forward passes counted per sequence (the acceleration denominator)
            "forward_passes": self.forward_passes,
            "generated_tokens": self.generated_tokens,
            "sequences": self.sequences,
            "generate_seconds": self.generate_seconds,
            "tokens_per_second": self.generated_tokens / self.generate_seconds if self.generate_seconds else 0.0,
            "query_tokens_per_forward_pass": self.query_tokens / self.forward_passes if self.forward_passes else 0.0,
            "verified_tokens_per_pass": (
                sum(self.verified_per_pass) / len(self.verified_per_pass) if self.verified_per_pass else None
            ),
        }

    def log_line(self, label: str) -> str:
        s = self.summary()
        return (
            f"MTP decoding [{label}]: acceleration factor {s['acceleration_factor']:.3f} "
            f"± {s['acceleration_factor_std']:.3f} tokens/pass, {s['sequence_passes']} sequence passes "
            f"({s['forward_passes']} batched forward passes), {s['generated_tokens']} generated tokens, "
            f"{s['tokens_per_second']:.1f} tokens/s"
        )
