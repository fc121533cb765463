"""Tiny random-weight models and a locally built tokenizer, for tests, CPU recipes and benchmarks.

Why: model weights cannot be downloaded on the build machines, but every code path (loading, adding the mask
token, packing, training, export, decoding) must run on a real Hugging Face model and a real tokenizer. These
builders give the same classes the real recipes load (Qwen3ForCausalLM, LlamaForCausalLM,
PreTrainedTokenizerFast), only small.
"""

from __future__ import annotations

import torch

TINY_WORDS = [
    "the",
    "a",
    "an",
    "of",
    "to",
    "and",
    "in",
    "is",
    "was",
    "for",
    "on",
    "with",
    "as",
    "at",
    "by",
    "it",
    "from",
    "that",
    "this",
    "be",
    "are",
    "or",
    "has",
    "have",
    "had",
    "not",
    "but",
    "what",
    "all",
    "were",
    "when",
    "we",
    "there",
    "can",
    "more",
    "if",
    "no",
    "out",
    "so",
    "said",
    "who",
    "would",
    "up",
    "about",
    "into",
    "them",
    "than",
    "its",
    "then",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "apples",
    "pens",
    "books",
    "boxes",
    "coins",
    "buys",
    "sells",
    "gives",
    "has",
    "left",
    "total",
    "each",
    "how",
    "many",
    "much",
    "does",
    "do",
    "did",
    "+",
    "-",
    "*",
    "/",
    "=",
    "?",
    ".",
    ",",
    ":",
    "###",
    "answer",
    "question",
    "step",
    "think",
    "let's",
]


def tiny_model_config(
    arch: str = "qwen3",
    *,
    vocab_size: int = 128,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 128,
    max_position_embeddings: int = 2048,
    tie_word_embeddings: bool = False,
    **extra,
):
    """A small config of a real architecture ("qwen3" or "llama"); `extra` overrides any config field."""
    from transformers import LlamaConfig, Qwen3Config

    common = dict(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=tie_word_embeddings,
        head_dim=hidden_size // num_heads,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    common.update(extra)
    if arch == "qwen3":
        return Qwen3Config(**common)
    if arch == "llama":
        return LlamaConfig(**common)
    raise ValueError(f"arch must be 'qwen3' or 'llama', got {arch!r}")


def tiny_model(arch: str = "qwen3", *, seed: int = 0, attn_implementation: str = "sdpa", **config_kwargs):
    """A random-weight causal LM in fp32, eval mode."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    config = tiny_model_config(arch, **config_kwargs)
    model = AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation, dtype=torch.float32)
    return model.eval()


def word_tokenizer(words=TINY_WORDS, *, extra_words=()):
    """A word-level PreTrainedTokenizerFast (single digits, specials <pad>=0, <s>=1, </s>=2, <unk>=3)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    for word in [*map(str, range(10)), *words, *extra_words]:
        vocab.setdefault(word, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Digits(individual_digits=True)]
    )
    from tokenizers import decoders

    backend.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )
