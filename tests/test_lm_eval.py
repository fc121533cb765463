"""lm-eval integration: `lm_eval --model mtp` from the stock console script, the GSM8K task, the sweep.

Why subprocesses: the point is that an installed package works with lm-eval's own `lm_eval` command (the
.pth post-import hook) and leaves Python start-up and lm-eval's built-in models alone; only a fresh
interpreter shows that. The package must be installed (`pip install -e .`), as scripts/install.sh does.
"""

import importlib.util
import json
import os
import site
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import make_mtp_model

from mtp_ds.decoding import generate

REPO = Path(__file__).resolve().parents[1]
TASKS_DIR = REPO / "eval" / "tasks"
FIXTURE = REPO / "tests" / "fixtures" / "gsm8k_3.jsonl"
TASK = "gsm8k_cot_mtp"
PTH_NAME = "mtp_ds_lm_eval.pth"
BIN_DIR = Path(sys.executable).parent


def _run(args, timeout=300, **kwargs):
    result = subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd=kwargs.pop("cwd", REPO),
                            env={**os.environ, **kwargs.pop("env", {})}, **kwargs)
    assert result.returncode == 0, f"{args[:3]} failed:\nSTDOUT:\n{result.stdout[-3000:]}\nSTDERR:\n{result.stderr[-6000:]}"
    return result


def _installed_pth() -> Path | None:
    for directory in site.getsitepackages():
        if (Path(directory) / PTH_NAME).is_file():
            return Path(directory) / PTH_NAME
    return None


@pytest.fixture(scope="module")
def require_installed():
    if _installed_pth() is None:
        pytest.fail(f"{PTH_NAME} is not in site-packages: install the package first (pip install -e .)")


@pytest.fixture(scope="module")
def tiny_mtp_dir(tmp_path_factory):
    model, tokenizer, _ = make_mtp_model("qwen3")
    directory = tmp_path_factory.mktemp("tiny_mtp")
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def _load_task_utils():
    spec = importlib.util.spec_from_file_location("gsm8k_cot_mtp_utils", TASKS_DIR / TASK / "utils.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- the hook: installed, cheap at start-up, leaves built-in models alone, guarded against recursion -------

def test_pth_is_installed_in_site_packages(require_installed):
    assert _installed_pth().read_text().strip() == "import mtp_ds.evaluation.lm_eval_hook"


def test_python_startup_imports_neither_lm_eval_nor_torch(require_installed):
    code = ("import sys; heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('lm_eval', 'torch', "
            "'transformers')); hooked = any(getattr(f, '_mtp_ds_lm_eval_hook', False) for f in sys.meta_path); "
            "print(heavy, hooked)")
    assert _run([sys.executable, "-c", code], cwd="/").stdout.strip() == "[] True"


def test_hf_and_mtp_both_resolve_with_hook_installed(require_installed):
    code = ("import lm_eval.models; from lm_eval.api.registry import get_model; "
            "print(get_model('hf').__name__, get_model('mtp').__name__)")
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


# --- the model class in-process -----------------------------------------------------------------------------

def test_bad_model_arg_names_the_arg(tiny_mtp_dir):
    from mtp_ds.evaluation.lm_eval_model import MTPLM

    with pytest.raises(ValueError, match=r"model arg strategy='bogus'"):
        MTPLM(pretrained=str(tiny_mtp_dir), strategy="bogus", device="cpu")
    with pytest.raises(ValueError, match=r"model arg threshold=1.5"):
        MTPLM(pretrained=str(tiny_mtp_dir), strategy="confadapt", threshold=1.5, device="cpu")


def test_checkpoint_without_mask_token_is_refused_except_at_k1(tmp_path):
    """A base model (the demo's teacher) runs at static k=1 with HF greedy's tokens; any MTP setting is refused."""
    from mtp_ds.evaluation.lm_eval_model import MTPLM
    from mtp_ds.models.tiny import tiny_model, word_tokenizer

    tokenizer = word_tokenizer()
    model = tiny_model("qwen3", vocab_size=len(tokenizer))
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    for kwargs in ({"strategy": "static", "k": 2}, {"strategy": "confadapt"}):
        with pytest.raises(ValueError, match=r"model arg pretrained=.*no mtp_token_id"):
            MTPLM(pretrained=str(tmp_path), device="cpu", dtype="float32", **kwargs)
    lm = MTPLM(pretrained=str(tmp_path), device="cpu", dtype="float32")
    context = torch.tensor([[5, 6, 7, 8]])
    ours = lm._model_generate(context, max_length=14, stop=[])
    reference = model.generate(context, max_new_tokens=10, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert ours.tolist() == reference.tolist()


def test_every_eos_id_of_the_generation_config_stops_as_in_hf_generate(tmp_path):
    """Llama 3.1 and Qwen3 list several EOS ids in generation_config; `--model hf` stops at each of them, so
    `--model mtp` must too (else it decodes past the real end and skews the acceleration)."""
    from mtp_ds.evaluation.lm_eval_model import MTPLM

    model, tokenizer, _ = make_mtp_model("qwen3")
    context = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        free = model.generate(context, max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=0)
    new_tokens = free[0, 4:].tolist()
    second_eos = next(t for t in new_tokens[2:] if t != tokenizer.eos_token_id)  # a token the model does emit
    cut = new_tokens.index(second_eos) + 1
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, second_eos]
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    lm = MTPLM(pretrained=str(tmp_path), device="cpu", dtype="float32")
    assert set(lm.stop_token_ids) == {tokenizer.eos_token_id, second_eos}
    ours = lm._model_generate(context, max_length=16, stop=[])
    assert ours[0, 4:].tolist() == new_tokens[:cut]
    with torch.no_grad():
        hf = lm.model.generate(context, max_new_tokens=12, do_sample=False, pad_token_id=0)  # its generation_config
    assert hf[0, 4:4 + cut].tolist() == new_tokens[:cut] and hf.shape[1] == 4 + cut


def test_model_generate_pads_rows_and_counts_passes(tiny_mtp_dir, tmp_path):
    from mtp_ds.evaluation.lm_eval_model import MTPLM

    stats_path = tmp_path / "stats.json"
    lm = MTPLM(pretrained=str(tiny_mtp_dir), strategy="static", k=3, device="cpu", dtype="float32",
               stats_path=str(stats_path))
    context = torch.tensor([[0, 0, 5, 6, 7], [8, 9, 10, 11, 12]])
    attention_mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    out = lm._model_generate(context, max_length=11, stop=[], attention_mask=attention_mask)
    assert torch.equal(out[:, :5], context)
    direct = generate(lm.model, context, attention_mask=attention_mask, strategy="static", k=3, max_new_tokens=6,
                      eos_token_id=lm.stop_token_ids)
    pad = lm.tokenizer.pad_token_id
    assert [[t for t in row if t != pad] for row in out[:, 5:].tolist()] == [
        [t for t in seq if t != pad] for seq in direct.sequences]
    report = lm.decoding_report()
    assert report["strategy"] == "static" and report["k"] == 3
    assert report["acceleration_factor"] == direct.acceleration_factor
    assert report["generated_tokens"] == direct.num_new_tokens and report["forward_passes"] == direct.num_forward_passes
    assert "mtp_decoding" in lm.get_model_info()
    lm._write_stats()
    assert json.loads(stats_path.read_text())["generated_tokens"] == report["generated_tokens"]


# --- the task's data path override ----------------------------------------------------------------------------

def test_task_data_path_from_metadata_or_env(monkeypatch, tmp_path):
    utils = _load_task_utils()
    assert utils.load_gsm8k(gsm8k_path=str(FIXTURE))["test"].num_rows == 3
    monkeypatch.setenv(utils.PATH_ENV_VAR, str(FIXTURE))
    assert utils.load_gsm8k(pretrained="ignored")["test"][0]["answer"].endswith("#### 18")
    with pytest.raises(FileNotFoundError, match="gsm8k_path"):
        utils.load_gsm8k(gsm8k_path=str(tmp_path / "missing.jsonl"))


# --- the stock console script, end to end ---------------------------------------------------------------------

def _lm_eval_cli(model_dir, out_dir, model_args: str):
    args = [str(BIN_DIR / "lm_eval"), "--model", "mtp", "--model_args", f"pretrained={model_dir},{model_args}",
            "--device", "cpu", "--tasks", TASK, "--include_path", str(TASKS_DIR),
            "--metadata", json.dumps({"gsm8k_path": str(FIXTURE)}), "--gen_kwargs", "max_gen_toks=8",
            "--output_path", str(out_dir)]
    result = _run(args, env={"TOKENIZERS_PARALLELISM": "false"})
    (results_file,) = sorted(Path(out_dir).rglob("results_*.json"))
    return json.loads(results_file.read_text()), result.stdout + result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("model_args, max_acceleration", [
    ("strategy=static,k=2,dtype=float32", 2.0),
    ("strategy=confadapt,k_max=16,threshold=0.9,dtype=float32", 16.0),
], ids=["static_k2", "confadapt"])
def test_lm_eval_console_script_runs_mtp_model(require_installed, tiny_mtp_dir, tmp_path, model_args,
                                               max_acceleration):
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
    assert "MTP decoding [gsm8k_cot_mtp" in output


@pytest.mark.slow
def test_sweep_writes_tables_and_pareto_plot(require_installed, tiny_mtp_dir, tmp_path):
    out_dir = tmp_path / "sweep"
    _run([sys.executable, str(REPO / "eval" / "sweep.py"), "--pretrained", str(tiny_mtp_dir), "--out_dir",
          str(out_dir), "--settings", "static:2,confadapt:0.9", "--limit", "2", "--num_fewshot", "1",
          "--gen_kwargs", "max_gen_toks=6", "--metadata", json.dumps({"gsm8k_path": str(FIXTURE)}),
          "--device", "cpu", "--dtype", "float32"], env={"TOKENIZERS_PARALLELISM": "false"})
    rows = json.loads((out_dir / "sweep.json").read_text())["rows"]
    assert [row["setting"] for row in rows] == ["static_k1", "static_k2", "confadapt_t0.9_kmax16"]
    assert rows[0]["wall_clock_speedup"] == 1.0 and rows[1]["acceleration_factor"] <= 2.0
    assert all(row["accuracy"] is not None and row["samples"] == 2 for row in rows)
    csv_lines = (out_dir / "sweep.csv").read_text().splitlines()
    assert csv_lines[0].startswith("task,setting,strategy") and len(csv_lines) == 4
    assert (out_dir / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_pareto_frontier_keeps_undominated_points():
    sys.path.insert(0, str(REPO / "eval"))
    try:
        from pareto_plot import pareto_frontier
    finally:
        sys.path.remove(str(REPO / "eval"))
    points = [(1.0, 0.8), (2.0, 0.7), (2.5, 0.5), (2.0, 0.6), (3.0, 0.55)]
    assert pareto_frontier(points) == [(1.0, 0.8), (2.0, 0.7), (3.0, 0.55)]


@pytest.mark.slow
def test_eval_script_runs_the_sweep_without_slurm(require_installed, tiny_mtp_dir, tmp_path):
    """slurm/eval_gsm8k.sh falls back to this machine when there is no Slurm (the Slurm CI covers sbatch)."""
    env = {"MODEL_DIR": str(tiny_mtp_dir), "OUT_DIR": str(tmp_path / "sweep"), "GSM8K_PATH": str(FIXTURE),
           "MTP_DS_ACTIVATE": f"export PATH={BIN_DIR}:$PATH", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "SWEEP_ARGS": "--settings static:2 --limit 1 --num_fewshot 1 --gen_kwargs max_gen_toks=4 "
                         "--dtype float32 --device cpu"}
    _run(["bash", "slurm/eval_gsm8k.sh"], env=env)
    rows = json.loads((tmp_path / "sweep" / "sweep.json").read_text())["rows"]
    assert [row["setting"] for row in rows] == ["static_k1", "static_k2"]
    assert (tmp_path / "sweep" / "pareto.png").exists()
    missing = subprocess.run(["bash", "slurm/eval_gsm8k.sh"], cwd=REPO, capture_output=True, text=True,
                             env={k: v for k, v in os.environ.items() if k != "MODEL_DIR"})
    assert missing.returncode == 2 and missing.stderr.strip().startswith("error: set MODEL_DIR")
