"""Models the decoder cannot run a ragged batch on are refused with one line before any pass: parameters on more
than one device (`device_map`, lm-eval's `parallelize=True`) and flash attention (a 2-D padding mask, not our
4-D one). A model spread over devices cannot be built on CPU, so a model carrying an `hf_device_map` (what
transformers sets after dispatching one) and a config naming the kernel stand in for them."""

from types import SimpleNamespace

import pytest
import torch
from helpers import make_mtp_model

from mtp_ds.decoding import generate, generate_many
from mtp_ds.decoding.decoder import check_model

SPREAD = {"model.embed_tokens": 0, "model.layers.0": 0, "model.layers.1": 1, "model.norm": 1, "lm_head": 1}


def fake_model(device_map=None, kernel="sdpa", devices=("cpu",)):
    return SimpleNamespace(
        hf_device_map=device_map,
        config=SimpleNamespace(_attn_implementation=kernel),
        parameters=lambda: iter(torch.zeros(1, device=device) for device in devices),
    )


@pytest.mark.parametrize(
    "model, match",
    [
        (fake_model(SPREAD), r"spread over 2 devices \(0, 1\).*without parallelize=True"),
        (fake_model({"model": 0, "lm_head": "cpu"}), "spread over 2 devices"),
        (fake_model(devices=("cpu", "meta")), r"spread over 2 devices \(cpu, meta\)"),
        (fake_model(kernel="flash_attention_2"), "attn_implementation='flash_attention_2' cannot take the 4-D"),
        (fake_model(kernel="flash_attention_3"), "attn_implementation='flash_attention_3'"),
        (fake_model(kernel="kernels-community/flash-attn3"), "attn_implementation='kernels-community/flash-attn3'"),
    ],
)
def test_a_model_on_several_devices_or_with_flash_attention_is_refused_in_one_line(model, match):
    with pytest.raises(ValueError, match=match) as error:
        check_model(model)
    assert "\n" not in str(error.value)
    check_model(model, ragged=False)  # one row, no padding, no mask groups: no 4-D mask and no cache bookkeeping


@pytest.mark.parametrize(
    "model", [fake_model(), fake_model({"": 0}), fake_model(kernel="eager"), fake_model(kernel="sdpa_gqa")]
)
def test_a_model_on_one_device_with_a_mask_taking_kernel_passes(model):
    check_model(model)


@pytest.mark.parametrize("problem", ["device_map", "flash_attention_2"])
def test_generate_and_generate_many_refuse_before_the_first_pass(problem, monkeypatch):
    model, _, mask_tokens = make_mtp_model("qwen3")
    if problem == "device_map":
        model.hf_device_map = SPREAD
    else:
        monkeypatch.setattr(model.config, "_attn_implementation", problem, raising=False)
    calls = []
    model.register_forward_pre_hook(lambda *args: calls.append(1))
    two_rows = torch.tensor([[1, 5, 6], [1, 7, 8]])
    with pytest.raises(ValueError, match="device" if problem == "device_map" else "4-D attention mask"):
        generate(model, two_rows, k=2, mtp_token_id=mask_tokens)
    with pytest.raises(ValueError, match="device" if problem == "device_map" else "4-D attention mask"):
        generate_many(model, [[1, 5, 6]], k=2, mtp_token_id=mask_tokens)
    with pytest.raises(ValueError):  # one row, but selfspec's per-proposal mask groups need the 4-D mask
        generate(
            model, two_rows[:1], strategy="selfspec", k_max=3, mask_layout="per_proposal", mtp_token_id=mask_tokens
        )
    assert not calls
    if problem == "device_map":  # one row needs neither: it decodes as before
        assert generate(model, two_rows[:1], k=2, max_new_tokens=4, mtp_token_id=mask_tokens).num_new_tokens == 4
