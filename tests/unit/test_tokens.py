"""The <MTP> token: embedding init statistics, config bookkeeping, idempotence and conflicts."""

import copy

import pytest
import torch
from helpers import CUDA, make_mtp_model

from mtp_ds.models.tiny import tiny_model, word_tokenizer
from mtp_ds.tokens import (
    SHARED_TOKEN,
    add_mtp_tokens,
    mask_tokens_from_config,
    mask_tokens_from_tokenizer,
    slot_token_texts,
)


@pytest.mark.parametrize("tied", [False, True])
def test_new_rows_follow_existing_statistics(arch, tied):
    tokenizer = word_tokenizer()
    model = tiny_model(arch, vocab_size=len(tokenizer), hidden_size=256, num_heads=4, tie_word_embeddings=tied)
    before_in = model.get_input_embeddings().weight.detach().clone()
    before_out = model.get_output_embeddings().weight.detach().clone()
    tokens = add_mtp_tokens(tokenizer, model, distinct_slots=True, k_max=64, seed=3)
    new_in = model.get_input_embeddings().weight[list(tokens.ids)].detach()
    # unchanged old rows, new rows with the old rows' per-dimension mean and variance (64 draws, loose bounds)
    assert torch.equal(model.get_input_embeddings().weight[: before_in.shape[0]], before_in)
    assert (new_in.mean(0) - before_in.mean(0)).abs().mean() < 0.5 * before_in.std(0).mean()
    assert 0.7 < float(new_in.std(0).mean() / before_in.std(0).mean()) < 1.3
    out_weight = model.get_output_embeddings().weight
    assert (out_weight is model.get_input_embeddings().weight) == tied
    if not tied:
        assert torch.equal(out_weight[: before_out.shape[0]], before_out)
        assert not torch.equal(out_weight[list(tokens.ids)], new_in)


def test_seeded_and_recorded_in_config(tmp_path):
    model_a, tokenizer_a, tokens_a = make_mtp_model("qwen3")
    model_b, _, tokens_b = make_mtp_model("qwen3")
    assert tokens_a == tokens_b and tokens_a.ids == (len(tokenizer_a) - 1,)
    row = list(tokens_a.ids)
    assert torch.equal(model_a.get_input_embeddings().weight[row], model_b.get_input_embeddings().weight[row])
    assert model_a.config.mtp_token_id == tokens_a.ids[0]
    model_a.save_pretrained(tmp_path)
    tokenizer_a.save_pretrained(tmp_path)
    from transformers import AutoConfig, AutoTokenizer

    assert mask_tokens_from_config(AutoConfig.from_pretrained(tmp_path)) == tokens_a
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert mask_tokens_from_tokenizer(reloaded) == tokens_a
    assert reloaded.convert_ids_to_tokens(tokens_a.ids[0]) == SHARED_TOKEN
    # never split, and skipped when decoding
    ids = reloaded("three <MTP> apples", add_special_tokens=False)["input_ids"]
    assert tokens_a.ids[0] in ids and reloaded.decode(ids, skip_special_tokens=True).split() == ["three", "apples"]


def test_distinct_slot_tokens():
    model, tokenizer, tokens = make_mtp_model("llama", distinct_slots=True, k_max=8)
    assert tokens.distinct and len(tokens.ids) == 8
    assert [tokenizer.convert_ids_to_tokens(i) for i in tokens.ids] == slot_token_texts(8)
    assert model.config.mtp_token_ids == list(tokens.ids)
    assert tokens.for_slot(1) == tokens.ids[0] and tokens.for_slot(7) == tokens.ids[6]


def test_idempotent_and_conflicts():
    model, tokenizer, tokens = make_mtp_model("qwen3")
    rows = model.get_input_embeddings().weight.shape[0]
    assert add_mtp_tokens(tokenizer, model) == tokens
    assert model.get_input_embeddings().weight.shape[0] == rows
    # the text exists with another meaning: refuse
    tokenizer = word_tokenizer(extra_words=["<MTP>"])
    plain = tiny_model("qwen3", vocab_size=len(tokenizer))
    with pytest.raises(ValueError, match=r"'<MTP>' already exists in the tokenizer as id \d+ with another meaning"):
        add_mtp_tokens(tokenizer, plain)


def test_padded_embedding_is_reused_not_shrunk():
    """Qwen3 checkpoints have more embedding rows than tokenizer entries: no resize, no shrink."""
    tokenizer = word_tokenizer()
    model = tiny_model("qwen3", vocab_size=len(tokenizer) + 20)
    tokens = add_mtp_tokens(tokenizer, model)
    assert model.get_input_embeddings().weight.shape[0] == len(tokenizer) - 1 + 20
    assert tokens.ids[0] == len(tokenizer) - 1
    assert model.config.mtp_base_vocab_size == len(tokenizer) - 1


def test_missing_mask_token_errors():
    with pytest.raises(ValueError, match="tokenizer has no mask token '<MTP>'"):
        mask_tokens_from_tokenizer(word_tokenizer())
    with pytest.raises(ValueError, match="model config has no mtp_token_id"):
        mask_tokens_from_config(tiny_model("llama", vocab_size=50).config)


@pytest.mark.parametrize("device", ["meta", CUDA])
def test_rows_are_drawn_where_the_weights_live(device):
    """The seeded noise comes from a CPU generator and must meet the weight on its own device (a GPU in real
    runs; the meta device stands in for one on CPU machines: before the fix both raised a device mismatch),
    and gives the same rows as on CPU."""
    tokenizer = word_tokenizer()
    model = tiny_model("llama", vocab_size=len(tokenizer)).to(device)
    tokens = add_mtp_tokens(tokenizer, model, seed=1)
    assert model.get_input_embeddings().weight.device.type == device
    assert model.config.mtp_token_id == tokens.ids[0] == len(tokenizer) - 1
    if device != "meta":
        on_cpu = tiny_model("llama", vocab_size=len(word_tokenizer()))
        add_mtp_tokens(word_tokenizer(), on_cpu, seed=1)
        torch.testing.assert_close(
            model.get_input_embeddings().weight[tokens.ids[0]].cpu(),
            on_cpu.get_input_embeddings().weight[tokens.ids[0]],
        )


def test_partitioned_weights_without_gather_are_refused():
    tokenizer = word_tokenizer()
    model = tiny_model("llama", vocab_size=len(tokenizer))
    model.get_input_embeddings().weight.ds_id = 0  # what ZeRO-3 partitioning leaves on a parameter
    with pytest.raises(ValueError, match=r"ZeRO-3 partitioned: pass gather= \(mtp_ds.models.student"):
        add_mtp_tokens(tokenizer, model)


@pytest.mark.parametrize("tied", [False, True])
def test_a_resized_vocabulary_is_padded_to_128_rows_recorded_and_zero(tied, tmp_path):
    """A model without spare rows (Llama: 128256 + mask) grows to a multiple of 128 (the authors' 128384), not to
    max id + 1; the padding rows are zero and recorded, so every later stage knows no token owns them."""
    tokenizer = word_tokenizer()
    model = tiny_model("llama", vocab_size=len(tokenizer), tie_word_embeddings=tied)
    tokens = add_mtp_tokens(tokenizer, model, seed=1)
    rows = model.get_input_embeddings().weight.shape[0]
    assert rows == 128 == model.config.vocab_size == model.get_output_embeddings().weight.shape[0]
    assert tokens.padding == (tokens.ids[0] + 1, rows) and model.config.mtp_padding_rows == [tokens.ids[0] + 1, rows]
    assert tokens.never_emitted == (*tokens.ids, *range(tokens.ids[0] + 1, rows))
    for weight in (model.get_input_embeddings().weight, model.get_output_embeddings().weight):
        assert not weight[tokens.padding[0] :].any()
    model.config.save_pretrained(tmp_path)
    from transformers import AutoConfig

    assert mask_tokens_from_config(AutoConfig.from_pretrained(tmp_path)).never_emitted == tokens.never_emitted
    assert add_mtp_tokens(tokenizer, model).never_emitted == tokens.never_emitted  # idempotent, padding included


def test_padding_rows_are_never_emitted_nor_probability_mass():
    """Padding rows biased to win every argmax: no strategy emits one, and the objective gives them no mass (its
    loss is the same whatever their weights)."""
    from helpers import bias_lm_head

    from mtp_ds.batching import collate
    from mtp_ds.decoding import generate
    from mtp_ds.layout import pack
    from mtp_ds.models.teacher import LocalTeacher
    from mtp_ds.objective import ObjectiveConfig, mtp_objective

    model, tokenizer, tokens = make_mtp_model("llama")
    padding = list(range(*tokens.padding))
    teacher = tiny_model("llama", vocab_size=tokens.ids[0], seed=1)  # the base model: no mask, no padding rows
    token_ids = torch.randint(4, tokens.ids[0], (2, 48), generator=torch.Generator().manual_seed(0))
    batch = collate([pack(row, k=4, offset=3, mtp_token_id=tokens, k_max=8) for row in token_ids], pad_token_id=0)
    losses = []
    for bias in (0.0, 1e4):
        biased = copy.deepcopy(model)
        bias_lm_head(biased, padding, bias)
        out = mtp_objective(
            biased, LocalTeacher(teacher), batch, ObjectiveConfig(), mask_token_ids=tokens.never_emitted
        )
        losses.append(float(out.loss.detach()))
    assert losses[0] == losses[1]
    bias_lm_head(model, padding, 1e4)  # raw argmax would always be a padding row
    prompt = torch.tensor([tokenizer("one two three", add_special_tokens=False)["input_ids"]])
    for settings in ({"k": 1}, {"k": 3}, {"strategy": "confadapt", "threshold": 0.9, "k_max": 4},
                     {"strategy": "selfspec", "k_max": 4}, {"k": 1, "temperature": 1.0}):  # fmt: skip
        result = generate(model, prompt, max_new_tokens=8, **settings)
        assert len(result.sequences[0]) == 8 and not set(result.sequences[0]) & set(tokens.never_emitted), settings


def test_no_padding_when_asked():
    """`model.pad_vocab_to_multiple_of: 1` (the demo): the resize stops at max id + 1, as before padding."""
    tokenizer = word_tokenizer()
    model = tiny_model("llama", vocab_size=len(tokenizer))
    tokens = add_mtp_tokens(tokenizer, model, pad_to_multiple_of=1)
    assert model.get_input_embeddings().weight.shape[0] == tokens.ids[0] + 1 and tokens.padding is None
    assert tokens.never_emitted == tokens.ids and not hasattr(model.config, "mtp_padding_rows")


# --- a checkpoint whose config records no mask token (the paper authors' release) ---------------------------------


def _authors_like(extra_rows: int = 0):
    """(config, tokenizer) of a model whose tokenizer holds the authors' mask text and whose config names no id."""
    from tokenizers import AddedToken

    from mtp_ds.models.tiny import tiny_model_config
    from mtp_ds.tokens import AUTHORS_MASK_TOKEN

    tokenizer = word_tokenizer()
    tokenizer.add_tokens(["<|a|>", "<|b|>"], special_tokens=True)
    tokenizer.add_special_tokens(
        {"extra_special_tokens": [AddedToken(AUTHORS_MASK_TOKEN, special=True, normalized=False)]},
        replace_extra_special_tokens=False,
    )
    return tiny_model_config("llama", vocab_size=len(tokenizer) + extra_rows), tokenizer


def test_adopt_finds_the_authors_mask_token_and_records_it_with_the_padding_rows():
    from mtp_ds.tokens import AUTHORS_MASK_TOKEN, adopt_mask_tokens

    config, tokenizer = _authors_like(extra_rows=20)
    mask_id = tokenizer.convert_tokens_to_ids(AUTHORS_MASK_TOKEN)
    assert mask_id == len(tokenizer) - 1 and mask_id != len(word_tokenizer())
    adopted = adopt_mask_tokens(config, tokenizer)
    assert adopted.ids == (mask_id,) and adopted.padding == (len(tokenizer), len(tokenizer) + 20)
    assert config.mtp_token_id == mask_id and config.mtp_padding_rows == [len(tokenizer), len(tokenizer) + 20]
    assert mask_tokens_from_config(config).never_emitted == (mask_id, *range(len(tokenizer), len(tokenizer) + 20))
    assert adopt_mask_tokens(config, tokenizer, mask_id) == adopted  # now recorded: the same, read back


def test_adopt_takes_a_given_id_and_refuses_one_out_of_range_or_disagreeing():
    from mtp_ds.tokens import adopt_mask_tokens

    config, tokenizer = _authors_like()
    adopted = adopt_mask_tokens(config, tokenizer, 7)
    assert adopted.ids == (7,) and adopted.padding is None and config.mtp_token_id == 7
    assert not hasattr(config, "mtp_padding_rows")
    with pytest.raises(ValueError, match=r"^mtp_token_id=8 disagrees with the checkpoint config's mtp_token_id=7; "):
        adopt_mask_tokens(config, tokenizer, 8)
    config, tokenizer = _authors_like()
    rows = config.vocab_size
    with pytest.raises(ValueError) as error:
        adopt_mask_tokens(config, tokenizer, rows)
    assert str(error.value) == (
        f"mtp_token_id={rows} is out of range: the model has {rows} vocabulary rows (ids 0..{rows - 1})"
    )
    assert not hasattr(config, "mtp_token_id")  # nothing recorded by a refusal


def test_adopt_prefers_mtp_and_leaves_a_plain_model_alone():
    from mtp_ds.tokens import adopt_mask_tokens

    model, tokenizer, tokens = make_mtp_model("llama")
    config = copy.deepcopy(model.config)
    del config.mtp_token_id  # an export whose config lost the key: <MTP> is found in the tokenizer
    assert adopt_mask_tokens(config, tokenizer).ids == tokens.ids
    plain_tokenizer = word_tokenizer()
    plain = tiny_model("llama", vocab_size=len(plain_tokenizer) + 5).config
    assert adopt_mask_tokens(plain, plain_tokenizer) is None
    assert not hasattr(plain, "mtp_token_id") and not hasattr(plain, "mtp_padding_rows")
