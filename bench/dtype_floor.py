"""How exact decoding stays in a dtype: k=1 batched vs alone (the floor every batched server has) and selfspec vs k=1.

Usage (repo root):
    python bench/dtype_floor.py --model outputs/demo/mtp --dtype bfloat16 --requests 200
    python bench/dtype_floor.py --model DIR --chat --dtype bfloat16   # a chat model (its template on each question)

Prompts: the demo's held-out problems (outputs/demo/data/test.jsonl), as the demo formats them, or each question in
the model's chat template (--chat). A model without `<MTP>` gets one (`add_mtp_tokens`, untrained: its proposals
are mostly refused, but every selfspec pass still feeds them). Prints and writes (--out) how many of the requests
differ, and where the first difference is, for each pair; in float32 every count must be 0 (exit 1 otherwise).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parent.parent
DTYPES = ("float32", "bfloat16", "float16")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="a Hugging Face checkpoint directory")
    parser.add_argument("--dtype", default="bfloat16", choices=DTYPES)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--rows", type=int, default=8, help="rows in flight for the batched runs")
    parser.add_argument("--k-max", type=int, default=4, help="selfspec's k_max")
    parser.add_argument("--chat", action="store_true", help="each question in the model's chat template")
    parser.add_argument("--problems", default=str(REPO / "outputs" / "demo" / "data" / "test.jsonl"))
    parser.add_argument(
        "--fp32-head", action="store_true", help="the LM head in float32 (hidden states stay in --dtype): a diagnosis"
    )
    parser.add_argument("--runs", default="k1_alone,k1_batched,selfspec_alone,selfspec_batched", help="a subset")
    parser.add_argument("--out", default=None, help="JSON file for the counts")
    return parser.parse_args(argv)


def prompts(args, tokenizer) -> list[list[int]]:
    from mtp_ds.demo.run import PROMPT_TEMPLATE

    with open(args.problems) as handle:
        questions = [json.loads(line)["question"] for line in handle if line.strip()][: args.requests]
    if len(questions) < args.requests:
        raise SystemExit(f"{args.problems}: {len(questions)} problems, --requests {args.requests}")
    if args.chat:
        return [
            list(
                tokenizer.apply_chat_template(
                    [{"role": "user", "content": q}], add_generation_prompt=True, return_dict=True
                )["input_ids"]
            )
            for q in questions
        ]
    return [tokenizer(PROMPT_TEMPLATE.replace("{prompt}", q), add_special_tokens=False)["input_ids"] for q in questions]


class Float32Head(torch.nn.Module):
    """The model's LM head with a float32 copy of its weight: logits from the same hidden states without the
    bf16 rounding of the logits themselves (8 mantissa bits: 0.125 apart at a logit of 20)."""

    def __init__(self, head: torch.nn.Module):
        super().__init__()
        self.weight32 = head.weight.detach().float()
        self.bias32 = None if getattr(head, "bias", None) is None else head.bias.detach().float()

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(hidden.float(), self.weight32, self.bias32)


def first_difference(a: list[int], b: list[int]) -> int | None:
    if a == b:
        return None
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def compare(got: list[list[int]], want: list[list[int]]) -> dict:
    where = [first_difference(a, b) for a, b in zip(got, want, strict=True)]
    differing = [at for at in where if at is not None]
    return {
        "differ": len(differing),
        "of": len(where),
        "first_difference_median": sorted(differing)[len(differing) // 2] if differing else None,
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    from tqdm import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mtp_ds.decoding import DecodeSpec, generate, generate_many
    from mtp_ds.tokens import add_mtp_tokens, has_mask_tokens

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=getattr(torch, args.dtype)).eval()
    if not has_mask_tokens(model.config):
        add_mtp_tokens(tokenizer, model, seed=11)
    if args.fp32_head:
        model.lm_head = Float32Head(model.get_output_embeddings())
    requests = prompts(args, tokenizer)
    stop = [tokenizer.eos_token_id]
    k1, selfspec = DecodeSpec(strategy="static", k=1), DecodeSpec(strategy="selfspec", k_max=args.k_max)
    runs, seconds = {}, {}
    wanted = args.runs.split(",")
    for name, spec, rows in (("k1_alone", k1, 1), ("k1_batched", k1, args.rows), ("selfspec_alone", selfspec, 1),
                             ("selfspec_batched", selfspec, args.rows)):  # fmt: skip
        if name not in wanted:
            continue
        started = time.perf_counter()
        if rows == 1:
            runs[name] = [
                generate(model, torch.tensor([ids]), spec, max_new_tokens=args.new_tokens, eos_token_id=stop).sequences[
                    0
                ]
                for ids in tqdm(requests, desc=name, unit="request")
            ]
        else:
            result = generate_many(
                model, requests, spec, max_rows=rows, max_new_tokens=args.new_tokens, eos_token_id=stop
            )
            runs[name] = result.sequences
        seconds[name] = round(time.perf_counter() - started, 1)
        print(f"{name}: {seconds[name]} s", flush=True)
    pairs = {
        "k1 batched vs k1 alone (the batching floor)": ("k1_batched", "k1_alone"),
        "selfspec alone vs k1 alone": ("selfspec_alone", "k1_alone"),
        "selfspec batched vs k1 batched": ("selfspec_batched", "k1_batched"),
        "selfspec batched vs k1 alone": ("selfspec_batched", "k1_alone"),
    }
    report = {
        "model": args.model,
        "dtype": args.dtype,
        "requests": len(requests),
        "new_tokens": args.new_tokens,
        "rows": args.rows,
        "k_max": args.k_max,
        "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}",
        "seconds": seconds,
        "fp32_head": args.fp32_head,
        "pairs": {label: compare(runs[a], runs[b]) for label, (a, b) in pairs.items() if a in runs and b in runs},
    }
    print(f"{args.model}, {args.dtype}, {len(requests)} requests x {args.new_tokens} new tokens, {args.rows} rows:")
    for label, counts in report["pairs"].items():
        where = f" (median first difference at token {counts['first_difference_median']})" if counts["differ"] else ""
        print(f"  {label}: {counts['differ']} of {counts['of']} differ{where}")
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    exact = all(counts["differ"] == 0 for counts in report["pairs"].values())
    return 0 if exact or args.dtype != "float32" else 1  # exact in fp32 is the contract; other dtypes: measured


if __name__ == "__main__":
    sys.exit(main())
