#!/usr/bin/env bash
# Reproduces the papers' headline tables, then writes results/TABLES.md.
#
#   bash run_all.sh                 # paper settings; on a GPU with --amp (and --grad-checkpoint
#                                   # for full-BPTT runs on long sequences)
#   bash run_all.sh --quick         # the same pipeline at CPU scale (the scripts' --quick presets;
#                                   # about 40 minutes on 2 cores)
#   bash run_all.sh --only indrnn-adding --dry-run   # print the commands of one table
#   bash run_all.sh --seeds 3       # seeds 0, 1, 2 of every run (mean and std in TABLES.md)
#   bash run_all.sh --estimate      # time every run for $EST_MINUTES (default 0.5) minutes at the
#                                   # papers' settings; TABLES.md then estimates hours per table
#   bash run_all.sh --cpu           # SAB's copy T=100 rows (Table 1) at the paper's settings on
#                                   # CPU, $CPU_MINUTES (default 150) minutes of one thread per run,
#                                   # SAB with seeds 0 and 1, then their Table 5 transfer rows
#
# A run whose results file exists is skipped, and a run with a checkpoint but no results file is
# continued with --resume, so an interrupted sweep resumes where it stopped.
# Every run is tagged `<row>[-quick|-est|-cpu]-s<seed>`; tasks.py matches the tag to its row.
# Runs go in parallel: one per GPU with several GPUs, one per CPU core (one thread each) with
# --quick; the tables run one after another. Each run's output goes to $OUT/logs/.
set -uo pipefail
cd "$(dirname "$0")"

QUICK=0; ESTIMATE=0; CPU=0; ONLY=""; DRY=0; SEEDS=""; EST_MIN=${EST_MINUTES:-0.5}
CPU_MIN=${CPU_MINUTES:-150}
DATA=${DATA_DIR:-./data}; OUT=${OUT_DIR:-./results}; PY=${PYTHON:-python}
usage() {
    echo "usage: bash run_all.sh [--quick | --estimate | --cpu] [--only TABLE] [--dry-run] [--seeds N]" \
         "[--data-dir DIR] [--out-dir DIR]" >&2
    exit 2
}
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) QUICK=1 ;;
        --estimate) ESTIMATE=1 ;;
        --cpu) CPU=1 ;;
        --only) [ $# -ge 2 ] || usage; ONLY=$2; shift ;;
        --dry-run) DRY=1 ;;
        --data-dir) [ $# -ge 2 ] || usage; DATA=$2; shift ;;
        --out-dir) [ $# -ge 2 ] || usage; OUT=$2; shift ;;
        --seeds) [ $# -ge 2 ] && [ "$2" -ge 1 ] 2>/dev/null || usage; SEEDS=$2; shift ;;
        *) usage ;;
    esac
    shift
done
[ $((QUICK + ESTIMATE + CPU)) -gt 1 ] && { echo "error: --quick, --estimate and --cpu exclude each other" >&2; exit 2; }
[ "$ESTIMATE" = 1 ] && SEEDS=1
TABLES="sab-copy sab-transfer sab-other indrnn-adding indrnn-mnist indrnn-ptb indrnn-ntu
        rlstm-table2 rlstm-dogs rlstm-dbpedia"
if [ -n "$ONLY" ] && ! echo $TABLES | tr ' ' '\n' | grep -qx "$ONLY"; then
    echo "error: --only $ONLY: no such table; choose from:" $TABLES >&2; exit 2
fi

NGPU=$(nvidia-smi -L 2>/dev/null | grep -c GPU || true)
if [ "$QUICK" = 1 ] || [ "$CPU" = 1 ]; then DEVICE_ARGS="--device cpu --threads 1"; SLOTS=$(nproc)
elif [ "$NGPU" -gt 0 ]; then DEVICE_ARGS="--amp"; SLOTS=$NGPU
else DEVICE_ARGS=""; SLOTS=1; fi
SKIPPED=0; RUNNING=0; SLOT=0

# run TABLE SCRIPT TASK MODEL ROWTAG "ARGS" "QUICK_ARGS" [CKPT] [SEEDS]
#   ARGS: the paper settings beyond the script's defaults; QUICK_ARGS: replaces them with --quick;
#   CKPT=ckpt: add --grad-checkpoint on a GPU (full BPTT on long sequences); SEEDS: how many
#   seeds this row runs unless --seeds is given (default 1).
run() {
    local table=$1 script=$2 task=$3 model=$4 row=$5 args=$6 qargs=$7 ckpt=${8:-}
    [ -n "$ONLY" ] && [ "$ONLY" != "$table" ] && return
    if [ "$CPU" = 1 ]; then  # the CPU tier: SAB's copy T=100 rows and their transfer only
        case "$table:$row" in sab-copy:T100|sab-transfer:T100) ;; *) return ;; esac
    fi
    local seed tag extra suffix file cmd
    for seed in $(seq 0 $((${SEEDS:-${9:-1}} - 1))); do
        if [ "$QUICK" = 1 ]; then tag="$row-quick-s$seed"; extra="--quick $qargs"
        elif [ "$CPU" = 1 ]; then tag="$row-cpu-s$seed"; extra="$args"
             # training runs: the time budget is the limit (the step count is not reached)
             case " $args " in *" --eval-only "*) ;; *) extra="$extra --steps 10000000 --time-budget $CPU_MIN" ;; esac
        else tag="$row-s$seed"; extra="$args"
             [ "$ckpt" = ckpt ] && [ "$NGPU" -gt 0 ] && extra="$extra --grad-checkpoint"; fi
        if [ "$ESTIMATE" = 1 ]; then  # a short timed run; evaluation-only runs need no estimate
            case " $args " in *" --eval-only "*) return ;; esac
            tag="$row-est-s$seed"; extra="$extra --time-budget $EST_MIN --eval-size 1 --test-size 1"
        fi
        # sab.py --eval-only --test-seq-len T' names its results file ...-test<T'>.json
        suffix=$(echo " $extra " | sed -n 's/.* --test-seq-len \([0-9]*\) .*/-test\1/p')
        file="$OUT/${script%.py}-$task-$model-$tag$suffix.json"
        cmd="$PY $script --task $task --model $model --tag $tag --seed $seed --data-dir $DATA"
        cmd="$cmd --out-dir $OUT $DEVICE_ARGS $extra"
        if [ -f "$file" ]; then SKIPPED=$((SKIPPED + 1)); continue; fi
        case " $extra " in *" --eval-only "*) ;; *)  # continue a run that was interrupted
            [ -f "$OUT/ckpt/${script%.py}-$task-$model-$tag.pt" ] && cmd="$cmd --resume" ;; esac
        if [ "$DRY" = 1 ]; then echo "$cmd"; continue; fi
        local log="$OUT/logs/$(basename "$file" .json).log"
        echo "== $(date -u +%FT%TZ) [$table] $cmd  (log: $log)"
        (   [ "$NGPU" -gt 0 ] && export CUDA_VISIBLE_DEVICES=$((SLOT % NGPU))
            $cmd > "$log" 2>&1 || echo "FAILED (see $log): $cmd" >> "$OUT/failed.txt" ) &
        SLOT=$((SLOT + 1)); RUNNING=$((RUNNING + 1))
        if [ "$RUNNING" -ge "$SLOTS" ]; then wait -n; RUNNING=$((RUNNING - 1)); fi
    done
}
barrier() { wait; RUNNING=0; }  # a table's runs finish before the next table (transfer needs them)
has_data() {  # has_data PATH TABLE WHY: false, and says so, if PATH is missing
    [ -n "$ONLY" ] && [ "$ONLY" != "$2" ] && return 1
    [ "$CPU" = 1 ] && return 1
    [ -e "$1" ] || { echo "== skipping $2: no data at $1 ($3)"; return 1; }
}
mkdir -p "$OUT/logs"; rm -f "$OUT/failed.txt"

# --- SAB (sab.py): Table 1 copy, Table 5 transfer, the other tasks. Quick: T/10, 1500 steps.
# SAB runs two seeds, the baselines one (unless --seeds).
for T in 100 200 300; do for m in lstm tbptt attn sab; do
    run sab-copy sab.py copy $m T$T "--seq-len $T" "--seq-len $((T / 10)) --steps 1500" "" \
        $([ $m = sab ] && echo 2 || echo 1)
done; done
barrier
for T in 200 300 400 2000 5000; do for m in sab lstm attn; do
    run sab-transfer sab.py copy $m T100 "--seq-len 100 --eval-only --test-seq-len $T" \
        "--seq-len 10 --eval-only --test-seq-len $((T / 10))" "" $([ $m = sab ] && echo 2 || echo 1)
done; done
barrier
for spec in "adding T200" "pmnist T784" "cifar10 T1024" "ptb T100" "text8 T180"; do
    set -- $spec
    for m in tbptt lstm sab; do
        run sab-other sab.py $1 $m $2 "" "--time-budget 1" ckpt
    done
done
barrier

# --- IndRNN (indrnn.py): adding at four lengths, MNIST / pMNIST, PTB, NTU.
# Quick: T/10 (as for SAB copy), 20,000 steps or 1.5 minutes of training per run.
for T in 100 500 1000 5000; do for m in indrnn lstm irnn; do
    run indrnn-adding indrnn.py adding $m T$T "--seq-len $T" \
        "--seq-len $((T / 10)) --steps 20000 --time-budget 1.5"
done; done
barrier
for t in mnist pmnist; do for m in indrnn res-indrnn; do
    run indrnn-mnist indrnn.py $t $m T784 "" "--time-budget 1.5" ckpt
done; done
barrier
run indrnn-ptb indrnn.py ptb indrnn T50 "" "--time-budget 1"
run indrnn-ptb indrnn.py ptb res-indrnn T150 "" "--seq-len 150 --layers 3 --time-budget 1"
barrier
if has_data "$DATA/ntu/nturgb+d_skeletons" indrnn-ntu "NTU RGB+D needs registration; see README"; then
    for p in cs cv; do
        run indrnn-ntu indrnn.py ntu indrnn T20-$p "--ntu-protocol $p" "--ntu-protocol $p"
    done
fi
barrier

# --- r-LSTM (rlstm.py): Table 2, StanfordDogs by length, DBpedia. Quick: 1.5 minutes per run.
for t in mnist pmnist cifar10; do
    T=$([ $t = cifar10 ] && echo 1024 || echo 784)
    for m in lstm rlstm plstm; do
        run rlstm-table2 rlstm.py $t $m T$T-trunc300 "--bptt 300 --aux-bptt 300" "--time-budget 1.5"
        run rlstm-table2 rlstm.py $t $m T$T-full "--bptt 0 --aux-bptt 0" "--bptt 0 --aux-bptt 0 --time-budget 1.5" ckpt
    done
done
barrier
for T in 1024 4096 16384; do
    run rlstm-dogs rlstm.py stanford_dogs lstm T$T-full "--seq-len $T --bptt 0" "--seq-len $T --bptt 0 --time-budget 1.5" ckpt
    for m in lstm rlstm; do
        run rlstm-dogs rlstm.py stanford_dogs $m T$T-trunc300 "--seq-len $T" "--seq-len $T --time-budget 1.5"
    done
done
barrier
if has_data "$DATA/dbpedia" rlstm-dbpedia "put dbpedia_csv.tar.gz there, or run once with network"; then
    run rlstm-dbpedia rlstm.py dbpedia lstm T1024-full "--bptt 0" "--bptt 0 --time-budget 1.5" ckpt
    for m in lstm rlstm; do
        run rlstm-dbpedia rlstm.py dbpedia $m T1024-trunc300 "" "--time-budget 1.5"
    done
fi
barrier

[ "$DRY" = 1 ] && exit 0
echo "== skipped $SKIPPED runs whose results exist"
[ -f "$OUT/failed.txt" ] && cat "$OUT/failed.txt"
$PY tasks.py table "$OUT"
