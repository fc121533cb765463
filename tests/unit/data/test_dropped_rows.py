"""Rows that do not become samples are counted, said at start-up, and refused past a share; an empty validation
split that `train.eval_every` would read, and an empty data directory, stop before training in one line."""

import json
import logging

import pytest
from helpers import REPO

import mtp_ds.data.tokenize as data_module
from mtp_ds.config import ConfigError, load_recipe
from mtp_ds.data import build_datasets
from mtp_ds.data.sources import load_raw_dataset
from mtp_ds.models.tiny import word_tokenizer

TINY = REPO / "recipes" / "tiny_cpu.yaml"


def recipe_on(tmp_path, *overrides):
    return load_recipe(TINY, [f"data.cache_dir={tmp_path / 'cache'}", *overrides])


def write_rows(path, pairs):
    rows = [{"query": q, "response": r, "original_question": f"q{i}", "type": "x"} for i, (q, r) in enumerate(pairs)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_the_issue_case_seq_len_16_drops_233_of_237_rows_and_is_refused_in_one_line(tmp_path):
    """Before: 4 training and 0 validation samples, no message; the run trained on them."""
    with pytest.raises(ConfigError) as error:
        build_datasets(recipe_on(tmp_path, "data.seq_len=16"), word_tokenizer())
    message = str(error.value)
    assert message.startswith("data: 233 of 237 rows of 'tests/fixtures/toy_metamath.jsonl' (98%) are not samples")
    assert "233 whose prompt fills data.seq_len=16 (prompts of 16 to 26 tokens)" in message
    assert message.endswith(
        "more than data.max_dropped_fraction=0.5; raise data.seq_len, or data.max_dropped_fraction to train on the rest"
    )


def test_an_empty_validation_split_that_eval_every_reads_is_refused(tmp_path):
    recipe = recipe_on(tmp_path, "data.seq_len=16", "data.max_dropped_fraction=1.0")
    with pytest.raises(ConfigError) as error:
        build_datasets(recipe, word_tokenizer())
    assert str(error.value) == (
        "data.validation_fraction=0.1 leaves no validation sample of 'tests/fixtures/toy_metamath.jsonl' "
        "(4 samples) but train.eval_every=10 validates on it; raise data.validation_fraction, or set "
        "train.eval_every=0"
    )
    data = build_datasets(
        recipe_on(tmp_path, "data.seq_len=16", "data.max_dropped_fraction=1.0", "train.eval_every=0"), word_tokenizer()
    )
    assert (len(data.train), len(data.validation), data.num_dropped) == (4, 0, 233)
    # validation that never comes (eval_every past the last step) needs no split either
    build_datasets(
        recipe_on(tmp_path, "data.seq_len=16", "data.max_dropped_fraction=1.0", "train.eval_every=30"), word_tokenizer()
    )


def test_dropped_rows_are_said_at_start_up_with_why_also_from_the_cache(tmp_path, caplog, monkeypatch):
    pairs = [("how many apples ?", "3 apples")] * 3 + [(" ".join(["the"] * 70), "3"), ("how many pears ?", "")]
    path = write_rows(tmp_path / "rows.jsonl", pairs)
    recipe = recipe_on(tmp_path, f"data.path={path}", "data.validation_fraction=0.0", "train.eval_every=0")
    with caplog.at_level(logging.INFO, logger="mtp_ds"):
        data = build_datasets(recipe, word_tokenizer())
    assert (len(data.train), data.num_dropped, data.num_raw) == (3, 2, 5)
    said = [record.getMessage() for record in caplog.records if "dropped" in record.getMessage()]
    assert said == [
        f"data: dropped 2 of 5 rows of {str(path)!r}: 1 whose prompt fills data.seq_len=64 (prompts of 71 "
        "tokens), 1 with an empty response; 3 samples: 3 train, 0 validation"
    ]

    monkeypatch.setattr(data_module, "encode_example", lambda *args, **kwargs: pytest.fail("tokenised again"))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="mtp_ds"):
        again = build_datasets(recipe, word_tokenizer())  # the cache keeps why each row was dropped
    assert (
        again.dropped == data.dropped
        and [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()] == said
    )


def test_max_dropped_fraction_is_a_checked_recipe_key(tmp_path):
    assert recipe_on(tmp_path).data.max_dropped_fraction == 0.5
    for bad in ("-0.1", "1.5"):
        with pytest.raises(ConfigError, match=rf"^data.max_dropped_fraction: must be in \[0, 1\], got {bad}$"):
            recipe_on(tmp_path, f"data.max_dropped_fraction={bad}")


def test_an_empty_data_directory_is_one_line_at_validation(tmp_path):
    """Before: datasets' EmptyDatasetError on rank 0 after the process group started, a gloo error on rank 1."""
    empty = tmp_path / "data"
    empty.mkdir()
    (empty / ".hidden").write_text("x")
    with pytest.raises(ConfigError) as error:
        recipe_on(tmp_path, f"data.path={empty}", "data.source=jsonl")
    assert str(error.value) == f"data.path: directory {str(empty)!r} holds no files; put the data set's files there"
    (empty / "README.md").write_text("no data here")  # a file, but none datasets reads: one line when loading
    recipe = recipe_on(tmp_path, f"data.path={empty}", "data.source=jsonl")
    with pytest.raises(ConfigError) as error:
        load_raw_dataset(recipe.data)
    assert str(error.value) == (
        f"data.path: directory {str(empty)!r} holds no data file the datasets library reads "
        "(.jsonl, .json, .parquet, .csv, .arrow, ...)"
    )


def test_a_data_refusal_on_rank_0_still_opens_the_barrier_the_other_ranks_wait_at(monkeypatch, tmp_path):
    """Rank 0 builds the data first (`rank_zero_first`). Before: when it refused, the other ranks were let go only by
    the error handler's barrier, built the data themselves, raised, and then waited at a barrier rank 0 had left:
    a gloo traceback on rank 1 under the one-line error (seen with torchrun, 2 ranks, data.seq_len=16)."""
    from mtp_ds.checkpoint import store

    barriers = []
    monkeypatch.setattr(store, "_rank_and_world", lambda: (0, 2))
    monkeypatch.setattr(store, "_barrier", lambda: barriers.append("rank 0 done"))
    with pytest.raises(ConfigError), store.rank_zero_first():
        build_datasets(recipe_on(tmp_path, "data.seq_len=16"), word_tokenizer())
    assert barriers == ["rank 0 done"]  # the error handler's barrier then pairs with the others' own refusal
