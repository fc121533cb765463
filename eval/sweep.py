"""Sweep decoding settings of one MTP checkpoint with lm-eval: accuracy vs acceleration (docs/METHOD.md section 6).

Usage:
    python eval/sweep.py --pretrained DIR --out_dir outputs/sweep \
        [--tasks gsm8k_cot_mtp] [--include_path eval/tasks] [--metadata '{"gsm8k_path": "test.jsonl"}'] \
        [--settings static:1,static:3,confadapt:0.9,selfspec:4] \
        | [--static_k 1,2,3,4,5] [--thresholds 0.9,0.8] [--selfspec_k_max 4,16] [--k_max 16] \
        [--limit 100] [--num_fewshot 8] [--gen_kwargs max_gen_toks=256] \
        [--batch_size 1] [--device cuda] [--dtype bfloat16] [--metric exact_match,flexible-extract]

Default settings: the paper's sweep, Static k=1..5 and ConfAdapt at 14 thresholds (k_max 16), plus selfspec
(lossless self-verifying decoding, mtp_ds/decoding/selfspec.py) at k_max 16: its accuracy is Static k=1's,
so its point shows how much acceleration is free. `--settings` replaces them by an explicit list (`static:K`,
`confadapt:TAU` at --k_max, `selfspec:K` with K its k_max, `selfspec:K:per_proposal` for the other mask
layout); `--static_k` / `--thresholds` / `--selfspec_k_max` choose subsets of each kind (an empty value drops
that kind; --selfspec_k_max defaults to --k_max). Static k=1 is always run first (added if missing): it is
the baseline of the wall-clock speedup, which must be measured in the same process on the same machine.

Why one process and one loaded model: the checkpoint is loaded once (`MTPLM`), and each setting is one
`lm_eval.simple_evaluate` call on it with fresh decoding statistics, so settings differ only in decoding.

Writes to --out_dir: sweep.csv and sweep.json (one row per setting and task: accuracy +- stderr,
acceleration factor +- std, forward passes, input columns per forward pass, verified proposals per pass
(selfspec), tokens/s, wall-clock speedup = tokens/s over Static k=1's tokens/s), results_<setting>.json
(lm-eval's full results per setting) and pareto.png (see pareto_plot.py).
"""

import argparse
import csv
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pareto_plot import plot_pareto

from mtp_ds.evaluation.pareto import DEFAULT_MASK_LAYOUT, setting_label

PAPER_STATIC_K = (1, 2, 3, 4, 5)
PAPER_THRESHOLDS = (0.995, 0.99, 0.98, 0.97, 0.96, 0.95, 0.9, 0.87, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6)
DEFAULT_TASK = "gsm8k_cot_mtp"
DEFAULT_METRIC = "exact_match,flexible-extract"
BASELINE = ("static", 1)
MASK_LAYOUTS = ("linear", "per_proposal")  # mtp_ds.decoding.MASK_LAYOUTS, without importing torch to parse args
STATS_COLUMNS = (
    "acceleration_factor",
    "acceleration_factor_std",
    "forward_passes",
    "sequence_passes",
    "query_tokens_per_forward_pass",
    "verified_tokens_per_pass",
    "generated_tokens",
    "tokens_per_second",
    "generate_seconds",
)
CSV_COLUMNS = (
    "task",
    "setting",
    "strategy",
    "k",
    "k_max",
    "threshold",
    "mask_layout",
    "accuracy",
    "accuracy_stderr",
    "acceleration_factor",
    "acceleration_factor_std",
    "forward_passes",
    "sequence_passes",
    "query_tokens_per_forward_pass",
    "verified_tokens_per_pass",
    "generated_tokens",
    "tokens_per_second",
    "wall_clock_speedup",
    "generate_seconds",
    "run_seconds",
    "samples",
)


def selfspec_setting(k_max: int, mask_layout: str = DEFAULT_MASK_LAYOUT) -> dict:
    return {"strategy": "selfspec", "k_max": k_max, "mask_layout": mask_layout}


def parse_setting(text: str, k_max: int) -> dict:
    """`static:K`, `confadapt:TAU` or `selfspec:K[:LAYOUT]` -> a setting dict; one-line error otherwise."""
    strategy, _, value = text.strip().partition(":")
    try:
        if strategy == "static" and int(value) >= 1:
            return {"strategy": "static", "k": int(value)}
        if strategy == "confadapt" and 0.0 <= float(value) <= 1.0:
            return {"strategy": "confadapt", "threshold": float(value), "k_max": k_max}
        block, _, layout = value.partition(":")
        if strategy == "selfspec" and int(block) >= 1 and (layout or DEFAULT_MASK_LAYOUT) in MASK_LAYOUTS:
            return selfspec_setting(int(block), layout or DEFAULT_MASK_LAYOUT)
    except ValueError:
        pass
    raise SystemExit(
        f"--settings: bad entry {text!r} (expected static:K, confadapt:TAU or selfspec:K, "
        f"optionally selfspec:K:LAYOUT with LAYOUT one of {', '.join(MASK_LAYOUTS)})"
    )


def _number_list(text: str, cast, flag: str) -> list:
    try:
        return [cast(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise SystemExit(f"{flag}: expected a comma-separated list of numbers, got {text!r}") from None


def chosen_settings(args) -> list[dict]:
    if args.settings:
        settings = [parse_setting(item, args.k_max) for item in args.settings.split(",") if item.strip()]
    else:
        settings = [{"strategy": "static", "k": k} for k in _number_list(args.static_k, int, "--static_k")]
        settings += [
            {"strategy": "confadapt", "threshold": tau, "k_max": args.k_max}
            for tau in _number_list(args.thresholds, float, "--thresholds")
        ]
        selfspec_k_max = str(args.k_max) if args.selfspec_k_max is None else args.selfspec_k_max
        settings += [selfspec_setting(k) for k in _number_list(selfspec_k_max, int, "--selfspec_k_max")]
    baseline = {"strategy": BASELINE[0], "k": BASELINE[1]}
    settings = [s for s in settings if s != baseline]
    return [baseline, *settings]


def table_rows(results: dict, setting: dict, metric: str, run_seconds: float) -> list[dict]:
    """One row per task of one lm-eval results dict (decoding statistics from config.mtp_decoding)."""
    decoding = results["config"]["mtp_decoding"]
    metric_name, _, filter_name = metric.partition(",")
    stderr_key = f"{metric_name}_stderr,{filter_name}" if filter_name else f"{metric_name}_stderr"
    rows = []
    for task, task_results in results["results"].items():
        stats = decoding["per_task"].get(task, decoding)
        stderr = task_results.get(stderr_key)
        rows.append(
            {
                "task": task,
                "setting": setting_label(setting),
                "strategy": setting["strategy"],
                "k": setting.get("k"),
                "k_max": setting.get("k_max"),
                "threshold": setting.get("threshold"),
                "mask_layout": setting.get("mask_layout"),
                "accuracy": task_results.get(metric),
                "accuracy_stderr": stderr if isinstance(stderr, (int, float)) else None,
                **{key: stats.get(key) for key in STATS_COLUMNS},
                "run_seconds": run_seconds,
                "samples": task_results.get("sample_len"),
            }
        )
    return rows


def add_speedups(rows: list[dict]) -> None:
    baseline_tps = {row["task"]: row["tokens_per_second"] for row in rows if row["setting"] == "static_k1"}
    for row in rows:
        base = baseline_tps.get(row["task"])
        row["wall_clock_speedup"] = row["tokens_per_second"] / base if base else None


def write_tables(rows: list[dict], out_dir: Path, header: dict) -> None:
    with open(out_dir / "sweep.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows({key: row.get(key) for key in CSV_COLUMNS} for row in rows)
    (out_dir / "sweep.json").write_text(json.dumps({**header, "rows": rows}, indent=2, default=str) + "\n")


def warm_up(lm, settings: list[dict], new_tokens: int = 8) -> None:
    """Run each strategy (and selfspec mask layout: they take different attention paths) once on a short prompt,
    so the baseline's tokens/s does not pay first-call costs."""
    import torch

    context = torch.tensor([lm.tok_encode("Q: What is 2 + 3?\nA: Let's think step by step.")], device=lm.device)
    for setting in {(setting["strategy"], setting.get("mask_layout")): setting for setting in settings}.values():
        lm.set_decoding(**setting)
        lm._model_generate(context, max_length=context.shape[1] + new_tokens, stop=[])
    lm.reset_stats()


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pretrained", required=True, help="MTP checkpoint directory (or Hub id)")
    parser.add_argument("--out_dir", required=True, type=Path)
    parser.add_argument("--tasks", default=DEFAULT_TASK, help="comma-separated lm-eval task names")
    parser.add_argument("--include_path", default=str(Path(__file__).resolve().parent / "tasks"))
    parser.add_argument("--metadata", default=None, help='JSON for the tasks, e.g. \'{"gsm8k_path": "x.jsonl"}\'')
    parser.add_argument(
        "--settings", default=None, help="explicit list: static:K,confadapt:TAU,selfspec:K[:per_proposal],..."
    )
    parser.add_argument("--static_k", default=",".join(map(str, PAPER_STATIC_K)))
    parser.add_argument("--thresholds", default=",".join(map(str, PAPER_THRESHOLDS)))
    parser.add_argument(
        "--selfspec_k_max",
        default=None,
        help="selfspec blocks (k_max) of the default sweep, comma-separated; default: --k_max",
    )
    parser.add_argument("--k_max", type=int, default=16, help="ConfAdapt's k_max (and selfspec's by default)")
    parser.add_argument("--limit", type=float, default=None, help="examples per task (lm-eval --limit)")
    parser.add_argument("--num_fewshot", type=int, default=None)
    parser.add_argument("--gen_kwargs", default=None, help="lm-eval --gen_kwargs, e.g. max_gen_toks=256")
    parser.add_argument("--metric", default=DEFAULT_METRIC, help="results key to report as accuracy")
    parser.add_argument("--batch_size", default="1")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--dtype", default="auto")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    metadata = json.loads(args.metadata) if args.metadata else {}
    settings = chosen_settings(args)
    args.out_dir.mkdir(parents=True, exist_ok=True)

    import lm_eval
    import torch
    from lm_eval.tasks import TaskManager
    from tqdm import tqdm

    from mtp_ds.evaluation.lm_eval_model import MTPLM

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    lm = MTPLM(pretrained=args.pretrained, batch_size=args.batch_size, device=device, dtype=args.dtype)
    warm_up(lm, settings)
    task_manager = TaskManager(include_path=args.include_path, metadata=metadata)
    tasks = [task.strip() for task in args.tasks.split(",") if task.strip()]
    header = {
        "model": args.pretrained,
        "tasks": tasks,
        "metric": args.metric,
        "limit": args.limit,
        "num_fewshot": args.num_fewshot,
        "gen_kwargs": args.gen_kwargs,
        "device": device,
    }
    rows: list[dict] = []
    progress = tqdm(settings, desc="sweep settings", unit="setting")
    for setting in progress:
        progress.set_postfix_str(setting_label(setting))
        lm.set_decoding(**setting)
        lm.reset_stats()
        started = time.perf_counter()
        results = lm_eval.simple_evaluate(
            model=lm,
            tasks=tasks,
            task_manager=task_manager,
            limit=args.limit,
            num_fewshot=args.num_fewshot,
            gen_kwargs=args.gen_kwargs,
            log_samples=False,
        )
        run_seconds = time.perf_counter() - started
        (args.out_dir / f"results_{setting_label(setting)}.json").write_text(
            json.dumps(results, indent=2, default=str) + "\n"
        )
        rows.extend(table_rows(results, setting, args.metric, run_seconds))
        add_speedups(rows)
        write_tables(rows, args.out_dir, header)  # after every setting, so a killed sweep keeps its rows
    plot = plot_pareto(rows, args.out_dir / "pareto.png", title=Path(args.pretrained).name, metric_label=args.metric)
    print(f"wrote {args.out_dir / 'sweep.csv'}, {args.out_dir / 'sweep.json'}, {plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
