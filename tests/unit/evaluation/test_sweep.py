"""eval/sweep.py without a model: the paper's per-recipe evaluation settings reach lm-eval, finished settings resume.

lm_eval.simple_evaluate, MTPLM and TaskManager are fakes; the sweep end to end on a tiny model is in
tests/integration/test_lm_eval_cli.py.
"""

import importlib.util
import json

import pytest
from helpers import REPO

TASK = "gsm8k_cot_mtp"
METRIC = "exact_match,flexible-extract"


def _load_sweep():
    spec = importlib.util.spec_from_file_location("sweep_under_test", REPO / "eval" / "sweep.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def fake_sweep(monkeypatch):
    """The sweep module with lm-eval, the model and the plot replaced; `calls` records each simple_evaluate and
    `models` each MTPLM's keyword arguments."""
    import lm_eval
    import lm_eval.tasks

    import mtp_ds.evaluation.lm_eval_model as lm_eval_model

    sweep = _load_sweep()
    calls, models = [], []

    class FakeLM:
        def __init__(self, **kwargs):
            models.append(kwargs)
            self.spec = None

        def set_decoding(self, spec):
            self.spec = spec

        def reset_stats(self):
            pass

    def fake_simple_evaluate(model, tasks, **kwargs):
        calls.append({"setting": model.spec.label, "tasks": tasks, **kwargs})
        stats = {"acceleration_factor": 1.5, "tokens_per_second": 10.0 * len(calls), "generated_tokens": 12}
        return {
            "config": {"mtp_decoding": {"per_task": {}, **stats}},
            "results": {
                task: {METRIC: 0.5, f"exact_match_stderr,{METRIC.split(',')[1]}": 0.1, "sample_len": 2}
                for task in tasks
            },
        }

    monkeypatch.setattr(lm_eval, "simple_evaluate", fake_simple_evaluate)
    monkeypatch.setattr(lm_eval.tasks, "TaskManager", lambda **kwargs: object())
    monkeypatch.setattr(lm_eval_model, "MTPLM", FakeLM)
    monkeypatch.setattr(sweep, "warm_up", lambda lm, settings: None)
    monkeypatch.setattr(sweep, "plot_pareto", lambda rows, path, **kwargs: path)
    sweep.calls, sweep.models = calls, models
    return sweep


def _argv(out_dir, *extra):
    return [
        "--pretrained",
        "some/model",
        "--out_dir",
        str(out_dir),
        "--settings",
        "static:1,static:3",
        "--device",
        "cpu",
        *extra,
    ]


def _rows(out_dir):
    return json.loads((out_dir / "sweep.json").read_text())["rows"]


def test_llama_recipe_turns_on_chat_template_multiturn_and_float32(fake_sweep, tmp_path):
    assert fake_sweep.main(_argv(tmp_path, "--recipe", "llama31_8b_magpie_metamath")) == 0
    assert [call["setting"] for call in fake_sweep.calls] == ["static_k1", "static_k3"]
    assert all(
        call["apply_chat_template"] is True and call["fewshot_as_multiturn"] is True for call in fake_sweep.calls
    )
    assert fake_sweep.models == [
        {"pretrained": "some/model", "batch_size": fake_sweep.DEFAULT_BATCH_SIZE, "device": "cpu", "dtype": "float32"}
    ]
    assert int(fake_sweep.DEFAULT_BATCH_SIZE) > 1  # the stream: continuous batching, not one row at a time
    header = json.loads((tmp_path / "sweep.json").read_text())
    assert (header["recipe"], header["dtype"], header["apply_chat_template"]) == (
        "llama31_8b_magpie_metamath",
        "float32",
        True,
    )


def test_recipe_defaults_yield_to_explicit_flags_and_qwen_keeps_plain_prompts():
    sweep = _load_sweep()
    base = ["--pretrained", "m", "--out_dir", "o"]
    args = sweep.parse_args([*base, "--recipe", "recipes/llama31_8b_magpie_ablation.yaml", "--dtype", "bfloat16"])
    assert (args.apply_chat_template, args.fewshot_as_multiturn, args.dtype) == (True, True, "bfloat16")
    args = sweep.parse_args([*base, "--recipe", "llama31_8b_magpie_metamath", "--no-fewshot_as_multiturn"])
    assert (args.apply_chat_template, args.fewshot_as_multiturn, args.dtype) == (True, False, "float32")
    args = sweep.parse_args([*base, "--recipe", "qwen3_4b_metamath"])
    assert (args.apply_chat_template, args.fewshot_as_multiturn, args.dtype) == (False, False, "auto")
    args = sweep.parse_args([*base, "--apply_chat_template"])  # no recipe: multi-turn follows the chat template
    assert (args.apply_chat_template, args.fewshot_as_multiturn, args.dtype) == (True, True, "auto")
    with pytest.raises(SystemExit, match="unknown recipe"):
        sweep.parse_args([*base, "--recipe", "nope"])
    for name, defaults in sweep.RECIPE_EVAL.items():  # every recipe is in the table, and the table only has recipes
        assert (REPO / "recipes" / f"{name}.yaml").exists()
        assert set(defaults) == {"apply_chat_template", "fewshot_as_multiturn", "dtype"}
    assert {path.stem for path in (REPO / "recipes").glob("*.yaml")} <= set(sweep.RECIPE_EVAL)


def test_resume_skips_finished_settings_and_keeps_their_rows_restart_runs_them(fake_sweep, tmp_path):
    fake_sweep.main(_argv(tmp_path, "--limit", "2"))
    first = _rows(tmp_path)
    assert len(fake_sweep.calls) == 2 and len(fake_sweep.models) == 1
    (tmp_path / "results_static_k3.json").unlink()  # as if the sweep had been killed during static_k3

    fake_sweep.main(_argv(tmp_path, "--limit", "2"))
    assert [call["setting"] for call in fake_sweep.calls[2:]] == ["static_k3"]
    resumed = _rows(tmp_path)
    assert [row["setting"] for row in resumed] == ["static_k1", "static_k3"]
    assert resumed[0] == first[0]  # read back: same tokens/s and run seconds, not a new run

    fake_sweep.main(_argv(tmp_path, "--limit", "2"))  # everything finished: no model is even loaded
    assert len(fake_sweep.calls) == 3 and len(fake_sweep.models) == 2
    assert [row["setting"] for row in _rows(tmp_path)] == ["static_k1", "static_k3"]

    fake_sweep.main(_argv(tmp_path, "--limit", "2", "--restart"))
    assert [call["setting"] for call in fake_sweep.calls[3:]] == ["static_k1", "static_k3"]


def test_a_changed_header_does_not_resume(fake_sweep, tmp_path):
    fake_sweep.main(_argv(tmp_path, "--limit", "2"))
    fake_sweep.main(_argv(tmp_path, "--limit", "2"))
    assert len(fake_sweep.calls) == 2  # same header: resumed
    fake_sweep.main(_argv(tmp_path, "--limit", "3"))
    assert [call["setting"] for call in fake_sweep.calls[2:]] == ["static_k1", "static_k3"]
    fake_sweep.main(_argv(tmp_path, "--limit", "3", "--dtype", "float32"))
    fake_sweep.main(_argv(tmp_path, "--limit", "3", "--dtype", "float32", "--apply_chat_template"))
    assert len(fake_sweep.calls) == 8
    record = json.loads((tmp_path / "results_static_k1.json").read_text())
    assert record["mtp_sweep"]["header"]["limit"] == 3.0 and record["mtp_sweep"]["header"]["apply_chat_template"]


def test_estimate_printed_after_the_baseline(fake_sweep, tmp_path, capsys):
    fake_sweep.main(_argv(tmp_path, "--settings", "static:1,static:2,static:3"))
    err = capsys.readouterr()
    text = err.out + err.err
    assert "static_k1 took" in text and "2 settings left, about" in text and "1 settings left, about" in text


def test_mtp_token_id_reaches_the_model_args_and_the_resume_header(fake_sweep, tmp_path):
    """The authors' checkpoints record no mask id: --mtp_token_id is passed to MTPLM; a changed id is a new run."""
    assert fake_sweep.main(_argv(tmp_path, "--mtp_token_id", "128259")) == 0
    assert fake_sweep.models[-1]["mtp_token_id"] == 128259
    record = json.loads((tmp_path / "results_static_k1.json").read_text())
    assert record["mtp_sweep"]["header"]["mtp_token_id"] == 128259
    fake_sweep.main(_argv(tmp_path, "--mtp_token_id", "128259"))
    assert len(fake_sweep.calls) == 2  # resumed
    fake_sweep.main(_argv(tmp_path))  # none given: not a model arg, and not the same run
    assert "mtp_token_id" not in fake_sweep.models[-1] and len(fake_sweep.calls) == 4
