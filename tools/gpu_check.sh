#!/usr/bin/env bash
# The GPU measurements of the step loops, in one script of at most 10 minutes (NVIDIA H100):
#
#   DATA_DIR=./data bash tools/gpu_check.sh      # DATA_DIR: a folder with MNIST/raw (r-LSTM)
#
# 1. the CUDA tests (the Triton kernels, autocast, resume, --compile with CUDA graphs);
# 2. each script's --benchmark on CUDA (compiled SAB: in 3, as a training run);
# 3. training speed, steps per second between two evaluations: the main job on CUDA (eager and
#    --compile) against one CPU thread, SAB copy T = 100 (eager and --compile), r-LSTM MNIST
#    Full BP, and the IndRNN and r-LSTM --quick presets;
# 4. run_all.sh --estimate of the slowest tables, with the ratio to the estimate before.
# Every command has its own time limit (600 s in all), so a slow or failing one cannot eat the
# others' time;
# everything goes to $OUT (default ./results/gpu-check); the summary at the end gives the
# numbers that the step-loop targets name. DEVICE=cpu runs the same commands on the CPU (a
# check of the script itself; the GPU-only tests then skip).
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}; DATA=${DATA_DIR:-./data}; OUT=${OUT:-./results/gpu-check}
DEVICE=${DEVICE:-cuda}; SCALE=${SCALE:-1}  # SCALE < 1 shortens every step count (a dry check)
mkdir -p "$OUT"
START=$(date +%s)
steps() { awk -v n="$1" -v s="$SCALE" 'BEGIN { v = int(n * s); print (v < 2 ? 2 : v) }'; }

run() {  # run NAME SECONDS COMMAND...: one step, its output in $OUT/NAME.log
    local name=$1 limit=$2; shift 2
    echo "== $(date -u +%T) $name (at most $limit s): $*"
    timeout -k 5 "$limit" "$@" > "$OUT/$name.log" 2>&1  # -k: a run checkpoints on SIGTERM
    local rc=$?
    [ $rc = 0 ] || echo "   $name: exit $rc (see $OUT/$name.log)"
}
rate() {  # rate NAME: steps per second of the run in $OUT/NAME, between its two evaluations
    "$PY" - "$OUT/$1" <<'EOF'  # (so that compiling, in the first step, is not counted)
import glob, json, sys
for f in sorted(glob.glob(sys.argv[1] + "/*.json")):
    r = json.load(open(f))
    (a, b), cmd = r["history"][-2:], " ".join(r["command"].split()[1:])
    print(f"{(b['step'] - a['step']) / (b['seconds'] - a['seconds']):.2f} steps/s (steps "
          f"{a['step']}-{b['step']}; first evaluation after {a['seconds']:.0f} s; "
          f"{r['hardware']}; {cmd})")
EOF
}
# 1. CUDA tests (the rest of the suite is CI's, on CPU)
run cuda-tests 100 env RNN_TEST_CUDA=1 "$PY" -m pytest -q -p no:cacheprovider tests/test_cuda.py

# 2. benchmarks (SAB: T = 100, 300, 1000 against cuDNN's nn.LSTM)
run bench-sab 40 "$PY" sab.py --benchmark --device "$DEVICE"
run bench-indrnn 25 "$PY" indrnn.py --benchmark --device "$DEVICE" --seq-len 1000
run bench-rlstm 25 "$PY" rlstm.py --benchmark --device "$DEVICE" --seq-len 1024

# 3. training speed: a fixed number of steps, evaluated (on a small set) half-way and at the end
train() {  # train NAME SECONDS STEPS SCRIPT ARGS...: a fresh run
    local name=$1 limit=$2 n; n=$(steps "$3"); shift 3
    rm -rf "${OUT:?}/$name"
    run "$name" "$limit" "$PY" "$@" --out-dir "$OUT/$name" --data-dir "$DATA" --steps "$n" \
        --eval-every "$(( n / 2 ))" --eval-size 64 --test-size 64
}
train main-cuda 40 1500 sab.py --task copy --quick --device "$DEVICE"
train main-cuda-compiled 60 3000 sab.py --task copy --quick --device "$DEVICE" --compile
train main-cpu 20 300 sab.py --task copy --quick --device cpu --threads 1
train copy100-cuda 30 150 sab.py --task copy --device "$DEVICE"
train copy100-cuda-compiled 90 600 sab.py --task copy --device "$DEVICE" --compile
train rlstm-fullbp-cuda 40 40 rlstm.py --task mnist --model rlstm --bptt 0 --aux-bptt 0 \
    --device "$DEVICE"
train indrnn-quick-cuda 20 1000 indrnn.py --task adding --quick --model indrnn --device "$DEVICE"
train rlstm-quick-cuda 20 100 rlstm.py --task mnist --quick --device "$DEVICE"

# 4. hours of the slowest tables (each run times itself for EST_MINUTES; earlier estimates in
# $OUT/estimate are kept as estimate-previous/ and compared)
for t in sab-copy:50 rlstm-table2:40; do
    run "estimate-${t%:*}" "${t#*:}" env EST_MINUTES="${EST_MINUTES:-0.04}" PYTHON="$PY" \
        bash run_all.sh --estimate --only "${t%:*}" --data-dir "$DATA" --out-dir "$OUT/estimate"
done

echo
echo "== summary ($(( $(date +%s) - START )) s; $(nvidia-smi -L 2>/dev/null | head -1))"
grep -h "passed\|failed" "$OUT/cuda-tests.log" | tail -1
for b in sab indrnn rlstm; do
    echo "-- benchmark $b"; grep -h "^|\|compil" "$OUT/bench-$b.log"
done
for n in main-cuda main-cuda-compiled main-cpu copy100-cuda copy100-cuda-compiled \
         rlstm-fullbp-cuda indrnn-quick-cuda rlstm-quick-cuda; do
    echo "-- $n: $(rate "$n")"
done
echo "-- estimate"; sed -n '/Estimated hours/,$p' "$OUT/estimate/TABLES.md" 2>/dev/null
