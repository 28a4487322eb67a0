#!/usr/bin/env bash
# Every GPU measurement of the speed, training and accuracy issues in one run (issues 6, 3 and 7).
#
#   bash benchmarks/gpu_check.sh [--smoke] [--data DIR] [--wheels DIR] [--budget S] [--skip STEP,...]
#                                [--accuracy CONFIG.yaml]... OUTDIR
#
# OUTDIR receives three files: results.json (every measurement, the targets and each step's status;
# rewritten after every step, so a run cut short keeps what it measured), log.txt (every step's
# output) and work.tar.gz (the JSON of each step, the runs' metrics.csv/config.yaml/summary.json;
# no checkpoints). The work itself happens in a temporary folder.
#
# Steps run in order of importance, each with its own time limit and none able to stop the others.
# A step starts only while the budget (--budget, default 480 s: the whole script fits in about
# 8 minutes) leaves it its minimum, and its limit is cut to what is left. Order: environment,
# offline wheels, import check, prepare the RVSC PNG set, the study's default recipe and
# `--loss switching` on P13-P16 (100 epochs, batch 16: also the "under 20 s" baseline and the time
# to val endo Dice 0.80), `rvseg bench` at 256 x 208 (bf16 + channels_last; raw, loop, loop without
# augmentation, eval, predict), the DataLoader peer at the same settings, `rvseg bench` on the
# prepared RVSC set, raw steps at fp32 and bf16 without channels_last and with cuDNN's autotuner
# (--cudnn-benchmark, which the training loop does not set), the launch-bound 128 x 112
# step eager / as one CUDA graph / compiled with mode reduce-overhead, the compiled 256 x 208 step,
# then the accuracy runs of issue 7: each --accuracy config (default: configs/rvsc-endo.yaml and
# configs/rvsc-epi.yaml where they exist), then the issue's plain reference recipe (300 epochs, Adam
# 1e-3, cosine). --skip names steps to leave out (e.g. on a second run that only wants the
# accuracy runs); the step names are those above, as written in results.json.
#
# The GPU machine has python3 with torch, numpy, scipy, scikit-image and matplotlib (pyyaml too, today,
# but not promised) but no pydicom or nibabel and no network: --wheels DIR (default ./wheels, filled
# by benchmarks/download_wheels.sh) is installed offline into the work folder, each package from the
# wheel there that fits the running python (the folder may hold one per Python version). ../shared does not
# travel to that machine: --data DIR (default ../shared/data/rvsc-train-png, else
# wheels/rvsc-train-png, which `download_wheels.sh --data` fills). rvseg runs from src/ of this
# checkout (PYTHONPATH), so nothing needs installing.
#
# --smoke: the same steps on the CPU at tiny sizes and 1 epoch (CUDA-only steps skipped), to test
# this script without a GPU.
set -uo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
MODE=full
DATA=
WHEELS=
BUDGET=
ACCURACY=()
SKIP=,
OUTDIR=
usage() {
    echo "usage: bash benchmarks/gpu_check.sh [--smoke] [--data DIR] [--wheels DIR] [--budget S] [--skip STEP,...]" \
        "[--accuracy CONFIG.yaml]... OUTDIR" >&2
    exit 2
}
while (( $# )); do
    case $1 in
        --smoke) MODE=smoke ;;
        --data) DATA=${2:?}; shift ;;
        --wheels) WHEELS=${2:?}; shift ;;
        --budget) BUDGET=${2:?}; shift ;;
        --accuracy) ACCURACY+=("${2:?}"); shift ;;
        --skip) SKIP+="${2:?},"; shift ;;
        -h|--help) usage ;;
        -*) echo "unknown option $1" >&2; usage ;;
        *) [[ -z $OUTDIR ]] || usage; OUTDIR=$1 ;;
    esac
    shift
done
[[ -n $OUTDIR ]] || usage

if [[ -z $DATA ]]; then
    for candidate in "$REPO/../shared/data/rvsc-train-png" "$REPO/wheels/rvsc-train-png"; do
        [[ -d $candidate ]] && { DATA=$candidate; break; }
    done
fi
if [[ -z $WHEELS ]] && compgen -G "$REPO/wheels/*.whl" > /dev/null; then
    WHEELS=$REPO/wheels
fi
if (( ${#ACCURACY[@]} == 0 )); then
    for config in "$REPO/configs/rvsc-endo.yaml" "$REPO/configs/rvsc-epi.yaml"; do
        [[ -f $config ]] && ACCURACY+=("$config")
    done
fi
if [[ -n ${PYTHON:-} ]]; then
    PY=$PYTHON
elif [[ $MODE == smoke && -x $REPO/.venv/bin/python ]]; then
    PY=$REPO/.venv/bin/python
else
    PY=python3
fi

mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/rvseg-gpu-check.XXXXXX")
mkdir -p "$WORK/json" "$WORK/logs" "$WORK/runs"
LOG=$OUTDIR/log.txt
: > "$LOG"
: > "$WORK/steps.jsonl"
START=$(date +%s)
STARTED_UTC=$(date -u +%Y-%m-%dT%H:%M:%SZ)
export PYTHONPATH=$REPO/src${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1
RVSEG=("$PY" -m rvseg)
VAL=(--val-patients P13,P14,P15,P16)

if [[ $MODE == smoke ]]; then
    BUDGET=${BUDGET:-900}
    BENCH=(--device cpu --width 4 --steps 2 --repeats 1 --warmup 1)
    BIG=(--size 32 32)
    SMALL=(--size 32 32)
    PEER=(--device cpu --width 4 --steps 2 --repeats 1 --warmup 1 --workers 2 --samples 32 --size 32 32)
    TRAIN=(--device cpu --width 4 --depth 2 --epochs 1)
    LONG_EPOCHS=()
    PREPARE_SIZE=(--size 32 28)
else
    BUDGET=${BUDGET:-480}
    BENCH=(--device cuda --steps 30 --repeats 5 --warmup 5)
    BIG=(--size 256 208)
    SMALL=(--size 128 112)
    PEER=(--device cuda --steps 30 --repeats 3 --warmup 5 --workers 8 --samples 512 --size 256 208)
    TRAIN=(--device cuda)
    LONG_EPOCHS=(--epochs 300)
    PREPARE_SIZE=()
fi

log() { echo "$*" | tee -a "$LOG"; }

summarize() {
    "$PY" "$REPO/benchmarks/gpu_summary.py" --work "$WORK" --out "$OUTDIR/results.json" --mode "$MODE" \
        --started "$STARTED_UTC" --elapsed "$(( $(date +%s) - START ))" --budget "$BUDGET" >> "$LOG" 2>&1
}

record() {  # record NAME STATUS RC SECONDS NOTE
    printf '{"name": "%s", "status": "%s", "rc": %s, "seconds": %s, "note": "%s"}\n' "$1" "$2" "$3" "$4" "$5" \
        >> "$WORK/steps.jsonl"
}

skip() {  # skip NAME WHY
    log "== $1: skipped ($2)"
    record "$1" skipped null 0 "$2"
    summarize
}

step() {  # step NAME LIMIT_S MIN_S COMMAND...
    local name=$1 limit=$2 need=$3
    shift 3
    if [[ $SKIP == *",$name,"* ]]; then
        skip "$name" "--skip"
        return
    fi
    local left=$(( BUDGET - ($(date +%s) - START) ))
    if (( left < need )); then
        skip "$name" "budget: ${left} s left, the step needs ${need} s"
        return
    fi
    (( limit > left )) && limit=$left
    local shown="$*"
    log "== $name (limit ${limit} s): ${shown:0:300}"
    local t0 t1 rc status
    t0=$(date +%s.%N)
    timeout --kill-after=10 "$limit" "$@" > "$WORK/logs/$name.log" 2>&1
    rc=$?
    t1=$(date +%s.%N)
    cat "$WORK/logs/$name.log" >> "$LOG"
    case $rc in
        0) status=ok ;;
        124|137) status=timeout ;;
        *) status=failed ;;
    esac
    local seconds
    seconds=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')
    log "== $name: $status (rc $rc, $seconds s)"
    record "$name" "$status" "$rc" "$seconds" ""
    summarize
}

# What the card, driver and torch are; nvidia-smi's text goes into the JSON too.
ENVIRONMENT='
import json, platform, subprocess, sys, torch
info = {"python": sys.version.split()[0], "platform": platform.platform(), "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(), "torch_cuda": torch.version.cuda}
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    info.update(device=p.name, capability=f"{p.major}.{p.minor}", memory_gib=round(p.total_memory / 2**30, 1),
                multiprocessors=p.multi_processor_count, cudnn=torch.backends.cudnn.version())
try:
    info["nvidia_smi"] = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=30).stdout
except (OSError, subprocess.SubprocessError) as exc:
    info["nvidia_smi"] = f"not available ({exc})"
print(info["nvidia_smi"])
print(json.dumps({k: v for k, v in info.items() if k != "nvidia_smi"}, indent=2))
json.dump(info, open(sys.argv[1], "w"), indent=2)
'
IMPORTS='
import importlib
for name in ("rvseg.train.loop", "rvseg.bench", "rvseg.metrics", "rvseg.data.pngpairs", "rvseg.data.prepare",
             "rvseg.data.phantom"):
    importlib.import_module(name)
    print("imported", name)
'

bench_step() {  # bench_step NAME LIMIT_S MIN_S ARGS...: one `rvseg bench` run, JSON to json/NAME.json
    local name=$1 limit=$2 need=$3
    shift 3
    step "$name" "$limit" "$need" "${RVSEG[@]}" bench "${BENCH[@]}" --out "$WORK/json/$name.json" "$@"
}

train_step() {  # train_step NAME LIMIT_S MIN_S ARGS...: train on the prepared RVSC set, P13-P16 held out
    local name=$1 limit=$2 need=$3
    shift 3
    if [[ -f $WORK/rvsc/dataset.json ]]; then
        step "$name" "$limit" "$need" "${RVSEG[@]}" train "$WORK/rvsc" --out "$WORK/runs/$name" "${VAL[@]}" --quiet "$@"
    else
        skip "$name" "no prepared RVSC set"
    fi
}

log "rvseg GPU check ($MODE) started $STARTED_UTC; python $PY; data ${DATA:-none}; wheels ${WHEELS:-none};" \
    "budget ${BUDGET} s; work $WORK"

step env 60 5 "$PY" -c "$ENVIRONMENT" "$WORK/json/env.json"
if [[ -n $WHEELS ]]; then
    # Distribution names from the file names (NAME-VERSION-...whl); pip picks each one's fitting wheel.
    mapfile -t PACKAGES < <(for wheel in "$WHEELS"/*.whl; do name=${wheel##*/}; echo "${name%%-*}"; done | sort -uf)
    step wheels 120 5 "$PY" -m pip install --quiet --no-index --no-deps --no-compile --find-links "$WHEELS" \
        --target "$WORK/site" "${PACKAGES[@]}"
    [[ -d $WORK/site ]] && export PYTHONPATH=$WORK/site:$PYTHONPATH
else
    skip wheels "no wheels folder given or found: using what $PY has"
fi
step imports 60 5 "$PY" -c "$IMPORTS"

if [[ -n $DATA ]]; then
    step prepare-rvsc 90 10 "${RVSEG[@]}" prepare "$DATA" --out "$WORK/rvsc" "${PREPARE_SIZE[@]}" --json
else
    skip prepare-rvsc "no RVSC PNG set: pass --data DIR"
fi
train_step train-default 150 30 "${TRAIN[@]}"
train_step train-switching 150 30 "${TRAIN[@]}" --loss switching

bench_step bench-256-bf16-cl 180 40 "${BIG[@]}"
step peer-256-bf16-cl 150 30 "$PY" "$REPO/benchmarks/dataloader_peer.py" "${PEER[@]}" \
    --out "$WORK/json/peer-256-bf16-cl.json"
if [[ -f $WORK/rvsc/dataset.json ]]; then
    bench_step bench-rvsc 150 30 --dataset "$WORK/rvsc"
else
    skip bench-rvsc "no prepared RVSC set"
fi
bench_step bench-256-fp32 90 15 "${BIG[@]}" --parts raw --precision fp32 --no-channels-last
bench_step bench-256-bf16 90 15 "${BIG[@]}" --parts raw --precision bf16 --no-channels-last
bench_step bench-256-bf16-cl-cudnn 90 15 "${BIG[@]}" --parts raw --cudnn-benchmark
bench_step bench-128-bf16-cl 90 15 "${SMALL[@]}" --parts raw
if [[ $MODE == smoke ]]; then
    skip bench-128-cuda-graph "smoke: needs CUDA"
    skip bench-128-reduce-overhead "smoke: needs CUDA, and compiling takes minutes on a CPU"
    skip bench-256-compile "smoke: compiling takes minutes on a CPU"
else
    bench_step bench-128-cuda-graph 90 15 "${SMALL[@]}" --parts raw --cuda-graph
    bench_step bench-128-reduce-overhead 240 60 "${SMALL[@]}" --parts raw --compile --compile-mode reduce-overhead
    bench_step bench-256-compile 240 60 "${BIG[@]}" --parts raw --compile
fi

for config in "${ACCURACY[@]}"; do
    train_step "accuracy-$(basename "$config" .yaml)" 240 60 --config "$config" "${TRAIN[@]}"
done
train_step train-reference-300 240 60 "${TRAIN[@]}" "${LONG_EPOCHS[@]}" --lr 1e-3 --scheduler cosine

"$PY" "$REPO/benchmarks/gpu_summary.py" --work "$WORK" --out "$OUTDIR/results.json" --mode "$MODE" \
    --started "$STARTED_UTC" --elapsed "$(( $(date +%s) - START ))" --budget "$BUDGET" --print | tee -a "$LOG"
tar -czf "$OUTDIR/work.tar.gz" -C "$WORK" --exclude='*.pt' json logs runs steps.jsonl 2>> "$LOG"
rm -rf "$WORK"
