"""mtp_ds/kv_cache.py: the append-in-place cache gives the model exactly what DynamicCache gives it, through
the decoder's operations (append, crop, row selection, reassignment), and appends without reallocating."""

import pytest
import torch

from mtp_ds.decoding.kv_cache import cache_argument, make_cache
from mtp_ds.models.tiny import tiny_model


def _forward(model, cache, ids, start):
    positions = torch.arange(start, start + ids.shape[1]).expand(ids.shape[0], -1)
    return model(input_ids=ids, position_ids=positions, **{cache_argument(model): cache}, use_cache=True).logits


@pytest.mark.parametrize("arch", ["qwen3", "llama"])
@pytest.mark.parametrize("reserve", [0, 200])
def test_same_logits_and_entries_as_dynamic_cache(arch, reserve):
    from transformers import DynamicCache

    model = tiny_model(arch)
    generator = torch.Generator().manual_seed(0)
    caches = {"dynamic": DynamicCache(), "append": make_cache(reserve=reserve)}
    batch, length = 4, 0
    # prompt, then passes of q new entries of which `keep` stay (the decoder's crop), one row leaving, more passes
    script = [(30, 30), (5, 2), (7, 7), (3, 1), ("select", None), (9, 4), (64, 64), (6, 0), (2, 2)]
    with torch.inference_mode():
        for q, keep in script:
            if q == "select":
                rows = torch.tensor([0, 2, 3])
                for cache in caches.values():
                    cache.batch_select_indices(rows)
                batch = 3
                continue
            ids = torch.randint(4, 120, (batch, q), generator=generator)
            logits = {name: _forward(model, cache, ids, length) for name, cache in caches.items()}
            torch.testing.assert_close(logits["append"], logits["dynamic"], rtol=0, atol=0)
            for cache in caches.values():
                if keep < q:
                    cache.crop(keep - q)
            length += keep
            for ours, theirs in zip(caches["append"].layers, caches["dynamic"].layers):
                assert torch.equal(ours.keys, theirs.keys) and torch.equal(ours.values, theirs.values)
            assert caches["append"].get_seq_length() == caches["dynamic"].get_seq_length() == length


def test_appends_in_place_within_the_reserve_and_grows_past_it():
    model = tiny_model("qwen3")
    cache = make_cache(reserve=100)
    with torch.inference_mode():
        _forward(model, cache, torch.randint(4, 120, (2, 10)), 0)
        layer = cache.layers[0]
        storage = layer.keys.data_ptr()
        kept = layer.keys.clone()
        for step in range(10, 100, 6):  # up to 100 entries: no reallocation, no copy of what is cached
            _forward(model, cache, torch.randint(4, 120, (2, 6)), step)
            assert layer.keys.data_ptr() == storage
        _forward(model, cache, torch.randint(4, 120, (2, 5)), 100)  # past the reserve: grows, keeps the entries
        assert layer.keys.data_ptr() != storage and layer.get_seq_length() == 105
        assert torch.equal(layer.keys[:, :, :10], kept)


def test_assigning_keys_then_values_replaces_the_cache():
    model = tiny_model("qwen3")
    cache = make_cache()
    with torch.inference_mode():
        _forward(model, cache, torch.randint(4, 120, (2, 12)), 0)
        layer = cache.layers[0]
        order = torch.arange(11, -1, -1)[None, None, :, None]  # a gather along the entries, as compaction does
        expected_values = layer.values.gather(2, order.expand(*layer.values.shape[:2], -1, layer.values.shape[3]))
        layer.keys = layer.keys.gather(2, order.expand(*layer.keys.shape[:2], -1, layer.keys.shape[3]))
        layer.values = layer.values.gather(2, order.expand(*layer.values.shape[:2], -1, layer.values.shape[3]))
        assert torch.equal(layer.values, expected_values)
        _forward(model, cache, torch.randint(4, 120, (2, 3)), 12)
        assert layer.get_seq_length() == 15 and torch.equal(layer.values[:, :, :12], expected_values)


def test_crop_refuses_a_positive_count():
    model = tiny_model("qwen3")
    cache = make_cache()
    with torch.inference_mode():
        _forward(model, cache, torch.randint(4, 120, (1, 4)), 0)
    with pytest.raises(ValueError, match="negative number of entries"):
        cache.layers[0].crop(2)
