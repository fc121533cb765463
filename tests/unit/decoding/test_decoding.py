"""Exactness of MTP decoding (Static k, ConfAdapt) on the ragged KV cache, its errors, and `mtp-ds generate`.

The contract: with the cache, batched, decoding gives exactly the tokens of a no-cache reference that runs a
plain causal forward over prompt + accepted + [MTP]*(k-1) each pass; k=1 is Hugging Face greedy.
"""

import re
import warnings

import pytest
import torch
from helpers import DEVICES, bias_lm_head, make_mtp_model
from references import paper_rule

from mtp_ds.decoding import generate, ragged_cache
from mtp_ds.decoding.cli import main as generate_main
from mtp_ds.models.tiny import tiny_model, word_tokenizer

PROMPTS = [
    "how many apples does the boy have ?",
    "three pens",
    "each box has five coins and two books . how many coins are there in total",
]
SHARPEN = 30.0  # lm_head scale that spreads a random model's confidences across (0, 1) so ConfAdapt varies


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text)["input_ids"]


def _sharpened(arch: str, **kwargs):
    model, tokenizer, mask_tokens = make_mtp_model(arch, **kwargs)
    with torch.no_grad():
        model.lm_head.weight.mul_(SHARPEN)
    return model, tokenizer, mask_tokens


def _left_pad(rows: list[list[int]], pad_id: int = 0):
    width = max(len(row) for row in rows)
    ids = torch.tensor([[pad_id] * (width - len(row)) + row for row in rows])
    mask = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in rows])
    return ids, mask


UNSURE_FIRST = []  # ConfAdapt passes seen by the reference whose slot 0 is below tau but slot 1 is not


def reference_decode(
    model, prompt, mask_tokens, *, strategy="static", k=1, k_max=16, threshold=0.9, max_new_tokens=32, stop_ids=()
):
    """No cache: each pass is a plain causal forward over prompt + accepted + masks. ConfAdapt keeps the
    paper's run (tests/test_acceptance.py's reference): from slot 0 while confidence >= tau, at least one."""
    k_run = k if strategy == "static" else k_max
    generated, per_pass = [], []
    while len(generated) < max_new_tokens:
        masks = [mask_tokens.for_slot(j) for j in range(1, k_run)]
        with torch.no_grad():
            logits = model(torch.tensor([prompt + generated + masks], device=model.device)).logits[0, -k_run:].float()
        logits[:, list(mask_tokens.ids)] = float("-inf")
        confidences, tokens = torch.softmax(logits, dim=-1).max(dim=-1)
        count = k_run
        if strategy == "confadapt":
            count = paper_rule(confidences.tolist(), threshold)
            if k_run > 1 and confidences[0] < threshold <= confidences[1]:
                UNSURE_FIRST.append(confidences[:2].tolist())
        block = tokens[:count].tolist()
        stopped = False
        for i, token in enumerate(block):
            if token in stop_ids:
                block, stopped = block[: i + 1], True
                break
        block = block[: max_new_tokens - len(generated)]
        generated += block
        per_pass.append(len(block))
        if stopped:
            break
    return generated, per_pass


def _assert_matches_reference(model, tokenizer, mask_tokens, prompt_text, **kwargs):
    prompt = _ids(tokenizer, prompt_text)
    result = generate(model, torch.tensor([prompt], device=model.device), mtp_token_id=mask_tokens, **kwargs)
    reference_kwargs = {key: value for key, value in kwargs.items() if key != "eos_token_id"}
    eos = kwargs.get("eos_token_id")
    stop_ids = () if eos is None else ([eos] if isinstance(eos, int) else eos)
    expected, expected_passes = reference_decode(model, prompt, mask_tokens, stop_ids=stop_ids, **reference_kwargs)
    assert result.sequences[0] == expected, kwargs
    assert result.tokens_per_pass[0] == expected_passes, kwargs
    return result


def test_decoding_passes_the_cache_under_the_current_name():
    """transformers renamed the forward's `past_key_values` to `cache` (the old name warns that it goes away in
    5.40); the decoder uses whichever name the installed version's forward takes, so it never warns."""
    from mtp_ds.decoding.kv_cache import cache_argument

    model, tokenizer, mask_tokens = make_mtp_model("llama")
    import inspect

    assert cache_argument(model) in inspect.signature(model.forward).parameters
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = generate(
            model,
            torch.tensor([_ids(tokenizer, PROMPTS[0])]),
            mtp_token_id=mask_tokens,
            strategy="static",
            k=3,
            max_new_tokens=6,
        )
    assert result.num_new_tokens == 6
    assert not [w for w in caught if "past_key_values" in str(w.message)], [str(w.message) for w in caught]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("arch", ["qwen3", "llama"])
def test_k1_equals_hf_greedy(arch, device):
    model, tokenizer, mask_tokens = make_mtp_model(arch)
    model.to(device)
    for text in PROMPTS[:2]:
        prompt = torch.tensor([_ids(tokenizer, text)], device=device)
        ours = generate(model, prompt, mtp_token_id=mask_tokens, k=1, max_new_tokens=24)
        with torch.no_grad():
            hf = model.generate(
                prompt,
                attention_mask=torch.ones_like(prompt),
                do_sample=False,
                max_new_tokens=24,
                suppress_tokens=list(mask_tokens.never_emitted),
                eos_token_id=None,
                pad_token_id=0,
            )
        assert ours.sequences[0] == hf[0, prompt.shape[1] :].tolist()
        assert ours.tokens_per_pass[0] == [1] * 24 and ours.acceleration_factor == 1.0


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("arch", ["qwen3", "llama"])
def test_static_k_equals_no_cache_reference(arch, device):
    model, tokenizer, mask_tokens = make_mtp_model(arch)
    model.to(device)
    for k in (2, 3, 4, 5):
        result = _assert_matches_reference(
            model, tokenizer, mask_tokens, PROMPTS[0], strategy="static", k=k, max_new_tokens=20
        )
        assert result.num_forward_passes == -(-20 // k)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("arch", ["qwen3", "llama"])
def test_confadapt_equals_no_cache_reference(arch, device):
    model, tokenizer, mask_tokens = _sharpened(arch)
    model.to(device)
    factors = []
    for threshold in (0.0, 0.4, 0.7, 1.0):
        result = _assert_matches_reference(
            model,
            tokenizer,
            mask_tokens,
            PROMPTS[0],
            strategy="confadapt",
            k_max=6,
            threshold=threshold,
            max_new_tokens=18,
        )
        factors.append(result.acceleration_factor)
    assert factors[0] == 6.0 and factors[-1] == 1.0  # tau=0 accepts all k_max, tau=1 (almost) only one
    assert any(1.0 < factor < 6.0 for factor in factors), factors
    # the case where the paper's rule differs from "always keep slot 0, run from slot 1" did occur
    assert UNSURE_FIRST, "no pass had an unsure slot 0 followed by a confident slot 1"


@pytest.mark.parametrize("arch", ["qwen3", "llama"])
@pytest.mark.parametrize("strategy", ["static", "confadapt"])
def test_batch_equals_rows_alone(arch, strategy):
    model, tokenizer, mask_tokens = _sharpened(arch)
    prompts = [_ids(tokenizer, text) for text in PROMPTS]
    ids, attention_mask = _left_pad(prompts)
    settings = dict(mtp_token_id=mask_tokens, strategy=strategy, k=3, k_max=6, threshold=0.5, max_new_tokens=30)
    batched = generate(model, ids, attention_mask=attention_mask, **settings)
    for row, prompt in enumerate(prompts):
        alone = generate(model, torch.tensor([prompt]), **settings)
        assert batched.sequences[row] == alone.sequences[0]
        assert batched.tokens_per_pass[row] == alone.tokens_per_pass[0]
        expected, _ = reference_decode(
            model, prompt, mask_tokens, **{k: v for k, v in settings.items() if k != "mtp_token_id"}
        )
        assert batched.sequences[row] == expected
    assert batched.num_forward_passes == max(len(counts) for counts in batched.tokens_per_pass)
    if strategy == "confadapt":  # rows really advanced by different amounts in one forward
        passes = min(len(counts) for counts in batched.tokens_per_pass) - 1
        assert any(len({counts[p] for counts in batched.tokens_per_pass}) > 1 for p in range(passes))


def test_batch_rows_that_stop_early_leave_the_batch():
    model, tokenizer, mask_tokens = _sharpened("llama")
    prompts = [_ids(tokenizer, text) for text in PROMPTS]
    ids, attention_mask = _left_pad(prompts)
    settings = dict(mtp_token_id=mask_tokens, strategy="confadapt", k_max=6, threshold=0.5, max_new_tokens=30)
    free = generate(model, ids, attention_mask=attention_mask, **settings).sequences
    stop = next(token for i, token in enumerate(free[1]) if i >= 4 and token not in free[1][:i])
    batched = generate(model, ids, attention_mask=attention_mask, eos_token_id=stop, **settings)
    for row, prompt in enumerate(prompts):
        alone = generate(model, torch.tensor([prompt]), eos_token_id=stop, **settings)
        assert batched.sequences[row] == alone.sequences[0]
        assert batched.tokens_per_pass[row] == alone.tokens_per_pass[0]
    assert batched.stop_reasons[1] == "stop_token"
    assert len({len(counts) for counts in batched.tokens_per_pass}) > 1  # rows finished in different passes


def test_batch_with_holes_survives_compaction(monkeypatch):
    model, tokenizer, mask_tokens = _sharpened("qwen3")
    prompts = [_ids(tokenizer, text) for text in PROMPTS]
    ids, attention_mask = _left_pad(prompts)
    settings = dict(mtp_token_id=mask_tokens, strategy="confadapt", k_max=6, threshold=0.5, max_new_tokens=30)
    plain = generate(model, ids, attention_mask=attention_mask, **settings)
    monkeypatch.setattr(ragged_cache, "COMPACT_MIN_HOLES", 1)  # compact after every pass
    compacted = generate(model, ids, attention_mask=attention_mask, **settings)
    assert compacted.sequences == plain.sequences


@pytest.mark.parametrize("arch", ["qwen3", "llama"])
def test_stop_token_inside_block_trims_and_ends(arch):
    model, tokenizer, mask_tokens = make_mtp_model(arch)
    k = 4
    prompt = torch.tensor([_ids(tokenizer, PROMPTS[0])])
    free = generate(model, prompt, mtp_token_id=mask_tokens, k=k, max_new_tokens=32).sequences[0]
    # first occurrence of a token, after the first pass and not at a block end: a mid-block stop
    cut = next(i for i, token in enumerate(free) if i >= k and token not in free[:i] and i % k != k - 1)
    stop = free[cut]
    for eos in (stop, [stop, 10_000]):
        result = _assert_matches_reference(
            model, tokenizer, mask_tokens, PROMPTS[0], strategy="static", k=k, max_new_tokens=32, eos_token_id=eos
        )
        assert result.sequences[0] == free[: cut + 1]
        assert result.tokens_per_pass[0][-1] == cut % k + 1
        assert result.stop_reasons == ["stop_token"]


@pytest.mark.parametrize("strategy", ["static", "confadapt"])
def test_max_new_tokens_cuts_inside_block(strategy):
    model, tokenizer, mask_tokens = _sharpened("llama")
    prompt = torch.tensor([_ids(tokenizer, PROMPTS[1])])
    settings = dict(mtp_token_id=mask_tokens, strategy=strategy, k=4, k_max=6, threshold=0.0)
    long = generate(model, prompt, max_new_tokens=30, **settings)
    short = generate(model, prompt, max_new_tokens=10, **settings)
    assert short.sequences[0] == long.sequences[0][:10]
    assert short.tokens_per_pass[0] == ([4, 4, 2] if strategy == "static" else [6, 4])
    assert short.stop_reasons == ["length"]


@pytest.mark.parametrize("arch", ["qwen3", "llama"])
def test_distinct_slot_tokens(arch):
    model, tokenizer, mask_tokens = make_mtp_model(arch, distinct_slots=True, k_max=6)
    assert mask_tokens.distinct
    with torch.no_grad():
        model.lm_head.weight.mul_(SHARPEN)
    _assert_matches_reference(model, tokenizer, mask_tokens, PROMPTS[0], strategy="static", k=4, max_new_tokens=16)
    _assert_matches_reference(
        model, tokenizer, mask_tokens, PROMPTS[0], strategy="confadapt", k_max=6, threshold=0.5, max_new_tokens=16
    )
    prompt = torch.tensor([_ids(tokenizer, PROMPTS[0])])
    from_config = generate(model, prompt, strategy="static", k=4, max_new_tokens=16)  # ids read from config
    explicit = generate(model, prompt, mtp_token_id=list(mask_tokens.ids), strategy="static", k=4, max_new_tokens=16)
    assert from_config.sequences == explicit.sequences
    with pytest.raises(ValueError, match="distinct mask tokens"):
        generate(model, prompt, strategy="confadapt", k_max=8, max_new_tokens=4)


@pytest.mark.parametrize("distinct_slots", [False, True])
def test_mask_token_never_emitted(distinct_slots):
    model, tokenizer, mask_tokens = make_mtp_model("qwen3", distinct_slots=distinct_slots, k_max=6)
    bias_lm_head(model, mask_tokens.ids, 1e4)  # raw argmax would always be a mask token
    prompt = torch.tensor([_ids(tokenizer, PROMPTS[0])])
    with torch.no_grad():
        raw = model(torch.cat([prompt, torch.tensor([[mask_tokens.ids[0]] * 3])], dim=1)).logits.argmax(-1)
    assert set(raw[0, -4:].tolist()) <= set(mask_tokens.ids)
    for settings in (dict(k=1), dict(k=3), dict(strategy="confadapt", k_max=6, threshold=0.0)):
        result = generate(model, prompt, mtp_token_id=mask_tokens, max_new_tokens=12, **settings)
        assert len(result.sequences[0]) == 12
        assert not set(result.sequences[0]) & set(mask_tokens.ids)


def test_stop_strings_trim_at_completing_token():
    model, tokenizer, mask_tokens = make_mtp_model("llama")
    prompt = torch.tensor([_ids(tokenizer, PROMPTS[0])])
    free = generate(model, prompt, mtp_token_id=mask_tokens, k=3, max_new_tokens=24).sequences[0]
    cut = next(i for i, token in enumerate(free) if i >= 3 and token not in free[:i])
    word = tokenizer.decode([free[cut]])
    result = generate(
        model, prompt, mtp_token_id=mask_tokens, k=3, max_new_tokens=24, tokenizer=tokenizer, stop_strings=[word]
    )
    text = tokenizer.decode(result.sequences[0])
    assert text.endswith(word) and word not in tokenizer.decode(result.sequences[0][:-1])
    assert result.stop_reasons == ["stop_string"]


def test_temperature_samples_single_token_passes_only():
    model, tokenizer, mask_tokens = make_mtp_model("qwen3")
    prompt = torch.tensor([_ids(tokenizer, PROMPTS[0])])

    def run(seed, **settings):
        return generate(
            model,
            prompt,
            mtp_token_id=mask_tokens,
            max_new_tokens=16,
            temperature=1.0,
            generator=torch.Generator().manual_seed(seed),
            **settings,
        ).sequences[0]

    assert run(1) == run(1)
    assert run(1) != run(2) or run(1) != run(3)
    greedy = generate(model, prompt, mtp_token_id=mask_tokens, k=3, max_new_tokens=16).sequences[0]
    assert run(1, k=3) == greedy  # passes of 3 tokens stay greedy


def test_bf16_left_padded_batch_equals_each_row_decoded_alone():
    """In bf16 the 4D masks are built in the model's dtype; a ragged left-padded batch still gives every row
    exactly the tokens and passes it gets alone (sharpened logits keep bf16 rounding away from the argmax)."""
    model, tokenizer, mask_tokens = _sharpened("llama")
    model.to(torch.bfloat16)
    rows = [_ids(tokenizer, text) for text in PROMPTS]
    ids, attention_mask = _left_pad(rows)
    for settings in ({"strategy": "confadapt", "k_max": 4, "threshold": 0.5}, {"strategy": "static", "k": 3}):
        result = generate(
            model, ids, attention_mask=attention_mask, mtp_token_id=mask_tokens, max_new_tokens=10, **settings
        )
        for index, row in enumerate(rows):
            alone = generate(model, torch.tensor([row]), mtp_token_id=mask_tokens, max_new_tokens=10, **settings)
            assert result.sequences[index] == alone.sequences[0], settings
            assert result.tokens_per_pass[index] == alone.tokens_per_pass[0], settings
        assert not {token for row in result.sequences for token in row} & set(mask_tokens.ids)


def test_model_without_mask_token_names_mtp_token_id():
    model = tiny_model("llama", vocab_size=len(word_tokenizer()))
    with pytest.raises(ValueError, match="mtp_token_id") as error:
        generate(model, torch.tensor([[1, 5, 6]]), k=2)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(strategy="beam"), "strategy"),
        (dict(k=0), "k must"),
        (dict(k=5, k_max=4), "k must"),
        (dict(threshold=1.5), "threshold"),
        (dict(max_new_tokens=-1), "max_new_tokens"),
        (dict(stop_strings=["x"]), "tokenizer"),
        (dict(input_ids=torch.tensor([1, 5, 6])), "input_ids"),
        (dict(attention_mask=torch.tensor([[1, 1, 0]])), "LEFT-padded"),
    ],
)
def test_bad_arguments_give_one_line_value_errors(kwargs, match):
    model, _, mask_tokens = make_mtp_model("qwen3")
    input_ids = kwargs.pop("input_ids", torch.tensor([[1, 5, 6]]))
    with pytest.raises(ValueError, match=match) as error:
        generate(model, input_ids, mtp_token_id=mask_tokens, **kwargs)
    assert "\n" not in str(error.value)


def test_generate_cli_prints_coloured_chunks_and_acceleration(tmp_path, capsys):
    model, tokenizer, _ = _sharpened("qwen3")
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    code = generate_main(
        [
            str(tmp_path / "model"),
            "--prompt",
            PROMPTS[0],
            "--strategy",
            "confadapt",
            "--k-max",
            "6",
            "--threshold",
            "0.5",
            "--max-new-tokens",
            "12",
            "--color",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "acceleration factor" in out and "tokens/s" in out and "\033[36m" in out
    code = generate_main(
        [
            str(tmp_path / "model"),
            "--prompt",
            "three pens",
            "--strategy",
            "static",
            "--k",
            "2",
            "--max-new-tokens",
            "6",
            "--no-color",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0 and "acceleration factor 2.00" in out and "\033[" not in out


def test_generate_cli_bad_model_dir(tmp_path, capsys):
    missing = tmp_path / "no_such_model"
    assert generate_main([str(missing), "--prompt", "hi"]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and err.count("\n") == 1


def test_generate_cli_selfspec_marks_verified_proposals_and_equals_k1(tmp_path, capsys, monkeypatch):
    """`--strategy selfspec`: verified proposals in the chunk colour, the pass's own token underlined, a legend;
    --no-color is plain; the tokens (and the text) are exactly those of `--strategy static --k 1`."""
    import mtp_ds.decoding.decoder as decoder_module
    from mtp_ds.decoding.cli import SELFSPEC_LEGEND, UNDERLINE

    model, tokenizer, _ = _sharpened("qwen3")
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    results = []
    real_generate = decoder_module.generate

    def recording_generate(*args, **kwargs):
        results.append(real_generate(*args, **kwargs))
        return results[-1]

    monkeypatch.setattr(decoder_module, "generate", recording_generate)
    common = [str(tmp_path / "model"), "--prompt", "three pens", "--max-new-tokens", "16"]

    def text_of(out: str) -> str:  # the answer without the legend and the superscript counts
        answer = out.rsplit("\n\n", 1)[0].replace("\n" + SELFSPEC_LEGEND, "")
        return answer.translate(str.maketrans("", "", "⁰¹²³⁴⁵⁶⁷⁸⁹"))

    assert generate_main([*common, "--strategy", "selfspec", "--k-max", "4", "--color"]) == 0
    coloured = capsys.readouterr().out
    spec = results[-1]
    assert sum(spec.verified_per_pass[0]) > 0  # this prompt has passes that keep verified proposals
    assert SELFSPEC_LEGEND in coloured and UNDERLINE in coloured
    # a chunk with verified proposals: coloured text, then the pass's own token coloured and underlined
    assert re.search(r"\033\[3\dm[^\033]+\033\[0m\033\[3\dm\033\[4m[^\033]+\033\[0m⁴", coloured)
    assert "(selfspec, k_max=4, linear; lossless: equals k=1 greedy decoding token for token)" in coloured
    assert f"{sum(spec.verified_per_pass[0])} of {spec.num_new_tokens} tokens were verified proposals" in coloured

    assert generate_main([*common, "--strategy", "selfspec", "--k-max", "4", "--no-color"]) == 0
    plain = capsys.readouterr().out
    assert "\033[" not in plain and SELFSPEC_LEGEND not in plain and "lossless" in plain
    assert results[-1].sequences == spec.sequences and results[-1].tokens_per_pass == spec.tokens_per_pass

    assert (
        generate_main(
            [*common, "--strategy", "selfspec", "--k-max", "4", "--mask-layout", "per_proposal", "--no-color"]
        )
        == 0
    )
    per_proposal = capsys.readouterr().out
    assert "(selfspec, k_max=4, per_proposal; lossless" in per_proposal and results[-1].sequences == spec.sequences

    assert generate_main([*common, "--strategy", "static", "--k", "1", "--no-color"]) == 0
    k1 = capsys.readouterr().out
    assert results[-1].sequences == spec.sequences  # lossless: the k=1 tokens, token for token
    assert results[-1].num_forward_passes > spec.num_forward_passes
    assert text_of(plain) == text_of(k1) == text_of(re.sub(r"\033\[[\d;]*m", "", coloured))

    assert generate_main([*common, "--strategy", "static", "--mask-layout", "linear"]) == 2
    err = capsys.readouterr().err
    assert "--mask-layout applies to --strategy selfspec only" in err and err.count("\n") == 1
