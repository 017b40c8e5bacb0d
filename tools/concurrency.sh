#!/usr/bin/env bash
# How many runs one GPU should take at a time (run_all.sh --jobs-per-gpu K): K runs of SAB copy
# T = 100 at the paper's settings started together on one device, for K = 1, 2, 4, 8, and the
# steps per second of all K summed (each run's rate between its two evaluations, so start-up
# is not counted); on a GPU also under CUDA MPS where nvidia-cuda-mps-control exists. At most
# about 8 minutes on an H100:
#
#   bash tools/concurrency.sh                            # the GPU measurement
#   DEVICE=cpu KS="1 2" STEPS=20 bash tools/concurrency.sh   # a check of the script on CPU
#
# Everything goes to $OUT (default ./results/concurrency); the last lines are the table.
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}; OUT=${OUT:-./results/concurrency}; DEVICE=${DEVICE:-cuda}
KS=${KS:-1 2 4 8}; STEPS=${STEPS:-400}
mkdir -p "$OUT"

measure() {  # measure LABEL K: K runs at once; prints "LABEL K summed-steps/s per-run..."
    local label=$1 k=$2 i dir="$OUT/$1-k$2"
    rm -rf "$dir"
    for i in $(seq 1 "$k"); do
        "$PY" sab.py --task copy --device "$DEVICE" --threads 1 --seed "$i" --steps "$STEPS" \
            --eval-every $((STEPS / 2)) --eval-size 64 --test-size 64 --out-dir "$dir" \
            --tag "k$k-$i" > "$dir-$i.log" 2>&1 &
    done
    wait
    "$PY" - "$dir" "$label" "$k" <<'EOF'
import glob, json, sys
rates = []
for f in sorted(glob.glob(sys.argv[1] + "/*.json")):
    (a, b) = json.load(open(f))["history"][-2:]
    rates.append((b["step"] - a["step"]) / (b["seconds"] - a["seconds"]))
print(f"| {sys.argv[2]} | {sys.argv[3]} | {len(rates)} | {sum(rates):.2f} | "
      + " ".join(f"{r:.2f}" for r in rates) + " |")
EOF
}

echo "| mode | K | runs finished | steps/s, all K summed | steps/s of each |" > "$OUT/table.md"
echo "|---|---|---|---|---|" >> "$OUT/table.md"
for k in $KS; do measure plain "$k" >> "$OUT/table.md"; done
if [ "$DEVICE" = cuda ] && command -v nvidia-cuda-mps-control >/dev/null; then
    export CUDA_MPS_PIPE_DIRECTORY=$(mktemp -d) CUDA_MPS_LOG_DIRECTORY=$(mktemp -d)
    if nvidia-cuda-mps-control -d; then
        for k in $KS; do measure mps "$k" >> "$OUT/table.md"; done
        echo quit | nvidia-cuda-mps-control
    fi
fi
echo "== SAB copy T=100, $STEPS steps per run, device $DEVICE ($(nvidia-smi -L 2>/dev/null | head -1))"
cat "$OUT/table.md"
