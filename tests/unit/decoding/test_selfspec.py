"""Selfspec (lossless self-verifying decoding) against independent references.

The contract: greedy selfspec gives exactly the model's own k=1 greedy tokens, hence Hugging Face greedy
`generate` on the same model; with temperature it is distributed exactly as k=1 sampling. References here are
HF `generate` (greedy) and probabilities enumerated with plain no-cache forwards (sampling); neither runs any
of the decoder's code.
"""

import json
import os
from pathlib import Path

import pytest
import torch
from helpers import DEVICES, REPO, bias_lm_head, make_mtp_model
from scipy.stats import chi2_contingency, chisquare

from mtp_ds.decoding import MASK_LAYOUTS, generate, passes, selfspec
from mtp_ds.models.tiny import tiny_model

PROMPTS = [
    "how many apples does the boy have ?",
    "three pens",
    "each box has five coins and two books . how many coins are there in total",
]
REPEAT_BIAS = 0.45  # lm_head bias on one word: random models drift into repeating it, so proposals get verified


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text)["input_ids"]


def _left_pad(rows: list[list[int]], pad_id: int = 0):
    width = max(len(row) for row in rows)
    ids = torch.tensor([[pad_id] * (width - len(row)) + row for row in rows])
    mask = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in rows])
    return ids, mask


def _repetitive(arch: str, **kwargs):
    """A random tiny model whose lm_head favours "the" a little: it starts with random tokens (its proposals
    get rejected) and drifts into runs of "the" (proposals get verified), so both paths of a pass occur."""
    model, tokenizer, mask_tokens = make_mtp_model(arch, **kwargs)
    bias_lm_head(model, [tokenizer.convert_tokens_to_ids("the")], REPEAT_BIAS)
    return model, tokenizer, mask_tokens


def _hf_greedy(model, prompt: list[int], mask_tokens, max_new_tokens: int, eos=None) -> list[int]:
    ids = torch.tensor([prompt], device=model.device)
    with torch.no_grad():
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            do_sample=False,
            max_new_tokens=max_new_tokens,
            suppress_tokens=list(mask_tokens.never_emitted),
            eos_token_id=eos,
            pad_token_id=0,
        )
    return out[0, len(prompt) :].tolist()


@pytest.mark.parametrize("arch", ["qwen3", "llama"])
@pytest.mark.parametrize("mask_layout", MASK_LAYOUTS)
def test_greedy_selfspec_equals_k1_and_hf_greedy_for_every_k(arch, mask_layout):
    model, tokenizer, mask_tokens = _repetitive(arch)
    factors = []
    for text in PROMPTS:
        prompt = _ids(tokenizer, text)
        expected = _hf_greedy(model, prompt, mask_tokens, 24)
        ours_k1 = generate(model, torch.tensor([prompt]), mtp_token_id=mask_tokens, k=1, max_new_tokens=24)
        assert ours_k1.sequences[0] == expected
        for k_max in range(2, 9):
            result = generate(
                model,
                torch.tensor([prompt]),
                mtp_token_id=mask_tokens,
                strategy="selfspec",
                k_max=k_max,
                max_new_tokens=24,
                mask_layout=mask_layout,
            )
            assert result.sequences[0] == expected, (text, k_max)
            assert sum(result.tokens_per_pass[0]) == 24 and max(result.tokens_per_pass[0]) <= k_max
            assert result.num_forward_passes == len(result.tokens_per_pass[0])
            factors.append(result.acceleration_factor)
    # acceptance is real: a decoder that always keeps one token per pass has factor 1.0
    assert sum(factors) / len(factors) > 1.5, factors


@pytest.mark.parametrize("arch", ["qwen3", "llama"])
@pytest.mark.parametrize("mask_layout", MASK_LAYOUTS)
def test_passes_both_verify_and_reject(arch, mask_layout):
    """Some passes keep all their proposals, some refuse one (and keep the model's correction instead)."""
    model, tokenizer, mask_tokens = _repetitive(arch)
    prompt = torch.tensor([_ids(tokenizer, PROMPTS[2])])
    result = generate(
        model,
        prompt,
        mtp_token_id=mask_tokens,
        strategy="selfspec",
        k_max=4,
        max_new_tokens=40,
        mask_layout=mask_layout,
    )
    verified, kept = result.verified_per_pass[0], result.tokens_per_pass[0]
    assert verified[0] == 0  # the first pass (prompt + masks) has nothing to verify
    assert all(count == v + 1 for count, v in zip(kept[:-1], verified[:-1]))  # + the correction / bonus token
    assert 3 in verified and any(v < 3 for v in verified[1:-1])


@pytest.mark.parametrize("arch", ["qwen3", "llama"])
@pytest.mark.parametrize("mask_layout", MASK_LAYOUTS)
def test_ragged_left_padded_batch_equals_rows_alone_and_hf(arch, mask_layout):
    model, tokenizer, mask_tokens = _repetitive(arch)
    prompts = [_ids(tokenizer, text) for text in PROMPTS]
    ids, attention_mask = _left_pad(prompts)
    expected = [_hf_greedy(model, prompt, mask_tokens, 24) for prompt in prompts]
    for k_max in range(2, 9):
        settings = dict(
            mtp_token_id=mask_tokens, strategy="selfspec", k_max=k_max, max_new_tokens=24, mask_layout=mask_layout
        )
        batched = generate(model, ids, attention_mask=attention_mask, **settings)
        assert batched.sequences == expected, k_max
        for row, prompt in enumerate(prompts):
            alone = generate(model, torch.tensor([prompt]), **settings)
            assert batched.sequences[row] == alone.sequences[0]
            assert batched.tokens_per_pass[row] == alone.tokens_per_pass[0]
        # rows really kept different counts in the same forward (no per-row fallback)
        passes = min(len(counts) for counts in batched.tokens_per_pass)
        assert any(len({counts[p] for counts in batched.tokens_per_pass}) > 1 for p in range(passes)), k_max
        assert batched.num_forward_passes == max(len(counts) for counts in batched.tokens_per_pass)


@pytest.mark.parametrize("device", DEVICES)
def test_left_padded_batch_on_device_equals_hf_greedy(device):
    """The same contract where the model runs (bench/gpu_check.sh runs the CUDA variant with `-m cuda`)."""
    model, tokenizer, mask_tokens = _repetitive("qwen3")
    model.to(device)
    prompts = [_ids(tokenizer, text) for text in PROMPTS]
    ids, attention_mask = _left_pad(prompts)
    for mask_layout in MASK_LAYOUTS:
        result = generate(
            model,
            ids.to(device),
            attention_mask=attention_mask.to(device),
            mtp_token_id=mask_tokens,
            strategy="selfspec",
            k_max=4,
            max_new_tokens=20,
            mask_layout=mask_layout,
        )
        for row, prompt in enumerate(prompts):
            expected = _hf_greedy(model, prompt, mask_tokens, 20)
            assert result.sequences[row] == expected, (mask_layout, row)


@pytest.mark.parametrize("mask_layout", MASK_LAYOUTS)
def test_per_proposal_layout_keeps_proposals_after_a_rejection(monkeypatch, mask_layout):
    """Linear: a pass that refused a proposal leaves the next pass nothing to verify (it keeps 1 token);
    per-proposal: the proposals after the kept prefix were computed in the same pass."""
    model, tokenizer, mask_tokens = _repetitive("qwen3")
    fed = [0]  # proposals fed per pass (the first pass, prompt + masks, feeds none)
    original = selfspec.build_verify_pass

    def spy(rows, *args, **kwargs):
        fed.append(len(rows[0].pending) - 1)
        return original(rows, *args, **kwargs)

    monkeypatch.setattr(selfspec, "build_verify_pass", spy)
    prompt = torch.tensor([_ids(tokenizer, PROMPTS[2])])
    result = generate(
        model,
        prompt,
        mtp_token_id=mask_tokens,
        strategy="selfspec",
        k_max=4,
        max_new_tokens=40,
        mask_layout=mask_layout,
    )
    verified = result.verified_per_pass[0]
    assert len(fed) == len(verified) and all(v <= f for v, f in zip(verified, fed))
    after_rejection = [fed[p + 1] for p in range(len(fed) - 1) if verified[p] < fed[p]]
    assert after_rejection
    if mask_layout == "linear":
        assert set(after_rejection) == {0}
    else:
        assert set(after_rejection) == {3}


def _first_occurrence_inside_a_block(sequence: list[int], tokens_per_pass: list[int]) -> int | None:
    """Index of a token whose first occurrence is inside a pass's block of > 1 tokens, not at its end."""
    start = 0
    for count in tokens_per_pass:
        for i in range(start, start + count - 1):
            if sequence[i] not in sequence[:i]:
                return i
        start += count
    return None


@pytest.mark.parametrize("mask_layout", MASK_LAYOUTS)
def test_eos_and_max_new_tokens_inside_a_block(mask_layout):
    model, tokenizer, mask_tokens = _repetitive("llama")
    settings = dict(mtp_token_id=mask_tokens, strategy="selfspec", k_max=5, mask_layout=mask_layout)
    stops_tested = 0
    for text in PROMPTS:
        prompt = _ids(tokenizer, text)
        free = generate(model, torch.tensor([prompt]), max_new_tokens=40, **settings)
        sequence, counts = free.sequences[0], free.tokens_per_pass[0]
        # a budget that ends inside a pass's block
        ends = torch.tensor(counts).cumsum(0).tolist()
        inside = next(end - 1 for end, count in zip(ends, counts) if count > 2)
        short = generate(model, torch.tensor([prompt]), max_new_tokens=inside, **settings)
        assert short.sequences[0] == sequence[:inside] == _hf_greedy(model, prompt, mask_tokens, inside)
        assert short.stop_reasons == ["length"]
        # a stop id that first occurs inside a multi-token pass
        cut = _first_occurrence_inside_a_block(sequence, counts)
        if cut is None:
            continue
        stopped = generate(model, torch.tensor([prompt]), max_new_tokens=40, eos_token_id=sequence[cut], **settings)
        assert (
            stopped.sequences[0] == sequence[: cut + 1] == _hf_greedy(model, prompt, mask_tokens, 40, eos=sequence[cut])
        )
        assert stopped.stop_reasons == ["stop_token"]
        stops_tested += 1
    assert stops_tested


def test_stop_strings_and_distinct_slot_tokens():
    model, tokenizer, mask_tokens = _repetitive("qwen3", distinct_slots=True, k_max=6)
    assert mask_tokens.distinct
    prompt = torch.tensor([_ids(tokenizer, PROMPTS[0])])
    k1 = generate(model, prompt, mtp_token_id=mask_tokens, k=1, max_new_tokens=24).sequences[0]
    ours = generate(model, prompt, strategy="selfspec", k_max=6, max_new_tokens=24)  # ids read from the config
    assert ours.sequences[0] == k1
    word = tokenizer.decode([k1[5]])
    cut = next(i for i, token in enumerate(k1) if word in tokenizer.decode(k1[: i + 1]))
    stopped = generate(
        model, prompt, strategy="selfspec", k_max=6, max_new_tokens=24, tokenizer=tokenizer, stop_strings=[word]
    )
    assert stopped.sequences[0] == k1[: cut + 1] and stopped.stop_reasons == ["stop_string"]
    with pytest.raises(ValueError, match="distinct mask tokens"):
        generate(model, prompt, strategy="selfspec", k_max=8, max_new_tokens=4)


def test_mask_token_never_emitted_nor_proposed(monkeypatch):
    model, tokenizer, mask_tokens = make_mtp_model("qwen3")
    bias_lm_head(model, mask_tokens.ids, 1e4)  # raw argmax would always be a mask token
    prompt = torch.tensor([_ids(tokenizer, PROMPTS[0])])
    fed = []
    original = selfspec.build_verify_pass

    def spy(rows, *args, **kwargs):
        fed.extend(token for row in rows for token in row.pending)
        return original(rows, *args, **kwargs)

    monkeypatch.setattr(selfspec, "build_verify_pass", spy)
    result = generate(model, prompt, mtp_token_id=mask_tokens, strategy="selfspec", k_max=4, max_new_tokens=12)
    assert len(result.sequences[0]) == 12 and fed
    assert not (set(result.sequences[0]) | set(fed)) & set(mask_tokens.ids)


def test_model_without_mask_token_and_bad_layout_are_one_line_errors():
    from mtp_ds.models.tiny import word_tokenizer

    model = tiny_model("llama", vocab_size=len(word_tokenizer()))
    with pytest.raises(ValueError, match="mtp_token_id") as error:
        generate(model, torch.tensor([[1, 5, 6]]), strategy="selfspec", k_max=4)
    assert "\n" not in str(error.value)
    mtp_model, _, mask_tokens = make_mtp_model("qwen3")
    with pytest.raises(ValueError, match="mask_layout") as error:
        generate(
            mtp_model, torch.tensor([[1, 5, 6]]), mtp_token_id=mask_tokens, strategy="selfspec", mask_layout="tree"
        )
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("mask_layout", MASK_LAYOUTS)
def test_cache_holds_exactly_the_kept_tokens(monkeypatch, mask_layout):
    """After decoding, the KV cache's real entries are those of prompt + generated[:-1] (the last kept token is
    fed next pass), equal to a fresh no-cache forward over those tokens: rejected proposals and every mask's
    entries were dropped, kept ones stayed in order."""
    model, tokenizer, mask_tokens = _repetitive("llama")
    decoders = []

    class Recording(passes.BatchDecoder):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            decoders.append(self)

    monkeypatch.setattr("mtp_ds.decoding.decoder.BatchDecoder", Recording)
    prompt = _ids(tokenizer, PROMPTS[2])
    result = generate(
        model,
        torch.tensor([prompt]),
        mtp_token_id=mask_tokens,
        strategy="selfspec",
        k_max=4,
        max_new_tokens=30,
        mask_layout=mask_layout,
    )
    kv = decoders[0].kv
    tokens = prompt + result.sequences[0][:-1]
    assert kv.real_counts == [len(tokens)]
    with torch.no_grad():
        fresh = model(torch.tensor([tokens]), use_cache=True).past_key_values
    real = kv.key_valid[0]
    for layer, reference in zip(kv.cache.layers, fresh.layers):
        torch.testing.assert_close(layer.keys[0][:, real], reference.keys[0], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(layer.values[0][:, real], reference.values[0], atol=1e-4, rtol=1e-4)


def test_demo_sized_model_greedy_equals_hf():
    """The demo's architecture (tiny_cpu_pretrain.yaml: Qwen3, 192 wide, 4 layers, GQA 4/2), random weights."""
    vocab = 513
    model = tiny_model(
        "qwen3",
        vocab_size=vocab,
        hidden_size=192,
        num_layers=4,
        num_heads=4,
        num_kv_heads=2,
        intermediate_size=512,
        max_position_embeddings=512,
    )
    from mtp_ds.tokens import as_mask_tokens

    mask_tokens = as_mask_tokens(vocab - 1)
    rows = [[5, 17, 99, 230, 11], [7, 8], [300, 301, 302, 303, 304, 305, 306]]
    ids, attention_mask = _left_pad(rows)
    for mask_layout in MASK_LAYOUTS:
        result = generate(
            model,
            ids,
            attention_mask=attention_mask,
            mtp_token_id=mask_tokens,
            strategy="selfspec",
            k_max=4,
            max_new_tokens=24,
            mask_layout=mask_layout,
        )
        for index, row in enumerate(rows):
            assert result.sequences[index] == _hf_greedy(model, row, mask_tokens, 24)


DEMO_MODEL = Path(os.environ.get("MTP_DS_DEMO_DIR", "outputs/demo")) / "mtp"


@pytest.mark.skipif(
    not (DEMO_MODEL / "config.json").exists(),
    reason="no trained demo model (outputs/demo/mtp: `mtp-ds demo` writes it; CI runs it first)",
)
def test_trained_demo_model_gives_its_k1_answers_at_over_5_tokens_per_pass():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mtp_ds.demo.run import PROMPT_TEMPLATE

    tokenizer = AutoTokenizer.from_pretrained(DEMO_MODEL)
    model = AutoModelForCausalLM.from_pretrained(DEMO_MODEL, dtype=torch.float32).eval()
    from mtp_ds.config import load_recipe

    k_max = load_recipe(REPO / "recipes" / "tiny_cpu_demo.yaml", validate=False).packing.k_max
    test_file = DEMO_MODEL.parent / "data" / "test.jsonl"
    questions = [json.loads(line)["question"] for line in test_file.read_text().splitlines()[:8]]
    prompts = [
        tokenizer(PROMPT_TEMPLATE.replace("{prompt}", q), add_special_tokens=False)["input_ids"] for q in questions
    ]
    ids, attention_mask = _left_pad(prompts, pad_id=tokenizer.pad_token_id or 0)
    settings = dict(max_new_tokens=256, eos_token_id=tokenizer.eos_token_id, attention_mask=attention_mask)
    k1 = generate(model, ids, strategy="static", k=1, **settings)
    ours = generate(model, ids, strategy="selfspec", k_max=k_max, **settings)
    assert ours.sequences == k1.sequences
    assert ours.acceleration_factor >= 5.0, ours.acceleration_factor  # 6.26 on these 8 problems (K=8)


# --- sampling: distributed exactly as k=1 sampling --------------------------------------------------------------

SAMPLING_VOCAB = 5  # real tokens 0..4, mask token 5
SAMPLED_TOKENS = 3  # sequences of 3 tokens: 125 outcomes, every one of them likely enough to count
SAMPLES = 6000


def _sampling_model():
    model = tiny_model("llama", vocab_size=SAMPLING_VOCAB + 1, hidden_size=32, num_layers=2, seed=3)
    with torch.no_grad():
        model.lm_head.weight.mul_(4.0)  # distributions neither flat nor one-hot
    return model


def _exact_sequence_probabilities(
    model, prompt: list[int], temperature: float, top_k: int | None = None, top_p: float | None = None
) -> dict[tuple, float]:
    """P(sequence) of k=1 sampling, by enumeration with plain no-cache forwards (the mask id excluded); top_k and
    top_p cut as Hugging Face's own logits warpers do (the reference for what stock generate samples)."""
    from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

    probabilities = {(): 1.0}
    for _ in range(SAMPLED_TOKENS):
        prefixes = list(probabilities)
        with torch.no_grad():
            logits = model(torch.tensor([prompt + list(p) for p in prefixes])).logits[:, -1, :SAMPLING_VOCAB]
        scores = logits.double() / temperature
        if top_k is not None:
            scores = TopKLogitsWarper(top_k)(None, scores)
        if top_p is not None:
            scores = TopPLogitsWarper(top_p)(None, scores)
        step = torch.softmax(scores, dim=-1)
        probabilities = {
            prefix + (token,): probabilities[prefix] * float(step[i, token])
            for i, prefix in enumerate(prefixes)
            for token in range(SAMPLING_VOCAB)
            if float(step[i, token]) > 0
        }
    return probabilities


def _sampled_counts(model, prompt, seed, **settings) -> dict[tuple, int]:
    ids = torch.tensor([prompt] * SAMPLES)
    result = generate(
        model,
        ids,
        mtp_token_id=SAMPLING_VOCAB,
        max_new_tokens=SAMPLED_TOKENS,
        temperature=1.0,
        generator=torch.Generator().manual_seed(seed),
        **settings,
    )
    counts: dict[tuple, int] = {}
    for sequence in result.sequences:
        counts[tuple(sequence)] = counts.get(tuple(sequence), 0) + 1
    return counts, result


def _goodness_of_fit(counts, probabilities) -> float:
    outcomes = sorted(probabilities)
    observed = [counts.get(outcome, 0) for outcome in outcomes]
    expected = [probabilities[outcome] * SAMPLES for outcome in outcomes]
    return float(chisquare(observed, expected).pvalue)


CUTS = {
    "no cut": {},
    "top_k=4, top_p=0.7": {"top_k": 4, "top_p": 0.7},
    "proposals at 0.2": {"propose_threshold": 0.2},
    "one likeliest group": {"max_groups": 1},
}


@pytest.mark.parametrize(
    "mask_layout, cut",
    [(layout, "no cut") for layout in MASK_LAYOUTS]
    + [("linear", "top_k=4, top_p=0.7"), ("per_proposal", "top_k=4, top_p=0.7")]
    + [("linear", "proposals at 0.2"), ("ends", "proposals at 0.2"), ("per_proposal", "one likeliest group")],
)
def test_sampling_is_distributed_as_k1_sampling(mask_layout, cut):
    """Also with stock generate's top_k / top_p cuts (selfspec drafts and verifies with the cut distribution) and
    with confidence-sized proposals (how many to propose is read from the draft side only)."""
    model = _sampling_model()
    prompt = [1, 2, 3, 4]
    sampling = {key: value for key, value in CUTS[cut].items() if key in ("top_k", "top_p")}  # k=1's settings
    probabilities = _exact_sequence_probabilities(model, prompt, 1.0, **sampling)
    assert min(probabilities.values()) * SAMPLES > 5  # the chi-square approximation holds on every cell
    if sampling:  # each cut removes outcomes here: top_k 125 -> 64, then top_p 64 -> 27
        top_k_only = _exact_sequence_probabilities(model, prompt, 1.0, top_k=CUTS[cut]["top_k"])
        assert len(probabilities) < len(top_k_only) < SAMPLING_VOCAB**SAMPLED_TOKENS
    k1_counts, _ = _sampled_counts(model, prompt, seed=11, strategy="static", k=1, **sampling)
    ours_counts, result = _sampled_counts(
        model, prompt, seed=12, strategy="selfspec", k_max=3, mask_layout=mask_layout, **CUTS[cut]
    )
    assert set(k1_counts) <= set(probabilities) and set(ours_counts) <= set(probabilities)  # nothing cut is drawn
    # both paths ran: proposals kept and proposals refused
    verified = [v for row in result.verified_per_pass for v in row[1:]]
    assert 0 in verified and max(verified) >= 1
    assert _goodness_of_fit(k1_counts, probabilities) > 1e-3  # the reference itself is right
    assert _goodness_of_fit(ours_counts, probabilities) > 1e-3
    outcomes = sorted(probabilities)
    table = [[k1_counts.get(o, 0) for o in outcomes], [ours_counts.get(o, 0) for o in outcomes]]
    assert chi2_contingency(table).pvalue > 1e-3  # selfspec vs k=1 sampling, two samples


def test_sampling_test_fails_a_sampler_that_keeps_every_proposal(monkeypatch):
    """The statistical test can fail: keeping proposals without the min(1, p/q) test draws from the mask
    slots' distribution, not the model's."""
    model = _sampling_model()
    prompt = [1, 2, 3, 4]
    probabilities = _exact_sequence_probabilities(model, prompt, 1.0)

    def keep_all(ground, target, draft, generator):
        from mtp_ds.decoding.readout import draw

        return len(ground) - 1, draw(target[len(ground) - 1], generator)

    monkeypatch.setattr(selfspec, "accepted_sampled", keep_all)
    counts, _ = _sampled_counts(model, prompt, seed=12, strategy="selfspec", k_max=3)
    assert _goodness_of_fit(counts, probabilities) < 1e-6


# --- confidence-sized proposals (propose_threshold) and the `ends` layout -----------------------------------


PROPOSE_AT, SHARPEN = 0.3, 20.0  # the repetitive models with lm_head x 20: top-1 probabilities on both sides of 0.3


@pytest.mark.parametrize("arch", ["qwen3", "llama"])
@pytest.mark.parametrize("mask_layout", MASK_LAYOUTS)
def test_confidence_sized_proposals_equal_hf_greedy(arch, mask_layout):
    """Proposing only ConfAdapt's confident run changes what is verified, never what is kept: the batch equals
    HF greedy row for row (and each row alone)."""
    model, tokenizer, mask_tokens = _repetitive(arch)
    with torch.no_grad():
        model.lm_head.weight.mul_(SHARPEN)
    prompts = [_ids(tokenizer, text) for text in PROMPTS]
    ids, attention_mask = _left_pad(prompts)
    expected = [_hf_greedy(model, prompt, mask_tokens, 24) for prompt in prompts]
    proposed, changed = set(), False
    for k_max in (3, 6):
        settings = dict(mtp_token_id=mask_tokens, strategy="selfspec", k_max=k_max, max_new_tokens=24)
        every_slot = generate(model, ids, attention_mask=attention_mask, mask_layout=mask_layout, **settings)
        sized = generate(
            model, ids, attention_mask=attention_mask, mask_layout=mask_layout, propose_threshold=PROPOSE_AT, **settings
        )
        assert sized.sequences == expected == every_slot.sequences, k_max
        changed |= sized.verified_per_pass != every_slot.verified_per_pass  # the cut changed what was proposed
        alone = generate(
            model, torch.tensor([prompts[1]]), mask_layout=mask_layout, propose_threshold=PROPOSE_AT, **settings
        )
        assert alone.sequences[0] == expected[1] and alone.tokens_per_pass[0] == sized.tokens_per_pass[1]
        proposed |= {count for row in sized.verified_per_pass for count in row[1:-1]}
    assert changed and 0 in proposed and max(proposed) >= 2  # passes that verified none and several


def test_a_threshold_of_one_proposes_nothing_and_zero_proposes_every_slot():
    model, tokenizer, mask_tokens = _repetitive("llama")
    prompt = torch.tensor([_ids(tokenizer, PROMPTS[2])])
    settings = dict(mtp_token_id=mask_tokens, strategy="selfspec", k_max=4, max_new_tokens=20)
    never = generate(model, prompt, propose_threshold=1.0, **settings)
    assert never.tokens_per_pass[0] == [1] * 20 and never.verified_per_pass[0] == [0] * 20
    always = generate(model, prompt, propose_threshold=0.0, **settings)
    every = generate(model, prompt, **settings)
    assert (always.sequences, always.tokens_per_pass) == (every.sequences, every.tokens_per_pass)
    assert always.num_query_tokens == every.num_query_tokens


def test_proposal_count_is_confadapts_run_after_the_anchor():
    """The anchor's own token is kept anyway; the slots propose while the run from the anchor stays >= tau."""
    confidences = [0.95, 0.1, 0.99, 0.97, 0.5, 0.3]  # columns: anchor at 0; a group of 3 masks at columns 2..4
    assert selfspec.proposal_count(confidences, 0, 2, 3, 0.9) == 2  # anchor, 0.99, 0.97 confident; 0.5 not
    assert selfspec.proposal_count(confidences, 1, 2, 3, 0.9) == 0  # anchor 0.1 below tau: nothing proposed
    assert selfspec.proposal_count(confidences, 0, 2, 3, None) == 3  # no threshold: every slot
    assert selfspec.group_anchors("linear", 4) == [3]
    assert selfspec.group_anchors("ends", 4) == [0, 3] and selfspec.group_anchors("ends", 1) == [0]
    assert selfspec.group_anchors("per_proposal", 3) == [0, 1, 2]


@pytest.mark.parametrize("arch", ["qwen3", "llama"])
def test_likeliest_mask_groups_equal_hf_greedy_with_fewer_query_tokens(arch):
    """per_proposal with max_groups: groups only where the proposals' own confidences say verification most
    likely stops; the output is still HF greedy's, row for row and alone, with fewer query tokens."""
    model, tokenizer, mask_tokens = _repetitive(arch)
    prompts = [_ids(tokenizer, text) for text in PROMPTS]
    ids, attention_mask = _left_pad(prompts)
    expected = [_hf_greedy(model, prompt, mask_tokens, 24) for prompt in prompts]
    settings = dict(
        mtp_token_id=mask_tokens, strategy="selfspec", k_max=6, max_new_tokens=24, mask_layout="per_proposal"
    )
    every = generate(model, ids, attention_mask=attention_mask, **settings)
    for groups in (1, 2):
        likeliest = generate(model, ids, attention_mask=attention_mask, max_groups=groups, **settings)
        assert likeliest.sequences == expected, groups
        assert likeliest.num_query_tokens < every.num_query_tokens, groups
        alone = generate(model, torch.tensor([prompts[2]]), max_groups=groups, **settings)
        assert alone.sequences[0] == expected[2] and alone.tokens_per_pass[0] == likeliest.tokens_per_pass[2]


def test_the_likeliest_stops_are_read_from_the_proposals_confidences():
    # proposals 1..3 with confidences 0.9, 0.2, 0.8: P(stop at 0) = 0.1, at 1 = 0.9 * 0.8 = 0.72, at 2 = 0.9 * 0.2 *
    # 0.2 = 0.036, at 3 (all accepted) = 0.9 * 0.2 * 0.8 = 0.144
    assert selfspec.group_anchors("per_proposal", 4, [0.9, 0.2, 0.8], max_groups=1) == [1]
    assert selfspec.group_anchors("per_proposal", 4, [0.9, 0.2, 0.8], max_groups=2) == [1, 3]
    assert selfspec.group_anchors("per_proposal", 4, [0.9, 0.2, 0.8], max_groups=3) == [0, 1, 3]
    assert selfspec.group_anchors("per_proposal", 4, [0.9, 0.2, 0.8], max_groups=None) == [0, 1, 2, 3]
    assert selfspec.group_anchors("per_proposal", 2, [0.5], max_groups=4) == [0, 1]
