"""Benchmark: one optimizer step of the MTP objective vs one step of plain NTP fine-tuning, side by side.

Usage (repo root; a world of one process, set up like `mtp_ds.train.distributed.setup_distributed`; torchrun may launch it too):
    DS_ACCELERATOR=cpu HF_HUB_OFFLINE=1 python bench/train_step.py --model tiny           # CPU, fp32, ZeRO-3
    DS_ACCELERATOR=cpu torchrun --nproc_per_node=1 bench/train_step.py --model small
    python bench/train_step.py --device cuda --model qwen3-4b                            # one H200, bf16
    python bench/train_step.py --device cuda --model qwen3-4b --micro-batch 32 --steps 10 --attn flex_attention

The MTP step is the trainer's own (`run_objective` on a `TrainState` without a dataset); the NTP step runs the
same engine on the same packed batches. What is measured, the memory-rule check, the presets: docs/TRAINING.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from mtp_ds.batching import PackedBatch
    from mtp_ds.config import Recipe
    from mtp_ds.train.state import TrainState

warnings.filterwarnings("ignore", category=FutureWarning)  # torch.distributed deprecations inside DeepSpeed

REPO = Path(__file__).resolve().parent.parent
PRESETS = {
    "tiny": dict(hidden_size=256, num_layers=4, num_heads=4, num_kv_heads=2, intermediate_size=768, vocab_size=4096),
    "small": dict(hidden_size=512, num_layers=8, num_heads=8, num_kv_heads=4, intermediate_size=1536, vocab_size=8192),
    "qwen3-4b": dict(
        hidden_size=2560,
        num_layers=36,
        num_heads=32,
        num_kv_heads=8,
        head_dim=128,
        intermediate_size=9728,
        vocab_size=151936,
        tie_word_embeddings=True,
        rms_norm_eps=1e-6,
        rope_theta=1000000.0,
        max_position_embeddings=40960,
    ),
}
H200_BF16_DENSE_TFLOPS = 989.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--seq-len", type=int, default=160)
    parser.add_argument("--k-max", type=int, default=16)
    parser.add_argument("--k", type=int, default=None, help="static k for every step (default: random in [2, k_max])")
    parser.add_argument("--global-batch", type=int, default=None, help="sequences per optimizer step")
    parser.add_argument("--micro-batch", type=int, default=None, help="sequences per micro-batch")
    parser.add_argument("--steps", type=int, default=None, help="timed steps of each kind (median reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps of each kind first")
    parser.add_argument(
        "--attn",
        choices=("auto", "sdpa", "flex_attention", "both"),
        default="auto",
        help="auto: sdpa on CPU, both (dense then flex) on CUDA",
    )
    parser.add_argument("--teacher-mode", choices=("inference", "replica", "zero3"), default="inference")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        help=f"device peak for MFU (default {H200_BF16_DENSE_TFLOPS} on CUDA, none on CPU)",
    )
    parser.add_argument("--memory-check", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="also write the numbers (per attention) to this JSON file")
    parser.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra recipe overrides (recipes/tiny_cpu.yaml keys), e.g. objective.kind=soft",
    )
    args = parser.parse_args(argv)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    big = args.model == "qwen3-4b"
    args.global_batch = args.global_batch or (128 if big else 8)
    args.micro_batch = args.micro_batch or min(args.global_batch, 16 if big else 8)
    args.steps = args.steps or (5 if big else 10)
    if args.attn == "auto":
        args.attn = "both" if args.device == "cuda" else "sdpa"
    if args.attn in ("both", "flex_attention") and args.device != "cuda":
        parser.error("FlexAttention is benchmarked on CUDA only")
    if args.peak_tflops is None and args.device == "cuda":
        args.peak_tflops = H200_BF16_DENSE_TFLOPS
    return args


# ------------------------------------------------------------------------------------------------ setup --


def build_recipe(args: argparse.Namespace, world: int) -> Recipe:
    from mtp_ds.config import load_recipe

    fields = dict(PRESETS[args.model])
    tiny = ",".join(f"{key}: {value}" for key, value in {"arch": "qwen3", **fields}.items())
    overrides = [
        f"model.tiny_config={{{tiny}}}",
        "model.tokenizer=builtin:word",
        "model.dtype=auto",
        f"model.attn_implementation={'sdpa' if args.attn in ('sdpa', 'both') else args.attn}",
        f"model.gradient_checkpointing={str(args.gradient_checkpointing).lower()}",
        f"data.seq_len={args.seq_len}",
        "packing.k_min=2",
        f"packing.k_max={args.k_max}",
        f"train.global_batch_size={args.global_batch}",
        f"train.micro_batch_size={args.micro_batch}",
        f"train.seed={args.seed}",
        "objective.kind=hard",
        f"train.deepspeed_config={'ds_configs/zero3_bf16.json' if args.device == 'cuda' else 'ds_configs/zero3_cpu.json'}",
        f"teacher.mode={args.teacher_mode}",
        "teacher.tp_size=1",
        f"teacher.ds_config={teacher_json(args)}",
        "checkpoint.dir=/tmp/mtp_ds_bench_unused",
    ]
    if args.k is not None:
        overrides.append(f"packing.static_k={args.k}")
    return load_recipe(REPO / "recipes/tiny_cpu.yaml", overrides + list(args.override))


def teacher_json(args: argparse.Namespace) -> str:
    if args.teacher_mode == "zero3":
        return "ds_configs/teacher_zero3.json"
    return "ds_configs/teacher_inference.json" if args.device == "cuda" else "ds_configs/teacher_inference_cpu.json"


@dataclass
class Bench:
    """The trainer's own state (no dataset), plus the teacher's HF model (vocabulary, attention kernel, FLOPs)."""

    state: TrainState
    teacher_module: torch.nn.Module


def build_bench(args: argparse.Namespace) -> Bench:
    """World of one (or torchrun's), models from the trainer's builders, the trainer's `TrainState`."""
    os.chdir(REPO)  # recipes name their files relative to the repo root
    from mtp_ds.config import plan_run
    from mtp_ds.models.loading import load_tokenizer
    from mtp_ds.models.student import build_models
    from mtp_ds.train.distributed import setup_distributed
    from mtp_ds.train.state import TrainState

    rank, world, local_rank = setup_distributed(args.device)
    recipe = build_recipe(args, world)
    plan = plan_run(recipe, world, device_type=args.device)
    device = torch.device("cuda", local_rank) if args.device == "cuda" else torch.device("cpu")
    models = build_models(recipe, plan, tokenizer=load_tokenizer(recipe.model), device=device)
    return Bench(TrainState.from_models(recipe, plan, models, rank=rank), models.teacher_module)


@dataclass
class RandomMicroBatch:
    """What `pack_micro_batches` reads from a `mtp_ds.data.SampleBatch`."""

    token_ids: torch.Tensor
    first_anchor: torch.Tensor
    draws: list


def step_batches(bench: Bench, step: int) -> list[PackedBatch]:
    """This rank's packed micro-batches for timed step `step`: random ids (no EOS, no mask token), the
    trainer's (k, offset) draws, the trainer's packing."""
    from mtp_ds.data import pack_micro_batches, rank_slice, split_micro

    state = bench.state
    recipe = state.recipe
    vocab = int(bench.teacher_module.config.vocab_size)
    generator = torch.Generator().manual_seed(1000 + step)
    tokens = torch.randint(4, vocab, (recipe.train.global_batch_size, recipe.data.seq_len), generator=generator)
    tokens[torch.isin(tokens, torch.tensor(state.mask_tokens.ids))] = 4
    draws = state.k_sampler.sample(step, recipe.train.global_batch_size)
    rows = rank_slice(list(range(recipe.train.global_batch_size)), state.rank, state.world_size)
    my_draws = rank_slice(draws, state.rank, state.world_size)
    micro = [
        RandomMicroBatch(tokens[chunk], torch.zeros(len(chunk), dtype=torch.long), draw_chunk)
        for chunk, draw_chunk in zip(
            split_micro(rows, recipe.train.micro_batch_size), split_micro(my_draws, recipe.train.micro_batch_size)
        )
    ]
    return pack_micro_batches(
        micro,
        state.plan.packing,
        mask_tokens=state.mask_tokens,
        eos_token_id=state.eos_id,
        pad_token_id=state.pad_id,
        device=state.device,
    )


def set_attention(bench: Bench, implementation: str) -> None:
    for module in (bench.state.student, bench.teacher_module):
        if module.config._attn_implementation != implementation:
            module.set_attn_implementation(implementation)


# ------------------------------------------------------------------------------------------------ steps --


def mtp_step(bench: Bench, batches: list[PackedBatch]) -> None:
    """The trainer's step, verbatim (mtp_ds.train.loop.run_objective)."""
    from mtp_ds.train.loop import run_objective

    run_objective(bench.state, batches, train=True)


def ntp_step(bench: Bench, batches: list[PackedBatch], *, full_logits: bool = True) -> None:
    """Plain next-token fine-tuning on the same packed micro-batches through the same engine: CE at the
    ground-truth positions, the global sum divided by the global count (like the MTP loss). `full_logits`:
    the LM head on every position, as a Hugging Face causal LM computes them; else only at the supervised rows
    (the objective's own prefix-NTP way: the strictest baseline)."""
    from mtp_ds.objective import packed_hidden_states, prefix_coordinates

    state = bench.state
    engine, student = state.engine, state.student
    coordinates = [prefix_coordinates(batch) for batch in batches]
    total = torch.tensor([float(sum(c[0].numel() for c in coordinates))], dtype=torch.float64, device=state.device)
    torch.distributed.all_reduce(total)
    multiplier = state.world_size * len(batches)
    head = student.get_output_embeddings()
    for batch, (rows, cols, targets) in zip(batches, coordinates):
        hidden = packed_hidden_states(student, batch, forward=engine)
        if full_logits:
            logits = head(hidden).float()[rows, cols]  # (B, T, V) first, as a plain causal LM fine-tune does
        else:
            logits = head(hidden[rows, cols]).float()  # (rows, V) only
        loss = F.cross_entropy(logits, targets, reduction="sum") / max(total.item(), 1.0)
        engine.backward(loss * multiplier)
        engine.step()


def ntp_rows_step(bench: Bench, batches: list[PackedBatch]) -> None:
    ntp_step(bench, batches, full_logits=False)


KINDS: dict[str, Callable[[Bench, list[PackedBatch]], None]] = {
    "ntp": ntp_step,
    "ntp_rows": ntp_rows_step,
    "mtp": mtp_step,
}
LABELS = {"ntp": "NTP (full logits)", "ntp_rows": "NTP (head at GT rows)", "mtp": "MTP"}


# ---------------------------------------------------------------------------------------------- measure --


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PeakMemory:
    """Peak memory of a phase: CUDA max_memory_allocated, else process peak RSS (VmHWM, reset per phase)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.kind = (
            "cuda max_memory_allocated"
            if device.type == "cuda"
            else (
                "process peak RSS (VmHWM, reset per phase)"
                if self._can_reset_rss()
                else "process peak RSS (ru_maxrss, never reset)"
            )
        )

    @staticmethod
    def _can_reset_rss() -> bool:
        try:
            with open("/proc/self/clear_refs", "w") as handle:
                handle.write("5")
            return True
        except OSError:
            return False

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        elif "VmHWM" in self.kind:
            with open("/proc/self/clear_refs", "w") as handle:
                handle.write("5")

    def peak_bytes(self) -> int:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device)
        if "VmHWM" in self.kind:
            with open("/proc/self/status") as status:
                for line in status:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) * 1024
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def matmul_parameters(module: torch.nn.Module) -> int:
    """Parameters that take part in a matmul per token: all but the input embedding; a tied head counts once."""
    total = sum(p.numel() for p in module.parameters())  # parameters() yields a tied weight once
    embedding = module.get_input_embeddings().weight
    head = module.get_output_embeddings()
    tied = head is not None and head.weight is embedding
    return total - (0 if tied else embedding.numel())


def shapes(batches: list[PackedBatch]) -> tuple:
    return tuple(tuple(batch.input_ids.shape) for batch in batches)


def time_steps(
    bench: Bench, args: argparse.Namespace, steps_batches: list[list[PackedBatch]]
) -> tuple[dict[str, list[float]], dict[str, int], str, int]:
    device = bench.state.device
    memory = PeakMemory(device)
    order = list(KINDS)
    warmup = list(steps_batches[: args.warmup])
    if device.type == "cuda":  # compiled kernels (FlexAttention) specialise on shapes: meet every timed shape once
        seen = {shapes(batches) for batches in warmup}
        for batches in steps_batches[args.warmup :]:
            if shapes(batches) not in seen:
                seen.add(shapes(batches))
                warmup.append(batches)
    started = time.perf_counter()
    for batches in warmup:
        for kind in order:
            KINDS[kind](bench, batches)
    if bench.state.rank == 0:
        print(f"{len(warmup)} warm-up steps of each kind in {time.perf_counter() - started:.1f} s", flush=True)
    seconds = {kind: [] for kind in order}
    peaks = {kind: 0 for kind in order}
    compiles_before = compile_count()  # kernels compiled inside the clock: a recompile per new shape shows here
    for index in range(args.steps):
        batches = steps_batches[args.warmup + index]
        shift = index % len(order)  # rotate the order so drift and cache effects hit every kind alike
        for kind in order[shift:] + order[:shift]:
            synchronize(device)
            memory.reset()
            started = time.perf_counter()
            KINDS[kind](bench, batches)
            synchronize(device)
            seconds[kind].append(time.perf_counter() - started)
            peaks[kind] = max(peaks[kind], memory.peak_bytes())
        if bench.state.rank == 0:  # progress, so a step limit shows how far the run got
            print(
                f"timed step {index + 1}/{args.steps}: " + ", ".join(f"{k} {seconds[k][-1]:.3f} s" for k in order),
                flush=True,
            )
    return seconds, peaks, memory.kind, compile_count() - compiles_before


# ------------------------------------------------------------------------------------------ memory rule --


class ShapeRecorder(torch.utils._python_dispatch.TorchDispatchMode):
    """Records (op, shape, phase) of every tensor an aten op returns while active."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.vocab = vocab
        self.phase = "student"
        self.largest = {}  # phase -> (numel, shape, op) of the largest tensor with last dim == vocab
        self.count = 0

    def __torch_dispatch__(
        self, func: Callable[..., Any], types: tuple, args: tuple = (), kwargs: dict | None = None
    ) -> Any:
        out = func(*args, **(kwargs or {}))
        # views and in-place results share an input's storage (e.g. the LM head weight transposed, [H, V]):
        # they allocate nothing, so only tensors with fresh storage count
        inputs = {
            t.untyped_storage().data_ptr()
            for t in torch.utils._pytree.tree_leaves((args, kwargs))
            if isinstance(t, torch.Tensor) and t.device.type != "meta"
        }
        for tensor in torch.utils._pytree.tree_leaves(out):
            if isinstance(tensor, torch.Tensor) and tensor.untyped_storage().data_ptr() not in inputs:
                self.count += 1
                if tensor.dim() and tensor.shape[-1] == self.vocab:
                    numel = tensor.numel()
                    if numel > self.largest.get(self.phase, (0,))[0]:
                        self.largest[self.phase] = (numel, tuple(tensor.shape), str(func))
        return out


class LabelledTeacher:
    """The objective's teacher, with the recorder's phase set to "teacher" during its call."""

    def __init__(self, teacher: Callable[..., torch.Tensor], recorder: ShapeRecorder) -> None:
        self.teacher, self.recorder = teacher, recorder

    def __call__(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        self.recorder.phase = "teacher"
        try:
            return self.teacher(*args, **kwargs)
        finally:
            self.recorder.phase = "student"


def memory_rule_check(bench: Bench, batches: list[PackedBatch]) -> tuple[bool, list[str]]:
    state = bench.state
    vocab = int(state.student.config.vocab_size)
    # the bound for the smallest micro-batch (rows x packed length): the strictest one
    bound_rows = min(batch.input_ids.shape[0] * batch.input_ids.shape[1] for batch in batches)
    bound = bound_rows * vocab // 2
    lines = [
        f"V = {vocab}; bound B*T*V/2 = {bound:,} elements (B*T = {bound_rows} for the smallest micro-batch; "
        f"micro-batches {[tuple(b.input_ids.shape) for b in batches]})"
    ]
    ok = True
    for kind in ("mtp", "ntp"):
        recorder = ShapeRecorder(vocab)
        original = state.teacher
        if kind == "mtp":
            state.teacher = LabelledTeacher(original, recorder)
        try:
            with recorder:
                (mtp_step if kind == "mtp" else ntp_step)(bench, batches)
            synchronize(state.device)
        finally:
            state.teacher = original
        phases = ("teacher", "student") if kind == "mtp" else ("student",)
        for phase in phases:
            numel, shape, op = recorder.largest.get(phase, (0, None, "-"))
            lines.append(
                f"{kind.upper()} step, {phase:7s}: largest new tensor with last dim V: "
                f"{'none' if shape is None else f'{list(shape)} = {numel:,} elements ({op})'}"
            )
            if kind == "mtp" and numel >= bound:
                ok = False
                lines.append(f"  VIOLATION: {numel:,} >= {bound:,}")
        lines.append(f"  ({recorder.count:,} tensors recorded during the {kind.upper()} step)")
        if kind == "ntp":
            full = recorder.largest.get("student", (0,))[0]
            vacuous = full < 2 * bound
            lines.append(
                f"NTP full logits {'NOT seen: the check would be vacuous' if vacuous else 'seen'} "
                f"({full:,} >= B*T*V = {2 * bound:,}: {not vacuous})"
            )
            ok = ok and not vacuous
    return ok, lines


# ----------------------------------------------------------------------------------------------- report --


def machine_lines(device: torch.device) -> list[str]:
    import deepspeed
    import transformers

    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    lines = [
        f"cpu: {cpu}; {os.cpu_count()} logical cores; torch threads {torch.get_num_threads()}",
        f"torch {torch.__version__}, deepspeed {deepspeed.__version__}, transformers {transformers.__version__}, "
        f"python {platform.python_version()}",
    ]
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        lines.append(f"gpu: {props.name}, {props.total_memory / 1024**3:.0f} GiB, CUDA {torch.version.cuda}")
    return lines


def load_line() -> str:
    try:
        return "load average (1, 5, 15 min): " + ", ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "load average: unknown"


def table(
    bench: Bench,
    args: argparse.Namespace,
    seconds: dict[str, list[float]],
    peaks: dict[str, int],
    memory_kind: str,
    tokens: int,
    attention: str,
) -> list[str]:
    params = matmul_parameters(bench.teacher_module)
    flops = {"ntp": 6 * params * tokens, "ntp_rows": 6 * params * tokens, "mtp": 8 * params * tokens}
    median = {kind: statistics.median(values) for kind, values in seconds.items()}
    header = f"| step | median s/step | min s | max s | tokens/s | model TFLOP/s | {'MFU | ' if args.peak_tflops else ''}peak memory (GiB) |"
    lines = [
        f"attention: {attention}   matmul params P = {params:,}   packed tokens/step (median) = {tokens:,}   "
        f"memory = {memory_kind}",
        header,
        "|" + "---|" * (header.count("|") - 1),
    ]
    for kind in KINDS:
        achieved = flops[kind] / median[kind] / 1e12
        lines.append(
            f"| {LABELS[kind]} | {median[kind]:.4f} | {min(seconds[kind]):.4f} | {max(seconds[kind]):.4f} | "
            f"{tokens / median[kind]:,.0f} | {achieved:.3f} | "
            + (f"{100 * achieved / args.peak_tflops:.1f}% | " if args.peak_tflops else "")
            + f"{peaks[kind] / 1024**3:.2f} |"
        )
    for base in ("ntp", "ntp_rows"):
        ratios = step_ratios(seconds, base)
        lines.append(
            f"ratio MTP / {LABELS[base]}: median of per-step ratios {statistics.median(ratios):.3f} "
            f"(min {min(ratios):.3f}, max {max(ratios):.3f}); ratio of medians "
            f"{median['mtp'] / median[base]:.3f}; ideal ~1.33"
        )
    return lines


def record(
    bench: Bench,
    args: argparse.Namespace,
    seconds: dict[str, list[float]],
    peaks: dict[str, int],
    tokens: int,
    attention: str,
    compiles: int,
) -> dict:
    """The numbers of one attention's table, for `--out`: s/step, peak memory, MFU, kernel compiles."""
    params = matmul_parameters(bench.teacher_module)
    median = {kind: statistics.median(values) for kind, values in seconds.items()}
    mtp_tflops = 8 * params * tokens / median["mtp"] / 1e12
    return {
        "attention": attention,
        "median_seconds": median,
        "peak_gib": {k: v / 1024**3 for k, v in peaks.items()},
        "packed_tokens_per_step": tokens,
        "mtp_tflops": mtp_tflops,
        "mtp_mfu": mtp_tflops / args.peak_tflops if args.peak_tflops else None,
        "compiles_while_timed": compiles,
    }


def compile_count() -> int:
    """Graphs torch.compile has built so far in this process (FlexAttention's kernels are compiled)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def step_ratios(seconds: dict[str, list[float]], base: str) -> list[float]:
    return [m / n for m, n in zip(seconds["mtp"], seconds[base])]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device == "cpu":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import logging

    logging.basicConfig(level=logging.WARNING)
    setup_started = time.perf_counter()
    built = time.perf_counter()
    bench = build_bench(args)
    state = bench.state
    is_main = state.rank == 0
    say = print if is_main else (lambda *a, **k: None)
    device = state.device
    say("== bench/train_step.py: MTP step vs NTP step, same ZeRO-3 engine, same packed batches ==")
    say(f"models and engines built in {time.perf_counter() - built:.1f} s", flush=True)  # a timeout shows where it was
    for line in machine_lines(device) + [load_line()]:
        say(line)
    recipe = state.recipe
    say(
        f"model: {args.model} {PRESETS[args.model]}, dtype {getattr(torch, state.plan.dtype)}, device {device}, "
        f"world {state.world_size}, "
        f"teacher {args.teacher_mode}, gradient checkpointing {args.gradient_checkpointing}"
    )
    say(
        f"batch: global {recipe.train.global_batch_size} x seq_len {recipe.data.seq_len}, micro-batch "
        f"{recipe.train.micro_batch_size} ({len(step_batches(bench, 0))} micro-batches on this rank), k_max "
        f"{recipe.packing.k_max}, k {'static ' + str(args.k) if args.k else 'random in [2, k_max] per step'}, "
        f"{recipe.num_regions} regions/sequence; steps: {args.warmup} warm-up + {args.steps} timed of each kind"
    )

    total = args.warmup + args.steps
    steps_batches = [step_batches(bench, step) for step in range(total)]
    ks = [batches[0].ks[0] for batches in steps_batches[args.warmup :]]
    tokens = int(
        statistics.median(sum(int(b.valid.sum()) for b in batches) for batches in steps_batches[args.warmup :])
    )
    say(f"timed steps' k: {ks}; setup (models, engines, packing) took {time.perf_counter() - setup_started:.1f} s")
    ok = True
    attentions = ["sdpa", "flex_attention"] if args.attn == "both" else [args.attn]
    records = []
    for attention in attentions:
        set_attention(bench, attention)
        seconds, peaks, memory_kind, compiles = time_steps(bench, args, steps_batches)
        records.append(record(bench, args, seconds, peaks, tokens, attention, compiles))
        say("")
        for line in table(
            bench,
            args,
            seconds,
            peaks,
            memory_kind,
            tokens,
            "dense additive mask (sdpa)" if attention == "sdpa" else "FlexAttention block mask",
        ):
            say(line)
        if args.model == "qwen3-4b" and args.global_batch == 128:
            median = statistics.median(seconds["mtp"])
            say(
                f"target <= 2.5 s per MTP step (paper recipe step on one H200): {median:.3f} s -> "
                f"{'PASS' if median <= 2.5 else 'MISS'}"
            )
        elif device.type == "cpu":
            for base in ("ntp", "ntp_rows"):
                ratio = statistics.median(step_ratios(seconds, base))
                say(
                    f"target MTP step <= 1.4 x {LABELS[base]} step: {ratio:.3f} -> {'PASS' if ratio <= 1.4 else 'MISS'}"
                )
    if args.memory_check:
        set_attention(bench, attentions[0])
        say("\n-- memory rule (TorchDispatchMode over one full optimizer step: forward, backward, optimizer) --")
        rule_ok, lines = memory_rule_check(bench, steps_batches[args.warmup])
        for line in lines:
            say(line)
        say(f"memory rule: {'PASS' if rule_ok else 'FAIL'}")
        ok = ok and rule_ok
    say(load_line())
    if args.out and is_main:
        report = {
            "args": vars(args),
            "device": str(device),
            "runs": records,
            "memory_rule": ok if args.memory_check else None,
        }
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
        say(f"wrote {args.out}")
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
