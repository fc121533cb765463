"""See what the model sees: a packed MTP sequence and its attention mask, as text or as a PNG.

Usage:
    mtp-ds show-layout                                  # a demo sequence of 24 tokens, k=3, k_max=4
    mtp-ds show-layout --length 40 --k 4 --k-max 4 --offset 2 --bidirectional --png   # -> outputs/layout.png
From Python, `render_text(packed, tokenizer)` and `render_png(packed, path, tokenizer)` take any `PackedSequence`
from `mtp_ds.layout.pack` (like the paper's Figures 2-4).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from mtp_ds.layout import IGNORE_INDEX, PackedSequence, pack

DEFAULT_PNG = "outputs/layout.png"  # `--png` without a path: outputs/ is git-ignored (created if missing)


def token_roles(packed: PackedSequence) -> list[str]:
    """'gt', 'anchor r', 'mask r.j' or 'pad' per packed token."""
    roles = ["pad" if not valid else "gt" for valid in packed.valid.tolist()]
    for region, slots in enumerate(packed.slot_index.tolist()):
        roles[slots[0]] = f"anchor {region}"
        for j, index in enumerate(slots[1:], start=1):
            roles[index] = f"mask {region}.{j}"
    return roles


def _token_text(token_id: int, tokenizer) -> str:
    if tokenizer is None:
        return str(token_id)
    return tokenizer.convert_ids_to_tokens(int(token_id))


def render_text(packed: PackedSequence, tokenizer=None) -> str:
    """One line per packed token (index, token, position, role, slot target), then the mask grid."""
    roles = token_roles(packed)
    targets = {}
    for region, slots in enumerate(packed.slot_index.tolist()):
        for j, index in enumerate(slots):
            target = int(packed.target_ids[region, j])
            targets[index] = "-" if target == IGNORE_INDEX else _token_text(target, tokenizer)
    lines = [
        f"k={packed.k} offset={packed.offset} regions={packed.num_regions} bidirectional={packed.bidirectional}",
        f"{'idx':>4} {'token':>10} {'pos':>4}  {'role':<10} predicts",
    ]
    for index, (token_id, position) in enumerate(zip(packed.input_ids.tolist(), packed.position_ids.tolist())):
        lines.append(
            f"{index:>4} {_token_text(token_id, tokenizer):>10} {position:>4}  {roles[index]:<10} "
            f"{targets.get(index, '')}"
        )
    lines.append("")
    lines.append("attention (row = query, column = key; # = may attend, . = blocked)")
    for index, row in enumerate(packed.attention_mask.tolist()):
        lines.append(f"{index:>4} " + "".join("#" if allowed else "." for allowed in row) + f"  {roles[index]}")
    return "\n".join(lines)


def render_png(packed: PackedSequence, path: str, tokenizer=None) -> None:
    """The attention mask as an image, keys and queries labelled and coloured by role."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    roles = token_roles(packed)
    length = len(roles)
    colour_of_region = plt.get_cmap("tab10")
    image = np.ones((length, length, 3))
    for query, row in enumerate(packed.attention_mask.tolist()):
        for key, allowed in enumerate(row):
            if allowed:
                role = roles[query]
                image[query, key] = (
                    (0.25, 0.25, 0.25)
                    if role == "gt" or role.startswith("anchor")
                    else colour_of_region(int(role.split()[1].split(".")[0]) % 10)[:3]
                )
    labels = [
        f"{_token_text(t, tokenizer)}@{p}" for t, p in zip(packed.input_ids.tolist(), packed.position_ids.tolist())
    ]
    size = max(4.0, 0.22 * length)
    figure, axes = plt.subplots(figsize=(size, size))
    axes.imshow(image, interpolation="nearest")
    axes.set_xticks(range(length), labels, rotation=90, fontsize=6)
    axes.set_yticks(range(length), [f"{label} ({role})" for label, role in zip(labels, roles)], fontsize=6)
    axes.set_xlabel("key (token@position)")
    axes.set_ylabel("query")
    axes.set_title(
        f"MTP packed layout: k={packed.k}, offset={packed.offset}\n"
        "dark: ground-truth queries, colour: mask queries of one region",
        fontsize=9,
    )
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def _bad_flag(args: argparse.Namespace) -> str | None:
    """What is wrong with the flags, as one line, before anything is packed, printed or written; None if nothing.

    pack() drops every anchor at or past the sample's end (its EOS, else its length), so an --offset there would
    show a sequence without a single MTP region."""
    if args.png is not None:
        png, folder = Path(args.png), Path(args.png).parent
        try:
            if args.png == DEFAULT_PNG and not folder.exists():
                folder = Path(".")  # outputs/ is created just before the PNG is written
            elif not folder.is_dir():
                return f"--png {args.png}: directory {str(folder)!r} does not exist"
            if png.is_dir():
                return f"--png {args.png}: is a directory, give a file name"
            exists = png.exists()
        except OSError as error:  # e.g. a name longer than the file system allows
            return f"--png {args.png}: cannot write it: {error}"
        # os.access is also False for root on a read-only mount
        if exists and not os.access(png, os.W_OK):
            return f"--png {args.png}: is not writable (read-only, or not yours)"
        if not exists and not os.access(folder, os.W_OK | os.X_OK):
            return f"--png {args.png}: directory {str(folder)!r} is not writable (read-only, or not yours)"
    if args.eos_at is not None and not 1 <= args.eos_at < args.length:
        return (
            f"--eos-at {args.eos_at}: must be in [1, {args.length - 1}] (inside --length {args.length}, after token 0)"
        )
    end, limit = (args.length, "--length") if args.eos_at is None else (args.eos_at, "--eos-at")
    if args.length >= 1 and not 0 <= args.offset < end:
        return (
            f"--offset {args.offset}: the first anchor must lie before the sample's end ({limit} {end}), "
            f"so --offset must be in [0, {end - 1}]"
        )
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mtp-ds show-layout", description=__doc__.split("\n\n")[0])
    parser.add_argument("--length", type=int, default=24, help="ground-truth tokens (ids 0..length-1)")
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--k-max", type=int, default=4)
    parser.add_argument("--offset", type=int, default=1)
    parser.add_argument("--eos-at", type=int, default=None, help="put an EOS (id -1 shown as 'EOS') at this index")
    parser.add_argument("--bidirectional", action="store_true")
    parser.add_argument(
        "--png",
        nargs="?",
        const=DEFAULT_PNG,
        default=None,
        help=f"also write the mask as a PNG (default {DEFAULT_PNG})",
    )
    args = parser.parse_args(argv)
    problem = _bad_flag(args)
    if problem:
        print(f"mtp-ds show-layout: {problem}", file=sys.stderr)
        return 2
    import torch

    token_ids = torch.arange(args.length)
    eos_id = None
    if args.eos_at is not None:
        eos_id = args.length + 1
        token_ids[args.eos_at] = eos_id
    try:
        packed = pack(
            token_ids,
            k=args.k,
            offset=args.offset,
            mtp_token_id=args.length,
            k_max=args.k_max,
            bidirectional=args.bidirectional,
            eos_token_id=eos_id,
        )
    except ValueError as error:
        print(f"mtp-ds show-layout: {error}", file=sys.stderr)
        return 2
    print(render_text(packed))
    if args.png:
        try:
            Path(args.png).parent.mkdir(parents=True, exist_ok=True)  # the default's outputs/
            render_png(packed, args.png)
        except OSError as error:  # a full disk, a read-only mount the checks above could not see
            print(f"mtp-ds show-layout: --png {args.png}: cannot write it: {error}", file=sys.stderr)
            return 2
        print(f"wrote {args.png}")
    return 0
