"""Data layer: sources, seed-question split, formatting, cached tokenisation, cut/pad/EOS, sampler, rank slices."""

import json
import random
from pathlib import Path

import pytest
import torch
from helpers import REPO
from toy_math import generate_rows

import mtp_ds.data.tokenize as data_module
from mtp_ds.config import ConfigError, DataConfig, load_recipe
from mtp_ds.data import (
    EpochShuffleSampler,
    build_datasets,
    encode_example,
    rank_slice,
    step_micro_batches,
    validation_batches,
)
from mtp_ds.data.sources import group_hash, load_raw_dataset, split_indices
from mtp_ds.layout import pack
from mtp_ds.models.loading import load_tokenizer
from mtp_ds.models.tiny import word_tokenizer

TINY = REPO / "recipes" / "tiny_cpu.yaml"
FIXTURE = REPO / "tests" / "fixtures" / "toy_metamath.jsonl"
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ '### ' + m['role'] + ' : ' + m['content'] + ' ' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '### assistant : ' }}{% endif %}"
)


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def tiny_recipe(tmp_path, *overrides):
    return load_recipe(TINY, [f"data.cache_dir={tmp_path / 'cache'}", *overrides])


def test_fixture_is_small_and_in_vocabulary():
    assert FIXTURE.stat().st_size < 200_000
    tokenizer = word_tokenizer()
    rows = [json.loads(line) for line in FIXTURE.read_text().splitlines()]
    assert rows == generate_rows()  # the shipped file is what the seeded generator writes
    assert set(rows[0]) == {"query", "response", "original_question", "type"}
    for row in rows:
        ids = tokenizer(row["query"] + " " + row["response"], add_special_tokens=False)["input_ids"]
        assert tokenizer.unk_token_id not in ids


# ---------------------------------------------------------------- split


def test_split_is_stratified_deterministic_and_order_free():
    rng = random.Random(0)
    groups = [f"question {rng.randrange(5000)}" for _ in range(20000)]
    ids = [group_hash(g) for g in groups]
    train, validation = split_indices(ids, 0.1, seed=3)
    assert sorted(train + validation) == list(range(len(groups)))
    assert not {groups[i] for i in train} & {groups[i] for i in validation}
    held_out_groups = {groups[i] for i in validation}
    assert 0.08 < len(held_out_groups) / len(set(groups)) < 0.12
    assert split_indices(ids, 0.1, seed=3) == (train, validation)
    order = list(range(len(groups)))
    rng.shuffle(order)
    _, validation_shuffled = split_indices([ids[i] for i in order], 0.1, seed=3)
    assert {groups[order[i]] for i in validation_shuffled} == held_out_groups
    _, other_seed = split_indices(ids, 0.1, seed=4)
    assert {groups[i] for i in other_seed} != held_out_groups
    assert split_indices(ids, 0.0, seed=3)[1] == []


def test_built_split_keeps_augmentations_together(tmp_path):
    recipe = tiny_recipe(tmp_path, "data.validation_fraction=0.3")
    data = build_datasets(recipe, load_tokenizer(recipe.model))
    train_groups, validation_groups = set(data.train["group_id"]), set(data.validation["group_id"])
    assert train_groups and validation_groups and not train_groups & validation_groups
    assert len(data.train) + len(data.validation) + data.num_dropped == data.num_raw == len(generate_rows())


# ---------------------------------------------------------------- formatting


def test_format_without_chat_template():
    tokenizer = word_tokenizer()
    data = DataConfig(seq_len=64)
    encoded = encode_example("how many apples ?", "3 apples", tokenizer, data, tokenizer.eos_token_id)
    ids, start = encoded["input_ids"], encoded["response_start"]
    assert ids[0] == tokenizer.bos_token_id and encoded["first_anchor"] == 0
    assert tokenizer.decode(ids[1:start]) == "how many apples?"
    assert tokenizer.convert_ids_to_tokens(ids[start : encoded["length"]]) == ["3", "apples", "</s>"]
    assert encoded["length"] == 1 + 4 + 2 + 1 and len(ids) == 64
    no_bos = encode_example("how many apples ?", "3 apples", tokenizer, DataConfig(seq_len=64, add_bos=False), 2)
    assert no_bos["input_ids"][0] != tokenizer.bos_token_id and no_bos["response_start"] == start - 1


def test_format_with_chat_template_and_response_only_anchors():
    tokenizer = word_tokenizer()
    tokenizer.chat_template = CHAT_TEMPLATE
    data = DataConfig(seq_len=32, chat_template=True, response_only_anchors=True)
    encoded = encode_example("how many apples ?", "3 apples", tokenizer, data, tokenizer.eos_token_id)
    ids, start = encoded["input_ids"], encoded["response_start"]
    tokens = tokenizer.convert_ids_to_tokens(ids[: encoded["length"]])
    assert tokens[:3] == ["###", "<unk>", ":"]  # "user" is not in the word vocabulary
    assert tokens[start - 3 : start] == ["###", "<unk>", ":"] and tokens[start:] == ["3", "apples", "</s>"]
    assert encoded["first_anchor"] == start - 1


def test_eos_inside_the_prompt_is_an_error():
    tokenizer = word_tokenizer()
    tokenizer.chat_template = CHAT_TEMPLATE.replace("+ ' ' }}", "+ ' </s> ' }}")  # every turn ends with EOS
    data = DataConfig(seq_len=32, chat_template=True)
    with pytest.raises(ConfigError) as error:
        encode_example("how many ?", "3", tokenizer, data, tokenizer.eos_token_id)
    assert "data.eos_token" in str(error.value) and "\n" not in str(error.value)
    other = DataConfig(seq_len=32, chat_template=True, eos_token="<pad>")
    encoded = encode_example("how many ?", "3", tokenizer, other, data_module.eos_token_id(tokenizer, other))
    assert encoded["input_ids"][encoded["length"] - 1] == tokenizer.pad_token_id


def test_cut_pad_drop_and_the_eos_rule():
    tokenizer = word_tokenizer()
    data = DataConfig(seq_len=16)
    eos = tokenizer.eos_token_id
    short = encode_example("how many ?", "3 apples", tokenizer, data, eos)
    assert short["input_ids"][short["length"] :] == [eos] * (16 - short["length"])
    long = encode_example("how many ?", " ".join(["apples"] * 40), tokenizer, data, eos)
    assert long["length"] == 16 and eos not in long["input_ids"]
    assert encode_example(" ".join(["the"] * 20), "3", tokenizer, data, eos) is None  # prompt fills the window
    assert encode_example(" ".join(["the"] * 14), "3", tokenizer, data, eos) is not None  # response starts at 15
    assert encode_example("how many ?", "", tokenizer, data, eos) is None
    for sample in (short, long):  # pack treats everything after the first EOS as padding
        packed = pack(torch.tensor(sample["input_ids"]), k=2, offset=0, mtp_token_id=100, k_max=4, eos_token_id=eos)
        assert int(packed.valid[packed.source_index >= 0].sum()) == sample["length"]


# ---------------------------------------------------------------- sources, errors and caching


def test_tokenisation_is_cached_on_disk(tmp_path, monkeypatch):
    recipe = tiny_recipe(tmp_path)
    tokenizer = load_tokenizer(recipe.model)
    first = build_datasets(recipe, tokenizer)
    cache_files = {f["filename"] for f in first.train.cache_files}
    assert any(str(tmp_path) in name for name in cache_files)

    calls = []

    def counting(*args, **kwargs):
        calls.append(1)
        raise AssertionError("tokenised again although the cache is valid")

    monkeypatch.setattr(data_module, "encode_example", counting)
    second = build_datasets(recipe, load_tokenizer(recipe.model))
    assert not calls and {f["filename"] for f in second.train.cache_files} == cache_files
    assert second.train["input_ids"] == first.train["input_ids"]
    with pytest.raises(AssertionError):  # other formatting settings do not reuse a stale cache
        build_datasets(tiny_recipe(tmp_path, "data.seq_len=48"), tokenizer)


def test_build_datasets_end_to_end_batches(tmp_path):
    recipe = tiny_recipe(tmp_path, "data.response_only_anchors=true", "data.num_proc=2")
    data = build_datasets(recipe, load_tokenizer(recipe.model))
    assert set(data.train.column_names) == {"input_ids", "response_start", "first_anchor", "length", "group_id"}
    sampler = EpochShuffleSampler(len(data.train), global_batch_size=8, seed=recipe.train.seed)
    micro = step_micro_batches(
        data.train,
        sampler.next_batch(),
        rank=1,
        world_size=2,
        micro_batch_size=2,
        draws=[(2 + i % 3, i) for i in range(8)],
    )
    assert len(micro) == 2 and micro[0].token_ids.shape == (2, recipe.data.seq_len)
    assert micro[0].token_ids.dtype == torch.long and micro[1].draws == [(2 + 6 % 3, 6), (2 + 7 % 3, 7)]
    assert torch.equal(micro[0].first_anchor, micro[0].response_start - 1)
    for row in range(2):
        k, offset = micro[0].draws[row]
        packed = pack(
            micro[0].token_ids[row],
            k=k,
            offset=offset,
            mtp_token_id=500,
            k_max=recipe.packing.k_max,
            first_anchor=int(micro[0].first_anchor[row]),
            eos_token_id=data.eos_token_id,
        )
        assert bool((packed.anchor_positions >= micro[0].response_start[row] - 1).all())


def test_local_source_with_field_names_and_errors(tmp_path):
    rows = [{"q": f"how many {i} ?", "a": f"{i} apples", "seed": f"s{i % 3}"} for i in range(30)]
    path = write_jsonl(tmp_path / "rows.jsonl", rows)
    config = DataConfig(
        source="jsonl",
        path=str(path),
        prompt_field="q",
        response_field="a",
        group_field="seed",
        cache_dir=str(tmp_path / "cache"),
    )
    raw = load_raw_dataset(config)
    assert raw.column_names == ["prompt", "response", "group"] and raw[4] == {
        "prompt": "how many 4 ?",
        "response": "4 apples",
        "group": "s1",
    }
    with pytest.raises(ConfigError) as error:
        load_raw_dataset(
            DataConfig(
                source="jsonl",
                path=str(path),
                prompt_field="question",
                response_field="a",
                cache_dir=str(tmp_path / "cache"),
            )
        )
    assert (
        "'question'" in str(error.value)
        and "rows.jsonl" in str(error.value)
        and "data.prompt_field" in str(error.value)
    )
    with pytest.raises(ConfigError) as error:  # MetaMathQA field names by default
        load_raw_dataset(DataConfig(source="metamathqa", path=str(path), cache_dir=str(tmp_path / "cache")))
    assert "'query'" in str(error.value)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ConfigError) as error:
        load_raw_dataset(DataConfig(source="jsonl", path=str(empty), cache_dir=str(tmp_path / "cache")))
    assert "empty" in str(error.value) and "empty.jsonl" in str(error.value)
    with pytest.raises(ConfigError) as error:
        load_raw_dataset(DataConfig(source="csv", path=str(path)))
    assert "unknown source 'csv'" in str(error.value)


def test_magpie_conversations_and_parquet_mix(tmp_path):
    import datasets

    conversations = [
        {
            "conversations": [
                {"from": "system", "value": "be nice"},
                {"from": "human", "value": f"q{i}"},
                {"from": "gpt", "value": f"a{i}"},
            ],
            "uuid": str(i),
        }
        for i in range(4)
    ]
    first = write_jsonl(tmp_path / "pro.jsonl", conversations)
    second = tmp_path / "reasoning.parquet"
    datasets.Dataset.from_list(
        [
            {
                "instruction": "iq",
                "response": "ir",
                "conversations": [{"from": "human", "value": "cq"}, {"from": "gpt", "value": "cr"}],
                "extra": 1.5,
            }
        ]
    ).to_parquet(str(second))
    raw = load_raw_dataset(DataConfig(source="magpie", path=[str(first), str(second)], cache_dir=str(tmp_path / "c")))
    assert (
        raw["prompt"] == ["q0", "q1", "q2", "q3", "cq"]
        and raw["response"][-1] == "cr"
        and raw["group"] == raw["prompt"]
    )


def test_prompts_that_fill_the_window_are_dropped(tmp_path):
    rows = [
        {"query": " ".join(["the"] * n), "response": "3", "original_question": str(n), "type": "x"}
        for n in (5, 10, 70, 80)
    ]
    path = write_jsonl(tmp_path / "long.jsonl", rows)
    recipe = tiny_recipe(tmp_path, f"data.path={path}", "data.validation_fraction=0.0", "train.eval_every=0")
    data = build_datasets(recipe, load_tokenizer(recipe.model))
    assert (len(data.train), data.num_dropped) == (2, 2)
    only_long = write_jsonl(tmp_path / "only_long.jsonl", rows[2:])
    with pytest.raises(ConfigError) as error:
        build_datasets(tiny_recipe(tmp_path, f"data.path={only_long}"), load_tokenizer(recipe.model))
    assert "data.seq_len=64" in str(error.value)


# ---------------------------------------------------------------- sampler and rank slices


def test_sampler_resume_equals_uninterrupted_run():
    uninterrupted = EpochShuffleSampler(50, global_batch_size=8, seed=7)
    expected = [uninterrupted.next_batch() for _ in range(20)]  # 160 samples: 3+ epochs
    first = EpochShuffleSampler(50, global_batch_size=8, seed=7)
    got = [first.next_batch() for _ in range(9)]
    state = json.loads(json.dumps(first.state_dict()))  # as a checkpoint would store it
    assert (state["epoch"], state["position"]) == (1, 22)
    resumed = EpochShuffleSampler(50, global_batch_size=8, seed=7)
    resumed.load_state_dict(state)
    got += [resumed.next_batch() for _ in range(11)]
    assert got == expected
    assert [EpochShuffleSampler(50, global_batch_size=8, seed=7).indices_for_step(s) for s in range(20)] == expected
    with pytest.raises(ValueError, match="data set or seed changed"):
        EpochShuffleSampler(51, global_batch_size=8, seed=7).load_state_dict(state)


def test_epochs_are_permutations_reshuffled_deterministically():
    sampler = EpochShuffleSampler(40, global_batch_size=10, seed=1)
    stream = [i for _ in range(12) for i in sampler.next_batch()]
    epochs = [stream[i * 40 : (i + 1) * 40] for i in range(3)]
    assert all(sorted(epoch) == list(range(40)) for epoch in epochs)
    assert epochs[0] != epochs[1] != epochs[2]
    assert EpochShuffleSampler(40, global_batch_size=10, seed=1).order(2) == epochs[2]
    assert EpochShuffleSampler(40, global_batch_size=10, seed=2).order(0) != epochs[0]


def test_rank_slices_cover_the_global_batch_without_overlap():
    global_batch = list(range(100, 132))
    draws = [(i % 5 + 2, i) for i in range(32)]
    seen, seen_draws = [], []
    for rank in range(4):
        mine = rank_slice(global_batch, rank, 4)
        assert len(mine) == 8
        seen += mine
        seen_draws += rank_slice(draws, rank, 4)
    assert seen == global_batch and seen_draws == draws
    with pytest.raises(ValueError):
        rank_slice(global_batch, 0, 5)
    assert validation_batches(list(range(5)), global_batch_size=4, num_batches=2) == [[0, 1, 2, 3], [4, 0, 1, 2]]


def test_eos_token_is_any_vocabulary_entry_even_the_unk_token():
    """SmolLM2's <|endoftext|> (the token that only ends samples under its chat template) is also its unk token."""
    tokenizer = word_tokenizer()
    assert data_module.eos_token_id(tokenizer, DataConfig(eos_token="<unk>")) == tokenizer.unk_token_id
    with pytest.raises(ConfigError, match=r"^data\.eos_token: 'nope' is not a token of this tokenizer$"):
        data_module.eos_token_id(tokenizer, DataConfig(eos_token="nope"))
