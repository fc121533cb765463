#!/usr/bin/env bash
# The prepared H200 check: the GPU-only paths in one script, one JSON and one log (docs/PERFORMANCE.md).
#
#   bash bench/gpu_check.sh --prepare               # on a machine with the package registries: wheels -> .whl/
#   bash bench/gpu_check.sh [--out DIR]             # on a bare CUDA machine (.whl/ carried along): < 8 minutes
#   bash bench/gpu_check.sh --steps flex,decode_8b  # only these steps
#   bash bench/gpu_check.sh --device cpu [--out DIR]   # the same steps at toy sizes on CPU (plumbing check)
#   bash bench/gpu_check.sh --dry-run [--device cpu]   # print the steps and their commands, run nothing
#
# Steps, each under its own time limit; each step's record is appended to DIR/gpu_check.jsonl as soon as it ends
# (a run cut short keeps the steps it finished), DIR/gpu_check.json sums them up, all output is in DIR/gpu_check.log:
#   tests       pytest -m cuda: the CUDA variants (mask-token rows drawn on the GPU, decoding exactness, the tiny
#               trainer on one GPU with NCCL)
#   flex        bench/flex_check.py: sdpa vs FlexAttention loss and gradient on one packed micro-batch of the
#               Qwen3-4B shape, random bf16 weights
#   train_sdpa  bench/train_step.py: 20 steps of the Qwen3-4B shape (the paper's step: 128 x 160, k in [2,16]),
#               ZeRO-3 student + inference-engine teacher on one GPU: s/step, peak memory, MFU
#   train_flex  the same with FlexAttention, packed length padded to one bucket: s/step and recompiles (want 0)
#   decode_4b / decode_8b   bench/decode.py on the qwen3-4b and llama31-8b shapes at batch 1 and 16
#   trained_model  bench/trained_model.py: the demo's MTP conversion (its teacher and data, outputs/demo/{teacher,data},
#               carried along) on one GPU, exported: a model with real acceptance, not random weights
#   serve_bf16 / serve_fp32   bench/serve.py on that model at c=1/16/64: the first GPU wall clock of a trained MTP model
# The limits sum to more than one 8-minute command: run two, `--steps trained` first (tests + the trained model
# and its serving), then `--steps shapes` (the paper's shapes, random weights) in what is left of the lease.
# On the device machine the wheels in .whl/ (what its image lacks: DeepSpeed, datasets and their few missing
# dependencies) are installed into /tmp/site; mtp-ds itself runs from the checkout (PYTHONPATH).
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
DEVICE=cuda
OUT=${OUT:-outputs/gpu_check}
MODE=run
ONLY=""
while [ $# -gt 0 ]; do
    case "$1" in
        --prepare) MODE=prepare ;;
        --dry-run) MODE=dry-run ;;
        --device) DEVICE=$2; shift ;;
        --out) OUT=$2; shift ;;
        --steps) ONLY=$2; shift ;;
        *) echo "gpu_check.sh: unknown argument $1 (see the header of bench/gpu_check.sh)" >&2; exit 2 ;;
    esac
    shift
done
case "$DEVICE" in cuda|cpu) ;; *) echo "gpu_check.sh: --device must be cuda or cpu, got $DEVICE" >&2; exit 2 ;; esac
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}

# ---------------------------------------------------------------------------------------------- prepare --
# Versions: the ones this checkout's .venv runs, so the GPU runs what CI tested.
WHEELS=(deepspeed datasets dill multiprocess hjson pydantic pydantic-core annotated-types typing-inspection)
if [ "$MODE" = prepare ]; then
    mkdir -p .whl
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
    for name in "${WHEELS[@]}"; do
        version=$("$PYTHON" -m pip show "$name" 2>/dev/null | sed -n 's/^Version: //p')
        [ -n "$version" ] || { echo "gpu_check.sh: $name is not installed in $PYTHON's environment" >&2; exit 2; }
        if [ "$name" = deepspeed ]; then  # an sdist only: build its pure-python wheel here (ops are JIT-built there)
            DS_BUILD_OPS=0 "$PYTHON" -m pip wheel -q --no-deps --no-build-isolation -w .whl "deepspeed==$version" || exit 1
        else
            "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
                --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
                --platform any -d .whl "$name==$version" || exit 1
        fi
    done
    du -ch .whl/*.whl | tail -n 1
    [ -f outputs/demo/teacher/config.json ] || echo "gpu_check.sh: no outputs/demo/teacher: run \`mtp-ds demo\` for the trained_model step" >&2
    echo "carry .whl and the demo's teacher and data to the device machine: run(command='bash bench/gpu_check.sh --steps trained --out \$OUT', carry=['.whl', 'outputs/demo/teacher', 'outputs/demo/data'])"
    exit 0
fi

# ---------------------------------------------------------------------------------------------- the steps --
if [ "$DEVICE" = cuda ]; then
    SIZE_4B=qwen3-4b; SIZE_8B=llama31-8b; DTYPE=bfloat16
    # flex vs sdpa in fp32: their loss and gradient agree to 1e-7 there (the rule is the same); in bf16 the two
    # kernels' rounding alone gave a 2.3% grad-norm gap on the random 4B, above any fixed tolerance
    TRAIN_ARGS=(--model qwen3-4b --device cuda --k 16 --steps 5 --warmup 1 --no-memory-check
                --override train.deepspeed_overrides.optimizer.params.torch_adam=true)
    FLEX_TRAIN_ARGS=(--model qwen3-4b --device cuda --k 16 --steps 3 --warmup 1 --no-memory-check --attn flex_attention
                     --override train.deepspeed_overrides.optimizer.params.torch_adam=true)
    DECODE_ARGS=(--batch-sizes 1,16 --new-tokens 64 --repeats 1 --curve-repeats 2 --curve-batches 1,16)
    DECODE_4B_ARGS=(--batch-sizes 1,16 --new-tokens 64 --repeats 1 --skip-curve)  # the 8B step draws the curve
    # Two H200 runs (Dec 4 2026): tests 41 s; flex 31 s (bf16) / 24 s (fp32); decode_8b 52 s; train_sdpa builds
    # the 4B in 24 s (on the GPU; on the host it did not finish in 120 s), then a random k per step meant a
    # warm-up step per shape (> 126 s), so one k (the recipes' k_max) and 5 steps; decode_4b with its curve > 75 s
    LIMITS=(tests=60 flex=45 train_sdpa=110 train_flex=70 decode_4b=80 decode_8b=70
            trained_model=100 serve_bf16=120 serve_fp32=120)
    TRAINED_ARGS=()  # the demo's recipe as it is: 500 steps
    SERVE_ARGS=(--requests 64 --max-new-tokens 64 --concurrency 1,16,64)  # never run yet: limits are guesses
else  # toy sizes: the same commands end to end on CPU (FlexAttention there is forward only)
    SIZE_4B=small; SIZE_8B=small; DTYPE=float32
    TRAIN_ARGS=(--model tiny --device cpu --steps 2 --warmup 1 --no-memory-check)
    FLEX_TRAIN_ARGS=()
    DECODE_ARGS=(--batch-sizes 1,2 --new-tokens 8 --repeats 1 --skip-curve)
    DECODE_4B_ARGS=("${DECODE_ARGS[@]}")
    LIMITS=(tests=300 flex=300 train_sdpa=300 train_flex=1 decode_4b=300 decode_8b=300
            trained_model=300 serve_bf16=300 serve_fp32=300)
    TRAINED_ARGS=(--steps 3)
    SERVE_ARGS=(--requests 4 --max-new-tokens 8 --concurrency 1,2)
fi
# the trained model's inputs: the demo's teacher and data unless given (tests point them at toy ones)
TRAINED_TEACHER=${TRAINED_TEACHER:-outputs/demo/teacher}
TRAINED_DATA=${TRAINED_DATA:-outputs/demo/data/train.jsonl}
SERVE_SETTINGS="'HF generate,ours k=1,confadapt 0.9,selfspec'"
declare -A LIMIT
for entry in "${LIMITS[@]}"; do LIMIT[${entry%%=*}]=${entry#*=}; done
STEPS=(tests trained_model serve_bf16 serve_fp32 flex train_sdpa train_flex decode_4b decode_8b)
case "$ONLY" in  # the two groups that each fit one command
    trained) ONLY=tests,trained_model,serve_bf16,serve_fp32 ;;
    shapes) ONLY=flex,train_sdpa,train_flex,decode_4b,decode_8b ;;
esac
if [ -n "$ONLY" ]; then
    for step in ${ONLY//,/ }; do
        [ -n "${LIMIT[$step]:-}" ] || { echo "gpu_check.sh: unknown step $step (one of ${STEPS[*]})" >&2; exit 2; }
    done
    read -r -a STEPS <<< "${ONLY//,/ }"
fi

command_of() {  # the command of one step; it writes its JSON to $2
    case "$1" in
        tests) echo "$PYTHON -m pytest -q -m cuda -p no:cacheprovider tests --junitxml=$2.xml" ;;
        flex) echo "$PYTHON bench/flex_check.py --device $DEVICE --size $SIZE_4B --dtype float32 --out $2" ;;
        train_sdpa) echo "$PYTHON bench/train_step.py ${TRAIN_ARGS[*]} --attn sdpa --out $2" ;;
        train_flex) [ ${#FLEX_TRAIN_ARGS[@]} -gt 0 ] && echo "$PYTHON bench/train_step.py ${FLEX_TRAIN_ARGS[*]} --out $2" ;;
        decode_4b) echo "$PYTHON bench/decode.py --device $DEVICE --dtype $DTYPE --size $SIZE_4B ${DECODE_4B_ARGS[*]} --out $2" ;;
        decode_8b) echo "$PYTHON bench/decode.py --device $DEVICE --dtype $DTYPE --size $SIZE_8B ${DECODE_ARGS[*]} --out $2" ;;
        trained_model) echo "$PYTHON bench/trained_model.py --device $DEVICE --teacher $TRAINED_TEACHER --data $TRAINED_DATA ${TRAINED_ARGS[*]} --out $TRAINED_DIR --json $2" ;;
        serve_bf16|serve_fp32)
            local dtype=bfloat16; [ "$1" = serve_fp32 ] && dtype=float32
            echo "$PYTHON bench/serve.py --model $TRAINED_DIR/mtp --device $DEVICE --dtype $dtype ${SERVE_ARGS[*]} --settings $SERVE_SETTINGS --out $2" ;;
    esac
}

TRAINED_DIR=${WORK:-$OUT/work}/trained
TOTAL=0
for step in "${STEPS[@]}"; do TOTAL=$((TOTAL + LIMIT[$step])); done
if [ "$MODE" = dry-run ]; then
    echo "limits sum to $TOTAL s$([ "$DEVICE" = cuda ] && [ "$TOTAL" -gt 480 ] && echo ': more than one 8-minute command (--steps trained, then --steps shapes)')"
    for step in "${STEPS[@]}"; do
        printf '%-11s limit %4ss  %s\n' "$step" "${LIMIT[$step]}" "$(command_of "$step" "$OUT/$step.json" || echo '(skipped on cpu)')"
    done
    exit 0
fi

mkdir -p "$OUT"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT  # the records and results are in $OUT
TRAINED_DIR=$WORK/trained
LOG="$OUT/gpu_check.log"
: > "$LOG"
: > "$OUT/gpu_check.jsonl"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
if [ "$DEVICE" = cpu ]; then export DS_ACCELERATOR=cpu; else unset DS_ACCELERATOR; fi
if [ "$DEVICE" = cuda ] && compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        >> "$LOG" 2>&1 || { echo "gpu_check.sh: installing .whl/ failed (see $LOG)" >&2; exit 1; }
    export PYTHONPATH=/tmp/site:$REPO
    PYTHON=python3
else
    export PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH}
fi
{ echo "== gpu_check.sh --device $DEVICE, $(date -u +%FT%TZ)"; nvidia-smi -L 2>/dev/null;
  $PYTHON -c "import torch, transformers, deepspeed; print('torch', torch.__version__, '| transformers', transformers.__version__, '| deepspeed', deepspeed.__version__, '| cuda', torch.cuda.is_available())"; } >> "$LOG" 2>&1
STARTED=$SECONDS
for step in "${STEPS[@]}"; do
    cmd=$(command_of "$step" "$WORK/$step.json") || { echo "{\"step\": \"$step\", \"skipped\": true}" > "$WORK/$step.record"; continue; }
    echo "== [$step] (limit ${LIMIT[$step]} s) $cmd" | tee -a "$LOG"
    begin=$SECONDS
    timeout --kill-after=10 "${LIMIT[$step]}" bash -c "$cmd" >> "$LOG" 2>&1
    rc=$?
    echo "== [$step] rc=$rc in $((SECONDS - begin)) s" | tee -a "$LOG"
    echo "{\"step\": \"$step\", \"rc\": $rc, \"seconds\": $((SECONDS - begin)), \"timed_out\": $([ $rc -eq 124 ] || [ $rc -eq 137 ] && echo true || echo false), \"command\": \"$cmd\"}" > "$WORK/$step.record"
    $PYTHON -c 'import json, sys; from pathlib import Path; work, step = Path(sys.argv[1]), sys.argv[2]; record = json.loads((work / f"{step}.record").read_text()); result = work / f"{step}.json"; record.update(result=json.loads(result.read_text())) if result.exists() else None; print(json.dumps(record))' "$WORK" "$step" >> "$OUT/gpu_check.jsonl"
done
$PYTHON - "$WORK" "$OUT/gpu_check.json" "$DEVICE" "$((SECONDS - STARTED))" <<'EOF' | tee -a "$LOG"
import json, sys, xml.etree.ElementTree as ET
from pathlib import Path
work, out, device, seconds = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
report = {"device": device, "seconds": seconds, "steps": {}}
for record_file in sorted(work.glob("*.record")):
    record = json.loads(record_file.read_text())
    result = work / f"{record['step']}.json"
    if result.exists():
        record["result"] = json.loads(result.read_text())
    junit = work / f"{record['step']}.json.xml"
    if junit.exists():
        suite = ET.parse(junit).getroot()
        suite = suite if suite.tag == "testsuite" else suite[0]
        record["result"] = {key: int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped")}
    report["steps"][record["step"]] = record
out.write_text(json.dumps(report, indent=2) + "\n")
ok = all(r.get("skipped") or r["rc"] in (0, 5) for r in report["steps"].values())
print(f"wrote {out} ({seconds} s); " + ", ".join(f"{n}: {'skipped' if r.get('skipped') else 'rc ' + str(r['rc'])}"
                                               for n, r in report["steps"].items()))
sys.exit(0 if ok else 1)
EOF
