"""Run bookkeeping that must survive restarts: the metrics JSONL, optional TensorBoard / W&B, and signals.

Why: a preempted and resumed run must leave one metrics line per step, no gaps and no duplicates, so the
writer drops lines past the resumed step before appending. SIGTERM / SIGUSR1 (Slurm preemption, scancel,
`--signal`) and SIGINT (Ctrl-C) only set a flag; the loop checks it at a step boundary, where a checkpoint is
consistent, saves and exits 0.
"""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


class MetricsWriter:
    """Rank 0 writes; other ranks hold a writer that does nothing."""

    def __init__(
        self,
        path: str,
        *,
        enabled: bool,
        resume_step: int,
        tensorboard_dir: str | None = None,
        wandb_settings: dict | None = None,
    ) -> None:
        self.enabled = enabled
        self.path = Path(path)
        self.tensorboard = self.wandb = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._truncate_after(resume_step)
        if tensorboard_dir:
            from torch.utils.tensorboard import SummaryWriter

            self.tensorboard = SummaryWriter(tensorboard_dir)
        if wandb_settings:
            import wandb

            self.wandb = wandb.init(**wandb_settings, resume="allow")

    def _truncate_after(self, step: int) -> None:
        """Keep only records of steps <= `step` (a crash may have logged steps the checkpoint does not hold)."""
        if not self.path.exists():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a torn last line from a crash
            if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= step:
                kept.append(line)  # a line without a step (an old empty validation record) goes too
        from mtp_ds.fileio import atomic_write_text

        atomic_write_text(self.path, "".join(line + "\n" for line in kept))

    def write(self, record: dict) -> None:
        if not isinstance(record.get("step"), int):  # every reader keys on it
            raise ValueError(f"a metrics record needs an integer 'step', got keys {sorted(record)}")
        if not self.enabled:
            return
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
            handle.flush()
        step = record.get("step", 0)
        numbers = {k: v for k, v in record.items() if isinstance(v, (int, float)) and k != "step"}
        if self.tensorboard is not None:
            for name, value in numbers.items():
                self.tensorboard.add_scalar(name, value, step)
        if self.wandb is not None:
            self.wandb.log(numbers, step=step)

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
        if self.wandb is not None:
            self.wandb.finish()


class StopRequest:
    """Set by SIGINT (Ctrl-C) / SIGTERM / SIGUSR1, or when the launcher dies; `agreed()` makes every rank stop
    at the same step.

    Why the launcher: when torchrun (or the shell of a single-process run) is killed with SIGKILL its ranks
    live on in their own process groups; polling the parent pid lets them save and exit instead of training
    on unseen, holding the directory's lock. Create it right before the first step: before that there is
    nothing to save, and a signal keeps its default effect (Ctrl-C aborts loading at once).
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)
    PARENT_POLL_S = 1.0

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._parent = os.getppid()
        self._previous = {number: signal.signal(number, self._handle) for number in self.SIGNALS}
        self._stopped = threading.Event()
        threading.Thread(target=self._watch_parent, name="mtp-ds-launcher-watch", daemon=True).start()

    def _handle(self, number: int, _frame: FrameType | None) -> None:
        self.signal_name = self.signal_name or signal.Signals(number).name

    def _watch_parent(self) -> None:
        while not self._stopped.wait(self.PARENT_POLL_S):
            if os.getppid() != self._parent:
                self.signal_name = self.signal_name or f"no launcher (parent pid {self._parent} exited)"
                return

    def restore(self) -> None:
        self._stopped.set()
        for number, previous in self._previous.items():
            signal.signal(number, previous)

    def agreed(self, device: torch.device) -> bool:
        import torch
        import torch.distributed as dist

        flag = torch.tensor([1.0 if self.signal_name else 0.0], device=device)
        if dist.is_initialized():
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())
