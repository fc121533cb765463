"""Train a sentencepiece BPE model on a corpus and wrap it as a Hugging Face fast tokenizer.

Why: the demo's model needs a real subword tokenizer learned from its own data (no downloads), saved with the
checkpoint so `AutoTokenizer.from_pretrained`, the trainer and `lm_eval` load it like any hub tokenizer.
sentencepiece learns the pieces (digits split, as in Llama/Qwen tokenizers); the `tokenizers` BPE built from
its vocabulary reproduces its segmentation exactly (tested), without the protobuf-based converter.
Specials: <pad>=0, <s>=1, </s>=2, <unk>=3; no special is added when encoding (like Qwen3: no BOS).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

SPECIALS = ("<pad>", "<s>", "</s>", "<unk>")
SPACE = "\u2581"  # sentencepiece's whitespace marker


def train_sentencepiece(texts: Iterable[str], model_prefix: str | Path, vocab_size: int = 512) -> Path:
    """Train a BPE sentencepiece model on `texts`; returns the .model path."""
    import sentencepiece

    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(texts),
        model_prefix=str(model_prefix),
        vocab_size=vocab_size,
        model_type="bpe",
        hard_vocab_limit=False,
        split_digits=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        user_defined_symbols=["\n"],
        character_coverage=1.0,
        pad_id=0,
        bos_id=1,
        eos_id=2,
        unk_id=3,
        num_threads=2,
        minloglevel=2,
    )
    return Path(f"{model_prefix}.model")


def bpe_merges(vocab: dict[str, int]) -> list[tuple[str, str]]:
    """The merge list that rebuilds every multi-character piece, ranked like sentencepiece (by piece id)."""
    ranked = []
    for piece, piece_id in vocab.items():
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in vocab and right in vocab:
                ranked.append((piece_id, vocab[left], vocab[right], left, right))
    return [(left, right) for *_, left, right in sorted(ranked)]


def fast_tokenizer_from_sentencepiece(model_file: str | Path):
    """A PreTrainedTokenizerFast with the same pieces and segmentation as the sentencepiece model."""
    import sentencepiece
    from tokenizers import Tokenizer, decoders, models, normalizers
    from transformers import PreTrainedTokenizerFast

    processor = sentencepiece.SentencePieceProcessor(model_file=str(model_file))
    vocab = {processor.id_to_piece(i): i for i in range(processor.get_piece_size())}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=bpe_merges(vocab), unk_token="<unk>", fuse_unk=True))
    backend.normalizer = normalizers.Sequence([normalizers.Prepend(SPACE), normalizers.Replace(" ", SPACE)])
    backend.decoder = decoders.Sequence([decoders.Replace(SPACE, " "), decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )


def train_tokenizer(texts: Iterable[str], out_dir: str | Path, vocab_size: int = 512):
    """Train, wrap and save (out_dir gets tokenizer.json + config and the sentencepiece model); returns it."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model_file = train_sentencepiece(texts, out_dir / "sentencepiece", vocab_size)
    tokenizer = fast_tokenizer_from_sentencepiece(model_file)
    tokenizer.save_pretrained(out_dir)
    return tokenizer
