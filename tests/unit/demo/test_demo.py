"""The embedded demo's parts: problem generator, sentencepiece tokenizer, NTP pretraining, report and targets.

The whole demo (`mtp-ds demo --check`) runs in CI after the test suite; these tests pin the pieces it is
made of, including the ones whose bugs would only show as bad numbers there.
"""

import json
import random
import re

import pytest
import torch
import torch.nn.functional as F

from mtp_ds.batching import collate
from mtp_ds.config import ConfigError, DataConfig
from mtp_ds.data import encode_example, format_text
from mtp_ds.demo import report as demo_report
from mtp_ds.demo.pretrain import LengthBucketSampler, learning_rate, load_pretrain_recipe, ntp_batch, pretrain
from mtp_ds.demo.synth_gsm import make_split, write_splits
from mtp_ds.layout import pack
from mtp_ds.objective import prefix_coordinates

EQUATION = re.compile(r"(\d+) ([-+*/]) (\d+) = (\d+)")
PROMPT_TEMPLATE = "Q: {prompt}\nA: Let's think step by step."


# ------------------------------------------------------------------ data


def test_problems_are_seeded_and_their_arithmetic_is_right():
    assert make_split(50, seed=3) == make_split(50, seed=3)
    assert make_split(50, seed=3) != make_split(50, seed=4)
    operations = {"+": int.__add__, "-": int.__sub__, "*": int.__mul__, "/": int.__floordiv__}
    for problem in make_split(500, seed=0):
        solution, _, final = problem["answer"].rpartition("\n#### ")
        equations = EQUATION.findall(solution)
        assert 1 <= len(equations) <= 7, problem
        for left, op, right, result in equations:
            assert operations[op](int(left), int(right)) == int(result), problem
            if op == "/":
                assert int(left) % int(right) == 0 and int(right) <= 9 and int(result) <= 9
            if op == "+":
                assert int(left) % 10 + int(right) % 10 < 10  # no carry
            if op == "-":
                assert int(left) % 10 >= int(right) % 10  # no borrow
            if op == "*":
                assert int(left) <= 9 and int(right) <= 9
            assert 1 <= int(result) <= 99
        assert int(final) == int(equations[-1][3]) and 2 <= solution.count(". ") + 1 <= 5
        assert problem["question"].endswith("?") and set(problem) == {"question", "answer"}


def test_splits_do_not_share_questions(tmp_path):
    paths = write_splits(tmp_path, train=300, test=50, seed=1)
    train = [json.loads(line) for line in paths["train"].read_text().splitlines()]
    test = [json.loads(line) for line in paths["test"].read_text().splitlines()]
    assert len(train) == 300 and len(test) == 50
    assert not {row["question"] for row in train} & {row["question"] for row in test}


def test_prompt_template_formats_like_the_lm_eval_task():
    data = DataConfig(prompt_template=PROMPT_TEMPLATE, separator=" ")
    text, start = format_text("How many?", "It is 4.\n#### 4", None, data)
    assert text == "Q: How many?\nA: Let's think step by step. It is 4.\n#### 4" and text[start:].startswith("It is")


# ------------------------------------------------------------------ tokenizer


@pytest.fixture(scope="module")
def spm_tokenizer_dir(tmp_path_factory):
    from mtp_ds.demo.spm_tokenizer import train_tokenizer

    out = tmp_path_factory.mktemp("tokenizer")
    texts = [PROMPT_TEMPLATE.replace("{prompt}", p["question"]) + " " + p["answer"] for p in make_split(2000, seed=0)]
    train_tokenizer(texts, out, vocab_size=400)
    return out


def test_sentencepiece_tokenizer_matches_sentencepiece_and_round_trips(spm_tokenizer_dir):
    import sentencepiece
    from transformers import AutoTokenizer

    processor = sentencepiece.SentencePieceProcessor(model_file=str(spm_tokenizer_dir / "sentencepiece.model"))
    tokenizer = AutoTokenizer.from_pretrained(spm_tokenizer_dir)
    problems = make_split(100, seed=9)
    texts = [PROMPT_TEMPLATE.replace("{prompt}", p["question"]) + " " + p["answer"] for p in problems]
    for text in texts + ["Numbers 1234 and  two spaces\nnew line"]:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert ids == processor.encode(text)
        assert tokenizer.decode(ids) == text
    digits = tokenizer.convert_ids_to_tokens(tokenizer("it is 1234", add_special_tokens=False)["input_ids"])
    assert "1234" not in "".join(t for t in digits if len(t.strip("\u2581")) > 1)  # digits are split
    assert (tokenizer.eos_token, tokenizer.pad_token, tokenizer.unk_token) == ("</s>", "<pad>", "<unk>")
    assert tokenizer("x")["input_ids"] == tokenizer("x", add_special_tokens=False)["input_ids"]  # no BOS added


# ------------------------------------------------------------------ pretraining


def test_ntp_batch_labels_follow_the_hugging_face_convention():
    """The model's own shifted loss over `labels` == cross-entropy of the response's next tokens (no double shift)."""
    from mtp_ds.models.tiny import tiny_model

    model = tiny_model("qwen3", vocab_size=32)
    rows = [
        {"input_ids": [5, 6, 7, 8, 9, 2, 2, 2], "length": 6, "response_start": 3},
        {"input_ids": [5, 9, 9, 9, 9, 9, 9, 2], "length": 8, "response_start": 2},
    ]
    input_ids, labels = ntp_batch(rows, loss_on_prompt=False)
    assert input_ids.shape == (2, 8)
    with torch.no_grad():
        logits = model(input_ids=input_ids).logits
        hf_loss = model(input_ids=input_ids, labels=labels).loss
    predicting = [(0, p) for p in range(2, 5)] + [(1, p) for p in range(1, 7)]  # position p predicts p + 1
    manual = F.cross_entropy(
        torch.stack([logits[r, p] for r, p in predicting]),
        torch.tensor([int(input_ids[r, p + 1]) for r, p in predicting]),
    )
    torch.testing.assert_close(hf_loss, manual)
    _, all_labels = ntp_batch(rows, loss_on_prompt=True)
    assert (all_labels[0, 1:6] == input_ids[0, 1:6]).all() and (all_labels[0, 6:] == -100).all()


def test_length_buckets_cover_each_epoch_and_resume_exactly():
    lengths = [random.Random(i).randint(10, 200) for i in range(103)]
    sampler = LengthBucketSampler(lengths, 8, seed=0, window=4)
    epoch0 = sampler.batches(0)
    assert sorted(i for batch in epoch0 for i in batch) == list(range(103))
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in epoch0) / len(epoch0)
    assert spread < 100  # batches hold similar lengths (random batches would spread ~170)
    straight = [sampler.next_batch() for _ in range(20)]
    resumed = LengthBucketSampler(lengths, 8, seed=0, window=4)
    first = [resumed.next_batch() for _ in range(7)]
    state = resumed.state_dict()
    fresh = LengthBucketSampler(lengths, 8, seed=0, window=4)
    fresh.load_state_dict(state)
    assert first + [fresh.next_batch() for _ in range(13)] == straight


def test_learning_rate_warms_up_then_decays_to_the_floor():
    settings = load_pretrain_recipe.__globals__["PretrainSettings"](
        steps=100, lr=1e-3, warmup_steps=10, min_lr_ratio=0.1
    )
    assert learning_rate(0, settings) == pytest.approx(1e-4)
    assert learning_rate(9, settings) == pytest.approx(1e-3)
    assert learning_rate(100, settings) == pytest.approx(1e-4)
    assert learning_rate(40, settings) > learning_rate(60, settings)


@pytest.fixture()
def pretrain_inputs(tmp_path, spm_tokenizer_dir):
    paths = write_splits(tmp_path / "data", train=120, test=4, seed=0)
    return [
        f"model.tokenizer={spm_tokenizer_dir}",
        f"data.path={paths['train']}",
        "model.tiny_config.hidden_size=32",
        "model.tiny_config.intermediate_size=64",
        "model.tiny_config.num_layers=2",
        "pretrain.batch_size=4",
        "pretrain.steps=4",
        "pretrain.save_every=2",
        "pretrain.warmup_steps=1",
        f"data.cache_dir={tmp_path / 'cache'}",
    ]


def test_pretraining_resumes_after_a_crash_to_the_same_weights(tmp_path, pretrain_inputs, monkeypatch):
    from transformers import AutoModelForCausalLM

    import mtp_ds.demo.pretrain as pretrain_module

    recipe_path = "recipes/tiny_cpu_pretrain.yaml"
    straight = pretrain(load_pretrain_recipe(recipe_path, [*pretrain_inputs, f"pretrain.out_dir={tmp_path / 'a'}"]))
    assert (straight / "DONE").exists() and not (straight / "pretrain_state.pt").exists()

    save = pretrain_module._save_state

    def save_then_crash(*args, **kwargs):
        save(*args, **kwargs)
        raise KeyboardInterrupt("simulated crash after the step-2 state was saved")

    crashed_recipe = load_pretrain_recipe(recipe_path, [*pretrain_inputs, f"pretrain.out_dir={tmp_path / 'b'}"])
    monkeypatch.setattr(pretrain_module, "_save_state", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        pretrain(crashed_recipe)
    monkeypatch.setattr(pretrain_module, "_save_state", save)
    assert torch.load(tmp_path / "b" / "pretrain_state.pt", weights_only=True)["step"] == 2
    resumed = pretrain(crashed_recipe)
    a = AutoModelForCausalLM.from_pretrained(straight).state_dict()
    b = AutoModelForCausalLM.from_pretrained(resumed).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)
    assert pretrain(crashed_recipe) == resumed  # DONE: skipped


def test_pretrain_recipe_errors_name_the_field(tmp_path):
    with pytest.raises(ConfigError, match=r"^pretrain\.steps: must be >= 1, got 0$"):
        load_pretrain_recipe("recipes/tiny_cpu_pretrain.yaml", ["pretrain.steps=0", "data.path=recipes"])
    with pytest.raises(ConfigError, match=r"pretrain.bogus"):
        load_pretrain_recipe("recipes/tiny_cpu_pretrain.yaml", ["pretrain.bogus=1"])
    with pytest.raises(ConfigError, match=r"^data\.path: file .*missing.jsonl' does not exist$"):
        load_pretrain_recipe("recipes/tiny_cpu_pretrain.yaml", [f"data.path={tmp_path / 'missing.jsonl'}"])


# ------------------------------------------------------------------ MTP stage: prefix NTP follows the first anchor


def test_prefix_ntp_positions_start_at_the_first_anchor():
    from mtp_ds.models.tiny import word_tokenizer

    tokenizer = word_tokenizer()
    data = DataConfig(
        prompt_template=PROMPT_TEMPLATE, separator=" ", response_only_anchors=True, seq_len=48, add_bos=False
    )
    encoded = encode_example(
        "how many apples are there ?", "5 + 3 = 8 apples . the answer is : 8", tokenizer, data, tokenizer.eos_token_id
    )
    sequence = pack(
        torch.tensor(encoded["input_ids"]),
        k=3,
        offset=1,
        mtp_token_id=len(tokenizer),
        k_max=4,
        first_anchor=encoded["first_anchor"],
        eos_token_id=tokenizer.eos_token_id,
    )
    batch = collate([sequence], pad_token_id=0)
    rows, cols, _ = prefix_coordinates(batch)
    sources = batch.source_index[rows, cols]
    assert sources.numel() > 0 and int(sources.min()) >= encoded["first_anchor"] > 0
    batch.first_anchor = None  # without it (hand-built batches): every ground-truth position
    assert int(batch.source_index[prefix_coordinates(batch)[:2]].min()) == 0


# ------------------------------------------------------------------ report and targets


def _row(model, strategy, k, threshold, accuracy, acceleration, tps, **extra):
    return {
        "model": model,
        "strategy": strategy,
        "k": k,
        "threshold": threshold,
        "accuracy": accuracy,
        "acceleration": acceleration,
        "tokens_per_second": tps,
        **extra,
    }


def _selfspec_row(accuracy=0.58, acceleration=5.2, differing=0):
    return _row("mtp", "selfspec", 8, None, accuracy, acceleration, 1200.0, outputs_differing_from_k1=differing)


def test_settings_and_summary_rows():
    settings = demo_report.demo_settings([2, 3], [0.9, 0.8, 0.9], k_max=8)
    assert [s.label for s in settings] == [
        "teacher_static_k1",
        "mtp_static_k1",
        "mtp_static_k2",
        "mtp_static_k3",
        "mtp_confadapt_t0.9_kmax4",  # ConfAdapt at k_max 4 at most (demo_report.CONFADAPT_K_MAX); selfspec at 8
        "mtp_confadapt_t0.8_kmax4",
        "mtp_selfspec_kmax8",
    ]
    assert settings[-2].model_args("m") == "pretrained=m,strategy=confadapt,k_max=4,threshold=0.8,dtype=float32"
    # the spelling lm-eval's mtp model reads (mtp_ds/evaluation/lm_eval_model.py)
    assert settings[-1].model_args("m") == "pretrained=m,strategy=selfspec,k_max=8,mask_layout=linear,dtype=float32"
    assert [s.label for s in settings if s.compared_sample_for_sample] == ["mtp_static_k1", "mtp_selfspec_kmax8"]
    results = {
        "results": {"gsm8k_cot_mtp": {"exact_match,flexible-extract": 0.5, "exact_match_stderr,flexible-extract": 0.03}}
    }
    stats = {"acceleration_factor": 2.7, "tokens_per_second": 900.0, "sequences": 200}
    row = demo_report.summary_row(settings[-2], results, stats)
    assert row == {
        "model": "mtp",
        "strategy": "confadapt",
        "k": 4,
        "threshold": 0.8,
        "accuracy": 0.5,
        "acceleration": 2.7,
        "tokens_per_second": 900.0,
        "wall_clock_speedup": None,
        "accuracy_stderr": 0.03,
        "samples": 200,
    }
    row = demo_report.summary_row(settings[-1], results, stats)
    assert (row["strategy"], row["k"], row["threshold"]) == ("selfspec", 8, None)


def test_targets_pass_and_miss():
    rows = demo_report.add_speedups(
        [
            _row("teacher", "static", 1, None, 0.60, 1.0, 400.0),
            _row("mtp", "static", 1, None, 0.58, 1.0, 500.0),
            _row("mtp", "confadapt", 4, 0.9, 0.56, 2.6, 1000.0),
            _selfspec_row(),
        ]
    )
    assert rows[2]["wall_clock_speedup"] == 2.0 and rows[0]["wall_clock_speedup"] == 0.8
    targets = demo_report.check_targets(rows, test_problems=200)
    assert [t["passed"] for t in targets] == [True] * 7
    rows[2].update(accuracy=0.52, acceleration=2.4)  # below k=1 - 0.055 and teacher - 0.05
    rows[3].update(accuracy=0.575, acceleration=4.9, outputs_differing_from_k1=3)
    targets = demo_report.check_targets(rows, test_problems=199)
    assert [t["passed"] for t in targets] == [False] * 7
    assert not any(t["passed"] for t in demo_report.check_targets([], test_problems=200)[:3])
    assert not any(t["passed"] for t in demo_report.check_targets([], test_problems=200)[4:])
    table = demo_report.format_table(rows)
    assert "| mtp | ConfAdapt τ=0.9 (k_max 4) | 0.520 | 2.40 | 1000 | 2.00x |" in table
    assert "| mtp | selfspec K=8 (lossless) | 0.575 | 4.90 | 1200 | 2.40x |" in table


def _selfspec_targets(rows):
    return {t["name"]: t for t in demo_report.check_targets(rows, test_problems=200) if "selfspec" in t["name"]}


@pytest.mark.parametrize(
    "change, missed",
    [
        ({}, set()),
        ({"accuracy": 0.585}, {"accuracy"}),  # lossless means equal: higher than k=1 is a miss too
        ({"accuracy": 0.575}, {"accuracy"}),
        ({"acceleration": 4.99}, {"acceleration"}),
        ({"acceleration": 5.0}, set()),
        ({"outputs_differing_from_k1": 1}, {"outputs"}),
        ({"outputs_differing_from_k1": None}, {"outputs"}),  # no per-sample outputs to compare: a miss
    ],
)
def test_selfspec_targets_hold_it_to_the_k1_outputs(change, missed):
    base = [
        _row("teacher", "static", 1, None, 0.60, 1.0, 400.0),
        _row("mtp", "static", 1, None, 0.58, 1.0, 500.0),
        _row("mtp", "confadapt", 4, 0.9, 0.57, 2.6, 1000.0),
    ]
    targets = _selfspec_targets(base + [{**_selfspec_row(), **change}])
    assert len(targets) == 3
    failed = {
        word
        for name, t in targets.items()
        if not t["passed"]
        for word in ("accuracy", "acceleration", "outputs")
        if word in name
    }
    assert failed == missed
    assert not any(t["passed"] for t in _selfspec_targets(base).values())  # no selfspec row: every target missed
    no_k1 = [row for row in base if row["k"] != 1 or row["model"] != "mtp"] + [_selfspec_row()]
    assert not next(t for name, t in _selfspec_targets(no_k1).items() if "accuracy" in name)["passed"]


def test_selfspec_outputs_are_compared_sample_for_sample(tmp_path):
    from mtp_ds.demo.run import TASK, sample_outputs

    assert demo_report.differing_outputs({0: "a", 1: "b"}, {0: "a", 1: "b"}) == 0
    assert demo_report.differing_outputs({0: "a", 1: "c"}, {0: "a", 1: "b"}) == 1
    assert demo_report.differing_outputs({0: "a"}, {0: "a", 1: "b"}) == 1  # a doc only one run has differs
    assert demo_report.differing_outputs(None, {0: "a"}) is None
    assert sample_outputs(tmp_path) is None
    nested = tmp_path / "outputs__demo__mtp"  # where lm-eval --log_samples writes them
    nested.mkdir()
    records = [
        {"doc_id": 1, "resps": [["It is 4.\n#### 4"]], "filtered_resps": ["4"]},
        {"doc_id": 0, "resps": [["It is 5.\n#### 5"]], "filtered_resps": ["5"]},
    ]
    (nested / f"samples_{TASK}_2026-01-01T00-00-00.jsonl").write_text(
        "".join(json.dumps(record) + "\n" for record in records)
    )
    outputs = sample_outputs(tmp_path)
    assert sorted(outputs) == [0, 1] and json.loads(outputs[1]) == [["It is 4.\n#### 4"]]


def test_run_time_is_reported_beside_its_goal_never_a_target(tmp_path):
    """A slow machine (the same deterministic run took 28.6 minutes on a busy CI machine) must not fail --check."""
    rows = [
        _row("teacher", "static", 1, None, 0.60, 1.0, 400.0),
        _row("mtp", "static", 1, None, 0.58, 1.0, 500.0),
        _row("mtp", "confadapt", 4, 0.9, 0.57, 2.6, 1000.0),
        _selfspec_row(),
    ]
    targets = demo_report.check_targets(rows, test_problems=200)
    assert all(t["passed"] for t in targets) and not any("minute" in t["name"] for t in targets)
    slow = demo_report.time_report(28.6 * 60)
    assert slow["within_goal"] is False and slow["seconds"] == 1716.0
    assert demo_report.format_time(slow).startswith("TIME  28.6 min, over the 20-minute goal")
    demo_report.write_summary(tmp_path, rows, targets, {"pretrain": 1000.0, "mtp": 716.0})
    saved = json.loads((tmp_path / "targets.json").read_text())
    assert saved["time"] == slow and saved["timings"] == {"pretrain": 1000.0, "mtp": 716.0}


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--static-k", "0"], "mtp-ds demo: --static-k: every k must be >= 1, got '0'"),
        (["--thresholds", "1.5"], "mtp-ds demo: --thresholds: every threshold must be in [0, 1], got '1.5'"),
        (["--thresholds", "x"], "mtp-ds demo: --thresholds: expected a comma-separated list of numbers, got 'x'"),
    ],
)
def test_demo_refuses_bad_flags_before_writing_anything(tmp_path, flags, message):
    from mtp_ds.demo.run import main

    with pytest.raises(SystemExit) as stop:
        main(["--out-dir", str(tmp_path / "demo"), *flags])
    assert str(stop.value) == message and not (tmp_path / "demo").exists()


def test_demo_refuses_a_count_below_one_in_one_line(tmp_path, capsys):
    from mtp_ds.demo.run import main

    assert main(["--out-dir", str(tmp_path / "demo"), "--eval-workers", "0"]) == 2
    assert capsys.readouterr().err == "mtp-ds demo: --eval-workers must be >= 1, got 0\n"
    assert not (tmp_path / "demo").exists()


def test_pretrain_refuses_a_bad_learning_rate():
    with pytest.raises(ConfigError, match=r"^pretrain\.lr: must be > 0, got 0\.0$"):
        load_pretrain_recipe("recipes/tiny_cpu_pretrain.yaml", ["pretrain.lr=0", "data.path=recipes"])
