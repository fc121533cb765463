"""The benchmarks' exactness checks, in-process: bench/decode.py and bench/serve.py stop (the row or request
named, no JSON written) when a lossless setting's tokens differ from the reference. The scripts are imported
from bench/ and their `main` run here, with `mtp_ds.decoding` patched to change one token.

The scripts end to end, as users run them (`python bench/decode.py`, `python bench/serve.py`), are in
tests/integration/test_decode_bench.py and tests/integration/test_serve_bench.py.
"""

import pytest
from helpers import (
    DECODE_BENCH_ARGS,
    REPO,
    SELFSPEC_SETTINGS,
    SERVE_BENCH_ARGS,
    make_mtp_model,
    save_checkpoint_dir,
)


@pytest.fixture(scope="module")
def decode_checkpoint(tmp_path_factory):
    model, tokenizer, _ = make_mtp_model("qwen3", k_max=4)
    # Every id ends a sequence per the checkpoint's generation_config, so HF generate would stop each row after
    # one token and pad the rest if the benchmark let it read that: "no EOS" must hold for HF greedy as well.
    model.generation_config.eos_token_id = list(range(model.config.vocab_size))
    return save_checkpoint_dir(model, tokenizer, tmp_path_factory.mktemp("bench_mtp"))


@pytest.fixture(scope="module")
def serve_checkpoint(tmp_path_factory):
    model, tokenizer, _ = make_mtp_model("qwen3", k_max=4)
    return save_checkpoint_dir(model, tokenizer, tmp_path_factory.mktemp("serve_mtp") / "mtp")


# --- bench/decode.py ------------------------------------------------------------------------------------------


def test_decode_bench_fails_loudly_when_selfspec_differs_from_k1(decode_checkpoint, tmp_path, monkeypatch):
    """A selfspec run whose tokens differ from our k=1's stops the benchmark (exit 1, the row named, no JSON)."""
    monkeypatch.syspath_prepend(str(REPO / "bench"))
    import decode

    import mtp_ds.decoding

    real = mtp_ds.decoding.generate

    def off_by_one(model, input_ids, **kwargs):  # selfspec "per_proposal" changes row 1's 6th token
        result = real(model, input_ids, **kwargs)
        if kwargs.get("mask_layout") == "per_proposal" and len(result.sequences) > 1:
            result.sequences[1][5] += 1
        return result

    monkeypatch.setattr(mtp_ds.decoding, "generate", off_by_one)
    out = tmp_path / "decode.json"
    with pytest.raises(SystemExit) as failed:  # --settings without ours k=1: the bench adds its reference
        decode.main(
            [
                "--model",
                str(decode_checkpoint),
                *map(str, DECODE_BENCH_ARGS),
                "--settings",
                ",".join(SELFSPEC_SETTINGS),
                "--out",
                str(out),
            ]
        )
    assert isinstance(failed.value, decode.TokensDiffer)
    message = str(failed.value)
    assert message.startswith(
        "batch 3: selfspec per_proposal differs from ours k=1 (lossless decoding must give "
        "the same tokens): row 1 first at new token 5: "
    )
    assert not out.exists()


def test_check_same_tokens(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "bench"))
    import decode

    assert decode.check_same_tokens(2, "selfspec linear", [[1, 2], [3]], [[1, 2], [3]]) == "2/2"
    with pytest.raises(decode.TokensDiffer, match=r"row 0 first at new token 2: \[\] vs \[3\] \(2 vs 3 tokens\)"):
        decode.check_same_tokens(1, "selfspec linear", [[1, 2]], [[1, 2, 3]])
    with pytest.raises(SystemExit, match="returned 1 rows, ours k=1 2"):
        decode.check_same_tokens(2, "selfspec linear", [[1]], [[1], [2]])


# --- bench/serve.py -------------------------------------------------------------------------------------------


def test_serve_bench_stops_when_the_stream_changes_a_request(serve_checkpoint, tmp_path, monkeypatch):
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
        serve.main(
            [
                "--model",
                str(serve_checkpoint),
                *map(str, SERVE_BENCH_ARGS),
                "--settings",
                "static k=2",
                "--out",
                str(out),
            ]
        )
    assert str(failed.value).startswith("static k=2: c=3 vs c=1: request 2 differs first at new token 2: ")
    assert not out.exists()
