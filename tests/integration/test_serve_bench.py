"""bench/serve.py runs end to end on a saved checkpoint: a smoke test of the serving benchmark's plumbing that
asserts its invariants (pass counts vs the ideal, ratios, the exactness checks that stop it), never a time.

Why a subprocess: the benchmark is a script users run as `python bench/serve.py`. The check that stops it
when the stream changes a request is tested in-process in tests/unit/bench/test_bench_checks.py.
"""

import json
import subprocess
import sys

import pytest
from helpers import REPO, SERVE_BENCH_ARGS, make_mtp_model, save_checkpoint_dir

SETTINGS = ["HF generate", "ours k=1", "static k=2", "static k=3", "confadapt 0.9", "selfspec"]
EXTRA = "selfspec_kmax3_per_proposal_g2"  # --selfspec 3:per_proposal:g=2: a lossless row of its own settings


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    model, tokenizer, _ = make_mtp_model("qwen3", k_max=4)
    return save_checkpoint_dir(model, tokenizer, tmp_path_factory.mktemp("serve_mtp") / "mtp")


def _serve(*args):
    return subprocess.run(
        [sys.executable, str(REPO / "bench" / "serve.py"), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )


def test_serve_bench_counts_passes_and_checks_exactness(checkpoint, tmp_path):
    out = tmp_path / "serve.json"
    result = _serve("--model", checkpoint, *SERVE_BENCH_ARGS, "--selfspec", "3:per_proposal:g=2", "--out", out)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    rows = {(row["concurrency"], row["setting"]): row for row in report["rows"]}
    assert set(rows) == {(c, s) for c in (1, 3) for s in [*SETTINGS, EXTRA]}
    for (c, setting), row in rows.items():
        assert row["tokens"] <= 7 * 9, setting
        if c == 1:  # one request at a time: every pass is one request's own
            assert row["passes"] == row["ideal_passes"] and row["passes_over_ideal"] == 1.0, setting
        else:
            assert row["passes"] >= row["ideal_passes"] and row["passes"] < rows[(1, setting)]["passes"], setting
            assert row["tokens"] == rows[(1, setting)]["tokens"], setting  # the stream decodes what c=1 does
    for c in (1, 3):
        k1 = rows[(c, "ours k=1")]
        assert k1["throughput_vs_k1"] == 1.0 and k1["forward_bound_vs_k1"] == 1.0
        assert rows[(c, "static k=2")]["acceleration_factor"] > 1.0
        assert rows[(c, "selfspec")]["tokens"] == rows[(c, EXTRA)]["tokens"] == k1["tokens"]  # lossless
        assert rows[(c, "HF generate")]["rows_identical_to_k1"] == "7/7"
        assert rows[(c, "HF generate")]["peak_kv_rows"] is None
    assert rows[(3, "ours k=1")]["peak_kv_rows"] <= 2 * 3  # 3 decoding + a prefill of 3
    assert all(len(rows[(c, "ours k=1")]["kv_columns_halves"]) == 2 for c in (1, 3))
    assert rows[(3, "HF generate")]["kv_columns_halves"] is None
    assert (
        "exactness: every request's tokens at c=3 == at c=1 for each of our settings, and selfspec, "
        f"{EXTRA} == our k=1's at every c: PASS" in result.stdout
    )
    assert "prefill placement at c=3" in result.stdout
    assert "| 3 | confadapt 0.9 | " in result.stdout  # the markdown table
    targets = {t["target"] for t in report["targets"]}
    assert targets == set()  # c=16 / c=64 targets only: none at c in {1, 3}


@pytest.mark.parametrize(
    "args, message",
    [
        (("--concurrency", "1,x"), "--concurrency must be comma-separated ints, got '1,x'"),
        (("--settings", "ours k=1,static k=9"), "--settings: unknown ['static k=9']"),
        (("--k-max", 1), "--k-max >= 2"),
    ],
)
def test_serve_bench_names_a_bad_argument_in_one_line(checkpoint, args, message):
    result = _serve("--model", checkpoint, *args)
    assert result.returncode == 2
    assert message in result.stderr.strip().splitlines()[-1]


def test_serve_bench_names_a_model_dir_without_config(tmp_path):
    result = _serve("--model", tmp_path)
    assert result.returncode == 2
    assert f"--model '{tmp_path}' is not a Hugging Face model directory" in result.stderr.strip().splitlines()[-1]
