"""Where a starting run begins: which checkpoint it resumes (past damaged ones) and what it may do to the directory.

Decided once, by every rank alike, before any model is built: every rank reads (manifests, a share of the
checksums); rank 0 alone changes the directory (lock, old run moved aside, damaged checkpoint renamed) and
broadcasts the outcome, so an error stops every rank with the same one line (`ConfigError`). The
`checkpoint.resume` rules: docs/CHECKPOINTS.md, "Resuming". A resumed checkpoint's saved effective config is
compared with the new run's: a changed method (packing, objective, model, data) is refused unless
`checkpoint.allow_recipe_change=true`, any other change (steps, the learning-rate schedule) is logged.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from mtp_ds.checkpoint.manifest import read_marker, verify
from mtp_ds.checkpoint.ownership import (
    REPLACED_DIR,
    DirectoryInUse,
    RunLock,
    move_run_aside,
    new_run_id,
    run_contents,
)
from mtp_ds.checkpoint.store import TAG_PATTERN, all_gather, complete_checkpoints
from mtp_ds.config import ConfigError
from mtp_ds.config.paths import resolve_path
from mtp_ds.config.schema import recipe_from_dict
from mtp_ds.config.values import yaml_load
from mtp_ds.fileio import atomic_write_text

log = logging.getLogger("mtp_ds")
EFFECTIVE_CONFIG = "effective_config.yaml"  # in every checkpoint (mtp_ds.checkpoint.store.save_checkpoint)
METHOD_SECTIONS = ("model", "data", "packing", "objective")  # what a checkpoint was trained to do
# keys of those sections that change speed, memory or what is logged, not what is trained: said, not refused
NOT_METHOD = {
    "model.attn_implementation",
    "model.gradient_checkpointing",
    "data.cache_dir",
    "data.num_proc",
    "data.max_dropped_fraction",
    "objective.logits_chunk_size",
    "objective.accept_thresholds",
}
RUN_CONTROL = {"checkpoint.resume", "checkpoint.overwrite", "checkpoint.allow_recipe_change"}  # not compared
_UNSET = object()  # a key one of two effective configs lacks


@dataclass
class RunStart:
    resume_from: Path | None  # the checkpoint to load, or None for step 0
    run_id: str
    lock: RunLock | None  # rank 0 holds the directory's lock; release it when the run ends


def on_rank0(rank: int, action, *, share: bool = True):
    """Run `action()` on rank 0 only; a ConfigError / DirectoryInUse / OSError there is raised on every rank as
    the same ConfigError. Every rank gets the result (`share=False`: only rank 0, e.g. an object holding a
    thread; the others get None)."""
    result, outcome = None, None
    if rank == 0:
        try:
            result = action()
            outcome = ("ok", result if share else None)
        except (ConfigError, DirectoryInUse, OSError) as error:
            outcome = ("error", str(error))
    outcome = all_gather(outcome)[0]
    if outcome[0] == "error":
        raise ConfigError(outcome[1])
    return result if rank == 0 else outcome[1]


def _problems_summary(problems: list[str]) -> str:
    return problems[0] + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else "")


def _intact(path: Path, rank: int, world: int, settings) -> list[str]:
    """What is wrong with a checkpoint for this run ([] if nothing); a world size change is a config error."""
    problems = verify(path, rank, world, all_gather, checksums=settings.verify == "checksum")
    if not problems:
        saved_by = read_marker(path).get("world_size")
        if saved_by is not None and saved_by != world:
            raise ConfigError(
                f"checkpoint {path} was saved by {saved_by} ranks, this run has {world}; "
                f"ZeRO-3 resumes on the same number of ranks"
            )
    return problems


def select_resume_checkpoint(settings, rank: int, world: int) -> Path | None:
    """Collective: the checkpoint to resume (rules: docs/CHECKPOINTS.md, "Resuming"), None for a fresh start."""
    directory = Path(settings.dir)
    if settings.resume == "never" or (settings.resume == "auto" and settings.overwrite):
        return None
    if settings.resume != "auto":
        path = resolve_path(settings.resume)
        problems = _intact(path, rank, world, settings)
        if problems:
            raise ConfigError(f"checkpoint.resume={settings.resume!r} is damaged: {_problems_summary(problems)}")
        return path
    damaged = []
    for path in reversed(complete_checkpoints(directory)):
        problems = _intact(path, rank, world, settings)
        if not problems:
            if damaged:
                on_rank0(rank, lambda intact=path: _set_damaged_aside(directory, damaged, intact))
            return path
        message = f"checkpoint {path} is damaged: {_problems_summary(problems)}"
        if settings.on_corrupt == "refuse":
            raise ConfigError(f"{message}; set checkpoint.on_corrupt=fallback to resume the newest intact one")
        if rank == 0:
            log.warning("%s; trying the next older checkpoint", message)
        damaged.append(path)
    if damaged:
        raise ConfigError(
            f"no intact checkpoint in checkpoint.dir {str(directory)!r}: "
            f"{', '.join(p.name for p in damaged)} are damaged"
        )
    return None


def _set_damaged_aside(directory: Path, damaged: list[Path], resumed: Path) -> None:
    for path in damaged:
        aside = path.with_name(f"damaged-{path.name}")
        os.rename(path, aside)
        log.warning("resuming from %s; the damaged %s is kept as %s", resumed.name, path.name, aside.name)
    atomic_write_text(directory / "latest_complete", resumed.name + "\n")  # fsyncs `directory`: the renames too


def _claim(settings, metrics_file: Path, resume_from: Path | None) -> str:
    """Rank 0, lock held: check the directory against the rules; returns the run id this run writes under."""
    directory = Path(settings.dir)
    if resume_from is not None and resume_from.resolve().parent == directory.resolve():
        if settings.overwrite:
            raise ConfigError(
                f"checkpoint.overwrite=true would move checkpoint.resume={settings.resume!r} aside "
                f"with the rest of its run; resume from a copy outside checkpoint.dir"
            )
        newer = [
            p.name
            for p in complete_checkpoints(directory)
            if int(TAG_PATTERN.match(p.name).group(1)) > int(TAG_PATTERN.match(resume_from.name).group(1))
        ]
        if newer:
            raise ConfigError(
                f"checkpoint.resume={settings.resume!r} is older than {', '.join(newer)} in the same "
                f"checkpoint.dir; resume the newest (checkpoint.resume=auto) or start in a new checkpoint.dir"
            )
        return read_marker(resume_from).get("run_id") or new_run_id()
    if resume_from is None and settings.resume == "auto" and not settings.overwrite:
        return new_run_id()  # no complete checkpoint: this directory's run starts (again) at step 0
    held = run_contents(directory, metrics_file, TAG_PATTERN)
    if held and settings.overwrite:
        target = move_run_aside(directory, metrics_file)
        log.warning("checkpoint.overwrite=true: moved the run that was in %s to %s", directory, target)
    elif held:
        raise ConfigError(
            f"checkpoint.dir {str(directory)!r} already holds a run ({', '.join(held)}); continue it with "
            f"checkpoint.resume=auto, use a new checkpoint.dir, or set checkpoint.overwrite=true to move it into "
            f"{directory / REPLACED_DIR}/"
        )
    return new_run_id()


def _flat(values, prefix: str = "") -> dict:
    """{dotted key: leaf value} of nested mappings (a list is one value; an empty mapping has no keys)."""
    if not isinstance(values, dict):
        return {prefix: values}
    flat = {}
    for key, value in values.items():
        flat.update(_flat(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def _with_defaults(recipe: dict) -> dict:
    """A saved recipe with the keys added to the schema since filled with their defaults (as it trained)."""
    try:
        return recipe_from_dict(recipe).to_dict()
    except ConfigError:  # a key since removed: compare what was saved
        return recipe


def recipe_changes(saved: dict, new: dict) -> tuple[list[str], list[str]]:
    """(method changes, other changes) from a checkpoint's effective config to a new one, each `key: old -> new`
    (recipe keys without their `recipe.` prefix, the DeepSpeed config's as `deepspeed.<key>`)."""
    saved = {**saved, "recipe": _with_defaults(saved.get("recipe") or {})}
    old, now = _flat(saved), _flat(new)
    method, other = [], []
    for key in [*now, *(key for key in old if key not in now)]:
        name = key.removeprefix("recipe.")
        if old.get(key, _UNSET) == now.get(key, _UNSET) or name in RUN_CONTROL:
            continue
        change = f"{name}: {_shown(old.get(key, _UNSET))} -> {_shown(now.get(key, _UNSET))}"
        section_key = ".".join(name.split(".")[:2])
        is_method = key.startswith("recipe.") and name.split(".")[0] in METHOD_SECTIONS
        (method if is_method and section_key not in NOT_METHOD else other).append(change)
    return method, other


def _shown(value) -> str:
    return "(unset)" if value is _UNSET else repr(value)


def check_recipe_change(checkpoint: Path, new_config: dict, allow: bool) -> None:
    """Rank 0: refuse resuming `checkpoint` with another method unless `allow`; log every other change."""
    file = checkpoint / EFFECTIVE_CONFIG
    try:
        saved = yaml_load(file.read_text())
    except Exception as error:  # unreadable YAML too: say so and resume as before this check existed
        log.warning("cannot compare the recipe with the one %s was trained with (%s): %s", checkpoint.name, file, error)
        return
    method, other = recipe_changes(saved if isinstance(saved, dict) else {}, new_config)
    if method and not allow:
        raise ConfigError(
            f"checkpoint {checkpoint} was trained with another recipe: {', '.join(method)}; resume with the recipe "
            "it was trained with, or pass checkpoint.allow_recipe_change=true to train on with the new values"
        )
    if method:
        log.warning(
            "checkpoint.allow_recipe_change=true: resuming %s with another recipe: %s",
            checkpoint.name,
            ", ".join(method + other),
        )
    elif other:
        log.info(
            "resuming %s with changed settings: %s (the recipe it was trained with is unchanged)",
            checkpoint.name,
            ", ".join(other),
        )


def start_run(settings, metrics_file: str, rank: int, world: int, *, effective_config: dict | None = None) -> RunStart:
    """Collective, before any model is built: lock the directory, pick the checkpoint, compare its recipe with
    `effective_config` (the new run's, when given), claim the directory."""
    lock = on_rank0(rank, lambda: RunLock(settings.dir).acquire(), share=False)
    try:
        resume_from = select_resume_checkpoint(settings, rank, world)
        if resume_from is not None and effective_config is not None:
            allow = settings.allow_recipe_change
            on_rank0(rank, lambda: check_recipe_change(resume_from, effective_config, allow))
        run_id = on_rank0(rank, lambda: _claim(settings, Path(metrics_file), resume_from))
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    return RunStart(resume_from=resume_from, run_id=run_id, lock=lock)
