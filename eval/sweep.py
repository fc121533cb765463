"""Sweep decoding settings of one MTP checkpoint with lm-eval: accuracy vs acceleration (docs/METHOD.md section 6).

Usage:
    python eval/sweep.py --pretrained DIR --out_dir outputs/sweep [--tasks gsm8k_cot_mtp] [--limit 100] \
        [--settings static:1,static:3,confadapt:0.9,selfspec:4 | --static_k 1,2 --thresholds 0.9,0.8 --selfspec_k_max 4]

Default: the paper's sweep (Static k=1..5, ConfAdapt at 14 thresholds, k_max 16) plus selfspec at k_max 16, on one
loaded model; Static k=1 always runs first (the wall-clock baseline). `--recipe NAME` takes the paper's evaluation
settings for the model that recipe trains (chat template, multi-turn few-shot, dtype). A setting whose
results_<setting>.json in --out_dir was written under the same header (model, tasks, limit, few-shot, gen_kwargs,
dtype, chat flags, batch size, ...) is read back, not run again (--restart runs everything). Writes sweep.csv,
sweep.json, results_<setting>.json and pareto.png to --out_dir (eval/README.md has every flag and column).
"""

import argparse
import csv
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pareto_plot import plot_pareto

from mtp_ds.decoding.spec import DecodeSpec

PAPER_STATIC_K = (1, 2, 3, 4, 5)
PAPER_THRESHOLDS = (0.995, 0.99, 0.98, 0.97, 0.96, 0.95, 0.9, 0.87, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6)
DEFAULT_TASK = "gsm8k_cot_mtp"
DEFAULT_METRIC = "exact_match,flexible-extract"
BASELINE = DecodeSpec(strategy="static", k=1)  # the wall-clock speedup's reference, always run first
DEFAULT_BATCH_SIZE = "16"
# Today's behaviour, and what a flag left unset falls back to without --recipe.
PLAIN_EVAL = {"apply_chat_template": False, "fewshot_as_multiturn": False, "dtype": "auto"}
# The paper's evaluation settings per training recipe (recipes/<name>.yaml). The authors evaluate the Llama model
# with its chat template, the few-shot examples as a multi-turn conversation, and in float32 (ConfAdapt at
# tau >= 0.99 is dtype-sensitive); it was trained with the chat template on. For Qwen3 the paper says nothing
# about chat template or dtype: it was trained with the chat template off (BOS + query + "\n\n"), so we keep
# today's behaviour (plain few-shot prompt, checkpoint dtype). The tiny CPU recipes: today's behaviour.
LLAMA_EVAL = {"apply_chat_template": True, "fewshot_as_multiturn": True, "dtype": "float32"}
RECIPE_EVAL = {
    "llama31_8b_magpie_metamath": LLAMA_EVAL,
    "llama31_8b_magpie_ablation": LLAMA_EVAL,
    "qwen3_4b_metamath": PLAIN_EVAL,
    "tiny_cpu": PLAIN_EVAL,
    "tiny_cpu_demo": PLAIN_EVAL,
    "tiny_cpu_pretrain": PLAIN_EVAL,
}
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
    "propose_threshold",
    "max_groups",
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


def parse_setting(text: str, k_max: int) -> DecodeSpec:
    """One --settings entry (`DecodeSpec.parse`: static:K, confadapt:TAU, selfspec:K[:LAYOUT][:p=P][:g=G])."""
    try:
        return DecodeSpec.parse(text, k_max)
    except ValueError as error:
        raise SystemExit(f"--settings: {error}") from None


def _number_list(text: str, cast, flag: str) -> list:
    try:
        return [cast(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise SystemExit(f"{flag}: expected a comma-separated list of numbers, got {text!r}") from None


def chosen_settings(args) -> list[DecodeSpec]:
    if args.settings:
        entries = [item for item in args.settings.split(",") if item.strip()]
    else:
        selfspec_k_max = str(args.k_max) if args.selfspec_k_max is None else args.selfspec_k_max
        entries = [f"static:{k}" for k in _number_list(args.static_k, int, "--static_k")]
        entries += [f"confadapt:{tau}" for tau in _number_list(args.thresholds, float, "--thresholds")]
        entries += [f"selfspec:{k}" for k in _number_list(selfspec_k_max, int, "--selfspec_k_max")]
    settings = [parse_setting(entry, args.k_max) for entry in entries]
    return [BASELINE, *(spec for spec in settings if spec.label != BASELINE.label)]


def table_rows(results: dict, spec: DecodeSpec, metric: str, run_seconds: float) -> list[dict]:
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
                "setting": spec.label,
                **{
                    key: spec.settings().get(key)
                    for key in ("strategy", "k", "k_max", "threshold", "mask_layout", "propose_threshold", "max_groups")
                },
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


def resolve_eval_settings(args) -> None:
    """Fill --apply_chat_template / --fewshot_as_multiturn / --dtype left unset: from --recipe's row of RECIPE_EVAL,
    else today's behaviour (no chat template, dtype auto); --fewshot_as_multiturn then follows the chat template
    (lm-eval's own default is True, which only has an effect with a chat template)."""
    recipe = Path(args.recipe).stem if args.recipe else None
    if recipe is not None and recipe not in RECIPE_EVAL:
        raise SystemExit(f"--recipe: unknown recipe {args.recipe!r} (one of {', '.join(sorted(RECIPE_EVAL))})")
    defaults = RECIPE_EVAL[recipe] if recipe else PLAIN_EVAL
    args.recipe = recipe
    if args.apply_chat_template is None:
        args.apply_chat_template = defaults["apply_chat_template"]
    if args.fewshot_as_multiturn is None:
        args.fewshot_as_multiturn = defaults["fewshot_as_multiturn"] if recipe else args.apply_chat_template
    if args.dtype is None:
        args.dtype = defaults["dtype"]


def run_header(args, tasks: list[str], metadata: dict, device: str) -> dict:
    """What a results_<setting>.json must have been written under to be resumed (the metric is not in it: rows
    are read back with the current --metric)."""
    return {
        "model": args.pretrained,
        "tasks": tasks,
        "limit": args.limit,
        "num_fewshot": args.num_fewshot,
        "gen_kwargs": args.gen_kwargs,
        "dtype": args.dtype,
        "apply_chat_template": args.apply_chat_template,
        "fewshot_as_multiturn": args.fewshot_as_multiturn,
        "batch_size": str(args.batch_size),
        "device": device,
        "metadata": metadata,
        "include_path": args.include_path,
        **({"mtp_token_id": args.mtp_token_id} if args.mtp_token_id is not None else {}),
    }


def results_path(out_dir: Path, spec: DecodeSpec) -> Path:
    return out_dir / f"results_{spec.label}.json"


def load_finished(out_dir: Path, spec: DecodeSpec, header: dict) -> tuple[dict, float] | None:
    """(results, run_seconds) of a finished setting written under `header`, else None (missing, unreadable, from
    an older sweep without a header, or another header: then it runs again and is overwritten)."""
    path = results_path(out_dir, spec)
    try:
        results = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    sweep = results.get("mtp_sweep") if isinstance(results, dict) else None
    if not isinstance(sweep, dict) or sweep.get("header") != json.loads(json.dumps(header, default=str)):
        return None
    if sweep.get("setting") != spec.label or "results" not in results:
        return None
    return results, float(sweep.get("run_seconds") or 0.0)


def save_finished(out_dir: Path, spec: DecodeSpec, header: dict, results: dict, run_seconds: float) -> None:
    """lm-eval's results dict plus `mtp_sweep` (header, setting, run seconds), written atomically: a sweep killed
    mid-write leaves no half file that a resume would trust."""
    record = {**results, "mtp_sweep": {"header": header, "setting": spec.label, "run_seconds": run_seconds}}
    path = results_path(out_dir, spec)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2, default=str) + "\n")
    tmp.replace(path)


def format_seconds(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def warm_up(lm, settings: list[DecodeSpec], new_tokens: int = 8) -> None:
    """Run each strategy (and selfspec mask layout: they take different attention paths) once on a short prompt,
    so the baseline's tokens/s does not pay first-call costs."""
    import torch

    context = torch.tensor([lm.tok_encode("Q: What is 2 + 3?\nA: Let's think step by step.")], device=lm.device)
    for spec in {(spec.strategy, spec.settings().get("mask_layout")): spec for spec in settings}.values():
        lm.set_decoding(spec)
        lm._model_generate(context, max_length=context.shape[1] + new_tokens, stop=[])
    lm.reset_stats()


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pretrained", required=True, help="MTP checkpoint directory (or Hub id)")
    parser.add_argument(
        "--mtp_token_id",
        type=int,
        default=None,
        help="the mask token's id, for a checkpoint whose config records none (the paper authors' release); "
        "default: the config's, else <MTP> or <|mtp_special_token_0|> in the tokenizer",
    )
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
    parser.add_argument(
        "--batch_size",
        default=DEFAULT_BATCH_SIZE,
        help=f"rows in flight (default {DEFAULT_BATCH_SIZE}): MTPLM streams each task's requests through one "
        "continuous-batching generate_many with this many rows, so a full 8B sweep fits in a 12 h job (at 1 it "
        "takes about 10-12 h). tokens/s and the wall-clock speedups are then measured at this load; use 1 for "
        "single-sequence latency (bf16 rows can differ in the last bits with the batch; float32 does not)",
    )
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument(
        "--recipe",
        default=None,
        help="training recipe the checkpoint comes from (name or recipes/NAME.yaml): the paper's evaluation "
        f"defaults for it ({', '.join(sorted(RECIPE_EVAL))}); explicit flags below override them",
    )
    parser.add_argument(
        "--dtype",
        default=None,
        choices=("auto", "bfloat16", "float16", "float32"),
        help="model dtype; default: the recipe's (float32 for Llama), else auto (the checkpoint's)",
    )
    parser.add_argument(
        "--apply_chat_template",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="lm-eval apply_chat_template; default: the recipe's (on for Llama), else off",
    )
    parser.add_argument(
        "--fewshot_as_multiturn",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="lm-eval fewshot_as_multiturn (only has an effect with a chat template); default: the recipe's, "
        "else the same as --apply_chat_template",
    )
    parser.add_argument(
        "--restart", action="store_true", help="run every setting again, even those finished in --out_dir"
    )
    args = parser.parse_args(argv)
    resolve_eval_settings(args)
    return args


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
    tasks = [task.strip() for task in args.tasks.split(",") if task.strip()]
    run_key = run_header(args, tasks, metadata, device)
    header = {**run_key, "metric": args.metric, "recipe": args.recipe}
    finished = {} if args.restart else {spec.label: load_finished(args.out_dir, spec, run_key) for spec in settings}
    pending = [spec for spec in settings if not finished.get(spec.label)]
    if len(pending) < len(settings):
        print(
            f"resuming: {len(settings) - len(pending)} of {len(settings)} settings already in {args.out_dir} "
            "(--restart runs them again)"
        )
    lm = task_manager = None
    mask = {"mtp_token_id": args.mtp_token_id} if args.mtp_token_id is not None else {}  # a model arg when given
    if pending:
        lm = MTPLM(pretrained=args.pretrained, batch_size=args.batch_size, device=device, dtype=args.dtype, **mask)
        warm_up(lm, pending)
        task_manager = TaskManager(include_path=args.include_path, metadata=metadata)
    rows: list[dict] = []
    measured: list[float] = []
    left = len(pending)
    estimate = None  # known after the first setting this run measures (the baseline, unless it was resumed)
    progress = tqdm(settings, desc="sweep settings", unit="setting")
    for spec in progress:
        done = finished.get(spec.label)
        if done:
            results, run_seconds = done
        else:
            progress.set_postfix_str(f"{spec.label}, about {estimate} left" if estimate else spec.label)
            lm.set_decoding(spec)
            lm.reset_stats()
            started = time.perf_counter()
            results = lm_eval.simple_evaluate(
                model=lm,
                tasks=tasks,
                task_manager=task_manager,
                limit=args.limit,
                num_fewshot=args.num_fewshot,
                gen_kwargs=args.gen_kwargs,
                apply_chat_template=args.apply_chat_template,
                fewshot_as_multiturn=args.fewshot_as_multiturn,
                log_samples=False,
            )
            run_seconds = time.perf_counter() - started
            save_finished(args.out_dir, spec, run_key, results, run_seconds)
            measured.append(run_seconds)
            left -= 1
            if left:
                # the mean of this run's settings so far x those left (the first estimate: the baseline's time)
                estimate = format_seconds(sum(measured) / len(measured) * left)
                progress.write(
                    f"{spec.label} took {format_seconds(run_seconds)}; {left} settings left, about {estimate}"
                )
        rows.extend(table_rows(results, spec, args.metric, run_seconds))
        add_speedups(rows)
        write_tables(rows, args.out_dir, header)  # after every setting, so a killed sweep keeps its rows
    plot = plot_pareto(rows, args.out_dir / "pareto.png", title=Path(args.pretrained).name, metric_label=args.metric)
    print(f"wrote {args.out_dir / 'sweep.csv'}, {args.out_dir / 'sweep.json'}, {plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
