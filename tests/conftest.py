"""Fixtures for both tiers: the offline environment, a fixed seed, and tiny model checkpoints built from configs.

Plain functions and constants are in helpers.py; independent reference implementations in references.py;
the shared trained run (one real trainer launch for the whole session) in integration/conftest.py.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest

pytest.register_assert_rewrite("helpers", "references")  # their asserts explain themselves like the tests' own

import torch  # noqa: E402
from helpers import ARCHS, make_mtp_model, save_checkpoint_dir  # noqa: E402


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    return


@pytest.fixture(params=ARCHS)
def arch(request):
    return request.param


@pytest.fixture(scope="session")
def tiny_mtp_dir(tmp_path_factory):
    """A tiny random Qwen3 with <MTP>, saved as a plain HF checkpoint."""
    model, tokenizer, _ = make_mtp_model("qwen3")
    return save_checkpoint_dir(model, tokenizer, tmp_path_factory.mktemp("tiny_mtp"))


@pytest.fixture(scope="session")
def drifting_mtp_dir(tmp_path_factory):
    """The tiny MTP model with a shared embedding component that the lm_head reads as "the": on the fixture's
    questions it drifts into runs its mask slots predict too, so selfspec passes both verify and reject
    proposals (a plain random model almost never verifies one). Only weights change, so it saves as usual."""
    model, tokenizer, _ = make_mtp_model("qwen3")
    with torch.no_grad():
        model.model.embed_tokens.weight[:, 0] = 0.04
        model.lm_head.weight[tokenizer.convert_tokens_to_ids("the"), 0] = 1.2
    return save_checkpoint_dir(model, tokenizer, tmp_path_factory.mktemp("drifting_mtp"))


@pytest.fixture(scope="session")
def base_model_dir(tmp_path_factory):
    """A plain causal LM without mask tokens (like the demo's teacher)."""
    from mtp_ds.models.tiny import tiny_model, word_tokenizer

    tokenizer = word_tokenizer()
    return save_checkpoint_dir(
        tiny_model("qwen3", vocab_size=len(tokenizer)), tokenizer, tmp_path_factory.mktemp("tiny_base")
    )
