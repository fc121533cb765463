"""bench/decode.py's forward-cost curve: ms of one forward with q new query tokens on a prefilled cache.

Why apart: it is its own measurement (no decoding), printed beside the decode table; MTP pays off where the
curve is flat.
"""

from __future__ import annotations

import contextlib
import statistics
import time

import torch
from decode_timing import sync_device  # bench/ is on sys.path when decode.py runs as a script


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
    modes.append(
        ("ours", lambda: make_cache(reserve=args.context + max(queries_of(args))), lambda: decoding_attention(model))
    )
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
        positions = {
            q: torch.arange(args.context, args.context + q, device=args.device).expand(batch, -1) for q in queries
        }

        def one(q, cache, new=new, positions=positions):
            # logits for all q positions: an MTP pass reads every one of them
            model(
                input_ids=new[q],
                position_ids=positions[q],
                **{cache_argument(model): cache},
                use_cache=True,
                logits_to_keep=q,
            )
            cache.crop(-q)

        samples = {(name, q): [] for name, _, _ in modes for q in queries}
        for repeat in range(args.curve_repeats + 2):  # the first two rounds warm up
            for name, _, attention in modes:
                with attention():
                    for q in queries:
                        sync_device(args.device)
                        start = time.perf_counter()
                        one(q, caches[name])
                        sync_device(args.device)
                        if repeat >= 2:
                            samples[(name, q)].append(time.perf_counter() - start)
        assert all(cache.get_seq_length() == args.context for cache in caches.values())
        for name, _, _ in modes:
            ms1 = 1000 * statistics.median(samples[(name, queries[0])])
            for q in queries:
                ms = 1000 * statistics.median(samples[(name, q)])
                results.append(
                    {
                        "batch": batch,
                        "context": args.context,
                        "q": q,
                        "mode": name,
                        "ms": ms,
                        "ratio_to_q1": ms / ms1,
                        "ms_all": [1000 * s for s in samples[(name, q)]],
                    }
                )
    return results


def queries_of(args) -> list[int]:
    return [int(q) for q in args.queries.split(",")]
