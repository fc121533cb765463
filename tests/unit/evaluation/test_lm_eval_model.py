"""lm-eval's side in-process: the `MTPLM` model class (argument checks, stop ids, padding, stats, lossless
generate_until, continuous batching), the GSM8K task's data path, the Pareto plot and the sweep's setting parser.

The console script, the .pth hook in a fresh interpreter and the sweep/eval scripts end to end are in
tests/integration/test_lm_eval_cli.py.
"""

import importlib.util
import json
import sys
from typing import ClassVar

import pytest
import torch
from helpers import GSM8K_FIXTURE, REPO, TASK, TASKS_DIR, drawn_series, make_mtp_model

from mtp_ds.decoding import DEFAULT_MASK_LAYOUT, MASK_LAYOUTS, DecodeSpec, generate


def _load_task_utils():
    spec = importlib.util.spec_from_file_location("gsm8k_cot_mtp_utils", TASKS_DIR / TASK / "utils.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- the model class in-process -----------------------------------------------------------------------------


def test_bad_model_arg_names_the_arg(tiny_mtp_dir):
    from mtp_ds.evaluation.lm_eval_model import MTPLM

    with pytest.raises(ValueError, match=r"model arg strategy='bogus'"):
        MTPLM(pretrained=str(tiny_mtp_dir), strategy="bogus", device="cpu")
    with pytest.raises(ValueError, match=r"model arg threshold=1.5"):
        MTPLM(pretrained=str(tiny_mtp_dir), strategy="confadapt", threshold=1.5, device="cpu")
    with pytest.raises(ValueError, match=r"model arg mask_layout='tree': must be one of linear, ends, per_proposal"):
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


def test_hub_id_is_left_to_hugging_face_and_a_missing_local_path_is_refused(tmp_path):
    """owner/name is a hub id: passed on (offline here, so Hugging Face's own error), never called a missing path."""
    from mtp_ds.evaluation.lm_eval_model import MTPLM

    with pytest.raises(OSError):
        MTPLM(pretrained="some-owner/some-model-that-is-not-cached", device="cpu")
    with pytest.raises(ValueError, match=r"model arg pretrained=.*no_such_model.*does not exist"):
        MTPLM(pretrained=str(tmp_path / "no_such_model"), device="cpu")
    with pytest.raises(ValueError, match=r"model args k=3 and k_max=2"):
        MTPLM(pretrained=str(tmp_path / "no_such_model"), k=3, k_max=2, device="cpu")


def _generate_requests(max_gen_toks: int = 16):
    """lm-eval requests as the gsm8k_cot_mtp task makes them (0-shot), one per fixture problem."""
    from lm_eval.api.instance import Instance

    docs = [json.loads(line) for line in GSM8K_FIXTURE.read_text().splitlines()]
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

    def spy(model, prompts, spec, **kwargs):
        # lm-eval's own field keeps the user's batch size while the task streams (nothing is overwritten)
        streams.append((len(prompts), kwargs["max_rows"], lm.batch_size_per_gpu))
        return real_generate_many(model, prompts, spec, **kwargs)

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
        assert streams == [(3, 2, 2)] and lm.batch_size == 2, streams
        assert lm.run_stats().sequences == 3
        streams.clear()


def test_batch_size_auto_says_once_that_continuous_batching_is_off(drifting_mtp_dir, caplog, monkeypatch):
    """lm-eval's batch_size=auto has no fixed number of rows to stream: its batches are decoded as they come (the
    texts of continuous_batching=false), and one warning says so, not one per task or call."""
    from mtp_ds.evaluation.lm_eval_model import MTPLM

    lm = MTPLM(pretrained=str(drifting_mtp_dir), device="cpu", dtype="float32", batch_size="auto")
    monkeypatch.setattr(lm, "_detect_batch_size", lambda *args, **kwargs: 2)  # lm-eval's probe, not ours to test
    requests = _generate_requests(max_gen_toks=8)
    with caplog.at_level("WARNING", logger="lm_eval.mtp_ds"):
        texts = [lm.generate_until(requests, disable_tqdm=True), lm.generate_until(requests[:1], disable_tqdm=True)]
    lm.continuous_batching = False
    assert texts == [lm.generate_until(requests, disable_tqdm=True), lm.generate_until(requests[:1], disable_tqdm=True)]
    warnings = [r.getMessage() for r in caplog.records if "continuous batching is off" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].startswith("batch_size=auto: "), warnings


def test_data_parallel_statistics_cover_every_rank(tiny_mtp_dir, tmp_path, monkeypatch):
    """With 2 data-parallel ranks, rank 0's report (results JSON, stats file, log line) sums both ranks' decoding
    statistics, gathered at the end of generate_until (every rank calls it); another rank writes nothing."""
    import copy

    from mtp_ds.evaluation.lm_eval_model import MTPLM

    stats_path = tmp_path / "stats.json"
    lm = MTPLM(pretrained=str(tiny_mtp_dir), device="cpu", dtype="float32", batch_size=2, stats_path=str(stats_path))
    requests = _generate_requests(max_gen_toks=6)
    lm.generate_until(requests, disable_tqdm=True)
    alone = lm.decoding_report()
    assert alone["ranks"] == 1 and alone["sequences"] == 3
    other_rank = copy.deepcopy(lm.task_stats)  # what rank 1 decoded: here the same requests again
    lm.reset_stats()
    gathers = []
    monkeypatch.setattr(lm, "_world_size", 2)
    monkeypatch.setattr(lm, "gather_object", lambda obj, dst=0: gathers.append(obj) or [obj, other_rank])
    lm.generate_until(requests, disable_tqdm=True)
    report = json.loads(stats_path.read_text())
    assert len(gathers) == 1 and report == lm.decoding_report()
    assert report["ranks"] == 2 and report["sequences"] == 6
    assert report["generated_tokens"] == 2 * alone["generated_tokens"]
    assert report["per_task"][TASK]["forward_passes"] == 2 * alone["per_task"][TASK]["forward_passes"]
    assert report["acceleration_factor"] == alone["acceleration_factor"]
    stats_path.unlink()
    monkeypatch.setattr(lm, "_rank", 1)
    monkeypatch.setattr(lm, "gather_object", lambda obj, dst=0: gathers.append(obj))  # None on ranks other than 0
    lm.reset_stats()
    lm.generate_until(requests, disable_tqdm=True)
    assert len(gathers) == 2 and not stats_path.exists() and lm.decoding_report()["sequences"] == 3


def test_a_model_spread_over_devices_is_refused_as_a_model_arg(tiny_mtp_dir, monkeypatch):
    """parallelize=True (a device_map over several GPUs) is refused when the model is built, in one line."""
    from transformers import AutoModelForCausalLM

    from mtp_ds.evaluation.lm_eval_model import MTPLM, ModelArgError

    model = AutoModelForCausalLM.from_pretrained(tiny_mtp_dir)
    model.hf_device_map = {"model": 0, "lm_head": 1}
    with pytest.raises(ModelArgError, match="spread over 2 devices") as error:
        MTPLM(pretrained=model, tokenizer=str(tiny_mtp_dir), device="cpu", batch_size=2)
    assert "\n" not in str(error.value)


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
    assert utils.load_gsm8k(gsm8k_path=str(GSM8K_FIXTURE))["test"].num_rows == 3
    monkeypatch.setenv(utils.PATH_ENV_VAR, str(GSM8K_FIXTURE))
    assert utils.load_gsm8k(pretrained="ignored")["test"][0]["answer"].endswith("#### 18")
    with pytest.raises(FileNotFoundError, match="gsm8k_path"):
        utils.load_gsm8k(gsm8k_path=str(tmp_path / "missing.jsonl"))


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
    drawn = drawn_series(rows)["t"]
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
    assert sweep.parse_setting("selfspec:8:per_proposal:g=3", 16) == DecodeSpec(
        strategy="selfspec", k_max=8, mask_layout="per_proposal", max_groups=3
    )
    assert sweep.parse_setting("selfspec:8:p=0.3", 16) == DecodeSpec(
        strategy="selfspec", k_max=8, propose_threshold=0.3
    )
    assert sweep.parse_setting("selfspec:4", 16) == DecodeSpec(strategy="selfspec", k_max=4, mask_layout="linear")
    assert sweep.parse_setting(" selfspec:8:per_proposal", 16) == DecodeSpec(
        strategy="selfspec", k_max=8, mask_layout="per_proposal"
    )
    assert sweep.parse_setting("confadapt:0.85", 8) == DecodeSpec(strategy="confadapt", k_max=8, threshold=0.85)
    for bad in (
        "selfspec",
        "selfspec:",
        "selfspec:0",
        "selfspec:four",
        "selfspec:4:tree",
        "selfspec:4:x=1",
        "selfspec:4:linear:ends",
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
            spec.label
            for spec in sweep.chosen_settings(sweep.parse_args(["--pretrained", "x", "--out_dir", "y", *argv]))
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

        def set_decoding(self, spec):
            self.current = spec

        def _model_generate(self, context, max_length, stop):
            self.calls.append(self.current.label)

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


def test_log_likelihoods_give_no_mass_to_mask_or_padding_ids(tmp_path):
    """A model whose raw argmax is always `<MTP>` or a padding row: lm-eval's log-likelihoods (`_model_call`'s
    logits) read the distribution without those ids, as HF generate does with the export's suppress_tokens."""
    from helpers import bias_lm_head, save_checkpoint_dir

    from mtp_ds.evaluation.lm_eval_model import MTPLM

    model, tokenizer, tokens = make_mtp_model("llama")
    bias_lm_head(model, tokens.never_emitted, 30.0)
    lm = MTPLM(pretrained=str(save_checkpoint_dir(model, tokenizer, tmp_path)), device="cpu", dtype="float32")
    inputs = torch.tensor([tokenizer("one two three four", add_special_tokens=False)["input_ids"]])
    log_probs = torch.log_softmax(lm._model_call(inputs), dim=-1)
    never = list(tokens.never_emitted)
    assert tokens.padding is not None and torch.isneginf(log_probs[..., never]).all()
    with torch.no_grad():
        raw = model(inputs).logits
    assert raw.argmax(-1).flatten().tolist()[0] in never  # without it, they would hold nearly all the mass
    kept = [i for i in range(raw.shape[-1]) if i not in tokens.never_emitted]
    torch.testing.assert_close(log_probs[..., kept], torch.log_softmax(raw[..., kept], dim=-1))
