"""The demo's MTP conversion on one device, exported: a model with real acceptance for bench/serve.py on a GPU.

Usage (repo root; the demo's teacher and data: outputs/demo after `mtp-ds demo`, a few MB that travel with a run):
    python bench/trained_model.py --device cuda --out /tmp/trained --json trained.json
    python bench/trained_model.py --device cpu --teacher DIR --data FILE --steps 3 --out DIR   # toy sizes
Runs recipes/tiny_cpu_demo.yaml on one rank (torchrun), exports the last checkpoint in fp32 to OUT/mtp and puts the
training data beside it (OUT/data: serve.py holds its prompts out of it); --json gets the steps, the seconds and
the last logged metrics.
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

REPO = Path(__file__).resolve().parent.parent
RECIPE = REPO / "recipes" / "tiny_cpu_demo.yaml"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--teacher", default=str(REPO / "outputs" / "demo" / "teacher"), help="a plain causal LM dir")
    parser.add_argument("--data", default=str(REPO / "outputs" / "demo" / "data" / "train.jsonl"))
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--steps", type=int, default=None, help="default: the recipe's (1000)")
    parser.add_argument("--out", required=True, help="a new or empty directory")
    parser.add_argument("--json", default=None, help="write the summary here")
    args = parser.parse_args(argv)
    for flag, path in (("--teacher", Path(args.teacher) / "config.json"), ("--data", Path(args.data))):
        if not path.is_file():
            parser.error(f"{flag}: {path} does not exist (run `mtp-ds demo` first, or pass {flag})")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    run_dir, export_dir, data_dir = out / "mtp_run", out / "mtp", out / "data"
    overrides = [
        f"model.name_or_path={args.teacher}",
        f"data.path={args.data}",
        f"data.cache_dir={out / 'cache'}",
        f"checkpoint.dir={run_dir}",
        "logging.tensorboard=false",
    ]
    if args.steps:
        overrides += [f"train.steps={args.steps}", f"checkpoint.every={args.steps}", "train.eval_every=0"]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1"]
    command += ["-m", "mtp_ds.train", str(RECIPE), *overrides]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env["PYTHONPATH"] = f"{REPO}{os.pathsep}{env['PYTHONPATH']}" if env.get("PYTHONPATH") else str(REPO)
    if args.device == "cpu":
        env["DS_ACCELERATOR"] = "cpu"
    else:
        env.pop("DS_ACCELERATOR", None)
    print("$ " + " ".join(command[1:]), flush=True)
    started = time.perf_counter()
    if subprocess.run(command, env=env, cwd=REPO).returncode != 0 or not (run_dir / "DONE").exists():
        print(f"trained_model: the trainer failed (its output is above; {run_dir})", file=sys.stderr)
        return 1
    train_seconds = time.perf_counter() - started

    sys.path.insert(0, str(REPO))
    from mtp_ds.checkpoint.export import export_checkpoint

    checkpoint = run_dir / (run_dir / "latest_complete").read_text().strip()
    started = time.perf_counter()
    export_checkpoint(checkpoint, export_dir, dtype="float32")
    export_seconds = time.perf_counter() - started
    data_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(args.data, data_dir / "train.jsonl")
    if (Path(args.data).parent / "test.jsonl").is_file():  # the demo's held-out split: serve.py checks it
        shutil.copyfile(Path(args.data).parent / "test.jsonl", data_dir / "test.jsonl")

    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    trained = [r for r in records if "loss" in r]
    summary = {
        "device": args.device,
        "teacher": args.teacher,
        "steps": trained[-1]["step"] if trained else 0,
        "train_seconds": round(train_seconds, 1),
        "seconds_per_step": round(sum(r.get("step_seconds", 0.0) for r in trained) / max(len(trained), 1), 4),
        "export_seconds": round(export_seconds, 1),
        "export": str(export_dir),
        "last_metrics": trained[-1] if trained else None,
    }
    print(json.dumps(summary, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
