"""`train.distributed_timeout_minutes`: the process group's timeout, from the recipe to `deepspeed.init_distributed`.

Why a key: the other ranks wait in a barrier while rank 0 tokenises (or in any collective while one rank is
slow), and DeepSpeed's default of 10 minutes killed jobs on large data sets or a slow Hub mirror.
"""

from datetime import timedelta

import deepspeed
import pytest
from helpers import REPO

from mtp_ds.config import ConfigError, load_recipe
from mtp_ds.train import loop

TINY = REPO / "recipes" / "tiny_cpu.yaml"
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


class Started(Exception):
    """Raised by the stand-in for deepspeed.init_distributed: the test ends where the process group would start."""


@pytest.mark.parametrize("overrides, minutes", [([], 30.0), (["train.distributed_timeout_minutes=90"], 90.0)])
def test_the_recipe_timeout_reaches_init_distributed(tmp_path, monkeypatch, overrides, minutes):
    for name in RANK_VARIABLES:  # the world of one that setup_distributed sets up is undone afterwards
        monkeypatch.delenv(name, raising=False)
    calls = []

    def init_distributed(**kwargs):
        calls.append(kwargs)
        raise Started

    monkeypatch.setattr(deepspeed, "init_distributed", init_distributed)
    recipe = load_recipe(TINY, [f"checkpoint.dir={tmp_path / 'run'}", *overrides])
    assert recipe.train.distributed_timeout_minutes == minutes
    with pytest.raises(Started):
        loop.train(recipe, device_type="cpu")
    assert calls == [{"dist_backend": "gloo", "timeout": timedelta(minutes=minutes)}]


@pytest.mark.parametrize("value", ["0", "-5", "nan", "inf", "soon"])
def test_a_timeout_that_is_not_a_positive_number_is_one_line(tmp_path, value):
    with pytest.raises(ConfigError) as error:
        load_recipe(TINY, [f"train.distributed_timeout_minutes={value}", f"checkpoint.dir={tmp_path}"])
    assert str(error.value).startswith("train.distributed_timeout_minutes") and "\n" not in str(error.value)
