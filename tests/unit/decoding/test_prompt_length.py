"""A prompt plus max_new_tokens past the model's max_position_embeddings is refused in one line naming the request,
its length and the limit (generate, generate_many, mtp-ds generate): past it a model decodes garbage silently."""

import json
import shutil

import pytest
import torch
from helpers import make_mtp_model

from mtp_ds.decoding import generate, generate_many
from mtp_ds.decoding.cli import main as generate_main

LIMIT = 32


def _short_model():
    model, _, mask_tokens = make_mtp_model("qwen3")
    model.config.max_position_embeddings = LIMIT  # RoPE positions are computed, not stored: only the limit changes
    return model, mask_tokens


def test_generate_refuses_a_row_past_the_limit_and_names_it():
    model, mask_tokens = _short_model()
    ids = torch.randint(3, 100, (2, 30))
    mask = torch.ones_like(ids)
    mask[0, :10] = 0  # row 0 is left-padded to 20 real tokens: 20 + 8 fits, row 1's 30 + 8 does not
    with pytest.raises(ValueError) as error:
        generate(model, ids, attention_mask=mask, max_new_tokens=8, mtp_token_id=mask_tokens, k=2)
    assert str(error.value) == (
        "input_ids row 1 has 30 tokens: with max_new_tokens=8 it needs 38 positions, more than the model's "
        "max_position_embeddings=32; shorten the prompt to at most 24 tokens (e.g. keep its last ones) or lower "
        "max_new_tokens"
    )
    result = generate(model, ids[:, -24:], max_new_tokens=8, mtp_token_id=mask_tokens, k=2)  # exactly the limit
    assert [len(row) for row in result.sequences] == [8, 8]


def test_generate_many_names_the_request_index():
    model, mask_tokens = _short_model()
    prompts = [[5, 6, 7], list(range(3, 33)), list(range(3, 40))]
    with pytest.raises(ValueError) as error:
        generate_many(model, prompts, max_rows=2, max_new_tokens=[4, 2, 4], mtp_token_id=mask_tokens)
    message = str(error.value)
    assert message.startswith("prompts[2] has 37 tokens: with max_new_tokens=4 it needs 41 positions, more than")
    assert "\n" not in message
    with pytest.raises(ValueError, match=r"^prompts\[1\] \(and 1 more\) has 30 tokens: with max_new_tokens=4"):
        generate_many(model, prompts, max_rows=2, max_new_tokens=4, mtp_token_id=mask_tokens)
    result = generate_many(model, prompts[:2], max_rows=2, max_new_tokens=2, mtp_token_id=mask_tokens)
    assert [len(row) for row in result.sequences] == [2, 2]


def test_mtp_ds_generate_refuses_a_long_prompt_in_one_line(tmp_path, capsys, tiny_mtp_dir):
    model_dir = shutil.copytree(tiny_mtp_dir, tmp_path / "model")
    config = json.loads((model_dir / "config.json").read_text())
    (model_dir / "config.json").write_text(json.dumps({**config, "max_position_embeddings": LIMIT}))
    prompt = " ".join(["three pens"] * 20)  # 40 words
    assert generate_main([str(model_dir), "--prompt", prompt, "--max-new-tokens", "4"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("mtp-ds generate: the prompt has 4"), err
    assert "more than the model's max_position_embeddings=32" in err
