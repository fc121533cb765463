"""`mtp-ds import SOURCE OUT_DIR` on a checkpoint laid out as the paper authors' release (tests/authors_layout.py):
OUT_DIR records the mask token, drops the auto_map and their .py files, links the weights, and stock transformers
loads it without remote code and decodes it with this repo's custom_generate."""

import json
import os

import pytest
import torch
from authors_layout import authors_checkpoint, mask_id
from transformers import AutoModelForCausalLM, AutoTokenizer

from mtp_ds.checkpoint.import_model import main as import_main
from mtp_ds.cli import main as mtp_ds_main
from mtp_ds.decoding import generate
from mtp_ds.decoding.bundle import FOLDER
from mtp_ds.models.tiny import word_tokenizer


@pytest.fixture(scope="module")
def authors_dir(tmp_path_factory):
    return authors_checkpoint(tmp_path_factory.mktemp("authors") / "L3-1-8B-Magpie-MTP")


def _one_error_line(capsys) -> str:
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err, captured.err
    return captured.err.strip()


def test_import_writes_a_checkpoint_stock_transformers_reads_without_remote_code(authors_dir, tmp_path, capsys):
    out_dir = tmp_path / "imported"
    assert mtp_ds_main(["import", str(authors_dir), str(out_dir)]) == 0
    line = capsys.readouterr().out.strip()
    assert line.endswith(
        f"stock transformers: AutoModelForCausalLM.from_pretrained({str(out_dir)!r}).generate(**inputs, "
        f"custom_generate={str(out_dir)!r}, trust_remote_code=True)"
    )
    assert not list(out_dir.glob("*.py"))  # their remote code is not copied
    assert (out_dir / FOLDER / "generate.py").is_file()
    weights = out_dir / "model.safetensors"
    assert weights.is_symlink() and os.readlink(weights) == str((authors_dir / "model.safetensors").resolve())
    config = json.loads((out_dir / "config.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(out_dir)
    assert "auto_map" not in config and config["mtp_token_id"] == mask_id(authors_dir)
    assert config["mtp_padding_rows"] == [len(tokenizer), config["vocab_size"]]
    assert config["mtp_decoding"]["strategy"] == "selfspec"
    assert config["pard_token"] == config["mtp_token_id"]  # vLLM parallel drafting (untested here)
    generation = json.loads((out_dir / "generation_config.json").read_text())
    never = [mask_id(authors_dir), *range(len(tokenizer), config["vocab_size"])]
    assert generation["use_cache"] is True and generation["suppress_tokens"] == never
    assert (
        generation["eos_token_id"] == json.loads((authors_dir / "generation_config.json").read_text())["eos_token_id"]
    )

    model = AutoModelForCausalLM.from_pretrained(out_dir).eval()  # no trust_remote_code
    prompt = torch.tensor([tokenizer("three pens and two books")["input_ids"]])
    with torch.no_grad():
        stock = model.generate(
            prompt,
            attention_mask=torch.ones_like(prompt),
            custom_generate=str(out_dir),
            trust_remote_code=True,
            max_new_tokens=8,
        )
    ours = generate(
        model, prompt, strategy="selfspec", k_max=4, max_new_tokens=8, eos_token_id=generation["eos_token_id"]
    )
    assert stock[0, prompt.shape[1] :].tolist()[: len(ours.sequences[0])] == ours.sequences[0]
    with torch.no_grad():  # and plain stock greedy never emits the mask id or a padding row
        plain = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=8, do_sample=False)
    assert plain[0, prompt.shape[1] :].tolist()[: len(ours.sequences[0])] == ours.sequences[0]


def test_copy_copies_the_weights_and_a_given_id_is_recorded(authors_dir, tmp_path, capsys):
    out_dir = tmp_path / "copied"
    out_dir.mkdir()  # empty: accepted
    assert import_main([str(authors_dir), str(out_dir), "--copy", "--mtp-token-id", str(mask_id(authors_dir))]) == 0
    weights = out_dir / "model.safetensors"
    assert not weights.is_symlink() and weights.read_bytes() == (authors_dir / "model.safetensors").read_bytes()
    assert json.loads((out_dir / "config.json").read_text())["mtp_token_id"] == mask_id(authors_dir)


def test_refusals_are_one_line_and_write_nothing(authors_dir, tmp_path, capsys):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    assert import_main([str(authors_dir), str(busy)]) == 2
    assert _one_error_line(capsys) == (
        f"mtp-ds import: OUT_DIR {str(busy)!r} is not empty; choose a new directory (nothing was written)"
    )
    assert sorted(path.name for path in busy.iterdir()) == ["notes.txt"]

    assert import_main([str(tmp_path / "nowhere"), str(tmp_path / "a")]) == 2
    assert _one_error_line(capsys) == (
        f"mtp-ds import: SOURCE {str(tmp_path / 'nowhere')!r} does not exist or is not a directory"
    )
    assert import_main([str(authors_dir), str(tmp_path / "a"), "--mtp-token-id", "256"]) == 2
    assert _one_error_line(capsys) == (
        "mtp-ds import: --mtp-token-id: mtp_token_id=256 is out of range: the model has 256 vocabulary rows "
        "(ids 0..255)"
    )
    no_mask = tmp_path / "no_mask"
    no_mask.mkdir()
    for path in authors_dir.iterdir():
        (no_mask / path.name).symlink_to(path)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (no_mask / name).unlink()
    word_tokenizer().save_pretrained(no_mask)
    assert import_main([str(no_mask), str(tmp_path / "a")]) == 2
    assert _one_error_line(capsys) == (
        f"mtp-ds import: SOURCE {str(no_mask)!r} has no mask token (no mtp_token_id in config.json, no <MTP> or "
        "<|mtp_special_token_0|> in the tokenizer): pass --mtp-token-id N, the id of its mask token"
    )
    assert not (tmp_path / "a").exists() and not list(tmp_path.glob(".a.import-*"))
