"""What `lm_eval --model mtp` is given by a newcomer: a training checkpoint, a truncated export, a context longer than
the model's positions, confadapt with a k it does not use. Each is one line, or lm-eval's own handling."""

import json
import logging
import os
import shutil

import pytest
from lm_eval.api.instance import Instance

from mtp_ds.evaluation.lm_eval_model import MTPLM

MODEL = dict(device="cpu", dtype="float32")


def _refused_line(capsys, arg_string: str) -> str:
    """`--model_args arg_string` as the lm_eval CLI builds the model: exit 2 and one stderr line."""
    with pytest.raises(SystemExit) as exit_code:
        MTPLM.create_from_arg_string(arg_string, {"device": "cpu"})
    assert exit_code.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("lm_eval --model mtp: ")]
    assert len(lines) == 1 and "Traceback" not in err, err  # (Hugging Face's loading bar may precede it)
    return lines[0]


def test_a_training_step_dir_says_export_it_first(tmp_path, capsys, tiny_mtp_dir):
    step = tmp_path / "run" / "step00000040"
    shutil.copytree(tiny_mtp_dir, step / "hf", ignore=shutil.ignore_patterns("*.safetensors"))
    (step / "COMPLETE").write_text("{}")
    line = _refused_line(capsys, f"pretrained={step}")
    assert line == (
        f"lm_eval --model mtp: model arg pretrained: {str(step)!r} is a training checkpoint (DeepSpeed shards), "
        f"not a model; export it first: mtp-ds export {step} OUT_DIR, then use OUT_DIR"
    )


def test_a_truncated_safetensors_file_is_one_line_naming_it(tmp_path, capsys, tiny_mtp_dir):
    model_dir = shutil.copytree(tiny_mtp_dir, tmp_path / "model")
    weights = model_dir / "model.safetensors"
    os.truncate(weights, weights.stat().st_size - 100)
    line = _refused_line(capsys, f"pretrained={model_dir}")
    assert line.startswith(f"lm_eval --model mtp: model arg pretrained: {str(weights)!r} is not a readable safetensors")


def test_confadapt_with_an_unused_k_is_accepted(tiny_mtp_dir):
    lm = MTPLM(pretrained=str(tiny_mtp_dir), strategy="confadapt", k=8, k_max=4, **MODEL)
    assert lm.decoding_settings() == {"strategy": "confadapt", "k_max": 4, "threshold": 0.9}
    with pytest.raises(ValueError, match=r"model args k=8 and k_max=4: k must be <= k_max"):
        lm.set_decoding(strategy="static", k=8, k_max=4)


def test_max_length_past_the_models_positions_is_refused(tiny_mtp_dir, capsys):
    line = _refused_line(capsys, f"pretrained={tiny_mtp_dir},max_length=4096")
    assert line == (
        f"lm_eval --model mtp: model arg max_length=4096: more than the max_position_embeddings=2048 of "
        f"pretrained={str(tiny_mtp_dir)!r}; leave it unset (lm-eval then uses 2048)"
    )


@pytest.mark.parametrize("continuous_batching", [True, False])
def test_a_long_context_is_left_truncated_with_lm_evals_warning(tmp_path, tiny_mtp_dir, caplog, continuous_batching):
    """As `--model hf`: HFLM keeps the context's last max_length - max_gen_toks tokens and says so; the decoder's
    position check (prompt + max_new_tokens <= max_position_embeddings) then holds, in a stream or a fixed batch."""
    model_dir = shutil.copytree(tiny_mtp_dir, tmp_path / "model")
    config = json.loads((model_dir / "config.json").read_text())
    (model_dir / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 48}))
    lm = MTPLM(pretrained=str(model_dir), batch_size=2, continuous_batching=continuous_batching, **MODEL)
    contexts = ["three pens " * 40 + "how many ?", "how many apples ?"]  # 80+ tokens, and a short one
    requests = [
        Instance("generate_until", {}, (text, {"until": ["Q:"], "max_gen_toks": 8, "do_sample": False}), index)
        for index, text in enumerate(contexts)
    ]
    with caplog.at_level(logging.WARNING):
        outputs = lm.generate_until(requests, disable_tqdm=True)
    assert len(outputs) == 2
    assert any("Left truncation applied" in record.getMessage() for record in caplog.records)
    assert lm.run_stats().generated_tokens <= 16
