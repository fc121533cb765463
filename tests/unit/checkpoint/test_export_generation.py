"""What stock transformers reads from an export: the base model's generation config, the KV cache on, and no id
that no token owns (`<MTP>`, the vocabulary's padding rows) ever emitted by plain `model.generate`."""

import torch
from helpers import bias_lm_head, make_mtp_model, zero3_checkpoint
from transformers import AutoModelForCausalLM, GenerationConfig

from mtp_ds.checkpoint.export import export_checkpoint


def _exported(tmp_path, *, base_generation: GenerationConfig | None = None):
    model, _, tokens = make_mtp_model("llama")
    checkpoint = zero3_checkpoint(tmp_path / "step00000002", model)
    if base_generation is not None:  # what the trainer saves beside hf/config.json: the base model's
        base_generation.save_pretrained(checkpoint / "hf")
    export_checkpoint(checkpoint, tmp_path / "export", dtype="float32")
    return AutoModelForCausalLM.from_pretrained(tmp_path / "export").eval(), tokens


def test_the_base_models_generation_config_with_the_cache_on_and_the_mask_ids_suppressed(tmp_path):
    base = GenerationConfig(eos_token_id=[2, 7, 9], do_sample=True, temperature=0.6, top_p=0.9, use_cache=False)
    model, tokens = _exported(tmp_path, base_generation=base)
    generation = model.generation_config
    assert generation.use_cache is True and generation.eos_token_id == [2, 7, 9]
    assert (generation.do_sample, generation.temperature, generation.top_p) == (True, 0.6, 0.9)
    assert tokens.padding is not None and set(generation.suppress_tokens) == set(tokens.never_emitted)


def test_stock_generate_feeds_one_token_a_step_and_never_emits_a_mask_or_padding_id(tmp_path):
    model, tokens = _exported(tmp_path)  # a checkpoint saved without one: built from the model config
    assert model.generation_config.use_cache is True
    bias_lm_head(model, tokens.never_emitted, 1e4)  # raw argmax: always a mask or padding id
    widths = []
    model.register_forward_pre_hook(
        lambda _m, _a, kwargs: widths.append(kwargs["input_ids"].shape[1]), with_kwargs=True
    )
    prompt = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        out = model.generate(prompt, max_new_tokens=6, do_sample=False, eos_token_id=None, pad_token_id=0)
    new = out[0, prompt.shape[1] :].tolist()
    assert len(new) == 6 and not set(new) & set(tokens.never_emitted)
    assert widths == [5, 1, 1, 1, 1, 1]  # the prompt once, then one token per step: the KV cache is used
