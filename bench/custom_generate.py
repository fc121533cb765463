"""Stock transformers on an export: plain greedy `model.generate` vs the export's `custom_generate` (what a user gets
from one `generate` call without mtp-ds), side by side on the same batches.

Usage (CPU, the demo's trained model exported by `mtp-ds demo`; bench/README.md says what it measures):
    HF_HUB_OFFLINE=1 .venv/bin/python bench/custom_generate.py --model outputs/demo/mtp --out custom_generate.json
GPU: add --device cuda --dtype bfloat16 (never run on one yet).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch
from decode_inputs import DTYPES, describe_machine

# (name, custom_generate keywords): the export's default (its config's mtp_decoding), then two lossy settings
SETTINGS = (
    ("custom_generate default", {}),
    ("custom_generate confadapt 0.9", {"strategy": "confadapt", "threshold": 0.9}),
    ("custom_generate static k=2", {"strategy": "static", "k": 2}),
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="outputs/demo/mtp", help="an export (with custom_generate/)")
    parser.add_argument("--prompts", default="outputs/demo/data/test.jsonl", help="jsonl with a 'question' field")
    parser.add_argument("--template", default="Q: {prompt}\nA: Let's think step by step.")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=96)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    parser.add_argument("--out", default=None, help="write the numbers as JSON")
    return parser.parse_args(argv)


def _until_eos(tokens: list[int], eos: set[int]) -> list[int]:
    for index, token in enumerate(tokens):
        if token in eos:
            return tokens[: index + 1]
    return tokens


def main(argv=None) -> int:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    args = parse_args(argv)
    model_dir = str(Path(args.model).resolve())
    if not (Path(model_dir) / "custom_generate" / "generate.py").is_file():
        raise SystemExit(f"{model_dir} has no custom_generate/: export it again with this version (mtp-ds export)")
    tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=DTYPES[args.dtype]).to(args.device).eval()
    eos = model.generation_config.eos_token_id
    eos = set([eos] if isinstance(eos, int) else eos or [])
    with open(args.prompts) as f:
        questions = [json.loads(line)["question"] for line in f if line.strip()][: args.requests]
    texts = [args.template.replace("{prompt}", question) for question in questions]
    rows = {
        name: {"seconds": 0.0, "passes": 0, "kept": 0, "identical": 0} for name, _ in (("stock greedy", {}), *SETTINGS)
    }
    for start in range(0, len(texts), args.batch):
        batch = tokenizer(texts[start : start + args.batch], return_tensors="pt", padding=True).to(args.device)
        width = batch["input_ids"].shape[1]
        started = time.perf_counter()
        with torch.no_grad():
            stock = model.generate(**batch, do_sample=False, max_new_tokens=args.new_tokens)
        rows["stock greedy"]["seconds"] += time.perf_counter() - started
        reference = [_until_eos(row[width:].tolist(), eos) for row in stock]
        rows["stock greedy"]["identical"] += len(reference)
        for name, settings in SETTINGS:  # interleaved with the stock run, batch by batch
            started = time.perf_counter()
            output = model.generate(
                **batch,
                custom_generate=model_dir,
                trust_remote_code=True,
                max_new_tokens=args.new_tokens,
                return_dict_in_generate=True,
                **settings,
            )
            rows[name]["seconds"] += time.perf_counter() - started
            rows[name]["passes"] += sum(len(counts) for counts in output.tokens_per_pass)
            rows[name]["kept"] += sum(sum(counts) for counts in output.tokens_per_pass)
            ours = [_until_eos(row[width:].tolist(), eos) for row in output.sequences]
            rows[name]["identical"] += sum(a == b for a, b in zip(ours, reference))
    machine = describe_machine(args.device)
    print(f"machine: {machine}")
    print(f"{args.model}: {len(texts)} prompts, batches of {args.batch}, {args.new_tokens} new tokens, {args.dtype}")
    print(f"{'setting':<32} {'s':>7} {'x stock':>8} {'tokens/pass':>12} {'== stock greedy':>16}")
    base = rows["stock greedy"]["seconds"]
    for name, row in rows.items():
        per_pass = row["kept"] / row["passes"] if row["passes"] else 1.0
        print(
            f"{name:<32} {row['seconds']:>7.1f} {base / row['seconds']:>8.2f} {per_pass:>12.2f} "
            f"{row['identical']:>10}/{len(texts)}"
        )
    lossless = rows["custom_generate default"]["identical"]
    if args.dtype == "float32" and model.config.mtp_decoding.get("strategy") == "selfspec" and lossless < len(texts):
        print(f"FAIL: the lossless default differs from stock greedy on {len(texts) - lossless} rows (fp32)")
        return 1  # no JSON: these numbers are not of a lossless decoder
    if args.out:
        Path(args.out).write_text(json.dumps({"machine": machine, "args": vars(args), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
