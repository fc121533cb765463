"""`mtp-ds generate`: decode one prompt with Static k or ConfAdapt and show what each forward pass produced.

Usage:
    mtp-ds generate MODEL_DIR --prompt TEXT [--strategy static|confadapt] [--k K] [--k-max K]
                    [--threshold T] [--max-new-tokens N] [--chat] [--no-color]

Each pass's chunk is printed in alternating colours followed by a superscript count of its tokens (like the
paper's Figure 1), so one sees where the model emitted many tokens at once; then the acceleration factor
(mean tokens per forward pass) and the throughput. MODEL_DIR is a local Hugging Face checkpoint whose config
records `mtp_token_id` (as written by `mtp_ds.tokens.add_mtp_tokens` and the exporter).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

CHUNK_COLOURS = ("\033[36m", "\033[33m", "\033[32m", "\033[35m")  # cyan, yellow, green, magenta
RESET = "\033[0m"
SUPERSCRIPT_DIGITS = str.maketrans("0123456789", "⁰¹²³⁴⁵⁶⁷⁸⁹")
# Files a tokenizer's `save_pretrained` writes (AutoTokenizer needs at least one). From a directory with none of
# them AutoTokenizer still returns an object, which encodes every prompt to nothing: the decoder then blames
# an empty `input_ids`.
TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json", "tokenizer.model")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mtp-ds generate", description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir", metavar="MODEL_DIR", help="local Hugging Face checkpoint directory")
    parser.add_argument("--prompt", required=True, help="prompt text")
    parser.add_argument("--strategy", choices=("static", "confadapt"), default="confadapt")
    parser.add_argument("--k", type=int, default=1, help="tokens per pass for --strategy static")
    parser.add_argument("--k-max", type=int, default=16, help="largest block for --strategy confadapt")
    parser.add_argument("--threshold", type=float, default=0.9, help="ConfAdapt confidence threshold tau")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--chat", action="store_true", help="wrap the prompt with the tokenizer's chat template")
    parser.add_argument("--no-color", action="store_true", help="no ANSI colours (also when NO_COLOR is set)")
    return parser


def _error(message: str) -> int:
    print(f"mtp-ds generate: {message}", file=sys.stderr)
    return 2


def _prompt_ids(tokenizer, prompt: str, chat: bool) -> list[int]:
    if not chat:
        return tokenizer(prompt)["input_ids"]
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("--chat given but the tokenizer has no chat template")
    text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                         add_generation_prompt=True)
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


def render_chunks(tokenizer, chunks: list[list[int]], colour: bool) -> str:
    """Text of the answer with each pass's chunk coloured and followed by its token count in superscript.

    Chunks are cut from the decoded prefix, not decoded alone, so word-joining spaces land where the
    tokenizer puts them.
    """
    pieces, so_far, previous_text = [], [], ""
    for index, chunk in enumerate(chunks):
        so_far += chunk
        text = tokenizer.decode(so_far, skip_special_tokens=True)
        piece = text[len(previous_text):] if text.startswith(previous_text) else tokenizer.decode(chunk)
        previous_text = text
        count = str(len(chunk)).translate(SUPERSCRIPT_DIGITS)
        if colour:
            pieces.append(f"{CHUNK_COLOURS[index % len(CHUNK_COLOURS)]}{piece}{RESET}{count}")
        else:
            pieces.append(f"{piece}{count}")
    return "".join(pieces)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    model_dir = Path(args.model_dir)
    if not (model_dir / "config.json").is_file():
        return _error(f"MODEL_DIR {str(model_dir)!r} is not a Hugging Face model directory (no config.json)")
    if not any((model_dir / name).is_file() for name in TOKENIZER_FILES):
        return _error(f"MODEL_DIR {str(model_dir)!r} has no tokenizer files (none of {', '.join(TOKENIZER_FILES)}); "
                      "save the tokenizer next to the model (`mtp-ds export` does)")

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mtp_ds.decoding.decoder import generate

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device).eval()
    except (OSError, ValueError) as error:
        return _error(f"cannot load MODEL_DIR {str(model_dir)!r}: {str(error).splitlines()[0]}")
    try:
        prompt_ids = _prompt_ids(tokenizer, args.prompt, args.chat)
        result = generate(
            model, torch.tensor([prompt_ids], device=device), mtp_token_id=None, strategy=args.strategy,
            k=args.k, k_max=max(args.k_max, args.k) if args.strategy == "static" else args.k_max,
            threshold=args.threshold, max_new_tokens=args.max_new_tokens,
            eos_token_id=_stop_ids(tokenizer, model),
        )
    except ValueError as error:
        return _error(str(error))

    colour = not args.no_color and not os.environ.get("NO_COLOR")
    print(render_chunks(tokenizer, result.chunks(0), colour))
    print(f"\n{result.num_new_tokens} tokens in {result.num_forward_passes} forward passes | "
          f"acceleration factor {result.acceleration_factor:.2f} tokens/pass | "
          f"{result.tokens_per_second:.1f} tokens/s ({args.strategy}, "
          f"{'k=' + str(args.k) if args.strategy == 'static' else f'k_max={args.k_max}, tau={args.threshold}'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
