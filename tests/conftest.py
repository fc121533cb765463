"""Shared fixtures: tiny random-weight Qwen3/Llama models and a local word tokenizer (no downloads)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch

from mtp_ds.models.tiny import tiny_model, word_tokenizer
from mtp_ds.tokens import add_mtp_tokens

ARCHS = ["qwen3", "llama"]
# "cuda" variants run where a GPU is (bench/gpu_check.sh runs them with `-m cuda`); on CPU machines they skip
CUDA = pytest.param(
    "cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]
)
DEVICES = ["cpu", CUDA]


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


def make_mtp_model(
    arch: str,
    *,
    distinct_slots: bool = False,
    k_max: int = 16,
    tie_word_embeddings: bool = False,
    attn_implementation: str = "sdpa",
    seed: int = 0,
):
    """(model, tokenizer, mask_tokens) with the mask token(s) added; fp32, eval mode."""
    tokenizer = word_tokenizer()
    model = tiny_model(
        arch,
        vocab_size=len(tokenizer),
        tie_word_embeddings=tie_word_embeddings,
        attn_implementation=attn_implementation,
        seed=seed,
    )
    mask_tokens = add_mtp_tokens(tokenizer, model, distinct_slots=distinct_slots, k_max=k_max)
    return model, tokenizer, mask_tokens


def bias_lm_head(model, token_ids, value: float) -> None:
    """Replace the model's lm_head by the same weights plus a bias of `value` on `token_ids` (zero elsewhere)."""
    old_head = model.lm_head
    biased_head = torch.nn.Linear(old_head.in_features, old_head.out_features, bias=True)
    with torch.no_grad():
        biased_head.weight.copy_(old_head.weight)
        biased_head.bias.zero_()
        biased_head.bias[list(token_ids)] = value
    model.lm_head = biased_head


@pytest.fixture(params=ARCHS)
def arch(request):
    return request.param
