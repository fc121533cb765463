"""bench/decode.py runs end to end on a saved checkpoint with real prompts: a smoke test of the benchmark's
plumbing that asserts equivalences (our k=1 == HF greedy on every row, token counts), never a time.

Why a subprocess: the benchmark is a script users run as `python bench/decode.py`, so that is what is run.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import make_mtp_model

REPO = Path(__file__).resolve().parents[1]
PROMPTS = REPO / "tests" / "fixtures" / "gsm8k_3.jsonl"
SETTINGS = "HF greedy,ours k=1,static k=2,confadapt 0.9"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    model, tokenizer, _ = make_mtp_model("qwen3", k_max=4)
    # Every id ends a sequence per the checkpoint's generation_config, so HF generate would stop each row after
    # one token and pad the rest if the benchmark let it read that: "no EOS" must hold for HF greedy as well.
    model.generation_config.eos_token_id = list(range(model.config.vocab_size))
    directory = tmp_path_factory.mktemp("bench_mtp")
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def _bench(*args):
    return subprocess.run([sys.executable, str(REPO / "bench" / "decode.py"), *map(str, args)],
                          capture_output=True, text=True, timeout=300, cwd=REPO)


def test_decode_bench_on_real_prompts_matches_hf_greedy(checkpoint, tmp_path):
    out = tmp_path / "decode.json"
    result = _bench("--model", checkpoint, "--prompts", PROMPTS, "--prompt-template", "Q: {prompt}\nA:",
                    "--batch-sizes", "1,3", "--new-tokens", 8, "--repeats", 1, "--skip-curve", "--k-max", 4,
                    "--settings", SETTINGS, "--out", out)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    rows = {(row["batch"], row["setting"]): row for row in report["decode"]}
    assert set(rows) == {(b, s) for b in (1, 3) for s in SETTINGS.split(",")}
    assert rows[(1, "ours k=1")]["rows_identical_to_hf"] == "1/1"
    assert rows[(3, "ours k=1")]["rows_identical_to_hf"] == "3/3"
    for (batch, setting), row in rows.items():
        assert row["new_tokens"] == batch * 8, setting  # no EOS: every setting decodes the same count
    assert rows[(3, "static k=2")]["acceleration_factor"] == 2.0
    assert rows[(3, "static k=2")]["forward_passes"] == 4
    assert 1.0 <= rows[(3, "confadapt 0.9")]["acceleration_factor"] <= 4.0  # --k-max 4 bounds a pass
    assert report["args"]["k_max"] == 4
    assert "the first b prompts of" in result.stdout


def test_decode_bench_names_a_missing_prompt_field(checkpoint):
    result = _bench("--model", checkpoint, "--prompts", PROMPTS, "--prompt-field", "problem", "--skip-curve")
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1] == (
        f"{PROMPTS}:1: record has no field 'problem' (--prompt-field); fields: ['answer', 'question']")


def test_decode_bench_refuses_prompts_without_a_checkpoint():
    result = _bench("--prompts", PROMPTS)
    assert result.returncode == 2
    assert "--prompts needs --model" in result.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("problem, message", [
    ("missing", "--prompts: cannot read {path}: No such file or directory"),
    ("not_json", "{path}:2: not a JSON record (--prompts): Expecting property name enclosed in double quotes"),
    ("too_few", "--prompts: {path} has 2 records, fewer than the largest --batch-sizes entry 4"),
])
def test_decode_bench_names_a_bad_prompts_file(checkpoint, tmp_path, problem, message):
    path = tmp_path / "prompts.jsonl"
    if problem != "missing":
        second = "{not json" if problem == "not_json" else '{"question": "b"}'
        path.write_text('{"question": "a"}\n' + second + "\n")
    out = tmp_path / "decode.json"
    result = _bench("--model", checkpoint, "--prompts", path, "--batch-sizes", "1,4", "--out", out)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1] == message.format(path=path)
    assert not out.exists()


def test_decode_bench_names_a_model_dir_without_config(tmp_path):
    result = _bench("--model", tmp_path)
    assert result.returncode == 2
    assert f"--model '{tmp_path}' is not a Hugging Face model directory" in result.stderr.strip().splitlines()[-1]
