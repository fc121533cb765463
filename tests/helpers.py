"""What several test modules share: paths, tiny models saved as checkpoints, and launching the real trainer.

Fixtures live in conftest.py (tests/ for both tiers, tests/integration/ for the shared trained run); this module
holds plain functions and constants, imported as `from helpers import ...` (pytest puts tests/ on sys.path).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mtp_ds.models.tiny import tiny_model, word_tokenizer
from mtp_ds.tokens import add_mtp_tokens

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"
GSM8K_FIXTURE = FIXTURES / "gsm8k_3.jsonl"
TASKS_DIR = REPO / "eval" / "tasks"
TASK = "gsm8k_cot_mtp"
PTH_NAME = "mtp_ds_lm_eval.pth"
BIN_DIR = Path(sys.executable).parent  # the venv's console scripts: lm_eval, mtp-ds

ARCHS = ["qwen3", "llama"]
# "cuda" variants run where a GPU is (bench/gpu_check.sh runs them with `-m cuda`); on CPU machines they skip
CUDA = pytest.param(
    "cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]
)
DEVICES = ["cpu", CUDA]

# The environment every launched process gets: CPU DeepSpeed, no hub, one thread per rank (2 ranks on 2 cores).
LAUNCH_ENV = {
    **os.environ,
    "DS_ACCELERATOR": "cpu",
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "OMP_NUM_THREADS": "1",
}

# The tiny recipe, with static k and a higher LR so that the loss trend is visible within a few steps.
RECIPE = "recipes/tiny_cpu.yaml"
FAST = [
    "packing.static_k=4",
    "train.deepspeed_overrides.optimizer.params.lr=3e-3",
    "train.deepspeed_overrides.scheduler.params.warmup_max_lr=3e-3",
    "train.deepspeed_overrides.scheduler.params.warmup_num_steps=1",
    "train.log_every=1",
]
# The session's one trained run (integration/conftest.py `trained_run`): 2 ranks, 6 steps, checkpoints and validation
# at steps 3 and 6 (the tiny recipe keeps the last 2 checkpoints).
TRAINED_STEPS = 6
TRAINED_OVERRIDES = (f"train.steps={TRAINED_STEPS}", "checkpoint.every=3", "train.eval_every=3")


def make_mtp_model(
    arch: str,
    *,
    distinct_slots: bool = False,
    k_max: int = 16,
    tie_word_embeddings: bool = False,
    attn_implementation: str = "sdpa",
    seed: int = 0,
):
    """(model, tokenizer, mask_tokens) with the mask token(s) added; fp32, eval mode."""
    tokenizer = word_tokenizer()
    model = tiny_model(
        arch,
        vocab_size=len(tokenizer),
        tie_word_embeddings=tie_word_embeddings,
        attn_implementation=attn_implementation,
        seed=seed,
    )
    mask_tokens = add_mtp_tokens(tokenizer, model, distinct_slots=distinct_slots, k_max=k_max)
    return model, tokenizer, mask_tokens


def save_checkpoint_dir(model, tokenizer, directory: Path) -> Path:
    """A plain HF checkpoint directory (weights + tokenizer), as `mtp-ds export` writes one."""
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def zero3_checkpoint(path: Path, model, world: int = 2) -> Path:
    """`path` as `store.save_checkpoint` leaves it for `model`, made in milliseconds without a process group:
    DeepSpeed's ZeRO-3 files (each rank's flat fp32 partition: every parameter padded to a multiple of `world`,
    rank r holding the r-th slice of each), hf/ with mtp_token_id and the tokenizer, and a COMPLETE without a file
    table (write one with `manifest.write_marker` where a test needs it)."""
    from collections import OrderedDict

    from deepspeed import __version__

    from mtp_ds.objective import HiddenStatesModel

    (path / "hf").mkdir(parents=True)
    named = [(HiddenStatesModel.PREFIX + name, param.detach()) for name, param in model.named_parameters()]
    shapes = OrderedDict((name, param.shape) for name, param in named)
    for rank in range(world):
        slices = []
        for _, param in named:
            size = -(-param.numel() // world)
            padded = torch.nn.functional.pad(param.flatten(), (0, size * world - param.numel()))
            slices.append(padded[rank * size : (rank + 1) * size])
        model_states = {
            "module": {},
            "buffer_names": [],
            "param_shapes": [shapes],
            "frozen_param_shapes": OrderedDict(),
            "frozen_param_fragments": OrderedDict(),
            "shared_params": {},
            "ds_version": __version__,
        }
        optim_states = {
            "optimizer_state_dict": {
                "zero_stage": 3,
                "partition_count": world,
                "fp32_flat_groups": [torch.cat(slices)],
                "optimizer_state_dict": {},
            },
            "ds_version": __version__,
        }
        torch.save(model_states, path / f"zero_pp_rank_{rank}_mp_rank_00_model_states.pt")
        torch.save(optim_states, path / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt")
    if getattr(model.config, "mtp_token_id", None) is None:
        model.config.mtp_token_id = 4
    model.config.save_pretrained(path / "hf")
    word_tokenizer().save_pretrained(path / "hf")
    (path / "COMPLETE").write_text("{}")
    return path


def bias_lm_head(model, token_ids, value: float) -> None:
    """Replace the model's lm_head by the same weights plus a bias of `value` on `token_ids` (zero elsewhere)."""
    old_head = model.lm_head
    biased_head = torch.nn.Linear(old_head.in_features, old_head.out_features, bias=True)
    with torch.no_grad():
        biased_head.weight.copy_(old_head.weight)
        biased_head.bias.zero_()
        biased_head.bias[list(token_ids)] = value
    model.lm_head = biased_head


def installed_pth() -> Path | None:
    """The `.pth` file that registers `lm_eval --model mtp`, where `pip install -e .` put it (None: not installed)."""
    import site

    for directory in site.getsitepackages():
        if (Path(directory) / PTH_NAME).is_file():
            return Path(directory) / PTH_NAME
    return None


def lm_eval_command(model_args: str, *extra, model: str = "mtp") -> list[str]:
    """The stock `lm_eval` console script on the repo's GSM8K task (CPU), with the 3-problem fixture as its data."""
    return [
        str(BIN_DIR / "lm_eval"), "--model", model, "--model_args", model_args, "--device", "cpu",
        "--tasks", TASK, "--include_path", str(TASKS_DIR),
        "--metadata", json.dumps({"gsm8k_path": str(GSM8K_FIXTURE)}), *map(str, extra),
    ]  # fmt: skip


# bench/decode.py and bench/serve.py as the tests run them (tiny sizes; the scripts' own flags)
DECODE_BENCH_ARGS = (
    "--prompts", GSM8K_FIXTURE, "--prompt-template", "Q: {prompt}\nA:", "--batch-sizes", "1,3", "--new-tokens", 8,
    "--repeats", 1, "--skip-curve", "--k-max", 4,
)  # fmt: skip
SERVE_BENCH_ARGS = ("--requests", 7, "--concurrency", "1,3", "--max-new-tokens", 9, "--k-max", 4)
SELFSPEC_SETTINGS = ("selfspec linear", "selfspec per_proposal")


# ----------------------------------------------------------------------------------- the real trainer


def torchrun(ranks: int = 2) -> list[str]:
    """`torchrun --standalone --nproc_per_node=ranks` as this interpreter runs it (ranks=0: a plain process)."""
    if not ranks:
        return [sys.executable]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}"]


def trainer_command(out_dir, *overrides, ranks: int = 2, recipe: str = RECIPE, fast: bool = True) -> list[str]:
    """`torchrun ... -m mtp_ds.train RECIPE checkpoint.dir=OUT [FAST] overrides` (ranks=0: no torchrun)."""
    return [
        *torchrun(ranks),
        "-m",
        "mtp_ds.train",
        recipe,
        f"checkpoint.dir={out_dir}",
        *(FAST if fast else []),
        *overrides,
    ]


def run_trainer(out_dir, *overrides, ranks: int = 2, expect_ok: bool = True, timeout: int = 300):
    result = subprocess.run(
        trainer_command(out_dir, *overrides, ranks=ranks),
        cwd=REPO,
        env=LAUNCH_ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if expect_ok:
        assert result.returncode == 0, result.stderr[-4000:]
    return result


def start_trainer(out_dir, log_file, *overrides, ranks: int = 2):
    """The trainer in the background, in its own process group (as a job in a terminal)."""
    return subprocess.Popen(
        trainer_command(out_dir, *overrides, ranks=ranks),
        cwd=REPO,
        env=LAUNCH_ENV,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def one_error_line(result) -> str:
    """The one `mtp-ds train:` line a refused launch printed (torchrun then reports its child's exit its own way)."""
    lines = [line for line in result.stderr.splitlines() if line.startswith("mtp-ds train:")]
    assert result.returncode != 0 and len(lines) == 1, result.stderr[-3000:]
    assert f'File "{REPO / "mtp_ds"}' not in result.stderr, result.stderr[-3000:]  # no traceback through our code
    return lines[0]


def wait_for_steps(out_dir: Path, steps: int, process, timeout=240) -> None:
    """Until the background run `process` has logged `steps` training steps (it must not exit before)."""
    import time

    deadline = time.time() + timeout
    while time.time() < deadline:
        if (Path(out_dir) / "metrics.jsonl").exists() and len(metrics(out_dir)) >= steps:
            return
        assert process.poll() is None, "the trainer exited early"
        time.sleep(0.2)
    raise AssertionError(f"no {steps} steps within {timeout} s")


def metrics(out_dir) -> list[dict]:
    """The training-step records of a run's metrics.jsonl (validation lines left out)."""
    lines = [json.loads(line) for line in Path(out_dir, "metrics.jsonl").read_text().splitlines()]
    return [line for line in lines if "loss" in line]


def validation_records(out_dir) -> list[dict]:
    lines = [json.loads(line) for line in Path(out_dir, "metrics.jsonl").read_text().splitlines()]
    return [line for line in lines if "val/agreement" in line]


def zero_weights(checkpoint) -> dict:
    """The fp32 weights of a DeepSpeed ZeRO checkpoint directory (`<run>/stepNNNNNNNN`)."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    return get_fp32_state_dict_from_zero_checkpoint(str(Path(checkpoint).parent), tag=Path(checkpoint).name)


def newest_checkpoint(out_dir: Path) -> Path:
    return out_dir / (out_dir / "latest_complete").read_text().strip()


def snapshot(directory: Path) -> dict:
    """Every file under `directory` with its bytes (the tiny run's checkpoints are a few hundred kB)."""
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


class TouchOnUnpickle:
    """A pickle payload: unpickling it calls `Path.touch(marker)`, i.e. runs code chosen by the file's author."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


# ----------------------------------------------------------------------------------- the Pareto plot


def drawn_series(rows: list[dict]) -> dict:
    """{task: {legend label: [point labels]}} of the figure `plot_pareto` draws from `rows` (the figure is
    caught at `plt.close`; each series is one errorbar container, its points' annotations follow it)."""
    import tempfile

    import matplotlib.pyplot as plt

    from mtp_ds.evaluation.pareto import STRATEGY_STYLE, TEACHER_STYLE, plot_pareto

    figures = []
    original_close = plt.close
    plt.close = figures.append
    try:
        with tempfile.TemporaryDirectory() as directory:
            plot_pareto(rows, Path(directory) / "pareto.png")
    finally:
        plt.close = original_close
    (figure,) = figures
    markers = {name: marker for name, marker, _ in [*STRATEGY_STYLE.values(), TEACHER_STYLE]}
    drawn = {}
    for ax in figure.axes:
        points = [text.get_text() for text in ax.texts]
        series, index = {}, 0
        for container in ax.containers:
            name, line = container.get_label(), container.lines[0]
            assert line.get_marker() == markers[name], name
            count = len(line.get_xdata())
            series[name], index = points[index : index + count], index + count
        assert set(series) <= set(ax.get_legend_handles_labels()[1])
        drawn[ax.get_title()] = series
    original_close(figure)
    return drawn
