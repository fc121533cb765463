"""The mask token's rows on a ZeRO-3 partitioned student (2 torchrun ranks, tests/scripts/zero3_mask_token.py)
equal those of a plain, whole model. The token's other properties are tested in-process in
tests/unit/test_tokens.py.
"""

import os
import subprocess

import torch
from helpers import REPO, torchrun

from mtp_ds.models.tiny import tiny_model, word_tokenizer
from mtp_ds.tokens import add_mtp_tokens


def test_zero3_partitioned_student_gets_the_same_rows_as_a_plain_model(tmp_path):
    """The trainer's own build_models on a saved checkpoint (loaded under HfDeepSpeedConfig + ZeRO-3 on 2 ranks):
    the mask token's rows, written through the partitioned branch, equal those of a plain, whole model."""
    repo = REPO
    tokenizer = word_tokenizer()
    base = tiny_model("llama", vocab_size=len(tokenizer), seed=7)
    base.save_pretrained(tmp_path / "ckpt")
    tokenizer.save_pretrained(tmp_path / "ckpt")
    command = [
        *torchrun(2),
        str(repo / "tests" / "scripts" / "zero3_mask_token.py"),
        str(tmp_path / "ckpt"),
        str(tmp_path / "rows.pt"),
    ]
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = torch.load(tmp_path / "rows.pt")
    assert rows["partitioned"]  # the branch under test really ran on shards
    plain_tokenizer = word_tokenizer()
    plain = tiny_model("llama", vocab_size=len(plain_tokenizer), seed=7)
    tokens = add_mtp_tokens(plain_tokenizer, plain, seed=5)
    assert rows["ids"] == list(tokens.ids)
    torch.testing.assert_close(rows["input"], plain.get_input_embeddings().weight[list(tokens.ids)].detach())
    torch.testing.assert_close(rows["output"], plain.get_output_embeddings().weight[list(tokens.ids)].detach())
