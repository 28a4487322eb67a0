#!/usr/bin/env bash
# Every GPU measurement of the speed, training, sweep and accuracy issues in one run (issues 6, 3, 5, 7).
#
#   bash benchmarks/gpu_check.sh [--smoke] [--data DIR] [--wheels DIR] [--budget S] [--skip STEP,...]
#                                [--keep DIR] [--restore KEEP.tar.gz] [--workers N] [--sweeps-only] [--cv N]
#                                [--accuracy CONFIG.yaml]... [--accuracy-epochs N] [--accuracy-seeds N] OUTDIR
#
# OUTDIR receives: results.json (every measurement, the targets and each step's status;
# rewritten after every step, so a run cut short keeps what it measured), log.txt (every step's
# output), work.tar.gz (the JSON of each step, the runs' metrics.csv/config.yaml/summary.json,
# the sweep folders with their study.db and results.csv; no checkpoints, no prepared arrays),
# keep.tar.gz (the keep folder below, without checkpoints, arrays and score maps) and, when
# evaluations saved score maps, scores.tar.part-aa, -ab, ... (the keep folder's scores.npz files, a
# tar cut into 15 MB parts, as what a device call brings back is at most 16 MiB a file:
# `cat scores.tar.part-* | tar -x -C KEEP`).
#
# Steps run in order of importance, each with its own time limit and none able to stop the others.
# A step starts only while the budget (--budget, default 570 s: the run fits a 10-minute device call)
# leaves it its minimum, and its limit is cut to what is left.
#
# Phase A, the GPU to itself (timings): environment, offline wheels, import check, the CUDA-only tests
# (tests/test_step.py's graph tests and the other tests that skip without CUDA), prepare the RVSC PNG
# set, the study's default recipe (100 epochs, batch 16, P13-P16 held out: the "under 20 s" baseline
# and the time to val endo Dice 0.80) eagerly and with --cuda-graph, `--loss switching`, `rvseg bench`
# at 256 x 208 (bf16 + channels_last; raw, loop, loop without augmentation, eval, predict), the
# DataLoader peer at the same settings, and `rvseg bench` on the prepared RVSC set (its native, launch-
# bound size) eagerly and with --cuda-graph.
#
# Phase B, the GPU shared (throughput): the `losses` and `lr-grid` sweep presets at full scale
# (--workers N trainer processes on the one GPU, default 8; with --cuda-graph unless the graphed
# default run of phase A failed), while the --accuracy configs (default configs/rvsc-endo.yaml and
# configs/rvsc-epi.yaml) train in the background: on P13-P16 held out, or with --cv N as N
# patient-wise folds each (--accuracy-epochs N trains them N epochs instead of the config's, in runs
# named CONFIG-eN; --accuracy-seeds N trains seeds 0 to N-1 of each, seed S > 0 in runs named
# CONFIG[-eN]-seedS[-foldK]). Each accuracy run's best.pt is then scored on its validation patients with
# `rvseg evaluate` (Dice, HD, HD95 per image and patient): with the default stack post-processing,
# with the per-image largest region, and stack with flip TTA (there, because checkpoints are larger
# than what a call brings back; a seed S > 0 with stack only), and with several seeds their ensemble
# (mean probability) with stack, in seed 0's run folder as eval-ensemble-stack; a run of a config with
# `snapshots: true` also at each of its last two SGDR cycle ends alone and together (eval-snapshot-0350-stack,
# eval-snapshot-0750-stack, eval-snapshots-0350-0750-stack; a run its time limit cut off, at those it reached; the
# smoke test trains those runs 3 epochs with --sgdr-t0 1, so that they have two). The stack evaluations of
# seed 0 and of the ensembles also save their score maps (--save-scores), so thresholds and
# post-processing can be studied on the CPU afterwards (benchmarks/compare_postprocessing.py D EVAL...).
#
# Sweeps and accuracy runs live in --keep DIR (default gpu-work/full, or gpu-work/smoke, in this
# checkout, git-ignored): the same command run again continues them (--sweeps-only skips phase A
# except its CUDA-only tests), on the same machine or, on another one, from the keep.tar.gz of an
# earlier call (--restore: unpacked into an empty keep folder). Finished runs are reused; the others
# train again from scratch, as their checkpoints did not come back. A finished accuracy run is never
# retrained: delete its folder for that.
#
# The GPU machine has python3 with torch, numpy, scipy, scikit-image, matplotlib, pyyaml and pytest
# but no pydicom, nibabel or optuna and no network: --wheels DIR (default ./wheels, filled by
# benchmarks/download_wheels.sh) is installed offline into the work folder, each package from the
# wheel there that fits the running python (the folder may hold one per Python version). ../shared does not
# travel to that machine: --data DIR (default ../shared/data/rvsc-train-png, else
# wheels/rvsc-train-png, which `download_wheels.sh --data` fills). rvseg runs from src/ of this
# checkout (PYTHONPATH), so nothing needs installing.
#
# --smoke: the same steps on the CPU at tiny sizes and 1 epoch (the accuracy runs 3; CUDA-only steps skipped), to test
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
KEEP=
WORKERS=8
SWEEPS_ONLY=0
CV=0
RESTORE=
ACCURACY_EPOCHS=
ACCURACY_SEEDS=1
usage() {
    echo "usage: bash benchmarks/gpu_check.sh [--smoke] [--data DIR] [--wheels DIR] [--budget S] [--skip STEP,...]" \
        "[--keep DIR] [--restore KEEP.tar.gz] [--workers N] [--sweeps-only] [--cv N] [--accuracy CONFIG.yaml]..." \
        "[--accuracy-epochs N] [--accuracy-seeds N] OUTDIR" >&2
    exit 2
}
while (( $# )); do
    case $1 in
        --smoke) MODE=smoke ;;
        --data) DATA=${2:?}; shift ;;
        --wheels) WHEELS=${2:?}; shift ;;
        --budget) BUDGET=${2:?}; shift ;;
        --accuracy) ACCURACY+=("${2:?}"); shift ;;
        --accuracy-epochs) ACCURACY_EPOCHS=${2:?}; shift ;;
        --accuracy-seeds) ACCURACY_SEEDS=${2:?}; shift ;;
        --skip) SKIP+="${2:?},"; shift ;;
        --keep) KEEP=${2:?}; shift ;;
        --workers) WORKERS=${2:?}; shift ;;
        --sweeps-only) SWEEPS_ONLY=1 ;;
        --cv) CV=${2:?}; shift ;;
        --restore) RESTORE=${2:?}; shift ;;
        -h|--help) usage ;;
        -*) echo "unknown option $1" >&2; usage ;;
        *) [[ -z $OUTDIR ]] || usage; OUTDIR=$1 ;;
    esac
    shift
done
[[ -n $OUTDIR ]] || usage
[[ -z $ACCURACY_EPOCHS || $ACCURACY_EPOCHS =~ ^[1-9][0-9]*$ ]] || { echo "--accuracy-epochs: a whole number of epochs" >&2; usage; }
[[ $ACCURACY_SEEDS =~ ^[1-9][0-9]*$ ]] || { echo "--accuracy-seeds: a whole number of seeds" >&2; usage; }

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

mkdir -p "$OUTDIR" "${KEEP:=$REPO/gpu-work/$MODE}"  # smoke runs never mix with full-scale ones
OUTDIR=$(cd "$OUTDIR" && pwd)
KEEP=$(cd "$KEEP" && pwd)
if [[ -n $RESTORE ]]; then
    if [[ -n $(ls -A "$KEEP") ]]; then
        echo "--restore: $KEEP is not empty (it would mix two histories of the same sweeps)" >&2
        exit 2
    fi
    tar -xzf "$RESTORE" -C "$KEEP" || { echo "--restore: cannot unpack $RESTORE" >&2; exit 2; }
fi
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
    PEER=(--device cpu --width 4 --steps 2 --repeats 1 --warmup 1 --workers 2 --samples 32 --size 32 32)
    DEVICE=(--device cpu)
    TRAIN=(--device cpu --width 4 --depth 2 --epochs 1)
    ACCURACY_TRAIN=(--epochs 3 --sgdr-t0 1)  # two SGDR cycle ends (1, 3): what an --snapshots run's scoring needs
    PREPARE_SIZE=(--size 32 28)
    SWEEP_SCALE=(--device cpu --epochs 1 --width 4 --depth 2 --repeats 1)
    SWEEP_CUTS=(losses "--only loss=dice,switching-0.75" lr-grid "--only lr=0.001 --only fraction=1.0,0.4")
    EVALUATED_AT_ONCE=1
else
    BUDGET=${BUDGET:-570}
    BENCH=(--device cuda --steps 30 --repeats 5 --warmup 5)
    BIG=(--size 256 208)
    PEER=(--device cuda --steps 30 --repeats 3 --warmup 5 --workers 8 --samples 512 --size 256 208)
    DEVICE=(--device cuda)
    TRAIN=(--device cuda)
    ACCURACY_TRAIN=()
    PREPARE_SIZE=()
    SWEEP_SCALE=(--device cuda)
    EVALUATED_AT_ONCE=4
    SWEEP_CUTS=(losses "" lr-grid "")
fi

log() { echo "$*" | tee -a "$LOG"; }

summarize() {
    "$PY" "$REPO/benchmarks/gpu_summary.py" --work "$WORK" --keep "$KEEP" --out "$OUTDIR/results.json" \
        --mode "$MODE" --started "$STARTED_UTC" --elapsed "$(( $(date +%s) - START ))" --budget "$BUDGET" >> "$LOG" 2>&1
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

have_rvsc() { [[ -f $WORK/rvsc/dataset.json ]]; }

train_step() {  # train_step NAME LIMIT_S MIN_S ARGS...: train on the prepared RVSC set, P13-P16 held out
    local name=$1 limit=$2 need=$3
    shift 3
    if have_rvsc; then
        step "$name" "$limit" "$need" "${RVSEG[@]}" train "$WORK/rvsc" --out "$WORK/runs/$name" "${VAL[@]}" --quiet "$@"
    else
        skip "$name" "no prepared RVSC set"
    fi
}

step_ok() { grep -q "\"name\": \"$1\", \"status\": \"ok\"" "$WORK/steps.jsonl"; }

left() { echo $(( BUDGET - ($(date +%s) - START) )); }
evaluation_limit() { local limit; limit=$(left); echo $(( limit < 60 ? limit : 60 )); }  # one evaluation: 60 s at most
# evaluate_checkpoints NAME RUN VARIANT [FLAG...] CHECKPOINT...: `rvseg evaluate` on the validation patients into
# RUN/eval-VARIANT (stack post-processing unless a flag says otherwise), unless scored there before.
evaluate_checkpoints() {
    local name=$1 run=$2 variant=$3
    shift 3
    [[ -f $run/eval-$variant/summary.json ]] && return
    start_background "evaluate-$name-$variant" "$(evaluation_limit)" "${RVSEG[@]}" evaluate "$@" "$WORK/rvsc" \
        --split val --out "$run/eval-$variant" "${DEVICE[@]}"
}
finished_run() { [[ -f $1/summary.json && -f $1/best.pt ]]; }  # finished_run RUN: trained to the end, best.pt here

BACKGROUND=()
start_background() {  # start_background NAME LIMIT_S COMMAND...: a step that runs beside the following ones
    local name=$1 limit=$2
    shift 2
    if [[ $SKIP == *",$name,"* ]]; then
        skip "$name" "--skip"
        return
    fi
    if (( limit < 30 )); then
        skip "$name" "budget: ${limit} s for a background run"
        return
    fi
    local shown="$*"
    log "== $name (background, limit ${limit} s): ${shown:0:300}"
    (
        t0=$(date +%s.%N)
        timeout --kill-after=20 "$limit" "$@" > "$WORK/logs/$name.log" 2>&1
        rc=$?
        t1=$(date +%s.%N)
        echo "$rc $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')" > "$WORK/logs/$name.rc"
    ) &
    BACKGROUND+=("$name")
}

finish_background() {  # wait for the background steps and record them
    wait
    local name rc seconds status
    for name in "${BACKGROUND[@]}"; do
        read -r rc seconds < "$WORK/logs/$name.rc" || { rc=1; seconds=0; }
        case $rc in
            0) status=ok ;;
            124|137) status=timeout ;;
            *) status=failed ;;
        esac
        cat "$WORK/logs/$name.log" >> "$LOG"
        log "== $name (background): $status (rc $rc, $seconds s)"
        record "$name" "$status" "$rc" "$seconds" "background"
    done
    BACKGROUND=()
    summarize
}

log "rvseg GPU check ($MODE) started $STARTED_UTC; python $PY; data ${DATA:-none}; wheels ${WHEELS:-none};" \
    "budget ${BUDGET} s; work $WORK; keep $KEEP"

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

# ---- phase A: the GPU to itself
# The CUDA-only tests run on every call, --sweeps-only too: about 30 s, and nowhere else can they run (--skip
# gpu-tests leaves them out of a call whose time the accuracy runs need).
if [[ $MODE == smoke ]]; then
    skip gpu-tests "smoke: the CUDA-only tests skip without CUDA"
else
    step gpu-tests 90 30 "$PY" -m pytest -q -p no:cacheprovider -rfEs "$REPO/tests/test_step.py" \
        "$REPO/tests/test_augment.py" "$REPO/tests/test_train.py::test_training_steps_never_wait_for_the_gpu" \
        "$REPO/tests/test_train.py::test_device_and_precision_flags" -k "cuda or graph or gpu or device"
fi
if (( SWEEPS_ONLY )); then
    log "== the rest of phase A skipped (--sweeps-only)"
else
    train_step train-default 90 30 "${TRAIN[@]}"
    if [[ $MODE == smoke ]]; then
        skip train-default-graph "smoke: --cuda-graph needs CUDA"
    else
        train_step train-default-graph 90 20 "${TRAIN[@]}" --cuda-graph
    fi
    train_step train-switching 90 30 "${TRAIN[@]}" --loss switching

    bench_step bench-256-bf16-cl 150 40 "${BIG[@]}"
    step peer-256-bf16-cl 120 30 "$PY" "$REPO/benchmarks/dataloader_peer.py" "${PEER[@]}" \
        --out "$WORK/json/peer-256-bf16-cl.json"
    if have_rvsc; then
        bench_step bench-rvsc 90 20 --dataset "$WORK/rvsc" --parts raw,loop,loop-noaug
        if [[ $MODE == smoke ]]; then
            skip bench-rvsc-graph "smoke: --cuda-graph needs CUDA"
        else
            bench_step bench-rvsc-graph 90 20 --dataset "$WORK/rvsc" --parts raw,loop,loop-noaug --cuda-graph
        fi
    else
        skip bench-rvsc "no prepared RVSC set"
        skip bench-rvsc-graph "no prepared RVSC set"
    fi
fi

# ---- phase B: the GPU shared by the sweeps' trainers and the accuracy runs
# One choice for all calls into the same --keep folder: a sweep's runs must not change how they train.
# Graphs are used unless this call's graphed default run failed (a --sweeps-only call relies on the
# earlier calls that chose them).
if [[ ! -f $KEEP/graph-mode ]]; then
    if [[ $MODE == full ]] && { step_ok train-default-graph || (( SWEEPS_ONLY )); }; then
        echo on > "$KEEP/graph-mode"
    else
        echo off > "$KEEP/graph-mode"
    fi
fi
GRAPH=()
SWEEP_GRAPH=()
if [[ $(cat "$KEEP/graph-mode") == on ]]; then
    GRAPH=(--cuda-graph)
    SWEEP_GRAPH=(--set cuda_graph=true)
fi
log "== phase B: --cuda-graph $(cat "$KEEP/graph-mode")"
ACCURACY_RUNS=()  # NAME|CONFIG|EXTRA FLAGS: one P13-P16 run per config, or one run per fold with --cv
LENGTH=()
# The smoke test keeps its 3 epochs (ACCURACY_TRAIN) but names the runs as a full call would.
[[ -n $ACCURACY_EPOCHS && $MODE == full ]] && LENGTH=(--epochs "$ACCURACY_EPOCHS")
ENSEMBLES=()  # SEED-0 RUN NAME|THE OTHER SEEDS' RUN NAMES: one per config (and fold) with --accuracy-seeds > 1
for config in "${ACCURACY[@]}"; do
    base=$(basename "$config" .yaml)${ACCURACY_EPOCHS:+-e$ACCURACY_EPOCHS}
    splits=("|")  # SUFFIX|FLAGS
    if (( CV > 0 )); then
        splits=()
        for (( fold = 0; fold < CV; fold++ )); do
            splits+=("-fold$fold|--fold $fold --folds $CV")
        done
    fi
    for split in "${splits[@]}"; do
        IFS='|' read -r suffix flags <<< "$split"
        others=()
        for (( seed = 0; seed < ACCURACY_SEEDS; seed++ )); do
            if (( seed == 0 )); then
                ACCURACY_RUNS+=("$base$suffix|$config|$flags ${LENGTH[*]}")
            else  # -seedS before -foldK: the folds of one seed average together in gpu_summary.py
                ACCURACY_RUNS+=("$base-seed$seed$suffix|$config|$flags --seed $seed ${LENGTH[*]}")
                others+=("$base-seed$seed$suffix")
            fi
        done
        (( ${#others[@]} )) && ENSEMBLES+=("$base$suffix|${others[*]}")
    done
done
# The default post-processing (stack), the per-image rule it replaced (largest), and the default with flip TTA;
# the raw Dice is the runs' own validation Dice (metrics.csv).
EVALUATIONS=(stack largest stack-tta)
# A run trained with --snapshots (the config's `snapshots: true`) is also scored, with stack, at each of its last
# two SGDR cycle ends alone (with --accuracy-epochs 750, snapshot-0350.pt is where a 350-epoch run of the recipe
# ends; snapshot-0750.pt the last epoch, chosen by no validation) and as their ensemble (a snapshot ensemble).
# Kept back from phase B for scoring the accuracy runs afterwards: EVALUATED_AT_ONCE runs' evaluations side by
# side take about 20 s (each about 10 s alone; the GPU idles while they compute metrics on the CPU), about 40 s
# with the snapshot evaluations (twice the processes on the machine's 16 cores), then the ensembles' together.
BATCH_S=20
(( ${#ACCURACY[@]} )) && grep -qE '^snapshots:[[:space:]]*(true|True|yes)([[:space:]#]|$)' "${ACCURACY[@]}" && BATCH_S=40
RESERVE=$(( 30 + BATCH_S * ((${#ACCURACY_RUNS[@]} + EVALUATED_AT_ONCE - 1) / EVALUATED_AT_ONCE) + 20 * (${#ENSEMBLES[@]} > 0) ))
if have_rvsc; then
    for entry in "${ACCURACY_RUNS[@]}"; do
        IFS='|' read -r name config extra <<< "$entry"
        read -ra extra <<< "$extra"
        if [[ -f $KEEP/accuracy/$name/summary.json ]]; then
            # Finished (here, or in the call a --restore came from): reused; delete the folder to train again.
            log "== accuracy-$name: finished earlier, reused"
            continue
        fi
        # A run that starts again from scratch (its last.pt did not come back with a --restore) is another training:
        # the scores of the one before (a cut-off run's snapshots) must not stand for it.
        [[ -f $KEEP/accuracy/$name/last.pt ]] || rm -rf "$KEEP/accuracy/$name"/eval-*
        start_background "accuracy-$name" $(( $(left) - RESERVE )) "${RVSEG[@]}" train "$WORK/rvsc" \
            --config "$config" --out "$KEEP/accuracy/$name" --resume --quiet "${TRAIN[@]}" "${ACCURACY_TRAIN[@]}" \
            "${GRAPH[@]}" "${extra[@]}"
    done
fi
# The sweeps read a prepared copy inside the keep folder, which travels with it. keep.tar.gz leaves the
# arrays out: a restored folder gets them again from this call's prepare step, which is deterministic
# (the data's content hash, which sweep.json records, matches wherever the keep folder is unpacked).
if have_rvsc && [[ ! -f $KEEP/rvsc/images.npy ]]; then
    rm -rf "$KEEP/rvsc"
    cp -r "$WORK/rvsc" "$KEEP/rvsc"
fi
if [[ -f $KEEP/rvsc/images.npy ]]; then
    for (( i = 0; i < ${#SWEEP_CUTS[@]}; i += 2 )); do
        preset=${SWEEP_CUTS[i]}
        read -ra cuts <<< "${SWEEP_CUTS[i + 1]}"
        limit=$(( $(left) - RESERVE ))
        if (( limit < 40 )); then
            skip "sweep-$preset" "budget: ${limit} s before the evaluations' reserve"
            continue
        fi
        step "sweep-$preset" "$limit" 40 "${RVSEG[@]}" sweep --preset "$preset" "$KEEP/rvsc" --out "$KEEP/sweeps/$preset" \
            --workers "$WORKERS" "${SWEEP_SCALE[@]}" --set 'val_patients=[P13,P14,P15,P16]' "${SWEEP_GRAPH[@]}" \
            "${cuts[@]}"
    done
else
    skip sweep-losses "no prepared RVSC set"
    skip sweep-lr-grid "no prepared RVSC set"
fi
finish_background
# The runs' evaluations go side by side, EVALUATED_AT_ONCE runs at a time (the GPU machine's 16 cores take
# four runs' at once; the smoke test's 2 cores one run's).
evaluated=0
for entry in "${ACCURACY_RUNS[@]}"; do
    name=${entry%%|*}
    run=$KEEP/accuracy/$name
    have_rvsc || continue
    variants=()
    finished_run "$run" && variants=("${EVALUATIONS[@]}")
    scores=(--save-scores)
    # The seed-to-seed spread needs no more; the scores that come back are seed 0's and the ensembles'
    # (about 4 MB per fold each, and a call brings back 64 MiB at most).
    [[ $name == *-seed[0-9]* ]] && { variants=("${variants[@]:0:1}"); scores=(); }
    for variant in "${variants[@]}"; do
        case $variant in
            stack) flags=("${scores[@]}") ;;
            largest) flags=(--postprocess largest) ;;
            stack-tta) flags=(--tta) ;;
        esac
        evaluate_checkpoints "$name" "$run" "$variant" "${flags[@]}" "$run"
    done
    # Its last two SGDR cycle ends alone and together (a snapshot ensemble), also where the run's time limit cut
    # it off: the cycle ends it reached are finished models.
    snapshots=()
    [[ $name == *-seed[0-9]* ]] || mapfile -t snapshots < <(find "$run" -maxdepth 1 -name 'snapshot-*.pt' 2> /dev/null \
        | sort | tail -n 2)
    epochs=("${snapshots[@]##*/snapshot-}")
    epochs=("${epochs[@]%.pt}")
    for k in "${!snapshots[@]}"; do
        evaluate_checkpoints "$name" "$run" "snapshot-${epochs[k]}-stack" "${snapshots[k]}"
    done
    (( ${#snapshots[@]} == 2 )) && evaluate_checkpoints "$name" "$run" "snapshots-${epochs[0]}-${epochs[1]}-stack" \
        "${snapshots[@]}"
    (( ++evaluated % EVALUATED_AT_ONCE )) || finish_background
done
for entry in "${ENSEMBLES[@]}"; do
    IFS='|' read -r name others <<< "$entry"
    read -ra others <<< "$others"
    members=()
    for member in "$name" "${others[@]}"; do
        finished_run "$KEEP/accuracy/$member" && members+=("$KEEP/accuracy/$member")
    done
    out=$KEEP/accuracy/$name/eval-ensemble-stack
    (( ${#members[@]} == ${#others[@]} + 1 )) && have_rvsc && [[ ! -f $out/summary.json ]] || continue
    start_background "evaluate-$name-ensemble" "$(evaluation_limit)" "${RVSEG[@]}" evaluate "${members[@]}" "$WORK/rvsc" --split val \
        --out "$out" --save-scores "${DEVICE[@]}"
done
finish_background

"$PY" "$REPO/benchmarks/gpu_summary.py" --work "$WORK" --keep "$KEEP" --out "$OUTDIR/results.json" --mode "$MODE" \
    --started "$STARTED_UTC" --elapsed "$(( $(date +%s) - START ))" --budget "$BUDGET" --print | tee -a "$LOG"
tar -czf "$OUTDIR/work.tar.gz" -C "$WORK" --exclude='*.pt' json logs runs steps.jsonl 2>> "$LOG"
tar -czf "$OUTDIR/keep.tar.gz" -C "$KEEP" --exclude='*.pt' --exclude='*.npy' --exclude=scores.npz . 2>> "$LOG"
(cd "$KEEP" && find . -name scores.npz | sort) > "$WORK/scores.list"
if [[ -s $WORK/scores.list ]]; then  # already compressed: tar only
    tar -cf - -C "$KEEP" -T "$WORK/scores.list" 2>> "$LOG" | split -b 15M - "$OUTDIR/scores.tar.part-"
fi
rm -rf "$WORK"
