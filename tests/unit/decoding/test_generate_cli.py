"""`mtp-ds generate` and `mtp-ds` for a newcomer: one line for a training checkpoint or a damaged export, --help
with defaults, --version, k_max from the checkpoint, colours only on a terminal (or with --color)."""

import json
import os
import shutil
from importlib.metadata import version

import pytest

from mtp_ds.cli import main as mtp_ds_main
from mtp_ds.decoding.cli import build_parser
from mtp_ds.decoding.cli import main as generate_main


def _copy(model_dir, tmp_path):
    return shutil.copytree(model_dir, tmp_path / "model")


def _one_error_line(capsys) -> str:
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err, captured.err
    return captured.err.strip()


def test_a_training_step_dir_is_refused_with_the_export_command(tmp_path, capsys, tiny_mtp_dir):
    step = tmp_path / "run" / "step00000040"  # what the trainer writes: hf/ config + tokenizer, shards, COMPLETE
    shutil.copytree(tiny_mtp_dir, step / "hf", ignore=shutil.ignore_patterns("*.safetensors"))
    (step / "COMPLETE").write_text("{}")
    assert generate_main([str(step), "--prompt", "three pens"]) == 2
    line = _one_error_line(capsys)
    assert line == (
        f"mtp-ds generate: MODEL_DIR {str(step)!r} is a training checkpoint (DeepSpeed shards), not a model; "
        f"export it first: mtp-ds export {step} OUT_DIR, then use OUT_DIR"
    )
    (tmp_path / "run" / "latest_complete").write_text("step00000040\n")
    assert generate_main([str(tmp_path / "run"), "--prompt", "three pens"]) == 2
    assert (
        f"is a training run directory, not a model; export a checkpoint of it first: mtp-ds export {step} OUT_DIR"
        in (_one_error_line(capsys))
    )


def test_a_truncated_safetensors_file_is_one_line_naming_it(tmp_path, capsys, tiny_mtp_dir):
    model_dir = _copy(tiny_mtp_dir, tmp_path)
    weights = model_dir / "model.safetensors"
    os.truncate(weights, weights.stat().st_size // 2)  # a copy or an export cut short
    assert generate_main([str(model_dir), "--prompt", "three pens"]) == 2
    line = _one_error_line(capsys)
    assert line.startswith(f"mtp-ds generate: MODEL_DIR {str(weights)!r} is not a readable safetensors file (")
    assert line.endswith("it is truncated or damaged; copy or export the model again")


def test_a_missing_shard_of_an_index_is_named(tmp_path, tiny_mtp_dir):
    from mtp_ds.decoding.model_dir import check_model_dir

    model_dir = _copy(tiny_mtp_dir, tmp_path)
    (model_dir / "model.safetensors").rename(model_dir / "model-00001-of-00002.safetensors")
    weight_map = {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}
    (model_dir / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(ValueError, match=r"model-00002-of-00002.safetensors' is missing \(1 of the 2 shards"):
        check_model_dir(model_dir)


def test_help_shows_the_defaults(capsys):
    with pytest.raises(SystemExit) as exit_code:
        generate_main(["--help"])
    assert exit_code.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for default in (
        "default: confadapt",
        "(default: 1)",
        "(default: 0.9)",
        "(default: 256)",
        "(default: linear)",
        "default: the checkpoint's mtp_k_max",
    ):
        assert default in text, default


def test_version_from_the_package_metadata(capsys):
    assert mtp_ds_main(["--version"]) == 0
    assert capsys.readouterr().out == f"mtp-ds {version('mtp-ds')}\n"


def _footer(out: str) -> str:
    return out.strip().splitlines()[-1]


def test_k_max_defaults_to_the_checkpoints(tmp_path, capsys, tiny_mtp_dir):
    model_dir = _copy(tiny_mtp_dir, tmp_path)
    common = [str(model_dir), "--prompt", "three pens", "--max-new-tokens", "3"]
    assert generate_main(common) == 0  # a checkpoint that does not record it: 16, as before
    assert "(confadapt, k_max=16, tau=0.9)" in _footer(capsys.readouterr().out)
    config = json.loads((model_dir / "config.json").read_text())
    (model_dir / "config.json").write_text(json.dumps({**config, "mtp_k_max": 4}))  # what the trainer records
    assert generate_main(common) == 0
    assert "(confadapt, k_max=4, tau=0.9)" in _footer(capsys.readouterr().out)
    assert generate_main([*common, "--strategy", "selfspec"]) == 0
    assert "(selfspec, k_max=4, linear;" in _footer(capsys.readouterr().out)
    assert generate_main([*common, "--k-max", "6"]) == 0  # given: given
    assert "(confadapt, k_max=6, tau=0.9)" in _footer(capsys.readouterr().out)
    assert generate_main([*common, "--strategy", "static", "--k", "6"]) == 0  # static k above it: k
    assert "(static, k=6)" in _footer(capsys.readouterr().out)


def test_colours_only_on_a_terminal_or_with_color(tmp_path, capsys, tiny_mtp_dir, monkeypatch):
    from mtp_ds.decoding.cli import use_colour

    common = [str(tiny_mtp_dir), "--prompt", "three pens", "--max-new-tokens", "3"]
    assert generate_main(common) == 0  # stdout captured: a pipe, not a terminal
    assert "\033[" not in capsys.readouterr().out
    assert generate_main([*common, "--color"]) == 0
    assert "\033[" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        generate_main([*common, "--color", "--no-color"])
    capsys.readouterr()

    monkeypatch.delenv("NO_COLOR", raising=False)
    leader, follower = os.openpty()
    try:
        with open(follower, "w", closefd=False) as terminal, open(tmp_path / "file", "w") as file:
            assert use_colour(build_parser().parse_args([str(tiny_mtp_dir), "--prompt", "x"]), terminal)
            assert not use_colour(build_parser().parse_args([str(tiny_mtp_dir), "--prompt", "x"]), file)
            assert not use_colour(
                build_parser().parse_args([str(tiny_mtp_dir), "--prompt", "x", "--no-color"]), terminal
            )
            monkeypatch.setenv("NO_COLOR", "1")
            assert not use_colour(build_parser().parse_args([str(tiny_mtp_dir), "--prompt", "x"]), terminal)
    finally:
        os.close(leader)
        os.close(follower)


def test_confadapt_with_a_k_it_does_not_use_is_accepted(capsys, tiny_mtp_dir):
    from mtp_ds.decoding.spec import DecodeSpec

    spec = DecodeSpec(strategy="confadapt", k=8, k_max=4)  # before: "k must be ... <= k_max=4"
    assert spec.settings() == {"strategy": "confadapt", "k_max": 4, "threshold": 0.9} and spec.block == 4
    with pytest.raises(ValueError, match=r"k must be an int with 1 <= k <= k_max=4, got 8"):
        DecodeSpec(strategy="static", k=8, k_max=4)  # Static k reads k
    args = [str(tiny_mtp_dir), "--prompt", "three pens", "--max-new-tokens", "3", "--k", "8", "--k-max", "4"]
    assert generate_main(args) == 0
    assert "(confadapt, k_max=4, tau=0.9)" in _footer(capsys.readouterr().out)
