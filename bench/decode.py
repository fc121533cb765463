"""Decoding benchmark: plain HF greedy vs our MTP decoder (k=1, Static k, ConfAdapt, selfspec), side by side.

Usage (what it measures, the columns, the targets and more examples: bench/README.md):
    HF_HUB_OFFLINE=1 .venv/bin/python bench/decode.py                          # --size small --arch qwen3
    .venv/bin/python bench/decode.py --model outputs/demo/mtp --prompts outputs/demo/data/test.jsonl \
        --prompt-template "Q: {prompt}\nA: Let's think step by step." --k-max 4 --new-tokens 64   # demo's model
    python bench/decode.py --device cuda --dtype bfloat16 --size qwen3-4b --out qwen3-4b.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch
from decode_curve import bench_forward_curve
from decode_inputs import (
    DTYPES,
    PRESETS,
    build_model,
    describe_machine,
    load_prompt_texts,
    make_prompts,
    text_prompts,
)
from decode_report import (
    attention_ab,
    evaluate_targets,
    markdown_summary,
    print_curve,
    print_decode_table,
)
from decode_timing import ForwardCounter, stock_decoder, sync_device

SETTINGS = [  # (name, kwargs for mtp_ds.decoding.generate; None = plain HF greedy)
    ("HF greedy", None),
    ("ours k=1", dict(strategy="static", k=1)),
    ("static k=2", dict(strategy="static", k=2)),
    ("static k=3", dict(strategy="static", k=3)),
    ("static k=4", dict(strategy="static", k=4)),
    ("static k=8", dict(strategy="static", k=8)),
    ("confadapt 0.9", dict(strategy="confadapt", threshold=0.9)),  # k_max: --k-max (default 16)
    ("confadapt 0.8", dict(strategy="confadapt", threshold=0.8)),
    # Lossless: verifies its own k_max-1 proposals (k_max: --selfspec-k-max); the bench asserts == ours k=1.
    ("selfspec linear", dict(strategy="selfspec", mask_layout="linear")),
    ("selfspec per_proposal", dict(strategy="selfspec", mask_layout="per_proposal")),
    # The same decoder on transformers' stock DynamicCache (concatenates on every pass) and stock sdpa (copies the
    # KV heads per query head when q > 1): the A/B of mtp_ds/decoding/kv_cache.py + attention.py.
    ("static k=4 stock", dict(strategy="static", k=4, stock=True)),
    ("confadapt 0.9 stock", dict(strategy="confadapt", threshold=0.9, stock=True)),
]
SELFSPEC_DEFAULT_K_MAX = 4  # cap of --selfspec-k-max's default: per_proposal's pass width grows as k_max squared
K1 = "ours k=1"  # the reference every selfspec row's tokens must equal


def is_selfspec(kwargs) -> bool:
    return kwargs is not None and kwargs.get("strategy") == "selfspec"


class TokensDiffer(SystemExit):
    """A selfspec row decoded other tokens than our k=1: the lossless contract is broken; the bench stops."""


def check_same_tokens(batch: int, name: str, seqs: list[list[int]], reference: list[list[int]]) -> str:
    """ "n/n" when every row of `seqs` equals `reference` (our k=1) token for token, else raise TokensDiffer
    naming the batch, the setting, the first row that differs and the first position where it does."""
    if len(seqs) != len(reference):
        raise TokensDiffer(f"batch {batch}: {name} returned {len(seqs)} rows, {K1} {len(reference)}")
    for row, (got, want) in enumerate(zip(seqs, reference)):
        if got != want:
            at = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
            raise TokensDiffer(
                f"batch {batch}: {name} differs from {K1} (lossless decoding must give the same tokens): row "
                f"{row} first at new token {at}: {got[at : at + 8]} vs {want[at : at + 8]} ({len(got)} vs "
                f"{len(want)} tokens)"
            )
    return f"{len(seqs)}/{len(reference)}"


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--size", default="small", choices=sorted(PRESETS), help="model preset (default small)")
    p.add_argument(
        "--arch",
        default=None,
        choices=["qwen3", "llama"],
        help="architecture for small/medium (default qwen3; the 4b/8b presets fix their own)",
    )
    p.add_argument("--model", default=None, help="benchmark a saved HF checkpoint dir instead of a preset")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default=None, choices=sorted(DTYPES), help="default float32 on cpu, bfloat16 on cuda")
    p.add_argument("--attn", default="sdpa", help="attn_implementation (default sdpa)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's own)")
    p.add_argument(
        "--sharpen",
        type=float,
        default=None,
        help="multiply all logits by this (final norm weight); default 64 for random presets, 1 for --model",
    )
    p.add_argument("--batch-sizes", default="1,4,16")
    p.add_argument("--prompt-len", type=int, default=64, help="longest prompt; rows vary in [len/2, len], left-padded")
    p.add_argument(
        "--prompts",
        default=None,
        help="JSONL of real prompts (needs --model; its tokenizer): batch b decodes the first b records",
    )
    p.add_argument("--prompt-field", default="question", help="field of each --prompts record (default question)")
    p.add_argument(
        "--prompt-template",
        default="{prompt}",
        help="format of the prompt text, {prompt} = the field (as data.prompt_template in a recipe)",
    )
    p.add_argument("--k-max", type=int, default=16, help="ConfAdapt's k_max (default 16)")
    p.add_argument(
        "--selfspec-k-max",
        type=int,
        default=None,
        help="selfspec's k_max: up to k_max tokens per pass, k_max-1 proposals verified (default: --k-max "
        "up to 4; per_proposal feeds k_max + k_max*(k_max-1) columns per row, 256 at 16)",
    )
    p.add_argument("--new-tokens", type=int, default=128, help="fixed generation length (no EOS)")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats per setting (median reported)")
    p.add_argument(
        "--settings",
        default=None,
        help="comma-separated subset of setting names (default all): " + ", ".join(n for n, _ in SETTINGS),
    )
    p.add_argument(
        "--selfspec-curve",
        default=None,
        metavar="KS",
        help="tokens per pass and query tokens per pass of selfspec (linear) at each K, e.g. 2,4,6,8,12, on the "
        "largest --batch-sizes batch; every K checked == our k=1 (fp32)",
    )
    p.add_argument("--context", type=int, default=512, help="cached context for the forward-cost curve")
    p.add_argument("--queries", default="1,2,4,8,16,32", help="new query tokens for the forward-cost curve")
    p.add_argument("--curve-batches", default="1,16", help="batch sizes for the forward-cost curve")
    p.add_argument("--curve-repeats", type=int, default=10)
    p.add_argument("--skip-curve", action="store_true")
    p.add_argument("--skip-decode", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write all results to this JSON file")
    args = p.parse_args(argv)
    if args.dtype is None:
        args.dtype = "bfloat16" if args.device.startswith("cuda") else "float32"
    if args.sharpen is None:
        args.sharpen = 1.0 if args.model else 64.0
    if args.model and not os.path.isfile(os.path.join(args.model, "config.json")):
        p.error(f"--model {args.model!r} is not a Hugging Face model directory (no config.json)")
    if args.prompts and not args.model:
        p.error("--prompts needs --model (a trained checkpoint with its tokenizer)")
    if "{prompt}" not in args.prompt_template:
        p.error(f"--prompt-template must contain {{prompt}}: {args.prompt_template!r}")
    if args.k_max < 2:
        p.error(f"--k-max must be >= 2, got {args.k_max}")
    if args.selfspec_curve is not None:
        try:
            args.selfspec_curve = sorted({int(k) for k in args.selfspec_curve.split(",")})
        except ValueError:
            p.error(f"--selfspec-curve must be comma-separated ints, got {args.selfspec_curve!r}")
        if not args.selfspec_curve or args.selfspec_curve[0] < 1:
            p.error(f"--selfspec-curve: every K must be >= 1, got {args.selfspec_curve}")
    if args.selfspec_k_max is None:
        args.selfspec_k_max = min(args.k_max, SELFSPEC_DEFAULT_K_MAX)
    if args.selfspec_k_max < 2:
        p.error(f"--selfspec-k-max must be >= 2, got {args.selfspec_k_max}")
    return args


def run_setting(model, kwargs, ids, mask, args, mask_id, counter, new_tokens) -> dict:
    """One timed run: seconds, sequences (lists), forward passes, tokens_per_pass (None for HF), forward seconds,
    query tokens (all passes; the first pass's apart) and, for selfspec, verified_per_pass."""
    from transformers import GenerationConfig

    from mtp_ds.decoding import generate

    sync_device(args.device)
    counter.reset()
    start = time.perf_counter()
    if kwargs is None:
        config = GenerationConfig(
            do_sample=False,
            max_new_tokens=new_tokens,
            min_new_tokens=0,
            eos_token_id=None,
            pad_token_id=0,
            bos_token_id=None,
            num_beams=1,
            use_cache=True,
        )
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
        sync_device(args.device)
        seconds = time.perf_counter() - start
        return dict(
            seconds=seconds,
            seqs=out[:, ids.shape[1] :].tolist(),
            passes=counter.count,
            per_pass=None,
            forward_s=counter.forward_s,
            query_tokens=counter.query_tokens,
            first_query_tokens=counter.first_query_tokens,
            verified=None,
        )
    kwargs = dict(kwargs)
    if kwargs["strategy"] == "confadapt":
        kwargs["k_max"] = args.k_max
    elif kwargs["strategy"] == "selfspec":
        kwargs["k_max"] = args.selfspec_k_max
    with stock_decoder(model) if kwargs.pop("stock", False) else contextlib.nullcontext():
        result = generate(
            model,
            ids,
            attention_mask=mask,
            mtp_token_id=mask_id,
            max_new_tokens=new_tokens,
            eos_token_id=None,
            **kwargs,
        )
    sync_device(args.device)
    seconds = time.perf_counter() - start
    # the decoder's own count of query tokens, which the hook must agree with (it saw every forward)
    assert (result.num_forward_passes, result.num_query_tokens) == (counter.count, counter.query_tokens), (
        f"decoder counted {result.num_forward_passes} passes / {result.num_query_tokens} query tokens, the forward "
        f"hook {counter.count} / {counter.query_tokens}"
    )
    return dict(
        seconds=seconds,
        seqs=result.sequences,
        passes=counter.count,
        per_pass=result.tokens_per_pass,
        forward_s=counter.forward_s,
        query_tokens=result.num_query_tokens,
        first_query_tokens=counter.first_query_tokens,
        verified=result.verified_per_pass if is_selfspec(kwargs) else None,
    )


def bench_decode(model, mask_id, base_vocab, args, settings, prompt_texts=None, tokenizer=None):
    counter = ForwardCounter(model, args.device)
    rows = []
    try:
        for batch in [int(b) for b in args.batch_sizes.split(",")]:
            if prompt_texts is not None:
                ids, mask = text_prompts(prompt_texts, batch, tokenizer, args.device)
            else:
                ids, mask = make_prompts(batch, args.prompt_len, base_vocab, 0, args.device, args.seed + batch)
            for _, kwargs in settings:  # warm-up: allocator, kernels, lazy imports
                run_setting(model, kwargs, ids, mask, args, mask_id, counter, min(8, args.new_tokens))
            runs = {name: [] for name, _ in settings}
            for _ in range(args.repeats):  # round-robin so drift in machine load hits every setting alike
                for name, kwargs in settings:
                    runs[name].append(run_setting(model, kwargs, ids, mask, args, mask_id, counter, args.new_tokens))
            batch_rows = [summarize(batch, name, runs[name], args.repeats) for name, _ in settings]
            by = {row["setting"]: row for row in batch_rows}
            for row in batch_rows:
                for base, key in (("HF greedy", "hf"), (K1, "k1")):
                    if base in by:
                        row[f"speedup_vs_{key}"] = by[base]["wall_s"] / row["wall_s"]
                        # the same ratio from the time inside forward calls alone: what it would be if the loop
                        # around the model cost nothing (each forward at the row's own query width)
                        row[f"forward_bound_vs_{key}"] = by[base]["forward_s"] / row["forward_s"]
            if "HF greedy" in by and K1 in by:
                hf_seqs, k1_seqs = runs["HF greedy"][-1]["seqs"], runs[K1][-1]["seqs"]
                by[K1]["rows_identical_to_hf"] = f"{sum(a == b for a, b in zip(hf_seqs, k1_seqs))}/{batch}"
            failures = []
            for name, kwargs in settings:  # lossless: every timed selfspec run decoded exactly our k=1 tokens
                if not is_selfspec(kwargs):
                    continue
                if K1 not in runs:
                    raise SystemExit(f"{name}: its tokens are checked against {K1!r}, which was not run")
                try:
                    for run in runs[name]:
                        by[name]["rows_identical_to_k1"] = check_same_tokens(
                            batch, name, run["seqs"], runs[K1][-1]["seqs"]
                        )
                except TokensDiffer as error:
                    same = sum(a == b for a, b in zip(runs[name][-1]["seqs"], runs[K1][-1]["seqs"]))
                    by[name]["rows_identical_to_k1"] = f"DIFFERS ({same}/{batch} same)"
                    if args.dtype == "float32":  # the contract: exact in fp32 (docs/METHOD.md, decoding in bf16)
                        failures.append(error)
                    else:  # bf16 / fp16: a row's logits change with the query width; reported, not a failure
                        print(f"{args.dtype}, not exact there (reported, not checked): {error}", flush=True)
            rows += batch_rows
            print_decode_table(batch_rows, flush=True)
            if failures:  # after the table, so that the numbers of the failing batch are still on screen
                raise failures[0]
    finally:
        counter.remove()
    return rows


def selfspec_curve(model, mask_id, base_vocab, args, prompt_texts=None, tokenizer=None) -> list[dict]:
    """Selfspec (linear) at each K of --selfspec-curve on one batch: tokens kept and query tokens per pass, the
    rows equal to our k=1 (a difference in fp32 stops the bench: the lossless contract)."""
    from mtp_ds.decoding import generate

    batch = max(int(b) for b in args.batch_sizes.split(","))
    if prompt_texts is not None:
        ids, mask = text_prompts(prompt_texts, batch, tokenizer, args.device)
    else:
        ids, mask = make_prompts(batch, args.prompt_len, base_vocab, 0, args.device, args.seed + batch)
    settings = dict(attention_mask=mask, mtp_token_id=mask_id, max_new_tokens=args.new_tokens)
    reference = generate(model, ids, strategy="static", k=1, **settings).sequences
    rows = []
    for k_max in args.selfspec_curve:
        result = generate(model, ids, strategy="selfspec", k_max=k_max, **settings)
        same = sum(a == b for a, b in zip(result.sequences, reference))
        rows.append(
            {
                "k_max": k_max,
                "tokens_per_pass": result.acceleration_factor,
                "query_tokens_per_pass": result.query_tokens_per_pass,
                "rows_identical_to_k1": f"{same}/{batch}",
            }
        )
        if same < batch and args.dtype == "float32":
            raise SystemExit(f"selfspec curve: K={k_max} differs from {K1} on {batch - same} of {batch} rows (fp32)")
    print(f"selfspec (linear) by K, batch {batch}, {args.new_tokens} new tokens:")
    print("  K   tokens/pass  query tokens/pass  rows == k=1")
    for row in rows:
        print(
            f"  {row['k_max']:<3} {row['tokens_per_pass']:11.2f}  {row['query_tokens_per_pass']:17.1f}  "
            f"{row['rows_identical_to_k1']}"
        )
    return rows


def summarize(batch: int, name: str, runs: list[dict], repeats: int) -> dict:
    """One table row from a setting's timed runs: the median wall clock and that run's counters."""
    last = runs[-1]  # decoding is deterministic: every run keeps the same tokens in the same passes
    times = [run["seconds"] for run in runs]
    wall = statistics.median(times)
    forwards = [run["forward_s"] for run in runs]
    forward_s = forwards[times.index(wall)] if repeats % 2 else statistics.median(forwards)
    passes, per_pass = last["passes"], last["per_pass"]
    n_tokens = sum(len(s) for s in last["seqs"])
    # HF: one token per row per pass
    accel = 1.0 if per_pass is None else sum(map(sum, per_pass)) / sum(map(len, per_pass))
    decode_passes = passes - 1
    row = {
        "batch": batch,
        "setting": name,
        "wall_s": wall,
        "wall_s_all": times,
        "new_tokens": n_tokens,
        "tokens_per_s": n_tokens / wall,
        "forward_passes": passes,
        "acceleration_factor": accel,
        "ms_per_pass": 1000 * wall / passes,
        "forward_s": forward_s,
        "forward_ms_per_pass": 1000 * forward_s / passes,
        "other_ms_per_pass": 1000 * (wall - forward_s) / passes,
        "query_tokens": last["query_tokens"],
        "query_tokens_per_pass": last["query_tokens"] / passes,
        "query_tokens_per_decode_pass": (
            (last["query_tokens"] - last["first_query_tokens"]) / decode_passes if decode_passes else None
        ),
    }
    if last["verified"] is not None:  # selfspec: of the kept tokens per pass, the verified proposals
        verified = last["verified"]
        row["verified_per_pass"] = sum(map(sum, verified)) / sum(map(len, verified))
    return row


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    machine = describe_machine(args.device)
    prompt_texts = tokenizer = None
    if args.prompts:  # read before the model loads: a bad file is a one-line error, not minutes in
        from transformers import AutoTokenizer

        prompt_texts = load_prompt_texts(args.prompts, args.prompt_field, args.prompt_template)
        largest = max(int(b) for b in args.batch_sizes.split(","))
        if not args.skip_decode and largest > len(prompt_texts):
            raise SystemExit(
                f"--prompts: {args.prompts} has {len(prompt_texts)} records, fewer than the largest "
                f"--batch-sizes entry {largest}"
            )
        tokenizer = AutoTokenizer.from_pretrained(args.model)
    model, mask_id, base_vocab, model_info = build_model(args)
    settings = SETTINGS
    if args.settings:
        wanted = [s.strip() for s in args.settings.split(",")]
        unknown = set(wanted) - {n for n, _ in SETTINGS}
        if unknown:
            raise SystemExit(f"unknown settings {sorted(unknown)}; choose from {[n for n, _ in SETTINGS]}")
        if any(is_selfspec(kw) for n, kw in SETTINGS if n in wanted) and K1 not in wanted:
            wanted.append(K1)  # the reference the selfspec rows are checked against
            print(f"--settings: added {K1!r}, which every selfspec row's tokens are checked against")
        settings = [(n, kw) for n, kw in SETTINGS if n in wanted]

    print(
        f"machine: {machine['cpu']}, {machine['usable_cores']} usable / {machine['logical_cores']} logical cores, "
        f"torch {machine['torch']} ({machine['torch_threads']} threads), transformers {machine['transformers']}"
        + (f", GPU {machine['gpu']}" if "gpu" in machine else "")
        + f"; load avg at start {', '.join(f'{x:.2f}' for x in machine['load_avg_start'])}"
    )
    print(
        f"model: {model_info['description']}: {model_info['class']} {model_info['params'] / 1e6:.1f}M params, "
        f"{model_info['dtype']}, hidden {model_info['hidden_size']}, {model_info['num_layers']} layers, "
        f"{model_info['num_heads']}/{model_info['num_kv_heads']} heads, ffn {model_info['intermediate_size']}, "
        f"vocab {model_info['vocab_size']}, {args.attn}, device {args.device}"
    )
    if args.sharpen != 1.0:
        print(
            f"NOTE: logits sharpened x{args.sharpen:g} (final norm weight scaled) so that a random model has "
            "peaked distributions and ConfAdapt accepts more than one token; acceptance is a stand-in."
        )
    prompts = (
        f"the first b prompts of {args.prompts} ({args.prompt_field!r} through {args.prompt_template!r})"
        if args.prompts
        else f"prompts of {args.prompt_len // 2}..{args.prompt_len} random tokens"
    )
    print(
        f"decode: {prompts}, left-padded; {args.new_tokens} new tokens per row, no EOS; ConfAdapt k_max "
        f"{args.k_max}, selfspec k_max {args.selfspec_k_max}; median of {args.repeats} interleaved repeats after "
        "warm-up\n",
        flush=True,
    )

    results = {"machine": machine, "model": model_info, "args": vars(args)}
    if not args.skip_curve:
        curve = bench_forward_curve(model, base_vocab, args)
        print_curve(curve)
        results["forward_curve"] = curve
    if args.selfspec_curve:
        results["selfspec_curve"] = selfspec_curve(model, mask_id, base_vocab, args, prompt_texts, tokenizer)
    if not args.skip_decode:
        rows = bench_decode(model, mask_id, base_vocab, args, settings, prompt_texts, tokenizer)
        results["decode"] = rows
        targets = evaluate_targets(rows)
        results["targets"] = [{"target": t, "measured": m, "pass": ok} for t, m, ok in targets]
        print("targets:")
        for target, measured, ok in targets:
            print(f"  {'PASS' if ok else 'MISS'}  {target}: {measured}")
        print(
            "\nmarkdown summary (x HF = wall-clock speedup vs HF greedy, in brackets / acceleration; q = query "
            "tokens per pass, all passes; fwd bound = x k=1 from time inside forward calls alone):"
        )
        print(markdown_summary(rows))
        ab = attention_ab(rows)
        results["stock_ab"] = [{"batch": b, "setting": n, "stock_over_ours": x} for b, n, x in ab]
        if ab:
            print(
                "decoder on stock DynamicCache + sdpa vs as shipped "
                "(wall-clock ratio stock / ours, > 1: ours faster): "
                + "; ".join(f"batch {b} {n}: {x:.2f}" for b, n, x in ab)
            )
    machine["load_avg_end"] = list(os.getloadavg())
    print(f"\nload avg at end: {', '.join(f'{x:.2f}' for x in machine['load_avg_end'])}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
