#!/usr/bin/env bash
# Reproduces the papers' headline tables, then writes results/TABLES.md.
#
#   bash run_all.sh                 # paper settings, GPU jobs: with --amp (and --grad-checkpoint
#                                   # for full-BPTT runs on long sequences); without a GPU it
#                                   # refuses unless --yes is given
#   bash run_all.sh --quick         # the same pipeline at CPU scale (the scripts' --quick presets,
#                                   # fixed step counts), one run per CPU core
#   bash run_all.sh --only indrnn-adding --dry-run   # print the commands of one table
#   bash run_all.sh --seeds 3       # seeds 0, 1, 2 of every run (mean and std in TABLES.md)
#   bash run_all.sh --estimate      # time every run for $EST_MINUTES (default 0.5) minutes at the
#                                   # papers' settings; TABLES.md then estimates hours per table,
#                                   # with the ratio to the estimate before (estimate-previous/)
#   bash run_all.sh --cpu           # paper settings on CPU, one thread per run: SAB's copy T=100
#                                   # rows (Table 1; $CPU_MINUTES, default 150, minutes each, SAB
#                                   # with seeds 0, 1 and 2) and their Table 5 transfer rows; IndRNN's
#                                   # Fig. 2 (adding T=100..5000: IndRNN until validation MSE
#                                   # 0.01, LSTM and IRNN as many steps; at most 180 min each)
#
# A run whose results file exists is skipped, and a run with a checkpoint but no results file is
# continued with --resume, so an interrupted sweep resumes where it stopped.
# Every run is tagged `<row>[-quick|-est|-cpu]-s<seed>`; tools/tables.py matches the tag to its row.
# Runs go in parallel: one per GPU with several GPUs, one per CPU core (one thread each) with
# --quick; the tables run one after another. Each run's output goes to $OUT/logs/.
set -uo pipefail
cd "$(dirname "$0")"

QUICK=0; ESTIMATE=0; CPU=0; ONLY=""; DRY=0; YES=0; SEEDS=""; EST_MIN=${EST_MINUTES:-0.5}
CPU_MIN=${CPU_MINUTES:-150}
DATA=${DATA_DIR:-./data}; OUT=${OUT_DIR:-./results}; PY=${PYTHON:-python}
devices() {  # one line: the GPUs run_all.sh would use, or the CPU
    local n=${#GPUS[@]}
    if [ "$n" -gt 0 ]; then echo "$n GPU(s): $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | sort | uniq -c | sed 's/^ *//' | paste -sd, -)"
    else echo "no GPU; CPU: $(nproc) cores ($(sed -n 's/^model name[^:]*: //p' /proc/cpuinfo 2>/dev/null | head -1))"; fi
}
# the GPUs: those CUDA_VISIBLE_DEVICES lists if it is set (empty: none), else all nvidia-smi shows
if [ -n "${CUDA_VISIBLE_DEVICES+set}" ]; then GPUS=($(echo "$CUDA_VISIBLE_DEVICES" | tr ',' ' '))
else GPUS=($(seq 0 $(( $(nvidia-smi -L 2>/dev/null | grep -c GPU || true) - 1 )))); fi
NGPU=${#GPUS[@]}
TABLES="sab-copy sab-transfer sab-other indrnn-adding indrnn-mnist indrnn-ptb indrnn-ntu
        rlstm-table2 rlstm-dogs rlstm-dbpedia"  # the order they run in; rows: the scripts' TABLES
usage() {
    echo "usage: bash run_all.sh [--quick | --estimate | --cpu] [--only TABLE] [--dry-run] [--seeds N] [--yes]" \
         "[--data-dir DIR] [--out-dir DIR]" >&2
    exit 2
}
help() {
    sed -n '2,/^set -uo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
    echo "tables (--only):" $TABLES
    echo "this machine: $(devices)"
    echo "environment: PYTHON (default python), DATA_DIR (./data), OUT_DIR (./results)," \
         "EST_MINUTES (0.5), CPU_MINUTES (150), CUDA_VISIBLE_DEVICES (the GPUs to use;" \
         "default: all that nvidia-smi lists; empty: none)"
    exit 0
}
while [ $# -gt 0 ]; do
    case "$1" in
        -h|--help) help ;;
        --quick) QUICK=1 ;;
        --estimate) ESTIMATE=1 ;;
        --cpu) CPU=1 ;;
        --only) [ $# -ge 2 ] || usage; ONLY=$2; shift ;;
        --dry-run) DRY=1 ;;
        --data-dir) [ $# -ge 2 ] || usage; DATA=$2; shift ;;
        --out-dir) [ $# -ge 2 ] || usage; OUT=$2; shift ;;
        --yes) YES=1 ;;
        --seeds) [ $# -ge 2 ] && [ "$2" -ge 1 ] 2>/dev/null || usage; SEEDS=$2; shift ;;
        *) usage ;;
    esac
    shift
done
[ $((QUICK + ESTIMATE + CPU)) -gt 1 ] && { echo "error: --quick, --estimate and --cpu exclude each other" >&2; exit 2; }
[ "$ESTIMATE" = 1 ] && SEEDS=1
if [ -n "$ONLY" ] && ! echo $TABLES | tr ' ' '\n' | grep -qx "$ONLY"; then
    echo "error: --only $ONLY: no such table; choose from:" $TABLES >&2; exit 2
fi
if [ "$QUICK$CPU$ESTIMATE$DRY$YES" = 00000 ] && [ "$NGPU" = 0 ]; then
    echo "error: no GPU here, and the papers' settings are GPU jobs (thousands of CPU-hours): use --quick (CPU scale), --cpu (the CPU tier) or --yes (run them anyway)" >&2
    exit 2
fi
if [ "$QUICK" = 1 ] || [ "$CPU" = 1 ]; then DEVICE_ARGS="--device cpu --threads 1"; SLOTS=$(nproc)
elif [ "$NGPU" -gt 0 ]; then DEVICE_ARGS="--amp"; SLOTS=$NGPU
else DEVICE_ARGS=""; SLOTS=1; fi
SKIPPED=0; RUNNING=0; SLOT=0

# run TABLE SCRIPT TASK MODEL ROWTAG "ARGS" "QUICK_ARGS" [CKPT] [SEEDS] [CPU_ARGS]
#   ARGS: the paper settings beyond the script's defaults; QUICK_ARGS: replaces them with --quick;
#   CKPT=ckpt: add --grad-checkpoint on a GPU (full BPTT on long sequences); SEEDS: how many
#   seeds this row runs unless --seeds is given (default 1); CPU_ARGS: what --cpu adds to ARGS,
#   or - if the row is not in the CPU tier.
run() {
    local table=$1 script=$2 task=$3 model=$4 row=$5 args=$6 qargs=$7 ckpt=${8:-} cpu=${10--}
    [ -n "$ONLY" ] && [ "$ONLY" != "$table" ] && return
    [ "$CPU" = 1 ] && [ "$cpu" = - ] && return  # not in the CPU tier
    local seed tag extra suffix file cmd like
    for seed in $(seq 0 $((${SEEDS:-${9:-1}} - 1))); do
        if [ "$QUICK" = 1 ]; then tag="$row-quick-s$seed"; extra="--quick $qargs"
        elif [ "$CPU" = 1 ]; then tag="$row-cpu-s$seed"; extra="$args"
             # training runs: the time budget is the limit (the step count is not reached);
             # the row's own budget, if it gives one, else $CPU_MIN
             case " $args $cpu " in *" --eval-only "*) ;; *" --time-budget "*) extra="$extra --steps 10000000" ;;
                 *) extra="$extra --steps 10000000 --time-budget $CPU_MIN" ;; esac
             extra="$extra${cpu:+ $cpu}"
             # --steps-like MODEL needs that model's results: wait for the runs under way
             like=$(echo " $cpu " | sed -n 's/.* --steps-like \([a-z-]*\) .*/\1/p')
             [ -n "$like" ] && [ ! -f "$OUT/${script%.py}-$task-$like-$tag.json" ] && barrier
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
        # a run that fails leaves $log.failed; one stopped by Ctrl-C or SIGTERM (exit 130) does
        # not: it resumes on the next sweep, which lists only the failures of its own runs
        rm -f "$log.failed"; LAUNCHED+=("$log")
        (   [ "$NGPU" -gt 0 ] && export CUDA_VISIBLE_DEVICES=${GPUS[$((SLOT % NGPU))]}
            $cmd > "$log" 2>&1; rc=$?
            [ $rc = 0 ] || [ $rc = 130 ] || echo "FAILED (exit $rc, see $log): $cmd" > "$log.failed"
        ) &
        SLOT=$((SLOT + 1)); RUNNING=$((RUNNING + 1))
        if [ "$RUNNING" -ge "$SLOTS" ]; then wait -n; RUNNING=$((RUNNING - 1)); fi
    done
}
barrier() { wait; RUNNING=0; }  # a table's runs finish before the next table (transfer needs them)
has_data() {  # has_data PATH TABLE WHY: false, and says so, if PATH is missing or empty
    [ -n "$ONLY" ] && [ "$ONLY" != "$2" ] && return 1
    [ "$CPU" = 1 ] && return 1
    # (an empty folder is what a failed download leaves behind)
    [ -n "$(ls -A "$1" 2>/dev/null)" ] || { echo "== skipping $2: no data at $1 ($3)"; return 1; }
}
[ "$DRY" = 1 ] && echo "# device: $(devices); runs at a time: $SLOTS" \
    || mkdir -p "$OUT/logs"  # a dry run changes nothing
LAUNCHED=()
# --estimate times every run anew: the timing runs of the estimate before move to
# $OUT/estimate-previous/, which TABLES.md compares with (their checkpoints are dropped)
if [ "$ESTIMATE" = 1 ] && [ "$DRY" = 0 ] && ls "$OUT"/*-est-s*.json >/dev/null 2>&1; then
    rm -rf "$OUT/estimate-previous" && mkdir -p "$OUT/estimate-previous"
    mv "$OUT"/*-est-s*.json "$OUT/estimate-previous/"
    rm -f "$OUT"/ckpt/*-est-s*
fi

# Every table's rows, as the scripts define them (their TABLES): table|script|task|model|tag|
# seeds|ckpt|args|quick. A table's runs finish before the next table starts (transfer needs them).
ROWS=$($PY tools/tables.py runs) || { echo "error: $PY tools/tables.py runs failed (is torch installed?)" >&2; exit 1; }
table() {  # table NAME: run every row of NAME
    local name=$1 tbl script task model row seeds ckpt args qargs cpu
    while IFS='|' read -r tbl script task model row seeds ckpt args qargs cpu; do
        [ "$tbl" = "$name" ] && run "$name" "$script" "$task" "$model" "$row" "$args" "$qargs" \
            "$ckpt" "$seeds" "$cpu"
    done <<< "$ROWS"
    barrier
}
for t in $TABLES; do  # in this order; two tables need data that cannot always be downloaded
    case $t in
        indrnn-ntu) has_data "$DATA/ntu/nturgb+d_skeletons" $t \
                        "NTU RGB+D needs registration; see docs/indrnn.md" || continue ;;
        rlstm-dbpedia) has_data "$DATA/dbpedia" $t \
                        "put dbpedia_csv.tar.gz there, or run once with network" || continue ;;
    esac
    table $t
done

[ "$DRY" = 1 ] && exit 0
echo "== skipped $SKIPPED runs whose results exist"
for log in "${LAUNCHED[@]}"; do [ -f "$log.failed" ] && cat "$log.failed"; done
$PY tools/tables.py table "$OUT"
