"""`mtp-ds demo`: the whole method end to end on a tiny model on a laptop CPU (10-25 minutes on 2 cores).

Why: the real recipes need GPUs and downloads; this shows on any machine that a trained model, converted by
self-distillation, decodes several tokens per forward pass at (almost) the accuracy it had. Seven stages (each
`stage_*` below says what it makes), built from the repo's real parts; each is skipped when its output is complete,
so re-running resumes. `--check` also exits 1 when a target of the method is missed (CI); time is reported only.
Options: `mtp-ds demo --help`; the stages and the table: docs/OPERATIONS.md, "The embedded demo".
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from mtp_ds.config import REPO_ROOT
from mtp_ds.demo import report as demo_report
from mtp_ds.fileio import atomic_write_json, atomic_write_text, fsync_tree

PROMPT_TEMPLATE = "Q: {prompt}\nA: Let's think step by step."  # eval/tasks/gsm8k_cot_mtp's doc_to_text
PRETRAIN_RECIPE = REPO_ROOT / "recipes" / "tiny_cpu_pretrain.yaml"
MTP_RECIPE = REPO_ROOT / "recipes" / "tiny_cpu_demo.yaml"
TASK = "gsm8k_cot_mtp"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mtp-ds demo", description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out-dir", default="outputs/demo")
    parser.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    parser.add_argument("--train-problems", type=int, default=20000)
    parser.add_argument("--test-problems", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vocab-size", type=int, default=512)
    parser.add_argument("--pretrain-steps", type=int, default=None, help="default: the pretraining recipe's")
    parser.add_argument("--mtp-steps", type=int, default=None, help="default: the MTP recipe's")
    parser.add_argument("--static-k", default="1,2,3,4")
    parser.add_argument("--thresholds", default="0.95,0.9,0.8")
    parser.add_argument("--batch-size", type=int, default=32, help="lm-eval batch size")
    parser.add_argument(
        "--eval-workers", type=int, default=2, help="lm-eval runs at a time (default 2; 1: one after another)"
    )
    parser.add_argument("--nproc", type=int, default=2, help="ranks of the MTP trainer")
    return parser


def _numbers(text: str, cast, flag: str) -> list:
    try:
        return [cast(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise SystemExit(f"mtp-ds demo: {flag}: expected a comma-separated list of numbers, got {text!r}") from None


class Timings:
    """Seconds spent per stage, summed over invocations (a resumed stage adds its remaining time)."""

    def __init__(self, path: Path):
        self.path = path
        self.seconds = json.loads(path.read_text()) if path.exists() else {}

    def add(self, stage: str, seconds: float) -> None:
        self.seconds[stage] = round(self.seconds.get(stage, 0.0) + seconds, 2)
        atomic_write_json(self.path, self.seconds, indent=2)

    def total(self) -> float:
        return sum(self.seconds.values())


def _banner(index: int, name: str, text: str) -> None:
    print(f"\n=== [{index}/7] {name}: {text}", flush=True)


def _child_env(threads: int) -> dict:
    env = dict(os.environ)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("HF_DATASETS_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("PYTHONWARNINGS", "ignore")
    env["OMP_NUM_THREADS"] = str(threads)
    return env


def stage_data(args, out: Path) -> Path:
    """1. Seeded GSM8K-style problems (`mtp_ds.demo.synth_gsm`) -> data/train.jsonl, data/test.jsonl."""
    from mtp_ds.demo.synth_gsm import write_splits

    data_dir, marker = out / "data", out / "data" / "DONE"
    settings = {"train": args.train_problems, "test": args.test_problems, "seed": args.seed}
    if marker.exists() and json.loads(marker.read_text()) == settings:
        print(f"skip: {data_dir} has {args.train_problems} train / {args.test_problems} test problems")
        return data_dir
    write_splits(data_dir, **settings)
    atomic_write_json(marker, settings)
    print(f"wrote {data_dir}/train.jsonl ({args.train_problems}) and test.jsonl ({args.test_problems})")
    return data_dir


def stage_tokenizer(args, out: Path, data_dir: Path) -> Path:
    """2. A sentencepiece BPE model (digits split) trained on the training split -> tokenizer/."""
    from mtp_ds.demo.spm_tokenizer import train_tokenizer

    tokenizer_dir = out / "tokenizer"
    if (tokenizer_dir / "tokenizer.json").exists():
        print(f"skip: {tokenizer_dir} exists")
        return tokenizer_dir
    rows = [json.loads(line) for line in (data_dir / "train.jsonl").read_text().splitlines()]
    texts = [PROMPT_TEMPLATE.replace("{prompt}", row["question"]) + " " + row["answer"] for row in rows]
    tokenizer = train_tokenizer(texts, tokenizer_dir, vocab_size=args.vocab_size)
    print(f"trained a sentencepiece BPE tokenizer ({len(tokenizer)} tokens) -> {tokenizer_dir}")
    return tokenizer_dir


def stage_pretrain(args, out: Path, data_dir: Path, tokenizer_dir: Path) -> Path:
    """3. A tiny Qwen3 trained as an ordinary next-token model (recipes/tiny_cpu_pretrain.yaml) -> teacher/;
    resumes from its last state when interrupted."""
    from mtp_ds.demo.pretrain import load_pretrain_recipe, pretrain

    overrides = [
        f"model.tokenizer={tokenizer_dir}",
        f"data.path={data_dir / 'train.jsonl'}",
        f"data.cache_dir={out / 'cache'}",
        f"pretrain.out_dir={out / 'teacher'}",
        f"pretrain.seed={args.seed}",
    ]
    if args.pretrain_steps:
        overrides.append(f"pretrain.steps={args.pretrain_steps}")
    return pretrain(load_pretrain_recipe(str(PRETRAIN_RECIPE), overrides))


def stage_mtp(args, out: Path, data_dir: Path, teacher_dir: Path) -> Path:
    """4. The real trainer on `--nproc` CPU ranks: ZeRO-3 student + DeepSpeed inference-engine teacher, hard
    teacher, k in [2, 4], random offsets (recipes/tiny_cpu_demo.yaml) -> mtp_run/; resumes when interrupted."""
    run_dir = out / "mtp_run"
    if (run_dir / "DONE").exists():
        print(f"skip: {run_dir} finished (DONE)")
        return run_dir
    overrides = [
        f"model.name_or_path={teacher_dir}",
        f"data.path={data_dir / 'train.jsonl'}",
        f"data.cache_dir={out / 'cache'}",
        f"checkpoint.dir={run_dir}",
        f"train.seed={args.seed}",
    ]
    if args.mtp_steps:
        overrides.append(f"train.steps={args.mtp_steps}")
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={args.nproc}",
        "-m",
        "mtp_ds.train",
        str(MTP_RECIPE),
        *overrides,
    ]
    env = _child_env(threads=max(1, (os.cpu_count() or 2) // args.nproc))
    import torch

    if not torch.cuda.is_available():
        env.setdefault("DS_ACCELERATOR", "cpu")
    print("$ " + " ".join(command[1:]), flush=True)
    if subprocess.run(command, env=env).returncode != 0 or not (run_dir / "DONE").exists():
        raise SystemExit(
            f"mtp-ds demo: the MTP trainer failed (see its output above; {run_dir} keeps the "
            "last checkpoint, re-run to resume)"
        )
    return run_dir


def stage_export(out: Path, run_dir: Path) -> Path:
    """5. The final checkpoint as a plain Hugging Face checkpoint -> mtp/."""
    from mtp_ds.checkpoint.export import export_checkpoint

    mtp_dir, marker = out / "mtp", out / "mtp" / "EXPORTED"
    if marker.exists():
        print(f"skip: {mtp_dir} exported")
        return mtp_dir
    checkpoint = run_dir / (run_dir / "latest_complete").read_text().strip()
    export_checkpoint(checkpoint, mtp_dir, dtype="float32")
    fsync_tree(mtp_dir)  # the exported files are on disk before the marker vouches for them
    atomic_write_text(marker, f"{checkpoint}\n")
    print(f"exported {checkpoint} -> {mtp_dir}")
    return mtp_dir


def _lm_eval_command() -> list[str]:
    script = Path(sys.executable).with_name("lm_eval")
    return [str(script)] if script.exists() else [shutil.which("lm_eval") or "lm_eval"]


def run_lm_eval(
    setting: demo_report.Setting, model_dir: Path, test_file: Path, eval_dir: Path, batch_size: int, threads: int
) -> dict:
    """One `lm_eval --model mtp` run; returns its summary row (cached in eval/<label>/row.json; lm-eval's
    per-sample outputs, --log_samples, beside it)."""
    run_dir = eval_dir / setting.label
    row_file = run_dir / "row.json"
    if row_file.exists() and (not setting.compared_sample_for_sample or sample_outputs(run_dir) is not None):
        return json.loads(row_file.read_text())
    if run_dir.exists():
        shutil.rmtree(run_dir)  # an interrupted run: start it again
    run_dir.mkdir(parents=True)
    stats_file = run_dir / "decoding_stats.json"
    command = [
        *_lm_eval_command(),
        "--model",
        "mtp",
        "--model_args",
        f"{setting.model_args(str(model_dir))},stats_path={stats_file}",
        "--device",
        "cpu",
        "--batch_size",
        str(batch_size),
        "--tasks",
        TASK,
        "--include_path",
        str(REPO_ROOT / "eval" / "tasks"),
        "--num_fewshot",
        "0",
        "--metadata",
        json.dumps({"gsm8k_path": str(test_file)}),
        "--output_path",
        str(run_dir),
        "--log_samples",
    ]
    (run_dir / "command.txt").write_text(" ".join(command) + "\n")
    with open(run_dir / "lm_eval.log", "w") as log:
        finished = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=_child_env(threads=threads))
    results = sorted(run_dir.rglob("results_*.json"))
    if finished.returncode != 0 or not results or not stats_file.exists():
        tail = (run_dir / "lm_eval.log").read_text().strip().splitlines()[-1:] or ["(no output)"]
        raise SystemExit(f"mtp-ds demo: lm_eval failed for {setting.label} (log {run_dir / 'lm_eval.log'}): {tail[0]}")
    row = demo_report.summary_row(setting, json.loads(results[-1].read_text()), json.loads(stats_file.read_text()))
    fsync_tree(run_dir)  # lm-eval's results and per-sample outputs, which the cached row stands for
    atomic_write_json(row_file, row, indent=2)
    return row


def sample_outputs(run_dir: Path) -> dict[int, str] | None:
    """doc id -> generated text from lm-eval's newest per-sample file in `run_dir` (None when it kept none)."""
    files = sorted(run_dir.rglob(f"samples_{TASK}_*.jsonl"))
    if not files:
        return None
    outputs = {}
    for line in files[-1].read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            outputs[int(record["doc_id"])] = json.dumps(record["resps"])
    return outputs


def eval_settings(args) -> list[demo_report.Setting]:
    """The lm-eval runs asked for; a one-line SystemExit naming the flag on a bad value (checked up front)."""
    static_k = _numbers(args.static_k, int, "--static-k")
    thresholds = _numbers(args.thresholds, float, "--thresholds")
    if any(k < 1 for k in static_k):
        raise SystemExit(f"mtp-ds demo: --static-k: every k must be >= 1, got {args.static_k!r}")
    if any(not 0.0 <= tau <= 1.0 for tau in thresholds):
        raise SystemExit(f"mtp-ds demo: --thresholds: every threshold must be in [0, 1], got {args.thresholds!r}")
    return demo_report.demo_settings(static_k, thresholds, k_max=_recipe_k_max())


def stage_eval(args, out: Path, teacher_dir: Path, mtp_dir: Path, data_dir: Path) -> list[dict]:
    """6. The stock `lm_eval --model mtp` CLI on the held-out split (eval/tasks/gsm8k_cot_mtp, 0-shot) -> eval/:
    the teacher at k=1, the MTP model at Static k=1..4, ConfAdapt at several thresholds and selfspec at the
    recipe's k_max (lossless: its per-sample outputs are compared with k=1's). One run per setting, skipped when
    its row.json is there (the two compared runs also need their per-sample outputs, so an older run of them
    without any is redone), `--eval-workers` at a time (each process on its own share of the cores: most of a
    run is lm-eval's start-up, which overlaps); rows come back in the settings' order."""
    from concurrent.futures import ThreadPoolExecutor, as_completed

    from tqdm.auto import tqdm

    settings = eval_settings(args)
    workers = max(1, min(args.eval_workers, len(settings)))
    threads = max(1, (os.cpu_count() or 2) // workers)

    def evaluate(setting: demo_report.Setting) -> dict:
        model_dir = teacher_dir if setting.model == "teacher" else mtp_dir
        return run_lm_eval(setting, model_dir, data_dir / "test.jsonl", out / "eval", args.batch_size, threads)

    progress = tqdm(total=len(settings), desc="lm_eval --model mtp", unit="run", dynamic_ncols=True)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(evaluate, setting): setting for setting in settings}
        for future in as_completed(futures):
            row = future.result()
            progress.update(1)
            progress.write(
                f"{futures[future].label}: accuracy {row['accuracy']:.3f}, acceleration {row['acceleration']:.2f}, "
                f"{row['tokens_per_second']:.0f} tokens/s"
            )
    progress.close()
    rows = [future.result() for future in futures]  # insertion order: the settings' order
    for setting, row in zip(settings, rows):
        if setting.spec.strategy == "selfspec":
            row["outputs_differing_from_k1"] = demo_report.differing_outputs(
                sample_outputs(out / "eval" / setting.label),
                sample_outputs(out / "eval" / demo_report.MTP_K1.label),
            )
    return demo_report.add_speedups(rows)


def _recipe_k_max() -> int:
    from mtp_ds.config import load_recipe

    return load_recipe(MTP_RECIPE, validate=False).packing.k_max


def chunk_example(mtp_dir: Path, test_file: Path, out: Path, k_max: int) -> str:
    """One held-out problem decoded with ConfAdapt 0.9, each forward pass's chunk coloured."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mtp_ds.decoding import generate
    from mtp_ds.decoding.cli import render_chunks

    tokenizer = AutoTokenizer.from_pretrained(mtp_dir)
    model = AutoModelForCausalLM.from_pretrained(mtp_dir, dtype=torch.float32).eval()
    question = json.loads(test_file.read_text().splitlines()[0])["question"]
    prompt = PROMPT_TEMPLATE.replace("{prompt}", question)
    ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    result = generate(
        model,
        ids,
        strategy="confadapt",
        k_max=k_max,
        threshold=demo_report.TARGET_THRESHOLD,
        max_new_tokens=256,
        eos_token_id=tokenizer.eos_token_id,
    )
    footer = (
        f"\n[{result.num_new_tokens} tokens in {result.num_forward_passes} forward passes: "
        f"{result.acceleration_factor:.2f} tokens/pass; ConfAdapt tau={demo_report.TARGET_THRESHOLD}, "
        f"k_max={k_max}; superscripts: tokens accepted per pass]"
    )
    for name, ansi in (("chunk_example.txt", False), ("chunk_example.ansi", True)):
        atomic_write_text(out / name, prompt + "\n" + render_chunks(tokenizer, result.chunks(0), ansi) + footer + "\n")
    colour = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
    return prompt + "\n" + render_chunks(tokenizer, result.chunks(0), colour) + footer


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for flag in ("train_problems", "test_problems", "vocab_size", "batch_size", "nproc", "eval_workers"):
        if getattr(args, flag) < 1:
            print(f"mtp-ds demo: --{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}", file=sys.stderr)
            return 2
    eval_settings(args)  # bad --static-k / --thresholds stop here, before anything is written
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    timings = Timings(out / "timings.json")

    def timed(index, name, text, function, *function_args):
        _banner(index, name, text)
        started = time.perf_counter()
        try:
            return function(*function_args)
        finally:
            timings.add(name, time.perf_counter() - started)

    data_dir = timed(1, "data", "GSM8K-style problems", stage_data, args, out)
    tokenizer_dir = timed(2, "tokenizer", "sentencepiece BPE", stage_tokenizer, args, out, data_dir)
    teacher_dir = timed(
        3, "pretrain", f"NTP teacher ({PRETRAIN_RECIPE.name})", stage_pretrain, args, out, data_dir, tokenizer_dir
    )
    run_dir = timed(
        4,
        "mtp",
        f"MTP conversion on {args.nproc} ranks ({MTP_RECIPE.name})",
        stage_mtp,
        args,
        out,
        data_dir,
        teacher_dir,
    )
    mtp_dir = timed(5, "export", "Hugging Face checkpoint", stage_export, out, run_dir)
    rows = timed(
        6,
        "eval",
        f"lm_eval on {args.test_problems} held-out problems",
        stage_eval,
        args,
        out,
        teacher_dir,
        mtp_dir,
        data_dir,
    )

    def summarise():
        """7. summary.json (the table), targets.json, pareto.png, chunk_example.txt."""
        from mtp_ds.evaluation.pareto import plot_pareto

        example = chunk_example(
            mtp_dir, data_dir / "test.jsonl", out, min(_recipe_k_max(), demo_report.CONFADAPT_K_MAX)
        )
        plot = plot_pareto(demo_report.plot_rows(rows), out / "pareto.png", title="mtp-ds demo")
        return example, plot

    example, plot = timed(7, "summary", "table, Pareto plot, chunk example", summarise)
    targets = demo_report.check_targets(rows, test_problems=args.test_problems)
    summary = demo_report.write_summary(out, rows, targets, timings.seconds)
    print("\n" + example + "\n")
    print(demo_report.format_table(rows) + "\n")
    print(demo_report.format_targets(targets))
    print(demo_report.format_time(demo_report.time_report(timings.total())))
    print(
        f"\n{summary}, {out / 'targets.json'}, {plot}, {out / 'chunk_example.txt'}; "
        f"stage seconds {timings.seconds} (total {timings.total() / 60:.1f} min)"
    )
    return 1 if args.check and not all(t["passed"] for t in targets) else 0


if __name__ == "__main__":
    sys.exit(main())
