"""The paper authors' released checkpoints (tests/authors_layout.py): no mask id in the config, the mask token
`<|mtp_special_token_0|>` in the tokenizer, rows padded to a multiple of 128, an auto_map to remote code that must
never run. The decoder and `mtp-ds generate` decode them once the mask token is adopted, found or given."""

import json
import runpy
import shutil

import pytest
import torch
from authors_layout import authors_checkpoint, mask_id
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from mtp_ds.decoding import generate
from mtp_ds.decoding.cli import main as generate_main
from mtp_ds.models.tiny import word_tokenizer
from mtp_ds.tokens import adopt_mask_tokens

PROMPT = "three pens and two books"


@pytest.fixture(scope="module")
def authors_dir(tmp_path_factory):
    return authors_checkpoint(tmp_path_factory.mktemp("authors") / "L3-1-8B-Magpie-MTP")


def test_the_layout_is_the_authors(authors_dir):
    config = json.loads((authors_dir / "config.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(authors_dir)
    assert "auto_map" in config and not any(key.startswith("mtp_") for key in config)
    assert config["vocab_size"] % 128 == 0 and config["vocab_size"] > len(tokenizer)
    assert mask_id(authors_dir) == len(word_tokenizer()) + 3  # three added tokens came first, as in Magpie's
    assert tokenizer.pad_token == "<|pad|>"
    for name in ("configuration_llama.py", "modeling_llama.py"):  # their remote code: importing it fails loudly
        with pytest.raises(RuntimeError, match=f"the checkpoint's remote code {name} was imported"):
            runpy.run_path(str(authors_dir / name))


def test_selfspec_after_adopting_equals_hf_greedy_without_mask_and_padding_ids(authors_dir):
    tokenizer = AutoTokenizer.from_pretrained(authors_dir)
    model = AutoModelForCausalLM.from_pretrained(authors_dir).eval()  # no trust_remote_code: their code never runs
    mask_tokens = adopt_mask_tokens(model.config, tokenizer)
    assert mask_tokens.ids == (mask_id(authors_dir),)
    assert mask_tokens.padding == (len(tokenizer), model.config.vocab_size)
    prompt = torch.tensor([tokenizer(PROMPT)["input_ids"]])
    with torch.no_grad():
        reference = model.generate(
            prompt,
            attention_mask=torch.ones_like(prompt),
            do_sample=False,
            max_new_tokens=16,
            suppress_tokens=list(mask_tokens.never_emitted),
            eos_token_id=None,
            pad_token_id=0,
        )
    expected = reference[0, prompt.shape[1] :].tolist()
    for k_max in (2, 4):
        result = generate(model, prompt, strategy="selfspec", k_max=k_max, max_new_tokens=16)
        assert result.sequences[0] == expected
    # without the suppression, stock greedy would be free to emit the mean-resized padding rows: they are real rows
    assert model.config.mtp_padding_rows == list(mask_tokens.padding)


@pytest.mark.parametrize("flag", [[], ["--mtp-token-id", "MASK"]])
def test_mtp_ds_generate_decodes_it_found_or_given(authors_dir, flag, capsys):
    argv = [str(authors_dir), "--prompt", PROMPT, "--strategy", "selfspec", "--max-new-tokens", "8", "--no-color"]
    argv += [str(mask_id(authors_dir)) if item == "MASK" else item for item in flag]
    assert generate_main(argv) == 0, capsys.readouterr().err
    assert "selfspec, k_max=16" in capsys.readouterr().out


def test_mtp_ds_generate_without_a_mask_token_says_to_pass_the_flag(authors_dir, tmp_path, capsys):
    model_dir = shutil.copytree(authors_dir, tmp_path / "model")
    word_tokenizer().save_pretrained(model_dir)  # a tokenizer with neither <MTP> nor <|mtp_special_token_0|>
    assert generate_main([str(model_dir), "--prompt", "three pens", "--max-new-tokens", "4"]) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err, captured.err
    assert captured.err.strip() == (
        f"mtp-ds generate: MODEL_DIR {str(model_dir)!r} has no mask token (no mtp_token_id in config.json, no <MTP> "
        "or <|mtp_special_token_0|> in the tokenizer): pass --mtp-token-id N, the id of its mask token "
        "(or use --strategy static --k 1)"
    )
    rows = AutoConfig.from_pretrained(model_dir).vocab_size
    assert generate_main([str(model_dir), "--prompt", "three pens", "--mtp-token-id", str(rows)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"mtp-ds generate: --mtp-token-id: mtp_token_id={rows} is out of range: the model has {rows} vocabulary "
        f"rows (ids 0..{rows - 1})"
    )
    given = ["--mtp-token-id", str(mask_id(authors_dir)), "--max-new-tokens", "4", "--no-color"]
    assert generate_main([str(model_dir), "--prompt", "three pens", *given]) == 0
