"""Loading what the recipe's `model` section names: the tokenizer and the initial checkpoint.

Why one place: the trainer, the demo's pretraining and the benchmarks must load exactly the same tokenizer
and weights (or the same seeded random tiny model), in the dtype and attention kernel the run plan chose.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from mtp_ds.config import ModelConfig


def load_tokenizer(model: ModelConfig):
    """The recipe's tokenizer: `builtin:word` (mtp_ds.models.tiny.word_tokenizer), a local dir or a hub id."""
    name = model.tokenizer or model.name_or_path
    if name == "builtin:word":
        from mtp_ds.models.tiny import word_tokenizer

        return word_tokenizer()
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(name)


def device_for_rank(local_rank: int) -> torch.device:
    return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")


def load_base_model(
    model_config, *, dtype: torch.dtype, attn_implementation: str, vocab_size: int, seed: int, device=None
):
    """The initial checkpoint as a plain HF model: from a hub id / local dir, or random from `tiny_config`.
    A random model is initialised on `device` when that is a GPU: initialising billions of weights on the host
    takes minutes (the bench's 4B/8B shapes); on CPU nothing changes."""
    from transformers import AutoModelForCausalLM

    if model_config.tiny_config:
        from mtp_ds.models.tiny import tiny_model_config

        fields = dict(model_config.tiny_config)
        arch = fields.pop("arch", "qwen3")
        fields.setdefault("vocab_size", vocab_size)
        torch.manual_seed(seed)  # identical random weights on every rank
        config = tiny_model_config(arch, **fields)
        on_gpu = device is not None and torch.device(device).type == "cuda"
        with torch.device(device) if on_gpu else contextlib.nullcontext():
            return AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation, dtype=dtype)
    return AutoModelForCausalLM.from_pretrained(
        model_config.name_or_path, dtype=dtype, attn_implementation=attn_implementation
    )


def memory_report(label: str, device: torch.device) -> str:
    """One log line with allocated/peak accelerator memory (or process RSS on CPU)."""
    if device.type == "cuda":
        gib = 1024**3
        return (
            f"{label}: allocated {torch.cuda.memory_allocated(device) / gib:.2f} GiB, "
            f"peak {torch.cuda.max_memory_allocated(device) / gib:.2f} GiB"
        )
    import resource

    return f"{label}: peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB"
