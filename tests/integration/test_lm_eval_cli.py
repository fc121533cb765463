"""lm-eval integration: `lm_eval --model mtp` from the stock console script, the GSM8K task, the sweep.

Why subprocesses: the point is that an installed package works with lm-eval's own `lm_eval` command (the
.pth post-import hook) and leaves Python start-up and lm-eval's built-in models alone; only a fresh
interpreter shows that. The package must be installed (`pip install -e .`), as scripts/install.sh does.
The model class, the sweep's parser and the plot in-process are in tests/unit/evaluation/test_lm_eval_model.py.
"""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import BIN_DIR, GSM8K_FIXTURE, REPO, TASK, drawn_series, installed_pth, lm_eval_command

from mtp_ds.decoding import DEFAULT_MASK_LAYOUT


def _run(args, timeout=300, **kwargs):
    result = subprocess.run(
        args,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=kwargs.pop("cwd", REPO),
        env={**os.environ, **kwargs.pop("env", {})},
        **kwargs,
    )
    assert result.returncode == 0, (
        f"{args[:3]} failed:\nSTDOUT:\n{result.stdout[-3000:]}\nSTDERR:\n{result.stderr[-6000:]}"
    )
    return result


# --- the hook: installed, cheap at start-up, leaves built-in models alone, guarded against recursion -------


def test_pth_is_installed_in_site_packages(require_installed):
    assert installed_pth().read_text().strip() == "import mtp_ds.evaluation.lm_eval_hook"


def test_python_startup_imports_neither_lm_eval_nor_torch(require_installed):
    code = (
        "import sys; heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('lm_eval', 'torch', "
        "'transformers')); hooked = any(getattr(f, '_mtp_ds_lm_eval_hook', False) for f in sys.meta_path); "
        "print(heavy, hooked)"
    )
    assert _run([sys.executable, "-c", code], cwd="/").stdout.strip() == "[] True"


def test_hf_and_mtp_both_resolve_with_hook_installed(require_installed):
    code = (
        "import lm_eval.models; from lm_eval.api.registry import get_model; "
        "print(get_model('hf').__name__, get_model('mtp').__name__)"
    )
    assert _run([sys.executable, "-c", code], cwd="/").stdout.strip().splitlines()[-1] == "HFLM MTPLM"


def test_hook_imported_twice_neither_recurses_nor_registers_twice():
    hook_path = REPO / "mtp_ds" / "evaluation" / "lm_eval_hook.py"
    code = f"""
import importlib.util, sys
import mtp_ds.evaluation.lm_eval_hook as first
spec = importlib.util.spec_from_file_location("second_copy_of_hook", {str(hook_path)!r})
second = importlib.util.module_from_spec(spec); spec.loader.exec_module(second)
second.install(); first.install()
assert sum(getattr(f, "_mtp_ds_lm_eval_hook", False) for f in sys.meta_path) == 1
sys.meta_path.insert(0, second._LmEvalModelsFinder())  # force two hooks: each must skip the other
from lm_eval.api.registry import get_model
import lm_eval.models
print(get_model("hf").__name__, "mtp" in lm_eval.api.registry.model_registry)
"""
    assert _run([sys.executable, "-c", code], cwd="/", timeout=120).stdout.strip().splitlines()[-1] == "HFLM True"


# --- the stock console script, end to end ---------------------------------------------------------------------


def _lm_eval_cli(model_dir, out_dir, model_args: str):
    args = lm_eval_command(
        f"pretrained={model_dir},{model_args}", "--gen_kwargs", "max_gen_toks=8", "--output_path", out_dir
    )
    result = _run(args, env={"TOKENIZERS_PARALLELISM": "false"})
    (results_file,) = sorted(Path(out_dir).rglob("results_*.json"))
    return json.loads(results_file.read_text()), result.stdout + result.stderr


@pytest.mark.parametrize(
    "model_args, max_acceleration, setting",
    [
        ("strategy=static,k=2,dtype=float32", 2.0, "static_k2"),
        ("strategy=confadapt,k_max=16,threshold=0.9,dtype=float32", 16.0, "confadapt_t0.9_kmax16"),
        ("strategy=selfspec,k_max=4,dtype=float32", 4.0, "selfspec_kmax4"),
    ],
    ids=["static_k2", "confadapt", "selfspec"],
)
def test_lm_eval_console_script_runs_mtp_model(
    require_installed, tiny_mtp_dir, tmp_path, model_args, max_acceleration, setting
):
    stats_path = tmp_path / "stats.json"
    results, output = _lm_eval_cli(tiny_mtp_dir, tmp_path / "out", f"{model_args},stats_path={stats_path}")
    task_results = results["results"][TASK]
    assert isinstance(task_results["exact_match,flexible-extract"], float)
    assert "exact_match_stderr,flexible-extract" in task_results and task_results["sample_len"] == 3
    decoding = results["config"]["mtp_decoding"]
    assert 1.0 <= decoding["acceleration_factor"] <= max_acceleration
    assert decoding["per_task"][TASK]["generated_tokens"] == decoding["generated_tokens"] > 0
    assert decoding["tokens_per_second"] > 0 and "acceleration_factor_std" in decoding
    assert json.loads(stats_path.read_text())["acceleration_factor"] == decoding["acceleration_factor"]
    assert decoding["setting"] == json.loads(stats_path.read_text())["setting"] == setting
    assert "MTP decoding [gsm8k_cot_mtp" in output
    if setting.startswith("selfspec"):
        assert decoding["mask_layout"] == DEFAULT_MASK_LAYOUT and "threshold" not in decoding
        assert "strategy=selfspec, k_max=4, mask_layout=linear" in output
        assert decoding["verified_tokens_per_pass"] is not None


def _lm_eval_refusal(model_args: str) -> str:
    """lm_eval --model mtp with bad model args: exit 2, no traceback, exactly one `lm_eval --model mtp:` line."""
    result = subprocess.run(
        lm_eval_command(model_args),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"},
    )
    context = f"rc={result.returncode}\nSTDERR:\n{result.stderr[-4000:]}"
    assert result.returncode == 2 and "Traceback" not in result.stderr, context
    lines = [line for line in result.stderr.splitlines() if line.startswith("lm_eval --model mtp: ")]
    assert len(lines) == 1, context
    return lines[0]


@pytest.mark.parametrize("case", ["bad_mask_layout", "selfspec_on_base_model"])
def test_lm_eval_console_script_refuses_bad_selfspec_args_in_one_line(
    require_installed, tiny_mtp_dir, base_model_dir, case
):
    if case == "bad_mask_layout":
        line = _lm_eval_refusal(f"pretrained={tiny_mtp_dir},strategy=selfspec,k_max=4,mask_layout=tree")
        assert "model arg mask_layout='tree'" in line and "linear, ends, per_proposal" in line
    else:
        line = _lm_eval_refusal(f"pretrained={base_model_dir},strategy=selfspec,k_max=4")
        assert f"model arg pretrained='{base_model_dir}'" in line and "no mtp_token_id" in line
        assert "strategy=selfspec" in line


def test_sweep_writes_tables_and_pareto_plot(require_installed, tiny_mtp_dir, tmp_path):
    out_dir = tmp_path / "sweep"
    _run(
        [
            sys.executable,
            str(REPO / "eval" / "sweep.py"),
            "--pretrained",
            str(tiny_mtp_dir),
            "--out_dir",
            str(out_dir),
            "--settings",
            "static:2,confadapt:0.9,selfspec:4",
            "--limit",
            "2",
            "--num_fewshot",
            "1",
            "--gen_kwargs",
            "max_gen_toks=6",
            "--metadata",
            json.dumps({"gsm8k_path": str(GSM8K_FIXTURE)}),
            "--device",
            "cpu",
            "--dtype",
            "float32",
        ],
        env={"TOKENIZERS_PARALLELISM": "false"},
    )
    rows = json.loads((out_dir / "sweep.json").read_text())["rows"]
    assert [row["setting"] for row in rows] == ["static_k1", "static_k2", "confadapt_t0.9_kmax16", "selfspec_kmax4"]
    assert rows[0]["wall_clock_speedup"] == 1.0 and rows[1]["acceleration_factor"] <= 2.0
    assert all(row["accuracy"] is not None and row["samples"] == 2 for row in rows)
    selfspec = rows[3]
    assert (selfspec["strategy"], selfspec["k"], selfspec["k_max"], selfspec["threshold"], selfspec["mask_layout"]) == (
        "selfspec",
        None,
        4,
        None,
        "linear",
    )
    assert 1.0 <= selfspec["acceleration_factor"] <= 4.0 and selfspec["verified_tokens_per_pass"] is not None
    assert selfspec["accuracy"] == rows[0]["accuracy"]  # lossless: Static k=1's answers
    assert (out_dir / "results_selfspec_kmax4.json").exists()
    with open(out_dir / "sweep.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    assert list(table[0])[:7] == ["task", "setting", "strategy", "k", "k_max", "threshold", "mask_layout"]
    assert [row["setting"] for row in table] == [row["setting"] for row in rows]
    assert (table[3]["k_max"], table[3]["mask_layout"], table[3]["threshold"]) == ("4", "linear", "")
    assert (out_dir / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert drawn_series(rows)[TASK]["selfspec (lossless)"] == ["k_max=4"]  # the plot's selfspec series


def test_eval_script_runs_the_sweep_without_slurm(require_installed, tiny_mtp_dir, tmp_path):
    """slurm/eval_gsm8k.sh falls back to this machine when there is no Slurm (the Slurm CI covers sbatch)."""
    env = {
        "MODEL_DIR": str(tiny_mtp_dir),
        "OUT_DIR": str(tmp_path / "sweep"),
        "GSM8K_PATH": str(GSM8K_FIXTURE),
        "MTP_DS_ACTIVATE": f"export PATH={BIN_DIR}:$PATH",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "SWEEP_ARGS": "--settings static:2 --limit 1 --num_fewshot 1 --gen_kwargs max_gen_toks=4 "
        "--dtype float32 --device cpu",
    }
    _run(["bash", "slurm/eval_gsm8k.sh"], env=env)
    rows = json.loads((tmp_path / "sweep" / "sweep.json").read_text())["rows"]
    assert [row["setting"] for row in rows] == ["static_k1", "static_k2"]
    assert (tmp_path / "sweep" / "pareto.png").exists()
    missing = subprocess.run(
        ["bash", "slurm/eval_gsm8k.sh"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "MODEL_DIR"},
    )
    assert missing.returncode == 2 and missing.stderr.strip().startswith("error: set MODEL_DIR")
