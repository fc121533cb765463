"""`TrainState` built around models (no DeepSpeed here: a stand-in for `build_models`' result), the recipe's
objective config, and `rank_zero_first`'s order of body and barrier."""

from types import SimpleNamespace

import pytest
import torch
from helpers import RECIPE, REPO

from mtp_ds.checkpoint import store
from mtp_ds.checkpoint.store import rank_zero_first
from mtp_ds.config import load_recipe, plan_run
from mtp_ds.models.tiny import word_tokenizer
from mtp_ds.objective import ObjectiveConfig
from mtp_ds.tokens import MaskTokens
from mtp_ds.train.state import TrainState, objective_config


@pytest.fixture
def recipe_and_plan(monkeypatch):
    monkeypatch.chdir(REPO)
    recipe = load_recipe(RECIPE, ["objective.prefix_ntp_weight=0.5", "objective.entropy_weight=0.01"])
    return recipe, plan_run(recipe, 1, device_type="cpu")


def fake_models():
    """What `mtp_ds.models.student.build_models` returns, without the models."""
    return SimpleNamespace(
        engine=object(),
        student=object(),
        teacher=object(),
        teacher_module=object(),
        tokenizer=word_tokenizer(),
        mask_tokens=MaskTokens((99,)),
        device=torch.device("cpu"),
    )


def test_state_with_data_has_the_runs_samplers(recipe_and_plan):
    recipe, plan = recipe_and_plan
    models = fake_models()
    data = SimpleNamespace(train=list(range(40)), validation=[], eos_token_id=2)
    state = TrainState.from_models(recipe, plan, models, rank=0, data=data, run_id="run-1")
    assert (state.engine, state.student, state.teacher) == (models.engine, models.student, models.teacher)
    assert (state.rank, state.world_size, state.run_id, state.data) == (0, 1, "run-1", data)
    assert (state.eos_id, state.pad_id) == (2, 0)  # the word tokenizer's </s> and <pad>
    assert state.sampler.num_samples == 40 and state.sampler.global_batch_size == recipe.train.global_batch_size
    packing = plan.packing
    assert state.k_sampler.sample(3, 4) == type(state.k_sampler)(
        k_min=packing.k_min,
        k_max=packing.k_max,
        static_k=packing.static_k,
        per_sequence_k=packing.per_sequence_k,
        seed=recipe.train.seed,
    ).sample(3, 4)
    assert state.effective_config == plan.effective_config(recipe)


def test_state_without_data_takes_eos_from_the_tokenizer(recipe_and_plan):
    recipe, plan = recipe_and_plan
    state = TrainState.from_models(recipe, plan, fake_models(), rank=0)
    assert state.data is None and state.sampler is None and state.run_id is None
    assert (state.eos_id, state.pad_id) == (2, 0)


def test_objective_config_is_the_recipes_objective_section(recipe_and_plan):
    recipe, _ = recipe_and_plan
    config = objective_config(recipe)
    assert isinstance(config, ObjectiveConfig)
    assert (config.kind, config.prefix_ntp_weight, config.entropy_weight) == (recipe.objective.kind, 0.5, 0.01)
    assert config.accept_thresholds == tuple(recipe.objective.accept_thresholds)


@pytest.mark.parametrize(("rank", "expected"), [(0, ["body", "barrier"]), (1, ["barrier", "body"])])
def test_rank_zero_first_runs_rank_0s_body_before_the_barrier(monkeypatch, rank, expected):
    events = []
    monkeypatch.setattr(store, "_rank_and_world", lambda: (rank, 2))
    monkeypatch.setattr(store, "_barrier", lambda: events.append("barrier"))
    with rank_zero_first():
        events.append("body")
    assert events == expected


def test_rank_zero_first_without_a_process_group_just_runs_the_body():
    assert not torch.distributed.is_initialized()
    events = []
    with rank_zero_first():
        events.append("body")
    assert events == ["body"]
