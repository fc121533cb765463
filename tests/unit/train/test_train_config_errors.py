"""A recipe, override, data or DeepSpeed-JSON mistake stops `python -m mtp_ds.train` with exit 2 and one line
naming the field, and writes nothing: the trainer's own entry point, called in-process as a world of one.
"""

import json

import pytest
from helpers import FAST, RECIPE

from mtp_ds.train.loop import main


def _data_file(tmp_path, name, rows):
    path = tmp_path / name
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return f"data.path={path}"


@pytest.mark.parametrize(
    "case",
    [
        "unknown_key",
        "batch_conflict",
        "missing_model",
        "missing_field",
        "empty_data",
        "k_max_too_large",
        "not_json",
        "unknown_optimizer",
        "string_lr",
        "resume_not_checkpoint",
    ],
)
def test_config_errors_are_one_line_and_write_nothing(tmp_path, case, capsys, trainer_process):
    out = tmp_path / "out"
    overrides = {
        "unknown_key": ["train.stepz=3"],
        "batch_conflict": ["train.deepspeed_overrides.train_batch_size=16"],
        "missing_model": ["model.tiny_config=null", f"model.name_or_path={tmp_path / 'no_such_model'}"],
        "missing_field": [
            _data_file(tmp_path, "no_response.jsonl", [{"query": "q", "original_question": "q", "type": "t"}])
        ],
        "empty_data": [_data_file(tmp_path, "empty.jsonl", [])],
        "k_max_too_large": ["packing.k_max=40"],
        "not_json": [_data_file(tmp_path, "torn.jsonl", [{"query": "q", "response": "r", "original_question": "q"}])],
        "unknown_optimizer": ["train.deepspeed_overrides.optimizer.type=AdamWW"],
        "string_lr": ["train.deepspeed_overrides.optimizer.params.lr=1e-4x"],
        "resume_not_checkpoint": [f"checkpoint.resume={tmp_path}"],
    }[case]
    if case == "not_json":
        with open(tmp_path / "torn.jsonl", "a") as handle:
            handle.write('{"query": "q2", "response": \n')
    expected = {
        "unknown_key": "unknown recipe key 'train.stepz'; valid keys in 'train': global_batch_size",
        "batch_conflict": "train_batch_size",
        "missing_model": "model.name_or_path",
        "missing_field": "response",
        "empty_data": "empty",
        "k_max_too_large": "packing.k_max=40",
        "not_json": "torn.jsonl' line 2 is not JSON",
        "unknown_optimizer": "optimizer.type='AdamWW' is not a DeepSpeed optimizer",
        "string_lr": "optimizer.params.lr must be a number, got '1e-4x'",
        "resume_not_checkpoint": "is not a complete checkpoint (no COMPLETE file)",
    }[case]
    code = main([RECIPE, f"checkpoint.dir={out}", *FAST, *overrides])
    stderr = capsys.readouterr().err
    message = [line for line in stderr.splitlines() if line.startswith("mtp-ds train:")]
    assert code == 2, stderr[-3000:]
    assert len(message) == 1 and expected in message[0], stderr[-3000:]
    assert not out.exists()
