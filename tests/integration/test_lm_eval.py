"""lm-eval integration: `lm_eval --model mtp` from the stock console script, the GSM8K task, the sweep.

Why subprocesses: the point is that an installed package works with lm-eval's own `lm_eval` command (the
.pth post-import hook) and leaves Python start-up and lm-eval's built-in models alone; only a fresh
interpreter shows that. The package must be installed (`pip install -e .`), as scripts/install.sh does.
"""

import csv
import importlib.util
import json
import os
import site
import subprocess
import sys
from pathlib import Path
from typing import ClassVar

import pytest
import torch
from helpers import REPO, make_mtp_model

from mtp_ds.decoding import DEFAULT_MASK_LAYOUT, MASK_LAYOUTS, generate

TASKS_DIR = REPO / "eval" / "tasks"
FIXTURE = REPO / "tests" / "fixtures" / "gsm8k_3.jsonl"
TASK = "gsm8k_cot_mtp"
PTH_NAME = "mtp_ds_lm_eval.pth"
BIN_DIR = Path(sys.executable).parent


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


@pytest.fixture(scope="module")
def drifting_mtp_dir(tmp_path_factory):
    """The tiny MTP model with a shared embedding component that the lm_head reads as "the": on the fixture's
    questions it drifts into runs its mask slots predict too, so selfspec passes both verify and reject
    proposals (a plain random model almost never verifies one). Only weights change, so it saves as usual."""
    model, tokenizer, _ = make_mtp_model("qwen3")
    with torch.no_grad():
        model.model.embed_tokens.weight[:, 0] = 0.04
        model.lm_head.weight[tokenizer.convert_tokens_to_ids("the"), 0] = 1.2
    directory = tmp_path_factory.mktemp("drifting_mtp")
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def base_model_dir(tmp_path_factory):
    """A plain causal LM without mask tokens (like the demo's teacher)."""
    from mtp_ds.models.tiny import tiny_model, word_tokenizer

    tokenizer = word_tokenizer()
    directory = tmp_path_factory.mktemp("tiny_base")
    tiny_model("qwen3", vocab_size=len(tokenizer)).save_pretrained(directory)
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


# --- the model class in-process -----------------------------------------------------------------------------


def test_bad_model_arg_names_the_arg(tiny_mtp_dir):
    from mtp_ds.evaluation.lm_eval_model import MTPLM

    with pytest.raises(ValueError, match=r"model arg strategy='bogus'"):
        MTPLM(pretrained=str(tiny_mtp_dir), strategy="bogus", device="cpu")
    with pytest.raises(ValueError, match=r"model arg threshold=1.5"):
        MTPLM(pretrained=str(tiny_mtp_dir), strategy="confadapt", threshold=1.5, device="cpu")
    with pytest.raises(ValueError, match=r"model arg mask_layout='tree': must be one of linear, per_proposal"):
        MTPLM(pretrained=str(tiny_mtp_dir), strategy="selfspec", k_max=4, mask_layout="tree", device="cpu")
    with pytest.raises(ValueError, match=r"model arg k_max='four'"):
        MTPLM(pretrained=str(tiny_mtp_dir), strategy="selfspec", k_max="four", device="cpu")


def test_checkpoint_without_mask_token_is_refused_except_at_k1(tmp_path):
    """A base model (the demo's teacher) runs at static k=1 with HF greedy's tokens; any MTP setting is refused."""
    from mtp_ds.evaluation.lm_eval_model import MTPLM
    from mtp_ds.models.tiny import tiny_model, word_tokenizer

    tokenizer = word_tokenizer()
    model = tiny_model("qwen3", vocab_size=len(tokenizer))
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    for kwargs in (
        {"strategy": "static", "k": 2},
        {"strategy": "confadapt"},
        {"strategy": "selfspec", "k_max": 4},
        {"strategy": "selfspec", "k_max": 1},
    ):
        with pytest.raises(ValueError, match=r"model arg pretrained=.*no mtp_token_id.*not strategy="):
            MTPLM(pretrained=str(tmp_path), device="cpu", dtype="float32", **kwargs)
    lm = MTPLM(pretrained=str(tmp_path), device="cpu", dtype="float32")
    with pytest.raises(ValueError, match=r"model arg pretrained=.*no mtp_token_id.*strategy=selfspec, k_max=4"):
        lm.set_decoding(strategy="selfspec", k_max=4)  # the sweep's way: one loaded model, many settings
    assert lm.decoding_settings() == {"strategy": "static", "k": 1}  # the refused setting was not kept
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
    assert hf[0, 4 : 4 + cut].tolist() == new_tokens[:cut] and hf.shape[1] == 4 + cut


def test_model_generate_pads_rows_and_counts_passes(tiny_mtp_dir, tmp_path):
    from mtp_ds.evaluation.lm_eval_model import MTPLM

    stats_path = tmp_path / "stats.json"
    lm = MTPLM(
        pretrained=str(tiny_mtp_dir), strategy="static", k=3, device="cpu", dtype="float32", stats_path=str(stats_path)
    )
    context = torch.tensor([[0, 0, 5, 6, 7], [8, 9, 10, 11, 12]])
    attention_mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    out = lm._model_generate(context, max_length=11, stop=[], attention_mask=attention_mask)
    assert torch.equal(out[:, :5], context)
    direct = generate(
        lm.model,
        context,
        attention_mask=attention_mask,
        strategy="static",
        k=3,
        max_new_tokens=6,
        eos_token_id=lm.stop_token_ids,
    )
    pad = lm.tokenizer.pad_token_id
    assert [[t for t in row if t != pad] for row in out[:, 5:].tolist()] == [
        [t for t in seq if t != pad] for seq in direct.sequences
    ]
    report = lm.decoding_report()
    assert report["strategy"] == "static" and report["k"] == 3
    assert report["acceleration_factor"] == direct.acceleration_factor
    assert report["generated_tokens"] == direct.num_new_tokens and report["forward_passes"] == direct.num_forward_passes
    assert "mtp_decoding" in lm.get_model_info()
    lm._write_stats()
    assert json.loads(stats_path.read_text())["generated_tokens"] == report["generated_tokens"]


def test_distinct_slot_tokens_too_few_for_the_block_name_k_max(tmp_path):
    from mtp_ds.evaluation.lm_eval_model import MTPLM

    model, tokenizer, _ = make_mtp_model("qwen3", distinct_slots=True, k_max=4)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"model arg k_max=8: mask slot 5 needs more distinct mask tokens"):
        MTPLM(pretrained=str(tmp_path), strategy="selfspec", k_max=8, device="cpu", dtype="float32")
    lm = MTPLM(pretrained=str(tmp_path), strategy="selfspec", k_max=4, device="cpu", dtype="float32")
    with pytest.raises(ValueError, match=r"model arg k=6: mask slot 5"):
        lm.set_decoding(strategy="static", k=6, k_max=16)


def _generate_requests(max_gen_toks: int = 16):
    """lm-eval requests as the gsm8k_cot_mtp task makes them (0-shot), one per fixture problem."""
    from lm_eval.api.instance import Instance

    docs = [json.loads(line) for line in FIXTURE.read_text().splitlines()]
    return [
        Instance(
            "generate_until",
            doc,
            (
                f"Q: {doc['question']}\nA: Let's think step by step.",
                {"until": ["Q:"], "max_gen_toks": max_gen_toks, "do_sample": False},
            ),
            index,
            (TASK, index, 1),
        )
        for index, doc in enumerate(docs)
    ]


def test_selfspec_generate_until_equals_static_k1(drifting_mtp_dir, tmp_path):
    """Lossless through lm-eval: the continuations are Static k=1's, text for text, in ragged batches (batch 2
    of 3 requests), for both mask layouts; the stats file names the setting and shows the acceleration."""
    from mtp_ds.evaluation.lm_eval_model import MTPLM

    stats_path = tmp_path / "stats.json"
    lm = MTPLM(
        pretrained=str(drifting_mtp_dir), device="cpu", dtype="float32", batch_size=2, stats_path=str(stats_path)
    )
    requests = _generate_requests()
    expected = lm.generate_until(requests, disable_tqdm=True)
    assert json.loads(stats_path.read_text())["setting"] == "static_k1"
    assert all(expected) and len(set(expected)) == len(expected)
    factors = {}
    for mask_layout in MASK_LAYOUTS:
        lm.set_decoding(strategy="selfspec", k_max=4, mask_layout=mask_layout)
        lm.reset_stats()
        assert lm.generate_until(requests, disable_tqdm=True) == expected, mask_layout
        stats = json.loads(stats_path.read_text())
        label = "selfspec_kmax4" if mask_layout == DEFAULT_MASK_LAYOUT else f"selfspec_kmax4_{mask_layout}"
        assert (stats["strategy"], stats["k_max"], stats["mask_layout"], stats["setting"]) == (
            "selfspec",
            4,
            mask_layout,
            label,
        )
        assert "threshold" not in stats and "k" not in stats  # unused by selfspec: not reported as if they were
        assert stats["sequences"] == 3 and stats["per_task"][TASK]["generated_tokens"] == stats["generated_tokens"]
        assert 1.0 <= stats["acceleration_factor"] <= 4.0
        assert stats["verified_tokens_per_pass"] == pytest.approx(stats["acceleration_factor"] - 1.0, abs=0.1)
        assert stats["query_tokens_per_forward_pass"] > 2  # a pass feeds the proposals and the masks
        factors[mask_layout] = stats["acceleration_factor"]
    assert max(factors.values()) > 1.0, factors  # some proposals were verified: not a k=1 decoder in disguise


def test_continuous_batching_generate_until_equals_fixed_batches(drifting_mtp_dir, monkeypatch):
    """`continuous_batching` (the default): a task's requests are one `generate_many` stream with batch_size rows in
    flight, in lm-eval's order, and the texts are those of lm-eval's fixed batches, for every strategy."""
    from mtp_ds.evaluation import lm_eval_model
    from mtp_ds.evaluation.lm_eval_model import MTPLM, ModelArgError

    with pytest.raises(ModelArgError, match="continuous_batching='maybe': must be true or false"):
        MTPLM(pretrained=str(drifting_mtp_dir), continuous_batching="maybe")
    lm = MTPLM(
        pretrained=str(drifting_mtp_dir), device="cpu", dtype="float32", batch_size=2, continuous_batching="false"
    )
    streams = []
    real_generate_many = lm_eval_model.generate_many

    def spy(model, prompts, **kwargs):
        streams.append((len(prompts), kwargs["max_rows"]))
        return real_generate_many(model, prompts, **kwargs)

    monkeypatch.setattr(lm_eval_model, "generate_many", spy)
    requests = _generate_requests()
    for setting in (
        dict(strategy="static", k=1),
        dict(strategy="static", k=3),
        dict(strategy="confadapt", k_max=4, threshold=0.5),
        dict(strategy="selfspec", k_max=4),
    ):
        lm.set_decoding(**setting)
        lm.continuous_batching = False
        expected = lm.generate_until(requests, disable_tqdm=True)
        assert all(expected) and not streams
        lm.continuous_batching = True
        lm.reset_stats()
        assert lm.generate_until(requests, disable_tqdm=True) == expected, setting
        assert streams == [(3, 2)] and lm.batch_size == 2, streams
        assert lm.run_stats().sequences == 3
        streams.clear()


def test_decoding_stats_count_query_tokens_and_verified_proposals(tiny_mtp_dir):
    from mtp_ds.evaluation.lm_eval_model import MTPLM

    lm = MTPLM(pretrained=str(tiny_mtp_dir), strategy="selfspec", k_max=3, device="cpu", dtype="float32")
    context = torch.tensor([[5, 6, 7, 8]])
    lm._model_generate(context, max_length=14, stop=[])
    direct = generate(
        lm.model, context, strategy="selfspec", k_max=3, max_new_tokens=10, eos_token_id=lm.stop_token_ids
    )
    report = lm.decoding_report()
    assert report["acceleration_factor"] == direct.acceleration_factor
    assert report["query_tokens_per_forward_pass"] == direct.query_tokens_per_pass
    verified = direct.verified_per_pass[0]
    assert report["verified_tokens_per_pass"] == sum(verified) / len(verified)
    lm.set_decoding(strategy="static", k=2)
    lm.reset_stats()
    lm._model_generate(context, max_length=14, stop=[])
    assert lm.decoding_report()["verified_tokens_per_pass"] is None and lm.decoding_report()["setting"] == "static_k2"


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
    args = [
        str(BIN_DIR / "lm_eval"),
        "--model",
        "mtp",
        "--model_args",
        f"pretrained={model_dir},{model_args}",
        "--device",
        "cpu",
        "--tasks",
        TASK,
        "--include_path",
        str(TASKS_DIR),
        "--metadata",
        json.dumps({"gsm8k_path": str(FIXTURE)}),
        "--gen_kwargs",
        "max_gen_toks=8",
        "--output_path",
        str(out_dir),
    ]
    result = _run(args, env={"TOKENIZERS_PARALLELISM": "false"})
    (results_file,) = sorted(Path(out_dir).rglob("results_*.json"))
    return json.loads(results_file.read_text()), result.stdout + result.stderr


@pytest.mark.slow
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
        [
            str(BIN_DIR / "lm_eval"),
            "--model",
            "mtp",
            "--model_args",
            model_args,
            "--device",
            "cpu",
            "--tasks",
            TASK,
            "--include_path",
            str(TASKS_DIR),
        ],
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


@pytest.mark.slow
@pytest.mark.parametrize("case", ["bad_mask_layout", "selfspec_on_base_model"])
def test_lm_eval_console_script_refuses_bad_selfspec_args_in_one_line(
    require_installed, tiny_mtp_dir, base_model_dir, case
):
    if case == "bad_mask_layout":
        line = _lm_eval_refusal(f"pretrained={tiny_mtp_dir},strategy=selfspec,k_max=4,mask_layout=tree")
        assert "model arg mask_layout='tree'" in line and "linear, per_proposal" in line
    else:
        line = _lm_eval_refusal(f"pretrained={base_model_dir},strategy=selfspec,k_max=4")
        assert f"model arg pretrained='{base_model_dir}'" in line and "no mtp_token_id" in line
        assert "strategy=selfspec" in line


@pytest.mark.slow
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
            json.dumps({"gsm8k_path": str(FIXTURE)}),
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
    assert _drawn_series(rows)[TASK]["selfspec (lossless)"] == ["k_max=4"]  # the plot's selfspec series


def _drawn_series(rows: list[dict]) -> dict:
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


def test_pareto_frontier_keeps_undominated_points():
    sys.path.insert(0, str(REPO / "eval"))
    try:
        from pareto_plot import pareto_frontier
    finally:
        sys.path.remove(str(REPO / "eval"))
    points = [(1.0, 0.8), (2.0, 0.7), (2.5, 0.5), (2.0, 0.6), (3.0, 0.55)]
    assert pareto_frontier(points) == [(1.0, 0.8), (2.0, 0.7), (3.0, 0.55)]


def test_pareto_plot_draws_selfspec_as_its_own_series():
    """Sweep rows (k_max) and demo rows (k_max carried as k, no mask_layout) both label their points k_max=K."""
    from mtp_ds.evaluation import pareto

    assert pareto.DEFAULT_MASK_LAYOUT == DEFAULT_MASK_LAYOUT
    base = {"task": "t", "accuracy_stderr": 0.01, "acceleration_factor_std": 0.1}
    rows = [
        {**base, "strategy": "static", "k": 1, "accuracy": 0.5, "acceleration_factor": 1.0},
        {**base, "strategy": "static", "k": 3, "accuracy": 0.4, "acceleration_factor": 2.6},
        {**base, "strategy": "confadapt", "k_max": 16, "threshold": 0.9, "accuracy": 0.45, "acceleration_factor": 2.0},
        {
            **base,
            "strategy": "selfspec",
            "k": None,
            "k_max": 4,
            "mask_layout": "linear",
            "accuracy": 0.5,
            "acceleration_factor": 1.8,
        },
        {
            **base,
            "strategy": "selfspec",
            "k_max": 4,
            "mask_layout": "per_proposal",
            "accuracy": 0.5,
            "acceleration_factor": 2.1,
        },
        {**base, "strategy": "selfspec", "k": 8, "threshold": None, "accuracy": 0.5, "acceleration_factor": 2.4},
    ]
    drawn = _drawn_series(rows)["t"]
    assert drawn["selfspec (lossless)"] == ["k_max=4", "k_max=4 (per_proposal)", "k_max=8"]
    assert drawn["Static k"] == ["k=1", "k=3"] and drawn["ConfAdapt"] == ["τ=0.9"]
    names = {name for name, _, _ in pareto.STRATEGY_STYLE.values()}
    markers = {marker for _, marker, _ in pareto.STRATEGY_STYLE.values()}
    colors = {color for _, _, color in [*pareto.STRATEGY_STYLE.values(), pareto.TEACHER_STYLE]}
    assert len(names) == len(markers) == len(pareto.STRATEGY_STYLE) and len(colors) == len(pareto.STRATEGY_STYLE) + 1
    assert [pareto.setting_label(row) for row in rows[3:5]] == ["selfspec_kmax4", "selfspec_kmax4_per_proposal"]


def _load_sweep():
    spec = importlib.util.spec_from_file_location("sweep_under_test", REPO / "eval" / "sweep.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sweep_settings_parse_selfspec_and_refuse_bad_entries_in_one_line():
    sweep = _load_sweep()
    assert sweep.MASK_LAYOUTS == MASK_LAYOUTS
    assert sweep.parse_setting("selfspec:4", 16) == {"strategy": "selfspec", "k_max": 4, "mask_layout": "linear"}
    assert sweep.parse_setting(" selfspec:8:per_proposal", 16) == {
        "strategy": "selfspec",
        "k_max": 8,
        "mask_layout": "per_proposal",
    }
    for bad in (
        "selfspec",
        "selfspec:",
        "selfspec:0",
        "selfspec:four",
        "selfspec:4:tree",
        "static:0",
        "confadapt:1.5",
        "spec:4",
    ):
        with pytest.raises(SystemExit) as refused:
            sweep.parse_setting(bad, 16)
        message = str(refused.value)
        assert "\n" not in message and message.startswith(f"--settings: bad entry {bad!r}")
        assert "static:K" in message and "confadapt:TAU" in message and "selfspec:K" in message

    def labels(argv):
        return [
            sweep.setting_label(s)
            for s in sweep.chosen_settings(sweep.parse_args(["--pretrained", "x", "--out_dir", "y", *argv]))
        ]

    default = labels([])
    assert default[0] == "static_k1" and default[-1] == "selfspec_kmax16" and len(default) == 5 + 14 + 1
    assert labels(["--k_max", "8", "--static_k", "1,2", "--thresholds", "0.9"]) == [
        "static_k1",
        "static_k2",
        "confadapt_t0.9_kmax8",
        "selfspec_kmax8",
    ]
    assert labels(["--static_k", "", "--thresholds", "", "--selfspec_k_max", "4,8"]) == [
        "static_k1",
        "selfspec_kmax4",
        "selfspec_kmax8",
    ]
    assert labels(["--selfspec_k_max", "", "--thresholds", "", "--static_k", "2"]) == ["static_k1", "static_k2"]
    assert labels(["--settings", "selfspec:4,selfspec:4:per_proposal,static:3"]) == [
        "static_k1",
        "selfspec_kmax4",
        "selfspec_kmax4_per_proposal",
        "static_k3",
    ]
    with pytest.raises(SystemExit, match="--selfspec_k_max: expected a comma-separated list"):
        labels(["--selfspec_k_max", "4,x"])


def test_sweep_warm_up_runs_each_strategy_and_selfspec_layout_once():
    sweep = _load_sweep()

    class FakeLM:
        device = "cpu"
        calls: ClassVar[list] = []

        def tok_encode(self, text):
            return [1, 2, 3]

        def set_decoding(self, **setting):
            self.current = setting

        def _model_generate(self, context, max_length, stop):
            self.calls.append(sweep.setting_label(self.current))

        def reset_stats(self):
            self.calls.append("reset")

    lm = FakeLM()
    settings = sweep.chosen_settings(
        sweep.parse_args(
            [
                "--pretrained",
                "x",
                "--out_dir",
                "y",
                "--settings",
                "static:2,selfspec:4,selfspec:8:per_proposal,selfspec:8",
            ]
        )
    )
    sweep.warm_up(lm, settings)
    assert lm.calls == ["static_k2", "selfspec_kmax8", "selfspec_kmax8_per_proposal", "reset"]


@pytest.mark.slow
def test_eval_script_runs_the_sweep_without_slurm(require_installed, tiny_mtp_dir, tmp_path):
    """slurm/eval_gsm8k.sh falls back to this machine when there is no Slurm (the Slurm CI covers sbatch)."""
    env = {
        "MODEL_DIR": str(tiny_mtp_dir),
        "OUT_DIR": str(tmp_path / "sweep"),
        "GSM8K_PATH": str(FIXTURE),
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
