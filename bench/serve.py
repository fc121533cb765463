"""Serving benchmark: a stream of requests at concurrency c, plain HF vs our decoder (k=1, Static k, ConfAdapt, selfspec).

Usage (CPU, the demo's trained model; what it measures, the columns and the targets: bench/README.md):
    HF_HUB_OFFLINE=1 .venv/bin/python bench/serve.py --model outputs/demo/mtp --out serve.json   # ~23 min on 2 cores
    .venv/bin/python bench/serve.py --model outputs/demo/mtp --requests 64 --concurrency 1,16   # a quick look
GPU: add --device cuda --dtype bfloat16 (never run on one yet).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch
from decode import TokensDiffer
from decode_curve import bench_forward_curve
from decode_inputs import DTYPES, describe_machine
from decode_timing import ForwardCounter, sync_device
from serve_report import evaluate_targets, markdown_table, print_prefill_costs, print_rows

from mtp_ds.decoding.spec import DecodeSpec

HF, K1, SELFSPEC = "HF generate", "ours k=1", "selfspec"
SETTINGS = [  # (name, mtp_ds.decoding.generate_many settings; None = plain HF generate over static batches)
    (HF, None),
    (K1, dict(strategy="static", k=1)),
    ("static k=2", dict(strategy="static", k=2)),
    ("static k=3", dict(strategy="static", k=3)),
    ("confadapt 0.9", dict(strategy="confadapt", threshold=0.9)),  # k_max: --k-max
    (SELFSPEC, dict(strategy="selfspec", mask_layout="linear")),  # lossless: asserted == ours k=1
]


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", default="outputs/demo/mtp", help="MTP checkpoint dir (default: the demo's)")
    p.add_argument(
        "--train-data",
        default=None,
        help="training split whose questions are never used (default: <model>/../data/train.jsonl)",
    )
    p.add_argument("--requests", type=int, default=512)
    p.add_argument("--concurrency", default="1,16,64")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--k-max", type=int, default=4, help="ConfAdapt's and selfspec's k_max (default 4)")
    p.add_argument("--settings", default=None, help="comma-separated subset: " + ", ".join(n for n, _ in SETTINGS))
    p.add_argument(
        "--selfspec",
        default=None,
        metavar="SPECS",
        help="more lossless rows, comma-separated K[:LAYOUT][:p=P][:g=G] (DecodeSpec.parse's selfspec:...), each "
        "checked == our k=1 like the selfspec row, e.g. 4:linear,8:per_proposal:g=4",
    )
    p.add_argument("--data-seed", type=int, default=0, help="the demo's --seed (held-out problems use seed + 1)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default=None, choices=sorted(DTYPES), help="default float32 on cpu, bfloat16 on cuda")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=None, help="write all results to this JSON file")
    args = p.parse_args(argv)
    args.dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    if not os.path.isfile(os.path.join(args.model, "config.json")):
        p.error(f"--model {args.model!r} is not a Hugging Face model directory (no config.json); run `mtp-ds demo`")
    try:
        args.concurrency = sorted({int(c) for c in args.concurrency.split(",")})
    except ValueError:
        p.error(f"--concurrency must be comma-separated ints, got {args.concurrency!r}")
    if args.concurrency[0] < 1 or args.requests < 1 or args.k_max < 2 or args.max_new_tokens < 1:
        p.error("--concurrency entries and --requests must be >= 1, --k-max >= 2, --max-new-tokens >= 1")
    names = [n for n, _ in SETTINGS]
    args.settings = names if args.settings is None else [s.strip() for s in args.settings.split(",")]
    if set(args.settings) - set(names):
        p.error(f"--settings: unknown {sorted(set(args.settings) - set(names))}; choose from {names}")
    if K1 not in args.settings:
        args.settings.append(K1)  # the reference of every ratio and of selfspec's tokens
    args.extra = []
    for entry in (args.selfspec or "").split(","):
        if entry.strip():
            try:
                spec = DecodeSpec.parse(f"selfspec:{entry.strip()}")
            except ValueError as error:
                p.error(f"--selfspec: {error}")
            args.extra.append((spec.label, spec.settings()))
    args.train_data = args.train_data or str(Path(args.model).parent / "data" / "train.jsonl")
    return args


def held_out_prompts(args, tokenizer) -> list[list[int]]:
    """The demo's held-out problems (its test split first), never a training question, as prompt token ids."""
    from mtp_ds.demo.run import PROMPT_TEMPLATE
    from mtp_ds.demo.synth_gsm import make_split

    seen = set()
    if os.path.isfile(args.train_data):
        with open(args.train_data) as f:
            seen = {json.loads(line)["question"] for line in f if line.strip()}
    problems, count = [], args.requests
    while len(problems) < args.requests:  # the held-out stream, past any question the training split holds
        problems = [row for row in make_split(count, args.data_seed + 1) if row["question"] not in seen]
        count += args.requests - len(problems)
    test = Path(args.train_data).with_name("test.jsonl")
    if test.is_file():
        with open(test) as f:
            demo = [json.loads(line)["question"] for line in f if line.strip()]
        if [row["question"] for row in problems[: len(demo)]] != demo[: args.requests]:
            raise SystemExit(f"{test}: not the held-out problems of --data-seed {args.data_seed}")
    return [
        tokenizer(PROMPT_TEMPLATE.replace("{prompt}", row["question"]), add_special_tokens=False)["input_ids"]
        for row in problems[: args.requests]
    ]


def same_tokens(label: str, got: list[list[int]], want: list[list[int]]) -> None:
    """Raise TokensDiffer naming the first request whose tokens differ, and where."""
    for index, (a, b) in enumerate(zip(got, want, strict=True)):
        if a != b:
            at = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            raise TokensDiffer(
                f"{label}: request {index} differs first at new token {at}: {a[at : at + 8]} vs "
                f"{b[at : at + 8]} ({len(a)} vs {len(b)} tokens)"
            )


def run_hf(model, prompts, concurrency, args, eos, pad):
    """Plain HF greedy over static batches of `concurrency` requests (left-padded); each row cut after its EOS."""
    from transformers import GenerationConfig

    config = GenerationConfig(
        do_sample=False,
        max_new_tokens=args.max_new_tokens,
        eos_token_id=eos,
        pad_token_id=pad,
        num_beams=1,
        use_cache=True,
    )
    sequences = []
    for start in range(0, len(prompts), concurrency):
        batch = prompts[start : start + concurrency]
        width = max(map(len, batch))
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in batch], device=args.device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch], device=args.device)
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
        for row in out[:, width:].tolist():
            sequences.append(row[: row.index(eos) + 1] if eos in row else row)
    return SimpleNamespace(
        sequences=sequences,
        tokens_per_pass=[[1] * len(s) for s in sequences],
        num_query_tokens=None,
        peak_rows=None,
        peak_kv_entries=None,
    )


def run_cell(model, prompts, concurrency, name, settings, args, eos, pad, counter) -> tuple[dict, list]:
    from mtp_ds.decoding import generate_many

    sync_device(args.device)
    counter.reset()
    started = time.perf_counter()
    if settings is None:
        result = run_hf(model, prompts, concurrency, args, eos, pad)
    else:
        if settings["strategy"] != "static" and "k_max" not in settings:
            settings = dict(settings, k_max=args.k_max)
        result = generate_many(
            model, prompts, max_rows=concurrency, max_new_tokens=args.max_new_tokens, eos_token_id=eos, **settings
        )
        assert result.num_forward_passes == counter.count, (result.num_forward_passes, counter.count)
    sync_device(args.device)
    wall = time.perf_counter() - started
    tokens = sum(map(len, result.sequences))
    own_passes = sum(map(len, result.tokens_per_pass))
    row = {
        "concurrency": concurrency,
        "setting": name,
        "wall_s": wall,
        "tokens": tokens,
        "tokens_per_s": tokens / wall,
        "passes": counter.count,
        "ideal_passes": own_passes / concurrency,
        "passes_over_ideal": counter.count * concurrency / own_passes,
        "acceleration_factor": tokens / own_passes,
        "forward_s": counter.forward_s,
        "query_tokens_per_pass": counter.query_tokens / counter.count,
        "peak_kv_rows": result.peak_rows,
        "peak_kv_entries": result.peak_kv_entries,
        # the batch cache's widest allocation in the stream's first and second half: no growth over a stream
        "kv_columns_halves": _halves(getattr(result, "allocated_columns_per_pass", None)),
    }
    return row, result.sequences


def _halves(columns: list[int] | None) -> list[int] | None:
    if not columns:
        return None
    middle = len(columns) // 2
    return [max(columns[:middle], default=0), max(columns[middle:])]


def prefill_costs(model, prompts, concurrency, args, width: int) -> dict:
    """ms of one forward: c rows at the decode width, c rows at a prompt's width (a prefill fused into the decode
    step pads every row to it), a prefill pass of 1 and of c prompts; on a cache `width` columns wide."""
    prompt = round(sum(map(len, prompts)) / len(prompts)) + args.k_max - 1
    curve_args = SimpleNamespace(
        context=width,
        queries=f"{args.k_max},{prompt}",
        curve_batches=f"1,{concurrency}",
        curve_repeats=10,
        seed=0,
        device=args.device,
    )
    vocab = getattr(model.config, "mtp_base_vocab_size", None) or model.config.vocab_size
    ours = {(r["batch"], r["q"]): r["ms"] for r in bench_forward_curve(model, vocab, curve_args) if r["mode"] == "ours"}
    return {
        "concurrency": concurrency,
        "cache_width": width,
        "decode_width": args.k_max,
        "prompt_width": prompt,
        "decode_ms": ours[(concurrency, args.k_max)],
        "fused_ms": ours[(concurrency, prompt)],
        "prefill_1_ms": ours[(1, prompt)],
        "prefill_c_ms": ours[(concurrency, prompt)],
    }


def main(argv=None) -> int:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    machine = describe_machine(args.device)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    prompts = held_out_prompts(args, tokenizer)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=DTYPES[args.dtype]).to(args.device).eval()
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    settings = [(n, s) for n, s in SETTINGS if n in args.settings] + args.extra
    lossless = [n for n, s in settings if s is not None and s["strategy"] == "selfspec"]
    print(
        f"machine: {machine['cpu']}, {machine['usable_cores']} usable cores, torch {machine['torch']} "
        f"({machine['torch_threads']} threads), transformers {machine['transformers']}"
        + (f", GPU {machine['gpu']}" if "gpu" in machine else "")
        + f"; load avg at start {', '.join(f'{x:.2f}' for x in machine['load_avg_start'])}"
    )
    print(
        f"model: {args.model} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M params, {args.dtype}); "
        f"{len(prompts)} requests (prompts {min(map(len, prompts))}-{max(map(len, prompts))} tokens), until EOS "
        f"or {args.max_new_tokens} tokens; k_max {args.k_max}; concurrency {args.concurrency}\n",
        flush=True,
    )
    counter = ForwardCounter(model, args.device)
    rows, tokens = [], {}
    try:
        for concurrency in args.concurrency:
            for name, setting in settings:
                row, tokens[(concurrency, name)] = run_cell(
                    model, prompts, concurrency, name, setting, args, eos, pad, counter
                )
                rows.append(row)
                print(
                    f"  c={concurrency:<3} {name:<14} {row['wall_s']:7.1f} s  {row['tokens_per_s']:7.0f} tok/s  "
                    f"{row['passes']:6d} passes (ideal {row['ideal_passes']:.0f})",
                    flush=True,
                )
    finally:
        counter.remove()
    for row in rows:
        k1 = next(r for r in rows if r["concurrency"] == row["concurrency"] and r["setting"] == K1)
        row["throughput_vs_k1"] = row["tokens_per_s"] / k1["tokens_per_s"]
        row["forward_bound_vs_k1"] = (row["tokens"] / row["forward_s"]) / (k1["tokens"] / k1["forward_s"])
        if row["setting"] == HF:  # HF greedy and our k=1 decode the same tokens but for float ties
            hf, ours = tokens[(row["concurrency"], HF)], tokens[(row["concurrency"], K1)]
            row["rows_identical_to_k1"] = f"{sum(a == b for a, b in zip(hf, ours))}/{len(ours)}"
    print_rows(rows)
    if HF in args.settings:
        same = [f"c={r['concurrency']} {r['rows_identical_to_k1']}" for r in rows if r["setting"] == HF]
        print(f"{HF} == {K1}, requests with identical tokens: {', '.join(same)}")
    largest, smallest = args.concurrency[-1], args.concurrency[0]
    checks = [  # exactness: the stream gives each request what it gets alone; selfspec gives k=1's tokens
        (f"{name}: c={largest} vs c={smallest}", (largest, name), (smallest, name))
        for name, setting in settings
        if setting is not None and largest != smallest
    ]
    checks += [(f"c={c}: {name} vs {K1} (lossless)", (c, name), (c, K1)) for name in lossless for c in args.concurrency]
    for label, got, want in checks:
        if args.dtype == "float32":  # the contract: exact in fp32 (docs/METHOD.md section 2)
            same_tokens(label, tokens[got], tokens[want])
        else:  # bf16 / fp16: a row's logits change with its batch and query width; measured, not checked
            differ = sum(a != b for a, b in zip(tokens[got], tokens[want], strict=True))
            print(
                f"{args.dtype}, not exact there (reported, not checked): {label}: {differ} of {len(tokens[got])} differ"
            )
    if args.dtype == "float32":
        print(
            f"exactness: every request's tokens at c={largest} == at c={smallest} for each of our settings"
            + (f", and {', '.join(lossless)} == our k=1's at every c" if lossless else "")
            + ": PASS"
        )
    width = round(sum(map(len, prompts)) / len(prompts) + sum(r["tokens"] for r in rows[:1]) / len(prompts))
    costs = [prefill_costs(model, prompts, c, args, width) for c in args.concurrency if c > 1]
    print_prefill_costs(costs)
    targets = evaluate_targets(rows)
    print("targets:")
    for target, measured, ok in targets:
        print(f"  {'PASS' if ok else 'MISS'}  {target}: {measured}")
    print("\nmarkdown table:\n" + markdown_table(rows))
    machine["load_avg_end"] = list(os.getloadavg())
    print(f"\nload avg at end: {', '.join(f'{x:.2f}' for x in machine['load_avg_end'])}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(
                {
                    "machine": machine,
                    "args": vars(args),
                    "rows": rows,
                    "prefill_costs": costs,
                    "targets": [{"target": t, "measured": m, "pass": ok} for t, m, ok in targets],
                },
                f,
                indent=2,
            )
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except TokensDiffer as error:
        print(f"serve.py: {error}", file=sys.stderr)
        sys.exit(1)
