"""`mtp-ds prepare-data`: the recipe's data tokenised once, before a launch, into the cache the trainer then reads.

The trainer's side is `TrainState.build` itself (its tokenizer and its `build_datasets` under `rank_zero_first`),
with the models left out; after prepare-data it must tokenise nothing and read the same cache files.
"""

import pytest
import torch
from helpers import REPO

import mtp_ds.data.tokenize as data_module
import mtp_ds.models.student as student_module
from mtp_ds.cli import main as cli_main
from mtp_ds.config import load_recipe
from mtp_ds.train.state import TrainState

TINY = REPO / "recipes" / "tiny_cpu.yaml"


def trainer_data(recipe, monkeypatch):
    """The data `TrainState.build` tokenises or loads, without building models."""
    monkeypatch.setattr(student_module, "build_models", lambda *args, **kwargs: None)
    monkeypatch.setattr(TrainState, "from_models", classmethod(lambda cls, *args, data=None, **kwargs: data))
    return TrainState.build(recipe, None, rank=0, local_rank=0)


def test_prepare_data_fills_the_cache_and_the_trainer_only_loads_it(tmp_path, monkeypatch, capsys):
    overrides = [f"data.cache_dir={tmp_path / 'cache'}", f"checkpoint.dir={tmp_path / 'run'}"]
    calls = []
    tokenise = data_module.encode_example
    monkeypatch.setattr(
        data_module, "encode_example", lambda *args, **kwargs: calls.append(1) or tokenise(*args, **kwargs)
    )
    assert cli_main(["prepare-data", str(TINY), *overrides]) == 0
    assert calls and not torch.distributed.is_initialized()  # it tokenised, in one process without a group
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("mtp-ds prepare-data: tests/fixtures/toy_metamath.jsonl: ") and str(tmp_path) in line
    cached = {path for path in (tmp_path / "cache").rglob("cache-*.arrow")}
    assert cached

    calls.clear()
    data = trainer_data(load_recipe(TINY, overrides), monkeypatch)
    assert calls == []  # nothing tokenised again
    assert {entry["filename"] for entry in data.train.cache_files} <= {str(path) for path in cached}
    assert {path for path in (tmp_path / "cache").rglob("cache-*.arrow")} == cached  # no new cache file
    assert len(data.train) + len(data.validation) + data.num_dropped == data.num_raw > 0


def test_prepare_data_refuses_a_bad_recipe_with_one_line(tmp_path, capsys):
    assert cli_main(["prepare-data", str(TINY), "data.seq_len=oops"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("mtp-ds prepare-data: ") and "data.seq_len" in error and "\n" not in error
    assert cli_main(["prepare-data"]) == 2
    assert "usage: mtp-ds prepare-data RECIPE.yaml" in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_prepare_data_help(flag, capsys):
    assert cli_main(["prepare-data", flag]) == 0
    assert "usage: mtp-ds prepare-data" in capsys.readouterr().out
