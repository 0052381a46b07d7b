#!/usr/bin/env bash
# The ISIC 2017 runs made on one lent GPU machine (one NVIDIA H200) in one sitting, side by side:
#   - validation curves of f at 64, 128 and 224 px (benchmarks/epoch_curve.py, training images only);
#   - the shipped model (segqc train at 224 px, the paper's 120 f epochs and 30 g epochs, msp); then,
#     with the time left, seed 0 of `segqc experiment --preset paper` (its first-epoch estimates are
#     the measured cost of the paper-scale run);
#   - isic2017-600 at 64 px: every row but ensemble, 5 seeds, f epochs chosen by the 64 px curve; the
#     ensemble row (five f's per seed) apart, 3 seeds, so that its cost cannot hold up the others;
#   - isic2017-600 at 128 px: msp, mcdropout, tta and the no-uncertainty baseline, 3 seeds, f epochs
#     chosen by the 128 px curve.
# Everything stops by BUDGET seconds (the experiments through benchmarks/paper_on_gpu.py's budget,
# finished seeds kept), then the results are packed into OUT (no unit caches: they stay behind).
#
# Usage: bash benchmarks/isic_gpu_session.sh DATA_DIR OUT_DIR BUDGET_SECONDS [DEVICE]
set -uo pipefail
DATA=$1 OUT=$2 BUDGET=$3 DEVICE=${4:-cuda}
WORK=${WORK:-runs/gpu-session}
START=$(date +%s)
left() { echo $((BUDGET - ($(date +%s) - START))); }
mkdir -p "$WORK" "$OUT"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
EPOCHS=${EPOCHS:-120} QEPOCHS=${QEPOCHS:-30} SEEDS64=${SEEDS64:-0,1,2,3,4} SEEDS3=${SEEDS3:-0,1,2}
EXTRA=${EXTRA:-}  # more experiment options (the CPU rehearsal shrinks the data with them)
PROTO="$DATA/split.json"
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || true

curve() {  # SIZE: the curve, then its chosen epochs on stdout's last line
  timeout $(( $(left) - 60 )) "$PY" benchmarks/epoch_curve.py --data "$DATA" --protocol "$PROTO" \
    --image-size "$1" --epochs "$EPOCHS" --every 5 --seed 0 --device "$DEVICE" \
    --time-budget $(( $(left) - 90 )) --out "$WORK/curve-$1" >"$WORK/curve-$1.log" 2>&1
  "$PY" -c "import json,sys; print(json.load(open(sys.argv[1])).get('chosen_epochs') or sys.argv[2])" \
    "$WORK/curve-$1/curve.json" "$2" 2>/dev/null || echo "$2"
}

experiment() {  # NAME SEEDS PARALLEL EPOCHS SIZE METHODS BASELINES
  "$PY" benchmarks/paper_on_gpu.py --budget $(( $(left) - 45 )) --margin 40 --out "$WORK/$1" \
    --seeds "$2" --parallel "$3" --preset none -- --data "$DATA" --protocol "$PROTO" --image-size "$5" \
    --seg-epochs "$4" --quality-epochs "$QEPOCHS" --methods "$6" --baselines "$7" --device "$DEVICE" \
    $EXTRA >"$WORK/$1.log" 2>&1
}

(
  timeout $(( $(left) - 40 )) "$PY" -m segqc train --data "$DATA" --protocol "$PROTO" --image-size 224 \
    --seg-epochs "$EPOCHS" --quality-epochs "$QEPOCHS" --method msp --seed 0 --device "$DEVICE" \
    --force --out "$WORK/isic2017-model" >"$WORK/train-224.log" 2>&1
  echo "train 224: exit $?" >>"$WORK/status.txt"
  "$PY" benchmarks/paper_on_gpu.py --budget $(( $(left) - 45 )) --margin 30 --out "$WORK/paper224" \
    --seeds 0 --parallel 1 -- --data "$DATA" --protocol "$PROTO" --device "$DEVICE" $EXTRA \
    >"$WORK/paper224.log" 2>&1
  echo "paper224: exit $?" >>"$WORK/status.txt"
) &
( E=$(curve 64 50 | tail -1); echo "64 px: f epochs $E" >>"$WORK/status.txt"
  experiment isic64-ensemble "$SEEDS3" 3 "$E" 64 ensemble none &
  experiment isic64 "$SEEDS64" 5 "$E" 64 msp,mcdropout,hcnn,lce,tta no-uncertainty,qualitynet,rca
  echo "isic64: exit $?" >>"$WORK/status.txt"; wait; echo "isic64-ensemble: done" >>"$WORK/status.txt" ) &
( E=$(curve 128 60 | tail -1); echo "128 px: f epochs $E" >>"$WORK/status.txt"
  experiment isic128 "$SEEDS3" 3 "$E" 128 msp,mcdropout,tta no-uncertainty
  echo "isic128: exit $?" >>"$WORK/status.txt" ) &
( curve 224 120 >/dev/null; echo "curve 224: done" >>"$WORK/status.txt" ) &

while [ "$(jobs -rp | wc -l)" -gt 0 ] && [ "$(left)" -gt 25 ]; do
  sleep 5
  [ $(( ($(date +%s) - START) % 60 )) -lt 5 ] && { echo "t=$(( $(date +%s) - START ))s"; cat "$WORK/status.txt" 2>/dev/null; nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader 2>/dev/null; }
done
pkill -P $$ 2>/dev/null; sleep 2
cat "$WORK/status.txt"
tar -czf "$OUT/model.tar.gz" -C "$WORK" isic2017-model 2>/dev/null
tar -czf "$OUT/results.tar.gz" -C "$WORK" --exclude=units --exclude='seeds/*/units' --exclude=logs \
  curve-64 curve-128 curve-224 isic64 isic64-ensemble isic128 paper224 2>/dev/null
(cd "$WORK" && tar -czf "$OUT/logs.tar.gz" ./*.log status.txt isic64*/logs isic128/logs paper224/logs 2>/dev/null)
ls -la "$OUT"
