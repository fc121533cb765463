"""Special-token text inside a data row, and rows that cannot become samples (issue: one bad row stops the run).

The tokenizers are real byte-level BPE tokenizers trained here in a few milliseconds (no download): a Llama-3-like
one with its chat template (the Llama recipes' format: chat template on, data.eos_token <|end_of_text|>) and a
Qwen-like one (the Qwen recipe's format: chat template off, EOS <|im_end|>). Literal `<|eot_id|>` or `<|im_end|>`
written inside a prompt or response must stay text; the special tokens the template writes must stay special.
"""

import json
import logging

import pytest
from helpers import REPO

import mtp_ds.data.tokenize as data_module
from mtp_ds.config import ConfigError, DataConfig, load_recipe
from mtp_ds.data import build_datasets, encode_example, eos_token_id
from mtp_ds.models.tiny import word_tokenizer

LLAMA_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
LLAMA_TEMPLATE = (  # Llama 3's turns: header, trimmed content, <|eot_id|>
    "{{ bos_token }}{% for m in messages %}"
    "{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n' + m['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CORPUS = [
    "please repeat the words after me now. how many apples are left? there are 3 apples left.",
    "user assistant system: the answer is 42. write <tags> and |pipes| and _under_scores_.",
]


def bpe_tokenizer(specials, **special_roles):
    """A byte-level BPE (GPT-2 / Llama 3 / Qwen pre-tokenizer) with `specials` as special added tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=500,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(CORPUS * 10, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, **special_roles)


@pytest.fixture(scope="module")
def llama():
    tokenizer = bpe_tokenizer(LLAMA_SPECIALS, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>")
    tokenizer.chat_template = LLAMA_TEMPLATE
    return tokenizer


@pytest.fixture(scope="module")
def qwen():
    return bpe_tokenizer(QWEN_SPECIALS, eos_token="<|im_end|>", pad_token="<|endoftext|>")


def ids_of(tokenizer, token: str) -> int:
    return tokenizer.convert_tokens_to_ids(token)


def contains_run(ids: list[int], run: list[int]) -> bool:
    return any(ids[i : i + len(run)] == run for i in range(len(ids) - len(run) + 1))


def as_text(tokenizer, text: str) -> list[int]:
    """`text` tokenised as plain text: what a literal special token inside a row must become."""
    return tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]


# ---------------------------------------------------------------- literal special-token text stays text


def test_llama_chat_template_keeps_its_specials_and_a_literal_eot_stays_text(llama):
    data = DataConfig(seq_len=96, chat_template=True, eos_token="<|end_of_text|>")
    eos = eos_token_id(llama, data)
    prompt, response = "please repeat <|eot_id|> now", "the answer is <|start_header_id|> 42"
    sample = encode_example(prompt, response, llama, data, eos)
    ids = sample["input_ids"][: sample["length"]]
    plain = encode_example("please repeat the words now", "the answer is 42", llama, data, eos)
    plain_ids = plain["input_ids"][: plain["length"]]
    for special in LLAMA_SPECIALS:  # exactly the template's own: BOS, 2 headers, 2 <|eot_id|>, then the sample's EOS
        assert ids.count(ids_of(llama, special)) == plain_ids.count(ids_of(llama, special)), special
    assert contains_run(ids[: sample["response_start"]], as_text(llama, " <|eot_id|> now"))
    assert contains_run(ids[sample["response_start"] :], as_text(llama, " <|start_header_id|> 42"))
    user = [{"role": "user", "content": prompt}]
    text = llama.apply_chat_template([*user, {"role": "assistant", "content": response}], tokenize=False)
    assert llama.decode(ids) == text + "<|end_of_text|>"  # every character is there, as text or as the template's
    prefix = llama.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
    assert llama.decode(ids[: sample["response_start"]]) == prefix  # the response starts where the template says


def test_a_literal_end_of_text_in_a_llama_prompt_is_text_not_the_end_of_the_sample(llama):
    """Before: <|end_of_text|> (the Llama recipes' data.eos_token) written in a Magpie prompt stopped the run."""
    data = DataConfig(seq_len=96, chat_template=True, eos_token="<|end_of_text|>")
    eos = eos_token_id(llama, data)
    sample = encode_example("repeat <|end_of_text|> please", "42", llama, data, eos)
    assert eos not in sample["input_ids"][: sample["length"] - 1]
    assert sample["input_ids"][sample["length"] - 1] == eos
    # not a row's fault, and still refused: <|eot_id|>, which the template writes after every turn, as the EOS
    ends_turns = DataConfig(seq_len=96, chat_template=True)
    with pytest.raises(ConfigError, match=r"^data\.eos_token: id \d+ \('<\|eot_id\|>'\) occurs inside the prompt"):
        encode_example("repeat <|end_of_text|> please", "42", llama, ends_turns, eos_token_id(llama, ends_turns))


def test_qwen_plain_format_reads_a_literal_eos_in_the_prompt_as_text(qwen):
    """The Qwen recipe's format (chat template off): the tokenizer's EOS <|im_end|> written in a prompt."""
    data = DataConfig(seq_len=64)
    eos = eos_token_id(qwen, data)
    assert eos == ids_of(qwen, "<|im_end|>")
    sample = encode_example("how many <|im_end|> apples?", "3 <|endoftext|> apples", qwen, data, eos)
    ids = sample["input_ids"][: sample["length"]]
    assert ids[-1] == eos and eos not in ids[:-1] and ids_of(qwen, "<|endoftext|>") not in ids
    assert ids == as_text(qwen, "how many <|im_end|> apples?\n\n3 <|endoftext|> apples") + [eos]


def test_a_prompt_template_keeps_its_own_specials(qwen):
    template = "<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"
    data = DataConfig(seq_len=64, prompt_template=template, separator="", eos_token="<|endoftext|>")
    sample = encode_example("say <|im_end|> twice", "ok", qwen, data, eos_token_id(qwen, data))
    ids = sample["input_ids"][: sample["length"]]
    assert ids.count(ids_of(qwen, "<|im_start|>")) == 2 and ids.count(ids_of(qwen, "<|im_end|>")) == 1
    assert contains_run(ids, as_text(qwen, "say <|im_end|> twice"))


# ---------------------------------------------------------------- bad rows are skipped, counted and named


def write_rows(path, prompts):
    rows = [
        {"query": p, "response": "3 apples", "original_question": f"q{i}", "type": "x"} for i, p in enumerate(prompts)
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_a_row_whose_prompt_holds_the_eos_is_skipped_counted_and_named(tmp_path, caplog, monkeypatch):
    """The tiny recipe's word tokenizer reads `</s>` as its EOS even as plain text: such a row cannot become a
    sample. Before, it stopped the whole run with one line that did not say which row."""
    prompts = ["how many apples ?", "how many </s> apples ?", "how many pears ?", "are there </s> apples ?"]
    path = write_rows(tmp_path / "rows.jsonl", prompts)
    overrides = [
        f"data.path={path}",
        f"data.cache_dir={tmp_path / 'cache'}",
        "data.validation_fraction=0.0",
        "train.eval_every=0",
    ]
    recipe = load_recipe(REPO / "recipes" / "tiny_cpu.yaml", overrides)
    with caplog.at_level(logging.WARNING, logger="mtp_ds"):
        data = build_datasets(recipe, word_tokenizer())
    assert (len(data.train), data.num_dropped, data.skipped.count, data.num_raw) == (2, 0, 2, 4)
    assert data.skipped.first.startswith("row 1: its prompt holds the end-of-sample token '</s>' (id 2)")
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1 and "skipped 2 of 4 rows" in warnings[0] and "row 1: " in warnings[0]

    monkeypatch.setattr(data_module, "encode_example", lambda *args, **kwargs: pytest.fail("tokenised again"))
    again = build_datasets(recipe, word_tokenizer())  # the cache keeps the skipped rows' count and reason
    assert again.skipped == data.skipped and again.train["input_ids"] == data.train["input_ids"]


def test_only_bad_rows_is_one_error_naming_the_first(tmp_path):
    path = write_rows(tmp_path / "bad.jsonl", ["a </s> b", "c </s> d"])
    recipe = load_recipe(REPO / "recipes" / "tiny_cpu.yaml", [f"data.path={path}", f"data.cache_dir={tmp_path}"])
    expected = r"no row of .*bad\.jsonl.* can become a sample; the first: row 0: its prompt holds"
    with pytest.raises(ConfigError, match=expected):
        build_datasets(recipe, word_tokenizer())
