"""Decoding benchmark: plain HF greedy vs our MTP decoder (k=1, Static k, ConfAdapt), side by side.

Usage (CPU, random-weight model built from config; a few minutes on 2 cores):
    HF_HUB_OFFLINE=1 .venv/bin/python bench/decode.py                          # --size small --arch qwen3
    .venv/bin/python bench/decode.py --size medium --arch llama --out /tmp/decode.json
    .venv/bin/python bench/decode.py --model outputs/tiny_cpu-mtp --sharpen 1    # a saved/exported checkpoint
    .venv/bin/python bench/decode.py --batch-sizes 1 --repeats 5 --curve-batches 1 --skip-curve
    .venv/bin/python bench/decode.py --model outputs/demo/mtp --prompts outputs/demo/data/test.jsonl \
        --prompt-template "Q: {prompt}\nA: Let's think step by step." --k-max 4 --new-tokens 64   # demo's model
GPU (H200; real hyperparameters, random weights, bf16):
    python bench/decode.py --device cuda --dtype bfloat16 --size qwen3-4b --out qwen3-4b.json
    python bench/decode.py --device cuda --dtype bfloat16 --size llama31-8b --out llama31-8b.json

What it measures, all in one process, the settings interleaved round-robin per repeat (median of repeats):
- per batch size (default 1, 4, 16), on the same model and the same left-padded random prompts, a fixed
  number of new tokens (no EOS, so every setting decodes the same tokens count): plain Hugging Face
  `model.generate(do_sample=False)`; `mtp_ds.decoding.generate` at k=1; Static k=2,3,4,8; ConfAdapt k_max 16
  at tau 0.9 and 0.8 (k_max: --k-max). Columns: tokens/s, forward passes (counted by a forward hook),
  acceleration factor (mean accepted tokens per pass), ms per pass, wall-clock speedup vs HF and vs our k=1 at
  the same batch. Also Static k=4 and ConfAdapt 0.9 of the same decoder on transformers' stock parts ("...
  stock" rows: DynamicCache, stock sdpa) against the append-in-place cache (mtp_ds/decoding/kv_cache.py) and sdpa_gqa
  attention (mtp_ds/decoding/attention.py) the decoder runs.
- the cost of one forward pass with q new query tokens (1, 2, 4, 8, 16, 32) on a cache prefilled with a fixed
  context (512), cropped back after each pass: ms and the ratio to q=1 (why MTP pays off where a decode step
  is memory-bound: the curve is nearly flat), for the stock cache + attention, DynamicCache + sdpa_gqa, and ours.
- targets, each printed PASS/MISS with its measured value: our k=1 within 5% of HF greedy (each batch size);
  at batch 1 each MTP setting's wall-clock speedup vs HF >= 0.85 x its acceleration factor; at batch 16
  ConfAdapt's speedup over batched k=1 >= 0.7 x its acceleration factor.

Random weights give near-uniform next-token distributions, so ConfAdapt would accept ~1 token per pass. The
benchmark therefore SHARPENS the model: the final RMSNorm weight is multiplied by --sharpen (this scales all
logits by exactly that factor, also with tied embeddings), and says so in its output. Use --sharpen 1 for a
trained checkpoint (--model). Acceptance on a sharpened random model is a stand-in, not a quality claim.
With a trained checkpoint, --prompts gives real prompts (a JSONL file, e.g. the demo's held-out problems, each
record's --prompt-field put through --prompt-template and the checkpoint's own tokenizer), so that acceptance is
what the model really does on its task; --k-max sets ConfAdapt's k_max to what the model was trained for.
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

import torch  # noqa: E402
from decode_inputs import (  # noqa: E402  (bench/ is on sys.path when this runs as a script)
    DTYPES, PRESETS, build_model, describe_machine, load_prompt_texts, make_prompts, text_prompts)
from decode_report import attention_ab, evaluate_targets, print_curve, print_decode_table  # noqa: E402

SETTINGS = [  # (name, kwargs for mtp_ds.decoding.generate; None = plain HF greedy)
    ("HF greedy", None),
    ("ours k=1", dict(strategy="static", k=1)),
    ("static k=2", dict(strategy="static", k=2)),
    ("static k=3", dict(strategy="static", k=3)),
    ("static k=4", dict(strategy="static", k=4)),
    ("static k=8", dict(strategy="static", k=8)),
    ("confadapt 0.9", dict(strategy="confadapt", threshold=0.9)),  # k_max: --k-max (default 16)
    ("confadapt 0.8", dict(strategy="confadapt", threshold=0.8)),
    # The same decoder on transformers' stock DynamicCache (concatenates on every pass) and stock sdpa (copies the
    # KV heads per query head when q > 1): the A/B of mtp_ds/decoding/kv_cache.py + attention.py.
    ("static k=4 stock", dict(strategy="static", k=4, stock=True)),
    ("confadapt 0.9 stock", dict(strategy="confadapt", threshold=0.9, stock=True)),
]

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="small", choices=sorted(PRESETS), help="model preset (default small)")
    p.add_argument("--arch", default=None, choices=["qwen3", "llama"],
                   help="architecture for small/medium (default qwen3; the 4b/8b presets fix their own)")
    p.add_argument("--model", default=None, help="benchmark a saved HF checkpoint dir instead of a preset")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default=None, choices=sorted(DTYPES),
                   help="default float32 on cpu, bfloat16 on cuda")
    p.add_argument("--attn", default="sdpa", help="attn_implementation (default sdpa)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's own)")
    p.add_argument("--sharpen", type=float, default=None,
                   help="multiply all logits by this (final norm weight); default 64 for random presets, 1 for --model")
    p.add_argument("--batch-sizes", default="1,4,16")
    p.add_argument("--prompt-len", type=int, default=64, help="longest prompt; rows vary in [len/2, len], left-padded")
    p.add_argument("--prompts", default=None,
                   help="JSONL of real prompts (needs --model; its tokenizer): batch b decodes the first b records")
    p.add_argument("--prompt-field", default="question", help="field of each --prompts record (default question)")
    p.add_argument("--prompt-template", default="{prompt}",
                   help="format of the prompt text, {prompt} = the field (as data.prompt_template in a recipe)")
    p.add_argument("--k-max", type=int, default=16, help="ConfAdapt's k_max (default 16)")
    p.add_argument("--new-tokens", type=int, default=128, help="fixed generation length (no EOS)")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats per setting (median reported)")
    p.add_argument("--settings", default=None,
                   help="comma-separated subset of setting names (default all): " + ", ".join(n for n, _ in SETTINGS))
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
    return args


# ---------------------------------------------------------------------------------------------------- timing

def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


class ForwardCounter:
    """Counts model forward calls and the time spent inside them (HF generate and ours alike).

    wall - forward_s is what the decoding loop costs around the model: input/mask building, cache bookkeeping,
    reading the predictions. On CUDA the hooks synchronize, which both loops do once per pass anyway.
    """

    def __init__(self, model, device: str):
        self.count = 0
        self.forward_s = 0.0
        self._start = 0.0
        self._device = device
        self.handles = [model.register_forward_pre_hook(self._pre), model.register_forward_hook(self._post)]

    def reset(self) -> None:
        self.count, self.forward_s = 0, 0.0

    def _pre(self, module, args):
        _sync(self._device)
        self._start = time.perf_counter()

    def _post(self, module, args, output):
        _sync(self._device)
        self.forward_s += time.perf_counter() - self._start
        self.count += 1

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


STOCK_SDPA = "sdpa_stock"


@contextlib.contextmanager
def stock_attention(model):
    """Run transformers' own sdpa under another name, which the decoder's switch to sdpa_gqa leaves alone."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(STOCK_SDPA, sdpa_attention_forward)
    AttentionMaskInterface.register(STOCK_SDPA, sdpa_mask)
    own = model.config._attn_implementation
    model.config._attn_implementation = STOCK_SDPA
    try:
        yield
    finally:
        model.config._attn_implementation = own


@contextlib.contextmanager
def stock_decoder(model):
    """Our decoder as it would run on transformers' stock parts: DynamicCache and the stock sdpa (the A/B rows)."""
    from transformers import DynamicCache

    import mtp_ds.decoding.decoder as decoder

    own_cache = decoder.make_cache
    decoder.make_cache = lambda reserve=0: DynamicCache()
    try:
        with stock_attention(model):
            yield
    finally:
        decoder.make_cache = own_cache


def run_setting(model, kwargs, ids, mask, args, mask_id, counter, new_tokens):
    """One timed run: (seconds, sequences as lists, forward passes, tokens_per_pass or None, forward seconds)."""
    from transformers import GenerationConfig

    from mtp_ds.decoding import generate

    _sync(args.device)
    counter.reset()
    start = time.perf_counter()
    if kwargs is None:
        config = GenerationConfig(do_sample=False, max_new_tokens=new_tokens, min_new_tokens=0, eos_token_id=None,
                                  pad_token_id=0, bos_token_id=None, num_beams=1, use_cache=True)
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
        _sync(args.device)
        seconds = time.perf_counter() - start
        return seconds, out[:, ids.shape[1]:].tolist(), counter.count, None, counter.forward_s
    if kwargs.get("strategy") == "confadapt":
        kwargs = dict(kwargs, k_max=args.k_max)
    kwargs = dict(kwargs)
    with stock_decoder(model) if kwargs.pop("stock", False) else contextlib.nullcontext():
        result = generate(model, ids, attention_mask=mask, mtp_token_id=mask_id, max_new_tokens=new_tokens,
                          eos_token_id=None, **kwargs)
    _sync(args.device)
    seconds = time.perf_counter() - start
    return seconds, result.sequences, counter.count, result.tokens_per_pass, counter.forward_s


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
            times = {name: [] for name, _ in settings}
            fwd = {name: [] for name, _ in settings}
            info = {}
            for _ in range(args.repeats):  # round-robin so drift in machine load hits every setting alike
                for name, kwargs in settings:
                    seconds, seqs, passes, per_pass, forward_s = run_setting(model, kwargs, ids, mask, args, mask_id,
                                                                             counter, args.new_tokens)
                    times[name].append(seconds)
                    fwd[name].append(forward_s)
                    info[name] = (seqs, passes, per_pass)
            base = {}
            for name, kwargs in settings:
                seqs, passes, per_pass = info[name]
                n_tokens = sum(len(s) for s in seqs)
                if per_pass is None:  # HF: one token per row per pass
                    accel = 1.0
                else:
                    accel = sum(map(sum, per_pass)) / sum(map(len, per_pass))
                wall = statistics.median(times[name])
                forward_s = fwd[name][times[name].index(wall)] if args.repeats % 2 else statistics.median(fwd[name])
                row = {"batch": batch, "setting": name, "wall_s": wall, "wall_s_all": times[name],
                       "new_tokens": n_tokens, "tokens_per_s": n_tokens / wall, "forward_passes": passes,
                       "acceleration_factor": accel, "ms_per_pass": 1000 * wall / passes,
                       "forward_s": forward_s, "forward_ms_per_pass": 1000 * forward_s / passes,
                       "other_ms_per_pass": 1000 * (wall - forward_s) / passes}
                if name in ("HF greedy", "ours k=1"):
                    base[name] = (wall, seqs)
                rows.append(row)
            for row in rows:
                if row["batch"] != batch:
                    continue
                if "HF greedy" in base:
                    row["speedup_vs_hf"] = base["HF greedy"][0] / row["wall_s"]
                if "ours k=1" in base:
                    row["speedup_vs_k1"] = base["ours k=1"][0] / row["wall_s"]
            if "HF greedy" in base and "ours k=1" in base:
                hf_seqs, k1_seqs = base["HF greedy"][1], base["ours k=1"][1]
                same = sum(a == b for a, b in zip(hf_seqs, k1_seqs))
                for row in rows:
                    if row["batch"] == batch and row["setting"] == "ours k=1":
                        row["rows_identical_to_hf"] = f"{same}/{batch}"
            print_decode_table([r for r in rows if r["batch"] == batch], flush=True)
    finally:
        counter.remove()
    return rows


@torch.inference_mode()
def bench_forward_curve(model, base_vocab, args):
    """ms of one forward with q new tokens over a cache holding `context` tokens, per batch size and mode.

    Modes, interleaved in the same loop on the same tokens: "stock" = transformers' DynamicCache and the model's
    own attention (what HF generate runs); "gqa" = DynamicCache with sdpa_gqa (mtp_ds/decoding/attention.py; only for sdpa
    models with grouped KV heads); "ours" = what the decoder runs, the append-in-place cache (mtp_ds/decoding/kv_cache.py)
    with sdpa_gqa where it applies. So the table shows what each of the two costs per pass.
    """
    from transformers import DynamicCache

    from mtp_ds.decoding.attention import IMPLEMENTATION, decoding_attention
    from mtp_ds.decoding.kv_cache import cache_argument, make_cache

    with decoding_attention(model):
        folds = model.config._attn_implementation == IMPLEMENTATION
    modes = [("stock", DynamicCache, contextlib.nullcontext)]
    if folds:
        modes.append(("gqa", DynamicCache, lambda: decoding_attention(model)))
    modes.append(("ours", lambda: make_cache(reserve=args.context + max(queries_of(args))),
                  lambda: decoding_attention(model)))
    queries = queries_of(args)
    results = []
    gen = torch.Generator().manual_seed(args.seed)
    for batch in [int(b) for b in args.curve_batches.split(",")]:
        prefix = torch.randint(4, base_vocab, (batch, args.context), generator=gen).to(args.device)
        caches = {}
        for name, new_cache, _ in modes:
            caches[name] = new_cache()
            model(input_ids=prefix, **{cache_argument(model): caches[name]}, use_cache=True, logits_to_keep=1)
        new = {q: torch.randint(4, base_vocab, (batch, q), generator=gen).to(args.device) for q in queries}
        positions = {q: torch.arange(args.context, args.context + q, device=args.device).expand(batch, -1)
                     for q in queries}

        def one(q, cache):
            # logits for all q positions: an MTP pass reads every one of them
            model(input_ids=new[q], position_ids=positions[q], **{cache_argument(model): cache}, use_cache=True,
                  logits_to_keep=q)
            cache.crop(-q)

        samples = {(name, q): [] for name, _, _ in modes for q in queries}
        for repeat in range(args.curve_repeats + 2):  # the first two rounds warm up
            for name, _, attention in modes:
                with attention():
                    for q in queries:
                        _sync(args.device)
                        start = time.perf_counter()
                        one(q, caches[name])
                        _sync(args.device)
                        if repeat >= 2:
                            samples[(name, q)].append(time.perf_counter() - start)
        assert all(cache.get_seq_length() == args.context for cache in caches.values())
        for name, _, _ in modes:
            ms1 = 1000 * statistics.median(samples[(name, queries[0])])
            for q in queries:
                ms = 1000 * statistics.median(samples[(name, q)])
                results.append({"batch": batch, "context": args.context, "q": q, "mode": name, "ms": ms,
                                "ratio_to_q1": ms / ms1, "ms_all": [1000 * s for s in samples[(name, q)]]})
    return results


def queries_of(args) -> list[int]:
    return [int(q) for q in args.queries.split(",")]


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
            raise SystemExit(f"--prompts: {args.prompts} has {len(prompt_texts)} records, fewer than the largest "
                             f"--batch-sizes entry {largest}")
        tokenizer = AutoTokenizer.from_pretrained(args.model)
    model, mask_id, base_vocab, model_info = build_model(args)
    settings = SETTINGS
    if args.settings:
        wanted = [s.strip() for s in args.settings.split(",")]
        unknown = set(wanted) - {n for n, _ in SETTINGS}
        if unknown:
            raise SystemExit(f"unknown settings {sorted(unknown)}; choose from {[n for n, _ in SETTINGS]}")
        settings = [(n, kw) for n, kw in SETTINGS if n in wanted]

    print(f"machine: {machine['cpu']}, {machine['usable_cores']} usable / {machine['logical_cores']} logical cores, "
          f"torch {machine['torch']} ({machine['torch_threads']} threads), transformers {machine['transformers']}"
          + (f", GPU {machine['gpu']}" if "gpu" in machine else "")
          + f"; load avg at start {', '.join(f'{x:.2f}' for x in machine['load_avg_start'])}")
    print(f"model: {model_info['description']}: {model_info['class']} {model_info['params'] / 1e6:.1f}M params, "
          f"{model_info['dtype']}, hidden {model_info['hidden_size']}, {model_info['num_layers']} layers, "
          f"{model_info['num_heads']}/{model_info['num_kv_heads']} heads, ffn {model_info['intermediate_size']}, "
          f"vocab {model_info['vocab_size']}, {args.attn}, device {args.device}")
    if args.sharpen != 1.0:
        print(f"NOTE: logits sharpened x{args.sharpen:g} (final norm weight scaled) so that a random model has "
              "peaked distributions and ConfAdapt accepts more than one token; acceptance is a stand-in.")
    prompts = (f"the first b prompts of {args.prompts} ({args.prompt_field!r} through {args.prompt_template!r})"
               if args.prompts else f"prompts of {args.prompt_len // 2}..{args.prompt_len} random tokens")
    print(f"decode: {prompts}, left-padded; {args.new_tokens} new tokens per row, no EOS; ConfAdapt k_max "
          f"{args.k_max}; median of {args.repeats} interleaved repeats after warm-up\n", flush=True)

    results = {"machine": machine, "model": model_info, "args": vars(args)}
    if not args.skip_curve:
        curve = bench_forward_curve(model, base_vocab, args)
        print_curve(curve)
        results["forward_curve"] = curve
    if not args.skip_decode:
        rows = bench_decode(model, mask_id, base_vocab, args, settings, prompt_texts, tokenizer)
        results["decode"] = rows
        targets = evaluate_targets(rows)
        results["targets"] = [{"target": t, "measured": m, "pass": ok} for t, m, ok in targets]
        print("targets:")
        for target, measured, ok in targets:
            print(f"  {'PASS' if ok else 'MISS'}  {target}: {measured}")
        ab = attention_ab(rows)
        results["stock_ab"] = [{"batch": b, "setting": n, "stock_over_ours": x} for b, n, x in ab]
        if ab:
            print("decoder on stock DynamicCache + sdpa vs as shipped "
                  "(wall-clock ratio stock / ours, > 1: ours faster): "
                  + "; ".join(f"batch {b} {n}: {x:.2f}" for b, n, x in ab))
    machine["load_avg_end"] = list(os.getloadavg())
    print(f"\nload avg at end: {', '.join(f'{x:.2f}' for x in machine['load_avg_end'])}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
