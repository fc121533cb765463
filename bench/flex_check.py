"""sdpa + dense mask vs FlexAttention + BlockMask: the same MTP loss on one packed micro-batch of a model shape.

Usage (repo root; why and what it checks: bench/README.md):
    python bench/flex_check.py --device cuda --size qwen3-4b --dtype bfloat16 --out flex.json   # the GPU check
    python bench/flex_check.py --device cpu --size small --dtype float32                        # forward only
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch
from decode_inputs import DTYPES, PRESETS

EOS = 2


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="small", choices=sorted(PRESETS))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=160)
    parser.add_argument("--k-max", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="write the result to this JSON file")
    return parser.parse_args(argv)


def packed_batch(args, *, base_vocab: int, mask_id: int):
    from mtp_ds.batching import KOffsetSampler, collate
    from mtp_ds.layout import pack

    regions = args.seq_len // (2 * args.k_max)
    pad_to = -(-(args.seq_len + regions * (args.k_max - 1)) // 128) * 128  # as mtp_ds.config.PackingPlan
    generator = torch.Generator().manual_seed(args.seed)
    ids = torch.randint(4, base_vocab, (args.micro_batch, args.seq_len), generator=generator)
    ids[0, args.seq_len // 2] = EOS  # one sample ends early: the rest of its row is padding
    draws = KOffsetSampler(k_min=2, k_max=args.k_max, per_sequence_k=True, seed=args.seed).sample(0, args.micro_batch)
    packs = [
        pack(ids[row], k=k, offset=offset, mtp_token_id=mask_id, k_max=args.k_max, eos_token_id=EOS)
        for row, (k, offset) in enumerate(draws)
    ]
    return collate(packs, pad_token_id=0, pad_to=pad_to).to(args.device), draws


def loss_and_grad_norm(model, teacher, batch, mask_id: int, backward: bool):
    from mtp_ds.objective import ObjectiveConfig, mtp_objective

    model.zero_grad(set_to_none=True)
    with torch.set_grad_enabled(backward):
        output = mtp_objective(model, teacher, batch, ObjectiveConfig(kind="hard"), mask_token_ids=(mask_id,))
    if not backward:
        return float(output.loss), None
    output.loss.backward()
    norm = torch.linalg.vector_norm(
        torch.stack([p.grad.float().norm() for p in model.parameters() if p.grad is not None])
    )
    return float(output.loss), float(norm)


def main(argv=None) -> int:
    args = parse_args(argv)
    from transformers import AutoModelForCausalLM

    from mtp_ds.models.teacher import LocalTeacher
    from mtp_ds.models.tiny import tiny_model_config

    preset = dict(PRESETS[args.size])
    arch = preset.pop("arch", "qwen3")
    preset["vocab_size"] = preset.get("vocab_size", 8192) + 1  # room for the mask token
    mask_id = preset["vocab_size"] - 1
    torch.manual_seed(args.seed)
    started = time.perf_counter()
    config = tiny_model_config(arch, **preset)
    with torch.device(args.device):
        model = AutoModelForCausalLM.from_config(config, dtype=DTYPES[args.dtype], attn_implementation="sdpa")
    model.config.use_cache = False
    teacher = LocalTeacher(model)  # the same weights: the frozen copy at step 0
    batch, draws = packed_batch(args, base_vocab=mask_id, mask_id=mask_id)
    backward = args.device != "cpu"
    results = {}
    for attention in ("sdpa", "flex_attention"):
        model.set_attn_implementation(attention)
        begin = time.perf_counter()
        loss, grad_norm = loss_and_grad_norm(model, teacher, batch, mask_id, backward)
        results[attention] = {"loss": loss, "grad_norm": grad_norm, "seconds": time.perf_counter() - begin}
    loss_gap = abs(results["sdpa"]["loss"] - results["flex_attention"]["loss"]) / abs(results["sdpa"]["loss"])
    tolerance = 1e-2 if args.dtype == "bfloat16" else 1e-4
    report = {
        "size": args.size,
        "device": args.device,
        "dtype": args.dtype,
        "packed_length": batch.input_ids.shape[1],
        "draws": draws,
        "results": results,
        "relative_loss_gap": loss_gap,
        "tolerance": tolerance,
        "backward": backward,
        "passed": loss_gap <= tolerance,
        "seconds": time.perf_counter() - started,
    }
    if backward:
        grads = results["sdpa"]["grad_norm"], results["flex_attention"]["grad_norm"]
        report["relative_grad_norm_gap"] = abs(grads[0] - grads[1]) / grads[0]
        report["passed"] = report["passed"] and report["relative_grad_norm_gap"] <= tolerance
    print(json.dumps(report, indent=2))
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(report, handle, indent=2)
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
