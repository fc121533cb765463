"""bench/serve.py runs end to end on a saved checkpoint: a smoke test of the serving benchmark's plumbing that
asserts its invariants (pass counts vs the ideal, ratios, the exactness checks that stop it), never a time.

Why a subprocess for the main run: the benchmark is a script users run as `python bench/serve.py`.
"""

import json
import subprocess
import sys

import pytest
from helpers import REPO, make_mtp_model

SETTINGS = ["HF generate", "ours k=1", "static k=2", "static k=3", "confadapt 0.9", "selfspec"]
ARGS = ("--requests", 7, "--concurrency", "1,3", "--max-new-tokens", 9, "--k-max", 4)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    model, tokenizer, _ = make_mtp_model("qwen3", k_max=4)
    directory = tmp_path_factory.mktemp("serve_mtp")
    model.save_pretrained(directory / "mtp")
    tokenizer.save_pretrained(directory / "mtp")
    return directory / "mtp"


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
    result = _serve("--model", checkpoint, *ARGS, "--out", out)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    rows = {(row["concurrency"], row["setting"]): row for row in report["rows"]}
    assert set(rows) == {(c, s) for c in (1, 3) for s in SETTINGS}
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
        assert rows[(c, "selfspec")]["tokens"] == k1["tokens"]  # lossless
        assert rows[(c, "HF generate")]["rows_identical_to_k1"] == "7/7"
        assert rows[(c, "HF generate")]["peak_kv_rows"] is None
    assert rows[(3, "ours k=1")]["peak_kv_rows"] <= 2 * 3  # 3 decoding + a prefill of 3
    assert all(len(rows[(c, "ours k=1")]["kv_columns_halves"]) == 2 for c in (1, 3))
    assert rows[(3, "HF generate")]["kv_columns_halves"] is None
    assert (
        "exactness: every request's tokens at c=3 == at c=1 for each of our settings, and selfspec's == our "
        "k=1's at every c: PASS" in result.stdout
    )
    assert "prefill placement at c=3" in result.stdout
    assert "| 3 | confadapt 0.9 | " in result.stdout  # the markdown table
    targets = {t["target"] for t in report["targets"]}
    assert targets == set()  # c=16 / c=64 targets only: none at c in {1, 3}


def test_serve_bench_stops_when_the_stream_changes_a_request(checkpoint, tmp_path, monkeypatch):
    """A request decoded differently at c=3 than at c=1 stops the benchmark (the request named, no JSON)."""
    monkeypatch.syspath_prepend(str(REPO / "bench"))
    import decode
    import serve

    import mtp_ds.decoding

    real = mtp_ds.decoding.generate_many

    def off_by_one(model, prompts, **kwargs):  # Static k=2 at 3 rows in flight changes request 2's 3rd token
        result = real(model, prompts, **kwargs)
        if kwargs.get("k") == 2 and kwargs["max_rows"] == 3:
            result.sequences[2][2] += 1
        return result

    monkeypatch.setattr(mtp_ds.decoding, "generate_many", off_by_one)
    out = tmp_path / "serve.json"
    with pytest.raises(decode.TokensDiffer) as failed:
        serve.main(["--model", str(checkpoint), *map(str, ARGS), "--settings", "static k=2", "--out", str(out)])
    assert str(failed.value).startswith("static k=2: c=3 vs c=1: request 2 differs first at new token 2: ")
    assert not out.exists()


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
