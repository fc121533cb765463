"""bench/decode.py runs end to end on a saved checkpoint with real prompts: a smoke test of the benchmark's
plumbing that asserts equivalences (our k=1 == HF greedy on every row, selfspec == our k=1, token and query
counts), never a time.

Why a subprocess: the benchmark is a script users run as `python bench/decode.py`, so that is what is run.
Its exactness checks (a selfspec row that differs stops it) are tested in-process in
tests/unit/bench/test_bench_checks.py.
"""

import json
import subprocess
import sys

import pytest
from helpers import DECODE_BENCH_ARGS, GSM8K_FIXTURE, REPO, SELFSPEC_SETTINGS, make_mtp_model, save_checkpoint_dir

SETTINGS = "HF greedy,ours k=1,static k=2,confadapt 0.9,selfspec linear,selfspec per_proposal"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    model, tokenizer, _ = make_mtp_model("qwen3", k_max=4)
    # Every id ends a sequence per the checkpoint's generation_config, so HF generate would stop each row after
    # one token and pad the rest if the benchmark let it read that: "no EOS" must hold for HF greedy as well.
    model.generation_config.eos_token_id = list(range(model.config.vocab_size))
    return save_checkpoint_dir(model, tokenizer, tmp_path_factory.mktemp("bench_mtp"))


def _bench(*args):
    return subprocess.run(
        [sys.executable, str(REPO / "bench" / "decode.py"), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )


def test_decode_bench_on_real_prompts_matches_hf_greedy(checkpoint, tmp_path):
    out = tmp_path / "decode.json"
    result = _bench("--model", checkpoint, *DECODE_BENCH_ARGS, "--settings", SETTINGS, "--out", out)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    rows = {(row["batch"], row["setting"]): row for row in report["decode"]}
    assert set(rows) == {(b, s) for b in (1, 3) for s in SETTINGS.split(",")}
    assert rows[(1, "ours k=1")]["rows_identical_to_hf"] == "1/1"
    assert rows[(3, "ours k=1")]["rows_identical_to_hf"] == "3/3"
    for (batch, setting), row in rows.items():
        assert row["new_tokens"] == batch * 8, setting  # no EOS: every setting decodes the same count
        assert row["query_tokens_per_pass"] == row["query_tokens"] / row["forward_passes"], setting
        assert row["forward_bound_vs_k1"] > 0 and row["forward_bound_vs_hf"] > 0, setting
    assert rows[(3, "static k=2")]["acceleration_factor"] == 2.0
    assert rows[(3, "static k=2")]["forward_passes"] == 4
    assert 1.0 <= rows[(3, "confadapt 0.9")]["acceleration_factor"] <= 4.0  # --k-max 4 bounds a pass
    for batch in (1, 3):
        hf, k1 = rows[(batch, "HF greedy")], rows[(batch, "ours k=1")]
        # both feed the prompt, then one token per row per pass: the same query tokens, counted two ways
        assert hf["query_tokens"] == k1["query_tokens"]
        assert hf["query_tokens_per_decode_pass"] == k1["query_tokens_per_decode_pass"] == batch
        assert k1["forward_bound_vs_k1"] == 1.0
    for batch in (1, 3):  # selfspec (k_max 4 from --k-max): lossless, and as wide as its layout makes a pass
        for setting, widest in zip(
            SELFSPEC_SETTINGS, (4 + 3, 4 + 4 * 3)
        ):  # linear: ground + 3 masks; per_proposal: 4 groups
            row = rows[(batch, setting)]
            assert row["rows_identical_to_k1"] == f"{batch}/{batch}", setting
            assert 1.0 <= row["acceleration_factor"] <= 4.0, setting
            assert 0.0 <= row["verified_per_pass"] < row["acceleration_factor"], setting
            assert batch < row["query_tokens_per_decode_pass"] <= batch * widest, setting
    assert (
        rows[(3, "selfspec per_proposal")]["query_tokens_per_decode_pass"]
        > rows[(3, "selfspec linear")]["query_tokens_per_decode_pass"]
    )
    assert report["args"]["k_max"] == report["args"]["selfspec_k_max"] == 4
    assert "the first b prompts of" in result.stdout
    assert "ConfAdapt k_max 4, selfspec k_max 4" in result.stdout
    for setting in SELFSPEC_SETTINGS:
        assert f"    3 {setting:<21} " in result.stdout and "(rows == k=1: 3/3)" in result.stdout
        assert f"| {setting} | " in result.stdout  # the markdown summary
    assert "| ours k=1 | 1.00 | " in result.stdout and "| all == k=1 |" in result.stdout


def test_decode_bench_names_a_missing_prompt_field(checkpoint):
    result = _bench("--model", checkpoint, "--prompts", GSM8K_FIXTURE, "--prompt-field", "problem", "--skip-curve")
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1] == (
        f"{GSM8K_FIXTURE}:1: record has no field 'problem' (--prompt-field); fields: ['answer', 'question']"
    )


def test_decode_bench_refuses_prompts_without_a_checkpoint():
    result = _bench("--prompts", GSM8K_FIXTURE)
    assert result.returncode == 2
    assert "--prompts needs --model" in result.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize(
    "problem, message",
    [
        ("missing", "--prompts: cannot read {path}: No such file or directory"),
        ("not_json", "{path}:2: not a JSON record (--prompts): Expecting property name enclosed in double quotes"),
        ("too_few", "--prompts: {path} has 2 records, fewer than the largest --batch-sizes entry 4"),
    ],
)
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
