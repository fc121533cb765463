"""The method on real pretrained weights: SmolLM2-135M-Instruct (Llama architecture, 49k BPE vocabulary, tied
embeddings, a chat template), the one real checkpoint the build machines can have (tests/real_model.py).

What only a real checkpoint shows: the mask token added to a real tokenizer and a tied embedding; packing
exact on trained weights whose argmax margins are small; k=1 decoding equal to HF greedy under the real chat
template and stop ids; `lm_eval --model mtp` answering as `lm_eval --model hf`; and the trainer on the Llama
recipe's formatting (chat template on, the tokenizer's own BOS/EOS), through checkpoint, export and decode.
"""

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from helpers import LAUNCH_ENV, REPO, lm_eval_command, torchrun
from real_model import SAMPLE_END, smollm2_checkpoint
from references import assert_packed_equals_unpacked

from mtp_ds.decoding import generate
from mtp_ds.layout import pack
from mtp_ds.tokens import add_mtp_tokens, mask_tokens_from_config

QUESTIONS = ["What is 2+3?", "Name a fruit that is yellow.", "Tom has 3 apples and buys 4 more. How many now?"]


@pytest.fixture(scope="module")
def checkpoint() -> Path:
    return smollm2_checkpoint()


def _load(checkpoint):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return (
        AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval(),
        AutoTokenizer.from_pretrained(checkpoint),
    )


@pytest.fixture(scope="module")
def mtp_model(checkpoint):
    """The real model and tokenizer with <MTP> added (what the trainer starts the student from)."""
    model, tokenizer = _load(checkpoint)
    before = model.get_input_embeddings().weight.detach().clone()
    tokens = add_mtp_tokens(tokenizer, model, seed=11)
    return model, tokenizer, tokens, before


def _chat_prompt(tokenizer, question: str) -> list[int]:
    encoded = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, return_dict=True
    )
    return list(encoded["input_ids"])


def test_mask_token_on_the_real_tokenizer_and_tied_embedding(mtp_model):
    model, tokenizer, tokens, before = mtp_model
    (mask_id,) = tokens.ids
    assert mask_id == before.shape[0] == 49152  # appended after the 49152 real tokens: the embedding grew by one
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight  # still tied
    weight = model.get_input_embeddings().weight.detach()
    assert torch.equal(weight[:mask_id], before)  # real rows untouched
    mean, std = before.mean(0), before.std(0, unbiased=False)
    noise = torch.randn((1, before.shape[1]), generator=torch.Generator().manual_seed(11))
    torch.testing.assert_close(weight[mask_id], (mean + std * noise)[0])  # N(mean, var) of the rows, seeded
    z = (weight[mask_id] - mean) / std  # 576 standard-normal draws
    assert abs(float(z.mean())) < 0.2 and 0.85 < float(z.std()) < 1.15
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi <MTP> there"}], tokenize=False)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert ids.count(mask_id) == 1  # never split
    assert "<MTP>" not in tokenizer.decode(ids, skip_special_tokens=True)


@pytest.mark.parametrize("k, offset", [(2, 0), (4, 3), (8, 5)])
def test_packed_equals_unpacked_on_real_weights(mtp_model, k, offset):
    model, tokenizer, tokens, _ = mtp_model
    text = tokenizer.apply_chat_template(
        [
            {"role": "user", "content": QUESTIONS[2]},
            {"role": "assistant", "content": "Tom starts with 3 apples. He buys 4 more, so 3 + 4 = 7 apples."},
        ],
        tokenize=False,
    )
    token_ids = torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"][:64])
    packed = pack(token_ids, k=k, offset=offset, mtp_token_id=tokens, k_max=8)
    assert_packed_equals_unpacked(model, tokens, token_ids, packed, atol=1e-3, same_argmax=True)


def test_k1_equals_hf_greedy_under_the_chat_template(mtp_model):
    model, tokenizer, tokens, _ = mtp_model
    stop = model.generation_config.eos_token_id
    prompts = [_chat_prompt(tokenizer, question) for question in QUESTIONS]
    expected = []
    for prompt in prompts:
        with torch.no_grad():
            hf = model.generate(
                torch.tensor([prompt]),
                max_new_tokens=24,
                do_sample=False,
                suppress_tokens=list(tokens.never_emitted),
                pad_token_id=tokenizer.pad_token_id,
            )
        expected.append(hf[0, len(prompt) :].tolist())
        ours = generate(model, torch.tensor([prompt]), k=1, max_new_tokens=24, eos_token_id=stop)
        assert ours.sequences[0] == expected[-1]
    assert any(stop in row for row in expected)  # some answer ends at the real EOS inside the budget
    width = max(map(len, prompts))
    ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    batched = generate(model, ids, attention_mask=mask, k=1, max_new_tokens=24, eos_token_id=stop)
    assert batched.sequences == expected  # left-padded batch == each row alone == HF greedy


def _lm_eval(model_type, checkpoint, out_dir, model_args=""):
    args = lm_eval_command(
        f"pretrained={checkpoint},dtype=float32{model_args}",
        *("--num_fewshot", 1, "--gen_kwargs", "max_gen_toks=40", "--batch_size", 3, "--log_samples"),
        *("--output_path", out_dir),
        model=model_type,
    )
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    result = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    (samples_file,) = sorted(Path(out_dir).rglob("samples_*.jsonl"))
    samples = [json.loads(line) for line in samples_file.read_text().splitlines()]
    return {sample["doc_id"]: (sample["resps"], sample["filtered_resps"]) for sample in samples}


def test_lm_eval_mtp_at_k1_answers_as_lm_eval_hf(checkpoint, tmp_path):
    hf = _lm_eval("hf", checkpoint, tmp_path / "hf")
    mtp = _lm_eval("mtp", checkpoint, tmp_path / "mtp", ",strategy=static,k=1")
    assert sorted(hf) == [0, 1, 2] and all(resps[0][0].strip() for resps, _ in hf.values())  # real answers
    assert mtp == hf  # raw generations and extracted answers, document by document


def test_trainer_on_the_llama_recipe_formatting_then_export_and_decode(checkpoint, tmp_path):
    """2 CPU ranks, ZeRO-3 student loaded from the real checkpoint, DeepSpeed inference-engine teacher; the
    Llama recipe's formatting: chat template on, the tokenizer's own specials, a sample-only end token."""
    run_dir, export_dir = tmp_path / "run", tmp_path / "mtp"
    overrides = [
        f"model.name_or_path={checkpoint}",
        f"data.eos_token={SAMPLE_END}",
        "data.source=metamathqa",
        "data.path=tests/fixtures/toy_metamath.jsonl",
        "data.seq_len=64",
        "data.validation_fraction=0.1",
        "packing.k_max=4",
        "train.global_batch_size=2",
        "train.micro_batch_size=1",
        "train.steps=2",
        "train.deepspeed_config=ds_configs/zero3_cpu.json",
        "teacher.ds_config=ds_configs/teacher_inference_cpu.json",
        "train.eval_every=0",
        "train.log_every=1",
        "checkpoint.every=2",
        f"checkpoint.dir={run_dir}",
        "data.num_proc=1",
        f"data.cache_dir={tmp_path / 'cache'}",
        "data.max_samples=64",
        "logging.tensorboard=false",
    ]
    command = [
        *torchrun(2),
        "-m",
        "mtp_ds.train",
        "recipes/llama31_8b_magpie_metamath.yaml",
        *overrides,
    ]
    result = subprocess.run(command, cwd=REPO, env=LAUNCH_ENV, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    assert all(torch.isfinite(torch.tensor([r["loss"], r["grad_norm"]])).all() for r in records)
    assert records[0]["agreement/slot0"] == 1.0  # student == teacher at step 0: the anchor slot agrees
    from mtp_ds.checkpoint.export import main as export_main

    assert export_main([str(run_dir / "step00000002"), str(export_dir), "--dtype", "float32"]) == 0
    model, tokenizer = _load(export_dir)
    mask_id = model.config.mtp_token_id
    assert tokenizer.convert_ids_to_tokens(mask_id) == "<MTP>" and model.config.tie_word_embeddings
    prompt = _chat_prompt(tokenizer, QUESTIONS[0])
    confadapt = generate(
        model,
        torch.tensor([prompt]),
        strategy="confadapt",
        k_max=4,
        threshold=0.9,
        max_new_tokens=16,
        eos_token_id=model.generation_config.eos_token_id,
    )
    assert confadapt.num_new_tokens > 0 and mask_id not in confadapt.sequences[0]
    k1 = generate(
        model, torch.tensor([prompt]), k=1, max_new_tokens=16, eos_token_id=model.generation_config.eos_token_id
    )
    with torch.no_grad():
        hf = model.generate(
            torch.tensor([prompt]),
            max_new_tokens=16,
            do_sample=False,
            suppress_tokens=list(mask_tokens_from_config(model.config).never_emitted),
            pad_token_id=tokenizer.pad_token_id,
        )
    assert k1.sequences[0] == hf[0, len(prompt) :].tolist()  # the exported checkpoint decodes like HF at k=1
