"""The stop-string rule decodes a bounded tail window per pass, and cuts exactly where the full-decode rule cuts.

The rule (`result.StopRule`): a row ends at the first token after which decode(generated + kept) contains a stop
string. `full_decode_cut` below is that rule as it was first written (the whole output decoded on every pass,
once per stop string): the independent reference. The tokenizers cover a word-level one whose decoder cleans up
spaces, a byte-level BPE whose tokens split multi-byte characters, and a Metaspace BPE (SentencePiece-style
leading spaces), on random token streams and random stop strings.
"""

import random

import pytest

from mtp_ds.decoding.result import RowState, StopRule
from mtp_ds.models.tiny import TINY_WORDS, word_tokenizer

CORPUS = [
    "héllo wörld, the naïve café serves crème brûlée at 5 o'clock.",
    "数学 问题: 3 个 苹果 加 4 个 苹果 是 7 个 苹果。",
    "Question: how many apples? Answer: 7 🙂 🍎🍎 — done.",
    "emoji 🙂 and math ∑ x² ≤ 10 with ünïcödé.",
] * 4


def full_decode_cut(tokenizer, generated, block, stop_strings):
    """The reference: index in `block` of the token completing a stop string, by decoding everything."""
    if not any(s in tokenizer.decode(generated + block) for s in stop_strings):
        return None
    for end in range(1, len(block) + 1):
        if any(s in tokenizer.decode(generated + block[:end]) for s in stop_strings):
            return end - 1
    return len(block) - 1


def bpe_tokenizer(kind: str):
    """A small BPE trained in-process: "byte" (GPT-2 style byte-level) or "metaspace" (SentencePiece style)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(unk_token=None if kind == "byte" else "<unk>"))
    if kind == "byte":
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        backend.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    else:
        backend.pre_tokenizer = pre_tokenizers.Metaspace()
        backend.decoder = decoders.Metaspace()
        alphabet = []
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "</s>"], initial_alphabet=alphabet)
    backend.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="</s>", unk_token="<unk>")


TOKENIZERS = {
    "word": lambda: word_tokenizer(extra_words=[".", ",", "?", ":", "n't", "'s"]),
    "byte": lambda: bpe_tokenizer("byte"),
    "metaspace": lambda: bpe_tokenizer("metaspace"),
}


class CountingTokenizer:
    """A tokenizer whose `decode` counts its calls and the tokens it decodes."""

    def __init__(self, inner):
        self.inner, self.calls, self.tokens = inner, 0, 0

    def decode(self, ids, **kwargs):
        self.calls, self.tokens = self.calls + 1, self.tokens + len(ids)
        return self.inner.decode(ids, **kwargs)


def cut_by_rule(tokenizer, generated, block, stop_strings):
    row = RowState(pending=[], next_position=0, generated=list(generated))
    kept = StopRule.of(tokenizer=tokenizer, stop_strings=stop_strings).finish(row, list(block), 10**9)
    return (len(kept) - 1) if row.stop_reason == "stop_string" else None


@pytest.mark.parametrize("kind", sorted(TOKENIZERS))
def test_the_windowed_cut_equals_the_full_decode_cut_on_random_streams(kind):
    tokenizer = TOKENIZERS[kind]()
    rng = random.Random(f"stop-{kind}")
    vocab = sorted(set(tokenizer.get_vocab().values()) - set(tokenizer.all_special_ids))
    compared = cuts = 0
    for _ in range(150):
        stream = [rng.choice(vocab) for _ in range(rng.randint(20, 120))]
        text = tokenizer.decode(stream)
        stops = []
        for _ in range(rng.randint(1, 3)):  # pieces of the stream's text (so that they occur), or absent ones
            length = rng.randint(1, 10)
            start = rng.randrange(max(1, len(text) - length))
            stops.append(text[start : start + length] if rng.random() < 0.8 else "zq" * length)
        generated, at = [], 0
        while at < len(stream):
            block = stream[at : at + rng.randint(1, 6)]
            expected = full_decode_cut(tokenizer, generated, block, stops)
            assert cut_by_rule(tokenizer, generated, block, stops) == expected, (generated, block, stops)
            compared += 1
            if expected is not None:
                cuts += 1
                break
            generated, at = generated + block, at + len(block)
    assert compared > 1000 and cuts > 50, (compared, cuts)  # both outcomes were exercised, many times


def test_the_work_per_pass_is_bounded_by_the_window_not_the_output():
    """A 3000-token output without a stop string: every pass decodes a few dozen tokens in at most 4 calls, the
    same at the end as at the start (the full-decode rule decoded the whole output once per stop string)."""
    tokenizer = CountingTokenizer(word_tokenizer())
    rule = StopRule.of(tokenizer=tokenizer, stop_strings=["Question:", "\n\n", "</s>", "the end"])
    rng = random.Random(0)
    vocab = [tokenizer.inner.convert_tokens_to_ids(word) for word in TINY_WORDS if word not in ("the", "end")]
    row = RowState(pending=[], next_position=0)
    per_pass = []
    for _ in range(1000):
        before = (tokenizer.calls, tokenizer.tokens)
        block = rule.finish(row, [rng.choice(vocab) for _ in range(3)], 10**9)
        row.generated += block
        per_pass.append((tokenizer.calls - before[0], tokenizer.tokens - before[1]))
    assert not row.stop_reason and len(row.generated) == 3000
    assert max(calls for calls, _ in per_pass) <= 4, per_pass[-5:]
    assert max(tokens for _, tokens in per_pass) <= 80, per_pass[-5:]
