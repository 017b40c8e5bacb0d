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
#                                   # with the ratio to the estimate before (estimate-previous/);
#                                   # with --quick: time every --quick run the same way
#   bash run_all.sh --jobs 8 --jobs-per-gpu 2   # 8 runs at a time, 2 on each GPU
#   bash run_all.sh --slurm --submit   # a SLURM job array of the runs not yet finished
#   bash run_all.sh --cpu           # paper settings on CPU, one thread per run: SAB's copy T=100
#                                   # rows (Table 1; $CPU_MINUTES, default 150, minutes each, SAB
#                                   # with seeds 0, 1 and 2) and their Table 5 transfer rows; IndRNN's
#                                   # Fig. 2 (adding T=100..5000: IndRNN until validation MSE
#                                   # 0.01, LSTM and IRNN as many steps; at most 180 min each)
#
# A run whose results file exists is skipped, and a run with a checkpoint but no results file is
# continued with --resume, so an interrupted sweep resumes where it stopped.
# Every run is tagged `<row>[-quick|-est|-quick-est|-cpu]-s<seed>`; tools/tables.py matches the tag
# to its row. --dry-run (and --help, in total) give each run's expected time: an estimate, from
# the timed and finished runs in the out-dir if it has any for that row, else from
# tools/estimates.tsv (its hardware and date are printed; `--cpu` runs: their time budget).
# Runs go in parallel, --jobs at a time (default: --jobs-per-gpu (1) per visible GPU; on CPU,
# cores / --threads (1)): each in a slot of its own, slot s on GPU s mod (number of GPUs). A table's
# runs finish before the next table starts (transfer rows evaluate the trained checkpoints).
# Each run's output goes to $OUT/logs/; failed runs are listed once, at the end. Ctrl-C (or
# SIGTERM) stops every run: each saves its checkpoint, and the same command resumes them.
# --slurm writes $OUT/slurm/: one job array per phase (training; then evaluation-only and
# --steps-like runs), one task per unfinished run (requeued tasks --resume; SIGTERM 2 minutes
# before the time limit saves a checkpoint), and a last job that writes TABLES.md; --submit
# submits it (sbatch), --dry-run prints it. Time requests come from the estimates.
set -uo pipefail
cd "$(dirname "$0")"

ARGV="$*"
QUICK=0; ESTIMATE=0; CPU=0; ONLY=""; DRY=0; YES=0; SEEDS=""; EST_MIN=${EST_MINUTES:-0.5}
JOBS=""; PER_GPU=1; THREADS=""; SLURM=0; SUBMIT=0; SLURM_TIME=${SLURM_TIME:-1440}
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
         "[--jobs N] [--jobs-per-gpu K] [--threads T] [--slurm [--submit]] [--data-dir DIR] [--out-dir DIR]" >&2
    exit 2
}
help() {
    sed -n '2,/^set -uo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
    echo "tables (--only):" $TABLES
    echo "this machine: $(devices)"
    echo "environment: PYTHON (default python), DATA_DIR (./data), OUT_DIR (./results)," \
         "EST_MINUTES (0.5), CPU_MINUTES (150), CUDA_VISIBLE_DEVICES (the GPUs to use;" \
         "default: all that nvidia-smi lists; empty: none), SLURM_TIME (minutes a SLURM task" \
         "asks for when a run has no estimate; 1440), SLURM_ARGS (more sbatch options)"
    # the expected time of what a plain sweep runs here: --quick without a GPU, else the papers'
    local mode; [ "$NGPU" = 0 ] && mode=--quick
    echo "expected, bash run_all.sh ${mode:-}: $(bash "$0" ${mode:-} --dry-run 2>/dev/null | tail -1 | sed 's/^# //')"
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
        --jobs) [ $# -ge 2 ] && [ "$2" -ge 1 ] 2>/dev/null || usage; JOBS=$2; shift ;;
        --jobs-per-gpu) [ $# -ge 2 ] && [ "$2" -ge 1 ] 2>/dev/null || usage; PER_GPU=$2; shift ;;
        --threads) [ $# -ge 2 ] && [ "$2" -ge 1 ] 2>/dev/null || usage; THREADS=$2; shift ;;
        --slurm) SLURM=1 ;;
        --submit) SUBMIT=1 ;;
        *) usage ;;
    esac
    shift
done
[ $((QUICK + CPU)) -gt 1 ] || [ $((ESTIMATE + CPU)) -gt 1 ] && {
    echo "error: --cpu excludes --quick and --estimate" >&2; exit 2; }
[ "$ESTIMATE" = 1 ] && SEEDS=1
if [ -n "$ONLY" ] && ! echo $TABLES | tr ' ' '\n' | grep -qx "$ONLY"; then
    echo "error: --only $ONLY: no such table; choose from:" $TABLES >&2; exit 2
fi
JOBS_GIVEN=$JOBS
[ "$SUBMIT" = 1 ] && [ "$SLURM" = 0 ] && { echo "error: --submit needs --slurm" >&2; exit 2; }
if [ "$QUICK$CPU$ESTIMATE$DRY$YES$SLURM" = 000000 ] && [ "$NGPU" = 0 ]; then
    echo "error: no GPU here, and the papers' settings are GPU jobs (thousands of CPU-hours): use --quick (CPU scale), --cpu (the CPU tier) or --yes (run them anyway)" >&2
    exit 2
fi
# GPU runs: the papers' settings where there is a GPU (or on a SLURM cluster); CPU runs: --quick,
# --cpu, or the papers' settings without a GPU (--yes), one thread each unless --threads
CORES=$(nproc)
if [ "$QUICK$CPU" = 00 ] && { [ "$NGPU" -gt 0 ] || [ "$SLURM" = 1 ]; }; then DEV=gpu
    [ "$NGPU" = 0 ] && NGPU=1 && GPUS=(0)  # SLURM: each task gets one GPU (--gres=gpu:1)
    [ "$SLURM" = 1 ] && THREADS=${THREADS:-1}  # per task: this machine's cores do not matter
    JOBS=${JOBS:-$((NGPU * PER_GPU))}; THREADS=${THREADS:-$(( (CORES / JOBS) > 1 ? CORES / JOBS : 1 ))}
    DEVICE_ARGS="--threads $THREADS --amp"
else DEV=cpu
    THREADS=${THREADS:-1}
    JOBS=${JOBS:-$(( (CORES / THREADS) > 1 ? CORES / THREADS : 1 ))}
    DEVICE_ARGS="--device cpu --threads $THREADS"
    if [ "$SLURM" = 0 ] && [ $((JOBS * THREADS)) -gt "$CORES" ]; then
        echo "error: --jobs $JOBS x --threads $THREADS needs $((JOBS * THREADS)) cores; this machine has $CORES" >&2
        exit 2
    fi
fi
SLOTS=$JOBS; SKIPPED=0
SCALE=$([ "$QUICK" = 1 ] && echo quick || echo paper)  # the estimates that apply here

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
             [ -n "$like" ] && [ ! -f "$OUT/${script%.py}-$task-$like-$tag.json" ] && [ "$SLURM" = 0 ] && barrier
        else tag="$row-s$seed"; extra="$args"
             [ "$ckpt" = ckpt ] && [ "$DEV" = gpu ] && extra="$extra --grad-checkpoint"; fi
        if [ "$ESTIMATE" = 1 ]; then  # a short timed run; evaluation-only runs need no estimate
            case " $args $qargs " in *" --eval-only "*) return ;; esac
            tag="$row$([ "$QUICK" = 1 ] && echo -quick)-est-s$seed"
            extra="$extra --time-budget $EST_MIN --eval-size 1 --test-size 1"
        fi
        # sab.py --eval-only --test-seq-len T' names its results file ...-test<T'>.json
        suffix=$(echo " $extra " | sed -n 's/.* --test-seq-len \([0-9]*\) .*/-test\1/p')
        file="$OUT/${script%.py}-$task-$model-$tag$suffix.json"
        cmd="$PY $script --task $task --model $model --tag $tag --seed $seed --data-dir $DATA"
        cmd="$cmd --out-dir $OUT $DEVICE_ARGS $extra"
        if [ -f "$file" ]; then SKIPPED=$((SKIPPED + 1)); continue; fi
        local pt="$OUT/ckpt/${script%.py}-$task-$model-$tag.pt" log="$OUT/logs/$(basename "$file" .json).log"
        case " $extra " in *" --eval-only "*) pt=- ;; esac  # a run with a checkpoint continues
        expected "$script" "$task" "$model" "$row" "$extra"
        EXPECTED+="$table ${MINUTES:--}"$'\n'
        if [ "$SLURM" = 1 ]; then  # a task of phase 1 (training) or 2 (needs phase 1's results)
            local phase=1; case " $extra " in *" --eval-only "*|*" --steps-like "*) phase=2 ;; esac
            printf '%s\t%s\t%s\t%s\n' "$file" "$pt" "$log" "$cmd" >> "$SLURM_TMP/runs-$phase.txt"
            # its time request: the estimate (or budget) x 1.5 + 10 minutes, or $SLURM_TIME
            [ -n "$MINUTES" ] && awk "BEGIN {printf \"%d\\n\", $MINUTES * 1.5 + 10}" \
                >> "$SLURM_TMP/minutes-$phase.txt" || echo "$SLURM_TIME" >> "$SLURM_TMP/minutes-$phase.txt"
            continue
        fi
        [ "$pt" != - ] && [ -f "$pt" ] && cmd="$cmd --resume"
        if [ "$DRY" = 1 ]; then  # the slot each run would take if all took the same time
            echo "# [$table] slot $((DRY_SLOT % JOBS))$([ "$DEV" = gpu ] &&
                echo " (GPU ${GPUS[$((DRY_SLOT % JOBS % NGPU))]})"): $WHY"
            echo "$cmd"; DRY_SLOT=$((DRY_SLOT + 1)); continue
        fi
        launch "$log" "$cmd" "[$table] $WHY"
    done
}
# launch LOG CMD WHAT: runs CMD, its output in LOG, in the first free slot (waiting for one).
# A run that fails leaves LOG.failed; one stopped by Ctrl-C or SIGTERM (exit 130) does not: it
# resumes on the next sweep, which lists only the failures of its own runs.
launch() {
    local s
    while :; do
        for ((s = 0; s < JOBS; s++)); do
            [ -z "${PIDS[s]:-}" ] || ! kill -0 "${PIDS[s]}" 2>/dev/null && break 2
        done
        sleep 0.2
    done
    echo "== $(date -u +%FT%TZ) slot $s$([ "$DEV" = gpu ] && echo " (GPU ${GPUS[$((s % NGPU))]})"):" \
         "$2  (log: $1; $3)"
    rm -f "$1.failed"; LAUNCHED+=("$1"); SLOT_LOG[s]=$1
    (   [ "$DEV" = gpu ] && export CUDA_VISIBLE_DEVICES=${GPUS[$((s % NGPU))]}
        setsid $2 > "$1" 2>&1; rc=$?  # its own session: Ctrl-C reaches it once, through stop()
        [ $rc = 0 ] || [ $rc = 130 ] || echo "FAILED (exit $rc, see $1): $2" > "$1.failed"
    ) &
    PIDS[s]=$!
}
stop() {  # Ctrl-C or SIGTERM: every run under way saves its checkpoint and ends
    trap '' INT TERM
    echo "== stopping: the runs under way save their checkpoints"
    local s
    for s in "${!PIDS[@]}"; do
        kill -0 "${PIDS[s]}" 2>/dev/null || continue
        pkill -TERM -P "${PIDS[s]}"; STOPPED+=("${SLOT_LOG[s]}")
    done
    wait
    for log in "${STOPPED[@]}"; do rm -f "$log.failed"; done  # stopped, not failed
    failures
    echo "== stopped: ${#STOPPED[@]} runs saved their checkpoints; the same command resumes them" \
         "(finished runs are skipped)"
    exit 130
}
failures() { for log in "${LAUNCHED[@]}"; do [ -f "$log.failed" ] && cat "$log.failed"; done; }
# expected SCRIPT TASK MODEL ROW EXTRA: sets MINUTES (one run's expected minutes, or empty) and
# WHY (the same in words, with where the estimate comes from)
expected() {
    local budget est
    budget=$(echo " $5 " | grep -o -- ' --time-budget [0-9.]*' | tail -1 | awk '{print $2}')
    if [ "$CPU" = 1 ] || [ "$ESTIMATE" = 1 ]; then
        case " $5 " in *" --eval-only "*) MINUTES=""; WHY="no estimate (evaluation only)"; return ;; esac
        MINUTES=$budget; WHY="at most $budget min (its time budget)"; return
    fi
    est=${EST_TABLE["$SCALE $DEV $1 $2 $3 $4"]:-}
    case " $5 " in *" --eval-only "*) est="" ;; esac  # the training run's time says nothing of it
    if [ -n "$est" ]; then MINUTES=${est%%|*}; WHY="expected ${MINUTES} min of training (estimate: ${est#*|})"
        [ -n "$budget" ] && MINUTES=$(awk "BEGIN {print ($MINUTES < $budget) ? $MINUTES : $budget}")
    else MINUTES=""; WHY="no estimate for this run on this device"; fi
}
summary() {  # the expected time of the runs listed, from EXPECTED ("table minutes" lines)
    echo -n "$EXPECTED" | awk -v slots="$SLOTS" '
        $2 == "-" { none++; next }
        { n++; sum[$1] += $2; total += $2; if ($2 > longest[$1]) longest[$1] = $2 }
        END { for (t in sum) wall += (sum[t] / slots > longest[t]) ? sum[t] / slots : longest[t]
              printf "# expected time (an estimate): %d runs, %.1f h of runs, about %.1f h with %d at a time", n, total / 60, wall / 60, slots
              printf "%s\n", none ? sprintf("; %d more runs without an estimate", none) : "" }'
}
barrier() { wait; }  # a table's runs finish before the next table (transfer needs them)
has_data() {  # has_data PATH TABLE WHY: false, and says so, if PATH is missing or empty
    [ -n "$ONLY" ] && [ "$ONLY" != "$2" ] && return 1
    [ "$CPU" = 1 ] && return 1
    # (an empty folder is what a failed download leaves behind)
    [ -n "$(ls -A "$1" 2>/dev/null)" ] || { echo "== skipping $2: no data at $1 ($3)"; return 1; }
}
[ "$DRY" = 1 ] && echo "# device: $(devices); runs at a time: $JOBS, --threads $THREADS each" \
    || mkdir -p "$OUT/logs"  # a dry run changes nothing
LAUNCHED=(); STOPPED=(); PIDS=(); SLOT_LOG=(); DRY_SLOT=0
trap stop INT TERM
[ "$SLURM" = 1 ] && SLURM_TMP=$(mktemp -d) && trap 'rm -rf "$SLURM_TMP"' EXIT
# --estimate times every run anew: the timing runs of the estimate before move to
# $OUT/estimate-previous/ (--quick: estimate-previous-quick/), which TABLES.md compares with
# (their checkpoints are dropped)
if [ "$ESTIMATE" = 1 ] && [ "$DRY" = 0 ]; then
    if [ "$QUICK" = 1 ]; then OLD=$(ls "$OUT"/*-quick-est-s*.json 2>/dev/null); PREV=$OUT/estimate-previous-quick
    else OLD=$(ls "$OUT"/*-est-s*.json 2>/dev/null | grep -v -- -quick-est-s); PREV=$OUT/estimate-previous; fi
    if [ -n "$OLD" ]; then
        rm -rf "$PREV" && mkdir -p "$PREV"
        for f in $OLD; do mv "$f" "$PREV/" && rm -f "$OUT/ckpt/$(basename "$f" .json)".*; done
    fi
fi

# slurm: writes $OUT/slurm/ from the runs collected in $SLURM_TMP: runs-<phase>.txt (results
# file, checkpoint, log, command: one line per task), phase-<phase>.sbatch (a job array; phase 2
# waits for phase 1) and submit.sh (the arrays, then the job that writes TABLES.md);
# --dry-run prints them instead, --submit runs submit.sh.
slurm() {
    local dir="$OUT/slurm" phase n minutes deps="" out repo f gres
    [ "$DRY" = 1 ] && dir="$SLURM_TMP/print"
    mkdir -p "$dir" && rm -f "$dir"/runs-*.txt "$dir"/phase-*.sbatch
    out=$(realpath -m "$OUT"); repo=$(pwd)
    { echo "#!/usr/bin/env bash"
      echo "# bash run_all.sh $ARGV: the runs not finished on $(date -u +%FT%TZ)"
      echo "set -euo pipefail"; echo "mkdir -p $out/logs"; } > "$dir/submit.sh"
    for phase in 1 2; do
        [ -s "$SLURM_TMP/runs-$phase.txt" ] || continue
        cp "$SLURM_TMP/runs-$phase.txt" "$dir/"
        n=$(wc -l < "$dir/runs-$phase.txt")
        minutes=$(sort -g "$SLURM_TMP/minutes-$phase.txt" | tail -1)  # the longest run's request
        gres=""; [ "$DEV" = gpu ] && gres=$'\n#SBATCH --gres=gpu:1'
        cat > "$dir/phase-$phase.sbatch" <<EOF
#!/usr/bin/env bash
#SBATCH --job-name=rnn-tables-$phase
#SBATCH --array=1-$n${JOBS_GIVEN:+%$JOBS_GIVEN}
#SBATCH --time=$minutes
#SBATCH --cpus-per-task=$THREADS$gres
#SBATCH --requeue
#SBATCH --signal=B:TERM@120
#SBATCH --chdir=$repo
#SBATCH --output=$out/logs/slurm-%A_%a.out
# One run per task: line \$SLURM_ARRAY_TASK_ID of runs-$phase.txt (results file, checkpoint,
# log, command). A finished run is not run again; a task that was preempted or requeued finds
# its checkpoint and continues with --resume. exec: SLURM's SIGTERM reaches the run itself.
IFS=\$'\t' read -r json pt log cmd < <(sed -n "\${SLURM_ARRAY_TASK_ID}p" "$out/slurm/runs-$phase.txt")
[ -f "\$json" ] && exit 0
[ "\$pt" != - ] && [ -f "\$pt" ] && cmd="\$cmd --resume"
exec \$cmd > "\$log" 2>&1
EOF
        echo "J$phase=\$(sbatch --parsable${SLURM_ARGS:+ $SLURM_ARGS}${deps:+ --dependency=afterany:$deps} $out/slurm/phase-$phase.sbatch)" >> "$dir/submit.sh"
        deps="${deps:+$deps:}\$J$phase"
    done
    echo "JT=\$(sbatch --parsable${SLURM_ARGS:+ $SLURM_ARGS}${deps:+ --dependency=afterany:$deps} --job-name=rnn-tables" \
         "--chdir=$repo --output=$out/logs/slurm-tables.out --wrap='$PY tools/tables.py table $OUT')" >> "$dir/submit.sh"
    echo "echo \"submitted: ${deps//:/, } and the tables \$JT (they write $out/TABLES.md)\"" >> "$dir/submit.sh"
    if [ "$DRY" = 1 ]; then
        for f in "$dir"/*; do echo "# ==> $OUT/slurm/$(basename "$f") <=="; cat "$f"; done
    else
        echo "== wrote $dir: $(cat "$dir"/runs-*.txt 2>/dev/null | wc -l) runs to do, $SKIPPED finished"
        if [ "$SUBMIT" = 1 ]; then bash "$dir/submit.sh"; else echo "== submit with: bash $dir/submit.sh"; fi
    fi
}
# Every table's rows, as the scripts define them (their TABLES): table|script|task|model|tag|
# seeds|ckpt|args|quick. A table's runs finish before the next table starts (transfer needs them).
ROWS=$($PY tools/tables.py runs) || { echo "error: $PY tools/tables.py runs failed (is torch installed?)" >&2; exit 1; }
# expected minutes per run: "scale device script task model row" -> "minutes|hardware, date"
declare -A EST_TABLE; EXPECTED=""
while IFS=$'\t' read -r scale dev script task model row minutes hardware date; do
    [ "$scale" = scale ] || EST_TABLE["$scale $dev $script $task $model $row"]="$minutes|$hardware, $date"
done < <($PY tools/tables.py estimates tools/estimates.tsv "$OUT")
table() {  # table NAME: run every row of NAME
    local name=$1 tbl script task model row seeds ckpt args qargs cpu
    DRY_SLOT=0
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

[ "$SLURM" = 1 ] && { slurm; exit; }
[ "$DRY" = 1 ] && { summary; exit 0; }
echo "== skipped $SKIPPED runs whose results exist"
failures
$PY tools/tables.py table "$OUT"
