"""What the trainer says on a terminal: `--help`, each start-up stage with its time, one line at the end of a run,
and the third-party warnings it silences (each with its reason).

Why: a run was silent for its first ~36 s, half its stderr was one torch deprecation warning repeated on every step
and rank, and its end said neither that it had finished nor where the checkpoint was. Rank 0 speaks; every rank
filters the warnings.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger("mtp_ds")

USAGE = """usage: mtp-ds train RECIPE.yaml [section.key=value ...]
       torchrun --nproc_per_node=N -m mtp_ds.train RECIPE.yaml [section.key=value ...]

Train an MTP student from a recipe (recipes/*.yaml; its header gives its hardware and launch command). Any recipe
key can be overridden as section.key=value (mtp_ds/config/schema.py lists them). Without torchrun the run is one
process (a world of one); under torchrun / srun every rank runs it. The same command resumes a stopped run.

example:
  DS_ACCELERATOR=cpu torchrun --nproc_per_node=2 -m mtp_ds.train recipes/tiny_cpu.yaml train.steps=5
  mtp-ds train recipes/tiny_cpu.yaml checkpoint.dir=/tmp/tiny train.steps=5      # one process

exit codes: 0 done or stopped by a signal (saved), 1 non-finite loss or a full disk, 2 a config error, 130
interrupted before the first step. Docs: docs/OPERATIONS.md, docs/TRAINING.md."""

# (category, the whole message as a regex, why it is silenced). Whole messages: a new or reworded warning still shows.
KNOWN_WARNINGS: tuple[tuple[type[Warning], str, str], ...] = (
    (
        FutureWarning,
        r"`torch\.distributed\.all_gather_into_tensor` is deprecated\. "
        r"Please use `torch\.distributed\.all_gather_single` instead\.$",
        "DeepSpeed's ZeRO-3 gathers parameters with it in every forward; on every step and rank (not ours to change)",
    ),
    (
        FutureWarning,
        r"`torch\.distributed\.reduce_scatter_tensor` is deprecated\. "
        r"Please use `torch\.distributed\.reduce_scatter_single` instead\.$",
        "DeepSpeed's ZeRO-3 reduces gradients with it in every backward; on every step and rank (not ours to change)",
    ),
)


def silence_known_warnings() -> None:
    """Filter KNOWN_WARNINGS, once, at start-up (before DeepSpeed's first collective)."""
    for category, message, _why in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)


def duration(seconds: float) -> str:
    """12.3 s, 4m05s, 2h07m."""
    if seconds < 120:
        return f"{seconds:.1f} s"
    minutes = int(seconds // 60)
    return f"{minutes}m{int(seconds % 60):02d}s" if minutes < 120 else f"{minutes // 60}h{minutes % 60:02d}m"


class RunConsole:
    """Start-up stages as they begin, then every stage's time; the run's one last line. Silent unless `speak`."""

    def __init__(self, speak: bool) -> None:
        self.speak = speak
        self.started = time.perf_counter()
        self.stage_seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        if self.speak:
            log.info("start-up: %s ...", name)
        began = time.perf_counter()
        yield
        self.stage_seconds[name] = time.perf_counter() - began

    def started_training(self) -> None:
        if self.speak:
            stages = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in self.stage_seconds.items())
            log.info("start-up: done in %.1f s (%s)", time.perf_counter() - self.started, stages)

    def finished(self, *, first_step: int, last_step: int, total_steps: int, checkpoint: Path | None) -> None:
        """`done: N steps (step S of T) in TIME; last checkpoint: PATH; next: mtp-ds export PATH DIR-mtp`."""
        if not self.speak:
            return
        where = "no checkpoint was saved"
        if checkpoint is not None:
            where = f"last checkpoint: {checkpoint}; next: mtp-ds export {checkpoint} {checkpoint.parent}-mtp"
        log.info(
            "done: %d steps (step %d of %d) in %s; %s",
            last_step - first_step,
            last_step,
            total_steps,
            duration(time.perf_counter() - self.started),
            where,
        )
