"""`mtp-ds generate`: decode one prompt with Static k, ConfAdapt or selfspec and show what each forward pass produced.

Usage:
    mtp-ds generate MODEL_DIR --prompt TEXT [--strategy static|confadapt|selfspec] [--k K] [--k-max K]
                    [--threshold T] [--mask-layout linear|ends|per_proposal] [--propose-threshold P]
                    [--max-groups G] [--max-new-tokens N] [--chat]
                    [--color | --no-color] [--mtp-token-id N]

Each pass's chunk is printed in its own colour (on a terminal, or with --color) with a superscript count of its
tokens (selfspec: the model's own next token underlined), then tokens per pass and tokens/s. MODEL_DIR: an
exported checkpoint (docs/DECODING.md); --k-max defaults to the k_max it was trained with. A checkpoint whose
config records no mask token (the paper authors' release) is read from its tokenizer (`<MTP>` or
`<|mtp_special_token_0|>`), or pass --mtp-token-id.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from mtp_ds.decoding.model_dir import check_model_dir
from mtp_ds.decoding.spec import DEFAULT_MASK_LAYOUT, MASK_LAYOUTS, STRATEGIES, DecodeSpec

CHUNK_COLOURS = ("\033[36m", "\033[33m", "\033[32m", "\033[35m")  # cyan, yellow, green, magenta
RESET = "\033[0m"
UNDERLINE = "\033[4m"  # selfspec: the pass's own next token (correction or bonus), after its verified proposals
SELFSPEC_LEGEND = (
    "legend: coloured = the model's proposals it verified; underlined = its own next token "
    "(correction or bonus); superscript = tokens kept per forward pass"
)
SUPERSCRIPT_DIGITS = str.maketrans("0123456789", "⁰¹²³⁴⁵⁶⁷⁸⁹")
# Files a tokenizer's `save_pretrained` writes (AutoTokenizer needs at least one). From a directory with none of
# them AutoTokenizer still returns an object, which encodes every prompt to nothing: the decoder then blames
# an empty `input_ids`.
TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json", "tokenizer.model")
# `--k-max` when neither it nor the checkpoint says (a checkpoint exported before mtp_k_max was recorded)
FALLBACK_K_MAX = 16


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mtp-ds generate", description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir", metavar="MODEL_DIR", help="an exported checkpoint (mtp-ds export's OUT_DIR)")
    parser.add_argument("--prompt", required=True, help="prompt text")
    parser.add_argument(
        "--strategy", choices=STRATEGIES, default="confadapt", help="decoding strategy (default: %(default)s)"
    )
    parser.add_argument("--k", type=int, default=1, help="tokens per pass for --strategy static (default: %(default)s)")
    parser.add_argument(
        "--k-max",
        type=int,
        default=None,
        metavar="K",
        help="largest block for --strategy confadapt; selfspec: at most K tokens per pass (K-1 proposals) "
        f"(default: the checkpoint's mtp_k_max, the k_max it was trained with; {FALLBACK_K_MAX} if it has none)",
    )
    parser.add_argument(
        "--threshold", type=float, default=0.9, help="ConfAdapt confidence threshold tau (default: %(default)s)"
    )
    parser.add_argument(
        "--mask-layout",
        choices=MASK_LAYOUTS,
        default=None,
        help=f"--strategy selfspec only: where the proposing masks sit (default: {DEFAULT_MASK_LAYOUT})",
    )
    parser.add_argument(
        "--propose-threshold",
        type=float,
        default=None,
        metavar="P",
        help="--strategy selfspec only: propose only ConfAdapt's confident run at P (default: every mask slot)",
    )
    parser.add_argument(
        "--max-groups",
        type=int,
        default=None,
        metavar="G",
        help="--strategy selfspec --mask-layout per_proposal only: mask groups only at the G likeliest stops "
        "(default: one after every proposal)",
    )
    parser.add_argument(
        "--max-new-tokens", type=int, default=256, help="most tokens to generate (default: %(default)s)"
    )
    parser.add_argument("--chat", action="store_true", help="wrap the prompt with the tokenizer's chat template")
    parser.add_argument(
        "--mtp-token-id",
        type=int,
        default=None,
        metavar="N",
        help="the mask token's id, for a checkpoint whose config records none (the paper authors' release); "
        "default: the config's mtp_token_id, else <MTP> or <|mtp_special_token_0|> in the tokenizer",
    )
    colour = parser.add_mutually_exclusive_group()
    colour.add_argument(
        "--color", action="store_true", help="ANSI colours even when stdout is not a terminal (a pipe, a file)"
    )
    colour.add_argument(
        "--no-color",
        action="store_true",
        help="no ANSI colours (also when NO_COLOR is set); default: colours only when stdout is a terminal",
    )
    return parser


def _error(message: str) -> int:
    print(f"mtp-ds generate: {message}", file=sys.stderr)
    return 2


def _prompt_ids(tokenizer, prompt: str, chat: bool) -> list[int]:
    if not chat:
        return tokenizer(prompt)["input_ids"]
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("--chat given but the tokenizer has no chat template")
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
    )
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _stop_ids(tokenizer, model) -> list[int]:
    """Stop tokens: the tokenizer's EOS plus whatever the checkpoint's generation config lists."""
    ids = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if configured is not None:
        ids.update([configured] if isinstance(configured, int) else configured)
    return sorted(ids)


def render_chunks(tokenizer, chunks: list[list[int]], colour: bool, verified: list[int] | None = None) -> str:
    """Text of the answer with each pass's chunk coloured and followed by its token count in superscript.

    `verified` (selfspec's `GenerationResult.verified_per_pass` row): per chunk, how many leading tokens were
    verified proposals; with colour, the chunk's remaining token (the model's correction or bonus) is also
    underlined. Without colour the text is the same as without `verified`.
    Chunks are cut from the decoded prefix, not decoded alone, so word-joining spaces land where the
    tokenizer puts them.
    """
    pieces, so_far, previous_text = [], [], ""

    def next_piece(tokens: list[int]) -> str:
        nonlocal previous_text
        so_far.extend(tokens)
        text = tokenizer.decode(so_far, skip_special_tokens=True)
        piece = text[len(previous_text) :] if text.startswith(previous_text) else tokenizer.decode(tokens)
        previous_text = text
        return piece

    for index, chunk in enumerate(chunks):
        count = str(len(chunk)).translate(SUPERSCRIPT_DIGITS)
        if not colour:
            pieces.append(f"{next_piece(chunk)}{count}")
            continue
        chunk_colour = CHUNK_COLOURS[index % len(CHUNK_COLOURS)]
        if verified is None:
            pieces.append(f"{chunk_colour}{next_piece(chunk)}{RESET}{count}")
            continue
        kept = min(verified[index], len(chunk)) if index < len(verified) else 0
        proposals, own = next_piece(chunk[:kept]), next_piece(chunk[kept:])
        styled = f"{chunk_colour}{proposals}{RESET}" if proposals else ""
        styled += f"{chunk_colour}{UNDERLINE}{own}{RESET}" if own else ""
        pieces.append(f"{styled}{count}")
    return "".join(pieces)


def settings_text(spec: DecodeSpec) -> str:
    """The footer's name of the decoding settings, e.g. "selfspec, k_max=4, linear; lossless: equals k=1"."""
    if spec.strategy == "static":
        return f"static, k={spec.k}"
    if spec.strategy == "confadapt":
        return f"confadapt, k_max={spec.k_max}, tau={spec.threshold}"
    proposals = "" if spec.propose_threshold is None else f", proposals at {spec.propose_threshold:g}"
    proposals += "" if spec.max_groups is None else f", {spec.max_groups} mask groups"
    return (
        f"selfspec, k_max={spec.k_max}, {spec.mask_layout}{proposals}; lossless: equals k=1 greedy decoding token "
        "for token"
    )


def trained_k_max(model_dir: Path) -> int | None:
    """The k_max the checkpoint was trained with: its config's `mtp_k_max` (recorded by the trainer since it was
    added), else the number of distinct slot tokens (`mtp_token_ids`), else None."""
    try:
        config = json.loads((model_dir / "config.json").read_text())
    except (OSError, ValueError):
        return None  # loading the model reports it
    recorded = config.get("mtp_k_max")
    if isinstance(recorded, int) and recorded >= 1:
        return recorded
    slot_ids = config.get("mtp_token_ids")
    return len(slot_ids) if isinstance(slot_ids, list) and slot_ids else None


def use_colour(args: argparse.Namespace, stream=None) -> bool:
    """--color, else not --no-color / NO_COLOR and the stream is a terminal (no escape codes in pipes and files)."""
    if args.color:
        return True
    if args.no_color or os.environ.get("NO_COLOR"):
        return False
    stream = sys.stdout if stream is None else stream
    return bool(getattr(stream, "isatty", lambda: False)())


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    selfspec_flags = (
        ("--mask-layout", args.mask_layout),
        ("--propose-threshold", args.propose_threshold),
        ("--max-groups", args.max_groups),
    )
    for flag, value in selfspec_flags:
        if value is not None and args.strategy != "selfspec":
            return _error(f"{flag} applies to --strategy selfspec only (got --strategy {args.strategy})")
    model_dir = Path(args.model_dir)
    try:  # before any model is loaded: a training checkpoint, a damaged export
        check_model_dir(model_dir)
    except ValueError as error:
        return _error(f"MODEL_DIR {error}")
    try:
        k_max = args.k_max if args.k_max is not None else trained_k_max(model_dir) or FALLBACK_K_MAX
        spec = DecodeSpec(
            strategy=args.strategy,
            k=args.k,
            k_max=max(k_max, args.k) if args.strategy == "static" else k_max,
            threshold=args.threshold,
            mask_layout=args.mask_layout or DEFAULT_MASK_LAYOUT,
            propose_threshold=args.propose_threshold,
            max_groups=args.max_groups,
        )
    except ValueError as error:
        return _error(str(error))
    if not any((model_dir / name).is_file() for name in TOKENIZER_FILES):
        return _error(
            f"MODEL_DIR {str(model_dir)!r} has no tokenizer files (none of {', '.join(TOKENIZER_FILES)}); "
            "save the tokenizer next to the model (`mtp-ds export` does)"
        )

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from mtp_ds.decoding.decoder import check_positions, generate
    from mtp_ds.tokens import AUTHORS_MASK_TOKEN, SHARED_TOKEN, adopt_mask_tokens

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        config = AutoConfig.from_pretrained(model_dir)  # never trust_remote_code: a config's auto_map is not run
    except (OSError, ValueError) as error:
        return _error(f"cannot load MODEL_DIR {str(model_dir)!r}: {str(error).splitlines()[0]}")
    try:  # the mask token into the config (a checkpoint that records none: from the tokenizer or the flag)
        mask_tokens = adopt_mask_tokens(config, tokenizer, args.mtp_token_id)
    except ValueError as error:
        return _error(f"--mtp-token-id: {error}" if args.mtp_token_id is not None else str(error))
    if mask_tokens is None and spec.block > 1:
        return _error(
            f"MODEL_DIR {str(model_dir)!r} has no mask token (no mtp_token_id in config.json, no {SHARED_TOKEN} or "
            f"{AUTHORS_MASK_TOKEN} in the tokenizer): pass --mtp-token-id N, the id of its mask token "
            "(or use --strategy static --k 1)"
        )
    try:  # before the weights load: a prompt past the model's positions is refused, not decoded into garbage
        prompt_ids = _prompt_ids(tokenizer, args.prompt, args.chat)
        check_positions(config, [len(prompt_ids)], [args.max_new_tokens], "the prompt")
    except ValueError as error:
        return _error(str(error))
    try:
        model = AutoModelForCausalLM.from_pretrained(model_dir, config=config, dtype=dtype).to(device).eval()
    except (OSError, ValueError) as error:
        return _error(f"cannot load MODEL_DIR {str(model_dir)!r}: {str(error).splitlines()[0]}")
    try:
        result = generate(
            model,
            torch.tensor([prompt_ids], device=device),
            spec,
            max_new_tokens=args.max_new_tokens,
            eos_token_id=_stop_ids(tokenizer, model),
        )
    except ValueError as error:
        return _error(str(error))

    colour = use_colour(args)
    selfspec = spec.strategy == "selfspec"
    verified = result.verified_per_pass[0] if selfspec else None
    print(render_chunks(tokenizer, result.chunks(0), colour, verified))
    if selfspec and colour:
        print(SELFSPEC_LEGEND)
    proposals = f" | {sum(verified)} of {result.num_new_tokens} tokens were verified proposals" if selfspec else ""
    print(
        f"\n{result.num_new_tokens} tokens in {result.num_forward_passes} forward passes | "
        f"acceleration factor {result.acceleration_factor:.2f} tokens/pass{proposals} | "
        f"{result.tokens_per_second:.1f} tokens/s ({settings_text(spec)})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
