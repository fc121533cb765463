"""The Hugging Face Hub ids the recipes and docs name: the one list, each id checked against its public page.

Why: a misspelt id fails only on the cluster, on every rank, in `from_pretrained` after the job has waited in
the queue. `tests/unit/config/test_hub_ids.py` pins every recipe's model, tokenizer and data ids (and every
mention of these owners in the docs) to this list. An id joins it after a look at its page; the page each was
checked against is the value. Checked Dec 2026.
"""

from __future__ import annotations

HUB_MODELS = {
    "Qwen/Qwen3-4B-Instruct-2507": "https://huggingface.co/Qwen/Qwen3-4B-Instruct-2507",
    # the authors' starting checkpoint (their README downloads it with `litgpt download`); trained on the two
    # Magpie sets below
    "Magpie-Align/Llama-3.1-8B-Magpie-Align-SFT-v0.1": "https://huggingface.co/Magpie-Align/Llama-3.1-8B-Magpie-Align-SFT-v0.1",
}

HUB_DATASETS = {
    "meta-math/MetaMathQA": "https://huggingface.co/datasets/meta-math/MetaMathQA",  # 395k rows
    # the paper's "Magpie-Pro-300k-v0.1": the only 300K v0.1 set of Magpie-Pro (Llama 3 70B), and the SFT data of
    # the Llama above (with Magpie-Reasoning)
    "Magpie-Align/Magpie-Pro-MT-300K-v0.1": "https://huggingface.co/datasets/Magpie-Align/Magpie-Pro-MT-300K-v0.1",
    # the paper's "Magpie-Reasoning-150k": published as Magpie-Align/Magpie-Reasoning-150K, renamed since (the old
    # id redirects to this one)
    "Magpie-Align/Magpie-Reasoning-V1-150K": "https://huggingface.co/datasets/Magpie-Align/Magpie-Reasoning-V1-150K",
}

HUB_IDS = {**HUB_MODELS, **HUB_DATASETS}
