"""The training loop: `train` -> `run_training` -> `train_step` per step -> `save` (docs/TRAINING.md).

Usage (from the repo root; every recipe's header gives its own command):
    DS_ACCELERATOR=cpu torchrun --nproc_per_node=2 -m mtp_ds.train recipes/tiny_cpu.yaml
    torchrun --nproc_per_node=4 -m mtp_ds.train recipes/qwen3_4b_metamath.yaml checkpoint.dir=/scratch/run1
    mtp-ds train RECIPE [key=value ...]            # the same, as a console script under torchrun / srun
"""

from __future__ import annotations

import logging
import math
import os
import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, NoReturn

import torch

from mtp_ds.batching import KOffsetSampler, PackedBatch
from mtp_ds.checkpoint.store import DiskFull
from mtp_ds.config import ConfigError
from mtp_ds.fileio import atomic_write_text
from mtp_ds.objective import SupervisionCounts, combine_loss, global_supervision_counts, mtp_objective
from mtp_ds.train.console import USAGE, RunConsole, silence_known_warnings
from mtp_ds.train.distributed import setup_distributed
from mtp_ds.train.memory import step_memory
from mtp_ds.train.state import TrainState

if TYPE_CHECKING:
    from mtp_ds.checkpoint.resume import RunStart
    from mtp_ds.config import Recipe, RunPlan
    from mtp_ds.metrics import MetricSums

log = logging.getLogger("mtp_ds")
DONE_FILE = "DONE"  # written when the run reached train.steps (the Slurm scripts do not requeue then)
STOPPED_FILE = "STOPPED"  # the step saved by a clean stop on a signal (what the Slurm scripts report)


def pack_step(state: TrainState, dataset: Any, indices: list[int], draws: list[tuple[int, int]]) -> list[PackedBatch]:
    """This rank's packed micro-batches of one global batch (indices into `dataset`, a split of `state.data`,
    and their (k, offset) draws)."""
    from mtp_ds.data import pack_micro_batches, step_micro_batches

    micro = step_micro_batches(
        dataset,
        indices,
        rank=state.rank,
        world_size=state.world_size,
        micro_batch_size=state.recipe.train.micro_batch_size,
        draws=draws,
    )
    return pack_micro_batches(
        micro,
        state.plan.packing,
        mask_tokens=state.mask_tokens,
        eos_token_id=state.eos_id,
        pad_token_id=state.pad_id,
        device=state.device,
    )


def run_objective(
    state: TrainState, batches: list[PackedBatch], *, train: bool
) -> tuple[MetricSums, SupervisionCounts]:
    """Objective over this rank's micro-batches of one global batch; backward + step when training."""
    config, engine = state.objective, state.engine
    counts = global_supervision_counts(batches, config, device=state.device)
    multiplier = state.world_size * len(batches) if train else 1.0
    metrics = None
    for batch in batches:
        with torch.set_grad_enabled(train):
            output = mtp_objective(
                state.student,
                state.teacher,
                batch,
                config,
                mask_token_ids=state.mask_tokens.never_emitted,
                global_counts=counts,
                loss_multiplier=multiplier,
                num_slot_metrics=state.plan.packing.k_max,
                student_forward=engine,
            )
        if train:
            engine.backward(output.loss)
            engine.step()
        metrics = output.metrics if metrics is None else metrics + output.metrics
    return metrics.all_reduce(), counts


def train_step(state: TrainState, step: int) -> dict[str, Any]:
    """One optimizer step on the next global batch; returns its metrics record."""
    started = time.perf_counter()
    global_indices = state.sampler.next_batch()
    draws = state.k_sampler.sample(step, len(global_indices))
    batches = pack_step(state, state.data.train, global_indices, draws)
    state.engine.train()
    metrics, counts = run_objective(state, batches, train=True)
    summary = metrics.summary()
    elapsed = time.perf_counter() - started
    tokens = torch.tensor([sum(int(b.valid.sum()) for b in batches)], dtype=torch.float64, device=state.device)
    torch.distributed.all_reduce(tokens)
    sums = (float(metrics.slot_loss), float(metrics.entropy), float(metrics.prefix_loss))
    return {
        "step": step + 1,
        "loss": combine_loss(*sums, counts, state.objective),
        **summary,
        "k": draws[0][0],
        "supervised_slots": counts.slots,
        "lr": state.engine.get_lr()[0],
        "grad_norm": _grad_norm(state.engine),
        "step_seconds": elapsed,
        "tokens_per_second": float(tokens) / elapsed,
        **step_memory(state.student, getattr(state.teacher, "model", None), state.device),
    }


def _grad_norm(engine: Any) -> float | None:
    """Global gradient norm of the last optimizer step, before clipping (DeepSpeed computes it when clipping)."""
    norm = engine.get_global_grad_norm()
    return float(norm) if norm is not None else None


def check_finite(record: dict[str, Any], engine: Any, last_saved: Path | None) -> None:
    """Stop before anything is saved once the loss or the gradient is not finite (fp16 loss scaling skips
    overflowing steps by itself, so there only the loss counts)."""
    grad_norm = record.get("grad_norm")
    bad = {"loss": record["loss"]}
    if grad_norm is not None and not engine.fp16_enabled():
        bad["grad_norm"] = grad_norm
    for name, value in bad.items():
        if not math.isfinite(value):
            where = f"; last good checkpoint: {last_saved}" if last_saved else "; no checkpoint was saved"
            raise FloatingPointError(f"non-finite {name} ({value}) at step {record['step']}{where}")


def validate(state: TrainState, step: int) -> dict[str, float]:
    """Teacher-forced metrics on fixed validation batches with fixed (k, offset) draws."""
    from mtp_ds.data import validation_batches

    recipe, data, packing = state.recipe, state.data, state.plan.packing
    if len(data.validation) == 0:
        return {}
    sampler = KOffsetSampler(
        k_min=packing.k_min,
        k_max=packing.k_max,
        static_k=packing.static_k,
        per_sequence_k=True,
        seed=recipe.train.seed + 1,
    )
    state.engine.eval()
    total = None
    for index, indices in enumerate(
        validation_batches(
            data.validation, global_batch_size=recipe.train.global_batch_size, num_batches=recipe.train.eval_batches
        )
    ):
        batches = pack_step(state, data.validation, indices, sampler.sample(index, len(indices)))
        metrics, _ = run_objective(state, batches, train=False)
        total = metrics if total is None else total + metrics
    state.engine.train()
    return {"step": step, **{f"val/{name}": value for name, value in total.summary().items()}}


def save(state: TrainState, step: int) -> Path:
    """Collective: a checkpoint of this step (engine, sampler position, RNG states; mtp_ds.checkpoint.store)."""
    from mtp_ds.checkpoint.store import save_checkpoint

    recipe = state.recipe
    client_state = {
        "step": step,
        "sampler": state.sampler.state_dict(),
        "samples_consumed": step * recipe.train.global_batch_size,
    }
    return save_checkpoint(
        state.engine,
        recipe.checkpoint.dir,
        step,
        client_state,
        keep_last=recipe.checkpoint.keep_last,
        effective_config=state.effective_config,
        hf_config=state.student.config,
        tokenizer=state.tokenizer,
        run_id=state.run_id,
        generation_config=state.student.generation_config,
    )


def train(recipe: Recipe, *, device_type: str) -> int:
    """The whole run on this rank: plan, process group, the directory's lock, the steps; returns the exit code."""
    from mtp_ds.checkpoint.resume import start_run
    from mtp_ds.config import plan_run

    console = RunConsole(speak=os.environ.get("RANK", "0") == "0")  # rank 0 says each start-up stage
    # resolved once, before any process group: batch / TP / precision conflicts stop here with one line
    plan = plan_run(recipe, int(os.environ.get("WORLD_SIZE", "1")), device_type=device_type)
    check_optimizer(plan.deepspeed, recipe.train.deepspeed_config)
    with console.stage("process group"):
        rank, world, local_rank = setup_distributed(device_type, recipe.train.distributed_timeout_minutes)
    if world != plan.world_size:
        raise RuntimeError(f"WORLD_SIZE={plan.world_size} but the process group has {world} ranks")
    interrupt_while_loading()
    # the directory's lock, the checkpoint to resume (past damaged ones) and the run id, before any model
    with console.stage("checkpoint directory"):
        start = start_run(
            recipe.checkpoint, recipe.metrics_file, rank, world, effective_config=plan.effective_config(recipe)
        )
    try:
        return run_training(recipe, plan, start, rank, local_rank, console=console)
    finally:
        if start.lock is not None:
            start.lock.release()


def check_optimizer(resolved_ds: dict, source: str) -> None:
    """An optimizer / scheduler name DeepSpeed does not know stops here, not after the model is built."""
    from deepspeed.runtime.config import DEEPSPEED_OPTIMIZERS
    from deepspeed.runtime.lr_schedules import VALID_LR_SCHEDULES

    from mtp_ds.config.deepspeed_json import check_optimizer_and_scheduler

    check_optimizer_and_scheduler(
        resolved_ds,
        f"deepspeed config {source}",
        optimizers=set(DEEPSPEED_OPTIMIZERS),
        torch_optimizers={name for name in dir(torch.optim) if name[0].isupper()},
        schedulers=set(VALID_LR_SCHEDULES),
        torch_schedulers={name for name in dir(torch.optim.lr_scheduler) if name[0].isupper()},
    )


def interrupt_while_loading() -> None:
    """Until the first step there is nothing to save: SIGTERM / SIGUSR1 abort like Ctrl-C, through `finally`
    (which releases the directory's lock) instead of killing the process where it stands."""

    def abort(number: int, _frame: FrameType | None) -> NoReturn:
        raise KeyboardInterrupt(signal.Signals(number).name)  # main says "interrupted (SIGTERM before ...)"

    for number in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(number, abort)


def run_training(
    recipe: Recipe, plan: RunPlan, start: RunStart, rank: int, local_rank: int, *, console: RunConsole | None = None
) -> int:
    """Build the state, resume if `start` says so, then step, log, validate and save until done or stopped."""
    from tqdm import tqdm

    from mtp_ds.checkpoint.store import load_checkpoint
    from mtp_ds.train.tracking import MetricsWriter, StopRequest

    console = console or RunConsole(speak=False)
    state = TrainState.build(recipe, plan, rank, local_rank, run_id=start.run_id, console=console)
    start_step = 0
    last_saved = start.resume_from
    if start.resume_from is not None:
        client = load_checkpoint(state.engine, start.resume_from)
        start_step = int(client["step"])
        state.sampler.load_state_dict(client["sampler"])
        log.info("resumed from %s at step %d", start.resume_from, start_step)
    done_marker, stopped_marker = Path(recipe.checkpoint.dir, DONE_FILE), Path(recipe.checkpoint.dir, STOPPED_FILE)
    if rank == 0:
        stopped_marker.unlink(missing_ok=True)
        if start_step < recipe.train.steps:
            done_marker.unlink(missing_ok=True)  # left by a shorter earlier run: this one is not done yet
    logging_settings = recipe.logging
    writer = MetricsWriter(
        recipe.metrics_file,
        enabled=rank == 0,
        resume_step=start_step,
        tensorboard_dir=os.path.join(recipe.checkpoint.dir, "tensorboard") if logging_settings.tensorboard else None,
        wandb_settings={
            "project": logging_settings.wandb_project,
            "name": logging_settings.wandb_run_name,
            "config": state.effective_config,
        }
        if logging_settings.wandb
        else None,
    )
    console.started_training()  # before the progress bar, which would share its line
    progress = tqdm(
        total=recipe.train.steps, initial=start_step, disable=rank != 0, desc="train", unit="step", dynamic_ncols=True
    )
    stop = StopRequest()  # from here on a signal (or the launcher's death) means: save at the step's end, exit 0
    step = start_step
    try:
        while step < recipe.train.steps:
            record = train_step(state, step)
            step += 1
            check_finite(record, state.engine, last_saved)
            if step % recipe.train.log_every == 0 or step == recipe.train.steps:
                writer.write(
                    {key: round(value, 6) if isinstance(value, float) else value for key, value in record.items()}
                )
            progress.update(1)
            progress.set_postfix(loss=f"{record['loss']:.4f}", agree=f"{record['agreement']:.3f}", k=record["k"])
            evaluating = recipe.train.eval_every and step % recipe.train.eval_every == 0
            if evaluating and (validation := validate(state, step)):  # {} without validation samples: no line
                writer.write(validation)
            stopping = stop.agreed(state.device)
            if (
                stopping
                or step == recipe.train.steps
                or (recipe.checkpoint.every and step % recipe.checkpoint.every == 0)
            ):
                last_saved = save(state, step)
            if stopping:
                progress.close()
                if rank == 0:
                    atomic_write_text(stopped_marker, f"{step}\n")
                    log.warning(
                        "stopped (%s): saved %s at step %d; run the same command to resume",
                        stop.signal_name or "another rank's signal",
                        last_saved,
                        step,
                    )
                return 0
    finally:
        stop.restore()
        progress.close()
        writer.close()
    if rank == 0:
        atomic_write_text(done_marker, f"{step}\n")
    console.finished(first_step=start_step, last_step=step, total_steps=recipe.train.steps, checkpoint=last_saved)
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m mtp_ds.train RECIPE [key=value ...]`: the exit code (2: a config error, 1: non-finite or a full
    disk, 130: interrupted before the first step)."""
    from mtp_ds.config import parse_cli

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    silence_known_warnings()
    device_type = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        recipe = parse_cli(argv)
        code = train(recipe, device_type=device_type)
    except (ConfigError, FloatingPointError, DiskFull) as error:
        if os.environ.get("RANK", "0") == "0":  # every rank sees the same error: say it once
            print(f"mtp-ds train: {error}", file=sys.stderr, flush=True)
        if torch.distributed.is_initialized():
            # the others wait until rank 0 has said it: a launcher stops the whole group at the first exit
            torch.distributed.barrier()
        code = 2 if isinstance(error, ConfigError) else 1
    except KeyboardInterrupt as interrupt:  # before the first step (after it, signals save and stop)
        if os.environ.get("RANK", "0") == "0":  # Ctrl-C's KeyboardInterrupt has no text, a signal's is its name
            name = str(interrupt) or "SIGINT"
            print(f"mtp-ds train: interrupted ({name} before the first step): nothing to save", file=sys.stderr)
        code = 130
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    return code


if __name__ == "__main__":
    sys.exit(main())
