"""Resuming with another recipe: the checkpoint's saved effective config against the new one. A change of what the
method trains (packing, objective, model, data) stops in one line unless `checkpoint.allow_recipe_change=true`;
any other change (steps, the learning-rate schedule) is said at start-up."""

import copy
import logging

import pytest
from helpers import REPO

from mtp_ds.checkpoint.manifest import checkpoint_files, describe, write_marker
from mtp_ds.checkpoint.resume import recipe_changes, start_run
from mtp_ds.config import ConfigError, load_recipe, plan_run, save_effective_config

TINY = REPO / "recipes" / "tiny_cpu.yaml"


def effective(tmp_path, *overrides) -> dict:
    """The effective config a run of the tiny recipe saves with every checkpoint (world of one)."""
    recipe = load_recipe(TINY, [f"checkpoint.dir={tmp_path / 'run'}", *overrides])
    return plan_run(recipe, 1, device_type="cpu").effective_config(recipe)


def saved_checkpoint(tmp_path, config: dict):
    """A complete checkpoint of step 10 in `tmp_path / 'run'` whose effective config is `config`."""
    path = tmp_path / "run" / "step00000010"
    path.mkdir(parents=True)
    (path / "rng_rank0.pt").write_bytes(b"r0" * 10)
    save_effective_config(path / "effective_config.yaml", config)
    write_marker(path, step=10, run_id="run-a", world_size=1, files=describe(path, checkpoint_files(path)))
    return path


def resume(tmp_path, *overrides):
    recipe = load_recipe(TINY, [f"checkpoint.dir={tmp_path / 'run'}", *overrides])
    config = plan_run(recipe, 1, device_type="cpu").effective_config(recipe)
    start = start_run(recipe.checkpoint, recipe.metrics_file, 0, 1, effective_config=config)
    start.lock.release()
    return start


def test_a_changed_k_max_on_resume_is_refused_in_one_line(tmp_path):
    """Before: a k_max=8 run resumed with packing.k_max=4 silently trained on with k <= 4."""
    checkpoint = saved_checkpoint(tmp_path, effective(tmp_path))
    with pytest.raises(ConfigError) as error:
        resume(tmp_path, "packing.k_max=4", "objective.kind=soft")
    assert str(error.value) == (
        f"checkpoint {checkpoint} was trained with another recipe: packing.k_max: 8 -> 4, objective.kind: "
        "'hard' -> 'soft'; resume with the recipe it was trained with, or pass checkpoint.allow_recipe_change=true "
        "to train on with the new values"
    )
    assert not (tmp_path / "run" / "LOCK").exists()  # the refusal leaves the directory's lock released


def test_allow_recipe_change_resumes_and_says_what_changed(tmp_path, caplog):
    checkpoint = saved_checkpoint(tmp_path, effective(tmp_path))
    with caplog.at_level(logging.INFO, logger="mtp_ds"):
        start = resume(tmp_path, "packing.k_max=4", "checkpoint.allow_recipe_change=true")
    assert start.resume_from == checkpoint
    said = [record.getMessage() for record in caplog.records if "recipe" in record.getMessage()]
    assert said == [
        f"checkpoint.allow_recipe_change=true: resuming {checkpoint.name} with another recipe: packing.k_max: 8 -> 4"
    ]


def test_steps_and_the_lr_schedule_may_change_and_are_said(tmp_path, caplog):
    checkpoint = saved_checkpoint(tmp_path, effective(tmp_path))
    overrides = ("train.steps=40", "train.deepspeed_overrides.scheduler.params.warmup_num_steps=3")
    with caplog.at_level(logging.INFO, logger="mtp_ds"):
        start = resume(tmp_path, *overrides)
    assert start.resume_from == checkpoint
    said = [record.getMessage() for record in caplog.records if "recipe" in record.getMessage()]
    assert said == [
        f"resuming {checkpoint.name} with changed settings: train.steps: 20 -> 40, "
        "train.deepspeed_overrides.scheduler.params.warmup_num_steps: (unset) -> 3, "
        "deepspeed.scheduler.params.warmup_num_steps: 10 -> 3 (the recipe it was trained with is unchanged)"
    ]


def test_the_comparison_of_two_effective_configs(tmp_path):
    saved = effective(tmp_path)
    assert recipe_changes(saved, copy.deepcopy(saved)) == ([], [])
    # speed, memory and logging knobs are not the method: said, not refused
    knobs = effective(
        tmp_path, "data.num_proc=2", "model.gradient_checkpointing=true", "objective.logits_chunk_size=64"
    )
    assert recipe_changes(saved, knobs) == (
        [],
        [
            "model.gradient_checkpointing: False -> True",
            "data.num_proc: None -> 2",
            "objective.logits_chunk_size: None -> 64",
        ],
    )
    method = effective(tmp_path, "data.seq_len=48", "model.distinct_slot_tokens=true", "packing.static_k=3")
    assert recipe_changes(saved, method)[0] == [
        "model.distinct_slot_tokens: False -> True",
        "data.seq_len: 64 -> 48",
        "packing.static_k: None -> 3",
    ]
    # a key added to the schema since the checkpoint was saved is its default there: no change
    older = copy.deepcopy(saved)
    del older["recipe"]["data"]["max_dropped_fraction"], older["recipe"]["checkpoint"]["allow_recipe_change"]
    assert recipe_changes(older, saved) == ([], [])
