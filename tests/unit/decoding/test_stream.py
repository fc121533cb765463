"""Continuous batching (`generate_many`): every request's output equals `generate` on that prompt alone.

References are `generate` runs of one prompt each (whose own contract, equality with plain causal forwards and HF
greedy, tests/test_decoding.py and tests/test_selfspec.py hold). The stream must give the same tokens, tokens per
pass and stop reasons for every max_rows and arrival order, with rows really joining mid-stream, and must keep
its KV memory bounded over a long stream.
"""

import random

import pytest
import torch
from helpers import DEVICES, bias_lm_head, make_mtp_model

from mtp_ds.decoding import generate, generate_many, ragged_cache

TEXTS = [
    "how many apples does the boy have ?",
    "three pens",
    "each box has five coins and two books . how many coins are there in total",
    "the girl has two cats",
    "how many books",
    "five boxes and three pens . how many are there",
    "coins",
]
BUDGETS = [14, 9, 17, 5, 12, 16, 11]
SETTINGS = {  # strategy -> (settings, the model that makes its acceptance vary)
    "static": dict(strategy="static", k=3),
    "confadapt": dict(strategy="confadapt", k_max=5, threshold=0.6),
    "selfspec": dict(strategy="selfspec", k_max=4, mask_layout="linear"),
    "selfspec_per_proposal": dict(strategy="selfspec", k_max=3, mask_layout="per_proposal"),
}


def _model(name: str):
    model, tokenizer, mask_tokens = make_mtp_model("qwen3")
    if name.startswith("selfspec"):  # drifts into repeating "the": proposals get both verified and rejected
        bias_lm_head(model, [tokenizer.convert_tokens_to_ids("the")], 0.45)
    else:  # spreads confidences across (0, 1), so ConfAdapt keeps different counts per pass
        with torch.no_grad():
            model.lm_head.weight.mul_(30.0)
    return model, tokenizer, mask_tokens


def _alone(model, prompt, budget, settings):
    return generate(model, torch.tensor([prompt]), max_new_tokens=budget, **settings)


def _assert_equals_alone(stream, references, strategy):
    for index, alone in enumerate(references):
        assert stream.sequences[index] == alone.sequences[0], index
        assert stream.tokens_per_pass[index] == alone.tokens_per_pass[0], index
        assert stream.stop_reasons[index] == alone.stop_reasons[0], index
        if strategy == "selfspec":
            assert stream.verified_per_pass[index] == alone.verified_per_pass[0], index


def _joined_mid_decode(spans) -> bool:
    """Some request started while another one, started earlier, was still decoding."""
    return any(0 <= a[0] < b[0] <= a[1] for a in spans for b in spans)


@pytest.mark.parametrize("name", list(SETTINGS))
def test_every_request_equals_generate_alone(name):
    model, tokenizer, mask_tokens = _model(name)
    settings = dict(SETTINGS[name], mtp_token_id=mask_tokens)
    prompts = [tokenizer(text)["input_ids"] for text in TEXTS]
    free = [_alone(model, p, b, settings) for p, b in zip(prompts, BUDGETS)]
    # an EOS id that a few requests produce mid-way (and the others never): those stop early
    counts = {}
    for result in free:
        for token in set(result.sequences[0][3:-1]):
            counts[token] = counts.get(token, 0) + 1
    eos = min(counts, key=lambda token: (abs(counts[token] - 2), token))
    settings["eos_token_id"] = eos
    references = [_alone(model, p, b, settings) for p, b in zip(prompts, BUDGETS)]
    reasons = [r.stop_reasons[0] for r in references]
    assert "stop_token" in reasons and "length" in reasons, reasons
    rng = random.Random(0)
    orders = [list(range(len(prompts)))] + [rng.sample(range(len(prompts)), len(prompts)) for _ in range(2)]
    for order, max_rows in [
        (orders[0], 1),
        (orders[0], 2),
        (orders[1], 3),
        (orders[1], len(prompts) + 2),
        (orders[2], 2),
    ]:
        stream = generate_many(
            model,
            [prompts[i] for i in order],
            max_rows=max_rows,
            max_new_tokens=[BUDGETS[i] for i in order],
            **settings,
        )
        _assert_equals_alone(stream, [references[i] for i in order], settings["strategy"])
        per_request = sum(len(r.tokens_per_pass[0]) for r in references)
        if max_rows == 1:
            assert stream.num_forward_passes == per_request
        else:
            assert stream.num_forward_passes < per_request, (max_rows, stream.num_forward_passes)
        if 1 < max_rows < len(prompts):
            assert _joined_mid_decode(stream.pass_spans), (max_rows, stream.pass_spans)
        assert stream.peak_rows <= 2 * max_rows  # max_rows in the batch + a prefill of prefill_rows (= max_rows)
        assert stream.num_query_tokens > 0


@pytest.mark.parametrize("device", DEVICES)
def test_stream_on_device_equals_generate_alone(device):
    """The contract where the model runs (bench/gpu_check.sh runs the CUDA variant with `-m cuda`): slots
    replaced in place and rows merged by add_rows on the device's cache."""
    for name in ("confadapt", "selfspec"):
        model, tokenizer, mask_tokens = _model(name)
        model.to(device)
        settings = dict(SETTINGS[name], mtp_token_id=mask_tokens)
        prompts = [tokenizer(TEXTS[i % len(TEXTS)])["input_ids"] for i in range(10)]
        budgets = [4 + (5 * i) % 11 for i in range(10)]
        stream = generate_many(model, prompts, max_rows=3, max_new_tokens=budgets, **settings)
        for index, (prompt, budget) in enumerate(zip(prompts, budgets)):
            alone = generate(model, torch.tensor([prompt], device=device), max_new_tokens=budget, **settings)
            assert stream.sequences[index] == alone.sequences[0], (name, index)
            assert stream.tokens_per_pass[index] == alone.tokens_per_pass[0], (name, index)


def test_zero_budget_and_single_rows():
    model, tokenizer, mask_tokens = _model("static")
    prompts = [tokenizer(text)["input_ids"] for text in TEXTS[:3]]
    stream = generate_many(model, prompts, max_rows=2, mtp_token_id=mask_tokens, k=2, max_new_tokens=[0, 1, 4])
    assert stream.sequences[0] == [] and stream.stop_reasons[0] == "length" and stream.pass_spans[0] == (-1, -1)
    for index in (1, 2):
        alone = _alone(model, prompts[index], [0, 1, 4][index], dict(mtp_token_id=mask_tokens, k=2))
        assert stream.sequences[index] == alone.sequences[0]
        assert stream.tokens_per_pass[index] == alone.tokens_per_pass[0]


def test_kv_memory_stays_bounded_over_a_long_stream(monkeypatch):
    monkeypatch.setattr(ragged_cache, "COMPACT_MIN_HOLES", 8)  # compact often, so the bound is tight
    model, tokenizer, mask_tokens = _model("confadapt")
    prompts = [tokenizer(TEXTS[i % len(TEXTS)])["input_ids"] for i in range(30)]
    budgets = [6 + (5 * i) % 13 for i in range(30)]
    settings = dict(mtp_token_id=mask_tokens, strategy="confadapt", k_max=4, threshold=0.6)
    stream = generate_many(model, prompts, max_rows=3, max_new_tokens=budgets, **settings)
    longest = max(len(p) for p in prompts) + max(budgets)
    bound = 2 * (longest + 4 + 8)  # compaction keeps the width near the longest row; buffers at most double
    assert stream.peak_allocated_columns <= bound, stream.allocated_columns_per_pass
    assert stream.peak_kv_entries <= (3 + 3) * bound  # the batch's 3 rows and a prefill's (prefill_rows = 3)
    # negative control: without compaction the same stream's cache keeps growing past the bound
    monkeypatch.setattr(ragged_cache, "COMPACT_MIN_HOLES", 10**9)
    growing = generate_many(model, prompts, max_rows=3, max_new_tokens=budgets, **settings)
    assert growing.peak_allocated_columns > 2 * bound, growing.allocated_columns_per_pass
    assert growing.sequences == stream.sequences
    for index in (0, 17, 29):
        alone = _alone(model, prompts[index], budgets[index], settings)
        assert stream.sequences[index] == alone.sequences[0]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(prompts=[]), "prompts must be a non-empty list"),
        (dict(prompts=[[]]), r"prompts\[0\] must be a non-empty list"),
        (dict(max_rows=0), "max_rows must be an int >= 1"),
        (dict(max_new_tokens=[3]), "max_new_tokens has 1 budgets for 2 prompts"),
        (dict(max_new_tokens=[3, -1]), "max_new_tokens must be an int >= 0"),
        (dict(max_new_tokens=2.5), "max_new_tokens must be an int >= 0"),
        (dict(strategy="nope"), "strategy must be one of"),
    ],
)
def test_bad_arguments_are_one_line_value_errors(kwargs, message):
    model, _tokenizer, mask_tokens = _model("static")
    arguments = dict(prompts=[[1, 2], [3]], max_rows=2, mtp_token_id=mask_tokens, max_new_tokens=4)
    arguments.update(kwargs)
    prompts = arguments.pop("prompts")
    with pytest.raises(ValueError, match=message) as error:
        generate_many(model, prompts, **arguments)
    assert "\n" not in str(error.value)


def _prefilled_cache(model, mask_tokens, prompts, append_layers):
    """The RaggedCache of `prompts` after their first pass (left-padded), as `generate` starts them."""
    from transformers.cache_utils import DynamicCache

    from mtp_ds.decoding.kv_cache import make_cache
    from mtp_ds.decoding.passes import BatchDecoder

    width = max(len(p) for p in prompts)
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], dtype=torch.bool)
    decoder = BatchDecoder(
        model, mask_tokens, make_cache(reserve=40) if append_layers else DynamicCache(), len(prompts), ids.device
    )
    with torch.inference_mode():
        decoder.forward(decoder.prompt_inputs(ids, mask, 0))
    return decoder.kv


@pytest.mark.parametrize("append_layers", [True, False])
def test_add_rows_right_aligns_both_caches_with_left_holes(append_layers):
    model, tokenizer, mask_tokens = _model("static")
    short = [tokenizer(TEXTS[1])["input_ids"], tokenizer(TEXTS[4])["input_ids"]]
    long = [tokenizer(TEXTS[2])["input_ids"]]
    running = _prefilled_cache(model, mask_tokens, short, append_layers)
    joining = _prefilled_cache(model, mask_tokens, long, append_layers)
    before = [(layer.keys.clone(), layer.values.clone()) for layer in running.cache.layers]
    joined = [(layer.keys.clone(), layer.values.clone()) for layer in joining.cache.layers]
    running.add_rows(joining)
    width = len(long[0])
    assert running.width == width and running.real_counts == [len(p) for p in short + long]
    assert running.key_valid.sum(dim=1).tolist() == running.real_counts
    assert running.key_valid[2].all() and not running.key_valid[:2, : width - len(short[1])].any()
    for layer, (keys, values), (new_keys, new_values) in zip(running.cache.layers, before, joined):
        assert layer.keys.shape[:3] == (3, keys.shape[1], width)
        assert torch.equal(layer.keys[:2, :, width - keys.shape[2] :], keys)
        assert torch.equal(layer.values[:2, :, width - keys.shape[2] :], values)
        assert torch.equal(layer.keys[2:], new_keys) and torch.equal(layer.values[2:], new_values)
        assert not layer.keys[:2, :, : width - keys.shape[2]].any()  # hole columns hold zeros, never NaN
        if append_layers:
            assert layer.capacity > width  # the spare capacity survived the merge


@pytest.mark.parametrize("append_layers", [True, False])
def test_replace_rows_writes_a_joiner_into_a_finished_slot_in_place(append_layers):
    model, tokenizer, mask_tokens = _model("static")
    batch = [tokenizer(TEXTS[i])["input_ids"] for i in (2, 0, 5)]  # widest first: the joiners fit
    pool = [tokenizer(TEXTS[i])["input_ids"] for i in (1, 4)]
    running = _prefilled_cache(model, mask_tokens, batch, append_layers)
    joining = _prefilled_cache(model, mask_tokens, pool, append_layers)
    before = [(layer.keys.clone(), layer.values.clone()) for layer in running.cache.layers]
    buffers = [layer.keys.data_ptr() for layer in running.cache.layers]
    with torch.inference_mode():  # where the decoder calls it (its caches are inference tensors)
        assert running.replace_rows([1], joining, [1])  # slot 1 (a finished request) <- the pool's row 1
    width, theirs = running.width, joining.width
    assert width == len(batch[0]) and running.real_counts == [len(batch[0]), len(pool[1]), len(batch[2])]
    assert running.key_valid.sum(dim=1).tolist() == running.real_counts
    for layer, (keys, values), source, pointer in zip(running.cache.layers, before, joining.cache.layers, buffers):
        assert layer.keys.data_ptr() == pointer  # in place: no copy of the batch's cache
        assert torch.equal(layer.keys[[0, 2]], keys[[0, 2]]) and torch.equal(layer.values[[0, 2]], values[[0, 2]])
        assert torch.equal(layer.keys[1, :, width - theirs :], source.keys[1])
        assert torch.equal(layer.values[1, :, width - theirs :], source.values[1])
        assert not layer.keys[1, :, : width - theirs].any()  # the slot's older entries are gone
    assert not running.key_valid[1, : width - len(pool[1])].any() and running.key_valid[1, width - len(pool[1]) :].all()
    # a joiner wider than the batch does not fit: nothing changes, the caller merges with add_rows instead
    narrow = _prefilled_cache(model, mask_tokens, pool, append_layers)
    with torch.inference_mode():
        assert not narrow.replace_rows([0], running, [0]) and narrow.real_counts == [len(p) for p in pool]


def test_prefill_rows_changes_passes_never_tokens():
    model, tokenizer, mask_tokens = _model("confadapt")
    prompts = [tokenizer(TEXTS[i % len(TEXTS)])["input_ids"] for i in range(12)]
    budgets = [5 + (3 * i) % 9 for i in range(12)]
    settings = dict(mtp_token_id=mask_tokens, strategy="confadapt", k_max=4, threshold=0.6, max_new_tokens=budgets)
    batched, one_by_one = (generate_many(model, prompts, max_rows=3, prefill_rows=n, **settings) for n in (3, 1))
    assert batched.sequences == one_by_one.sequences and batched.tokens_per_pass == one_by_one.tokens_per_pass
    # a prefill pass per join (of the free slots' prompts) vs prefills of 3 whose requests wait for slots:
    # fewer passes, more rows holding cache (the batch's 3, finished ones until replaced, and a prefill's 3)
    assert batched.num_forward_passes < one_by_one.num_forward_passes
    assert one_by_one.peak_rows <= batched.peak_rows == 3 + 3
    with pytest.raises(ValueError, match=r"prefill_rows must be an int with 1 <= prefill_rows <= max_rows=3, got 4"):
        generate_many(model, prompts, max_rows=3, prefill_rows=4, **settings)
