"""bench/decode.py's inputs: model presets, the model (random preset or saved checkpoint), prompts, the machine.

Why a separate file: decode.py reads top to bottom as the benchmark (settings, timing, main); what it runs on
lives here.
"""

from __future__ import annotations

import json
import os
import platform

import torch

# Model sizes. small/medium: CPU-sized, vocab large enough that the lm_head costs what it does in a real model
# relative to one layer. qwen3-4b / llama31-8b: the real hyperparameters (random weights) for the GPU path.
PRESETS = {
    "small": dict(hidden_size=512, num_layers=8, num_heads=8, num_kv_heads=4, intermediate_size=1536, vocab_size=8192),
    "medium": dict(
        hidden_size=768, num_layers=12, num_heads=12, num_kv_heads=4, intermediate_size=2048, vocab_size=16384
    ),
    "qwen3-4b": dict(
        arch="qwen3",
        hidden_size=2560,
        num_layers=36,
        num_heads=32,
        num_kv_heads=8,
        head_dim=128,
        intermediate_size=9728,
        vocab_size=151936,
        tie_word_embeddings=True,
        max_position_embeddings=40960,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
    ),
    "llama31-8b": dict(
        arch="llama",
        hidden_size=4096,
        num_layers=32,
        num_heads=32,
        num_kv_heads=8,
        intermediate_size=14336,
        vocab_size=128256,
        max_position_embeddings=131072,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        rope_parameters={
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
    ),
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def describe_machine(device: str) -> dict:
    import transformers

    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "torch_threads": torch.get_num_threads(),
        "load_avg_start": list(os.getloadavg()),
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
        info["cuda"] = torch.version.cuda
    return info


def build_model(args):
    """(model, mask_token_id, base_vocab, description) with the model in eval mode on args.device."""
    from transformers import AutoModelForCausalLM

    dtype = DTYPES[args.dtype]
    if args.model:
        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype, attn_implementation=args.attn)
        model.to(args.device)
        mask_id = getattr(model.config, "mtp_token_id", None)
        if mask_id is None:
            raise SystemExit(f"{args.model}: config has no mtp_token_id (not an MTP checkpoint)")
        base_vocab = getattr(model.config, "mtp_base_vocab_size", None) or mask_id
        desc = f"checkpoint {args.model}"
    else:
        from mtp_ds.models.tiny import tiny_model_config

        preset = dict(PRESETS[args.size])
        arch = preset.pop("arch", None) or args.arch or "qwen3"
        if args.arch and args.arch != arch:
            raise SystemExit(f"--size {args.size} is a {arch} model; drop --arch {args.arch}")
        preset.setdefault("max_position_embeddings", 4096)
        config = tiny_model_config(arch, **preset)
        torch.manual_seed(args.seed)
        with torch.device(args.device):
            model = AutoModelForCausalLM.from_config(config, attn_implementation=args.attn, dtype=dtype)
        # The last id plays <MTP>: its rows are random like every other row (what add_mtp_tokens draws).
        mask_id = config.vocab_size - 1
        model.config.mtp_token_id = mask_id
        model.config.mtp_base_vocab_size = mask_id
        base_vocab = mask_id
        desc = f"{args.size} preset ({arch}), random weights"
    model.eval()
    # A fixed token count for every setting: HF generate would otherwise take eos_token_id from the checkpoint's
    # generation_config (an explicit None does not override it) and pad finished rows with pad_token_id.
    model.generation_config.eos_token_id = None
    if args.sharpen != 1.0:
        norm = getattr(getattr(model, "model", None), "norm", None)
        with torch.no_grad():
            if norm is not None and getattr(norm, "weight", None) is not None:
                norm.weight.mul_(args.sharpen)  # logits = lm_head(norm(h)): scales every logit exactly
            else:
                model.get_output_embeddings().weight.mul_(args.sharpen)
    n_params = sum(p.numel() for p in model.parameters())
    cfg = model.config
    return (
        model,
        mask_id,
        base_vocab,
        {
            "description": desc,
            "class": type(model).__name__,
            "params": n_params,
            "dtype": args.dtype,
            "hidden_size": cfg.hidden_size,
            "num_layers": cfg.num_hidden_layers,
            "num_heads": cfg.num_attention_heads,
            "num_kv_heads": cfg.num_key_value_heads,
            "intermediate_size": cfg.intermediate_size,
            "vocab_size": cfg.vocab_size,
            "tie_word_embeddings": bool(getattr(cfg, "tie_word_embeddings", False)),
            "attn_implementation": args.attn,
            "mtp_token_id": mask_id,
            "sharpen": args.sharpen,
        },
    )


def make_prompts(batch: int, prompt_len: int, base_vocab: int, pad_id: int, device, seed: int):
    """Left-padded random prompts (ids in [4, base_vocab)); row i has a length in [prompt_len/2, prompt_len]."""
    gen = torch.Generator().manual_seed(seed)
    low = max(1, prompt_len // 2)
    lengths = [prompt_len] + [int(x) for x in torch.randint(low, prompt_len + 1, (batch - 1,), generator=gen)]
    ids = torch.full((batch, prompt_len), pad_id, dtype=torch.long)
    mask = torch.zeros((batch, prompt_len), dtype=torch.long)
    for row, n in enumerate(lengths):
        ids[row, prompt_len - n :] = torch.randint(4, base_vocab, (n,), generator=gen)
        mask[row, prompt_len - n :] = 1
    return ids.to(device), mask.to(device)


def load_prompt_texts(path: str, field: str, template: str) -> list[str]:
    """Prompt strings from a JSONL file: the template with {prompt} = record[field], for each record in order.

    A bad file is a one-line SystemExit naming the file, line and flag.
    """
    texts = []
    try:
        with open(path) as f:
            lines = f.readlines()
    except OSError as error:
        raise SystemExit(f"--prompts: cannot read {path}: {error.strerror or error}") from None
    for line_no, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise SystemExit(f"{path}:{line_no}: not a JSON record (--prompts): {error.msg}") from None
        if not isinstance(record, dict) or field not in record:
            fields = sorted(record) if isinstance(record, dict) else type(record).__name__
            raise SystemExit(f"{path}:{line_no}: record has no field {field!r} (--prompt-field); fields: {fields}")
        texts.append(template.replace("{prompt}", str(record[field])))
    if not texts:
        raise SystemExit(f"{path}: no prompts")
    return texts


def text_prompts(texts: list[str], batch: int, tokenizer, device):
    """The first `batch` prompt texts, tokenized and LEFT-padded (what lm-eval's batched generation feeds)."""
    encoded = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts[:batch]]
    width = max(map(len, encoded))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.full((batch, width), pad_id, dtype=torch.long)
    mask = torch.zeros((batch, width), dtype=torch.long)
    for row, tokens in enumerate(encoded):
        ids[row, width - len(tokens) :] = torch.tensor(tokens)
        mask[row, width - len(tokens) :] = 1
    return ids.to(device), mask.to(device)
