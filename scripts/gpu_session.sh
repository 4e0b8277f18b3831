#!/usr/bin/env bash
# One short GPU lease, used in full: the CUDA checks of issue 4, then time-boxed fine-tunes side by side (issue 7).
#
#   OUT=gpu_out BUDGET_S=540 bash scripts/gpu_session.sh
#   OUT=gpu_out BUDGET_S=540 CHECKS=0 RUNS="pretrain_rt_gpu2" bash scripts/gpu_session.sh   # training only
#
# RUNS: the config/train/<run>.yaml recipes trained side by side (default since the tenth session:
# pretrain_rt_ws_gpu, the shipped default's architecture; carry runs/convert/m2s_rt_ws149_dc6_bn.*);
# CHECKS=0 skips steps 1 and 2 (the scene cache is still rendered first, on every core).
# 1. bench/gpu_check.py for m2s_rt and m2s_rt_fast (torch CUDA fp32/fp16 +- CUDA graphs, ONNX Runtime CUDA /
#    TensorRT where installed, parity against the CPU) -> $OUT/gpu_check_<model>.md
# 2. the test suite without the ROS tests (the GPU tests included; rclpy/rosbags may be missing there) ->
#    $OUT/pytest.log, while the scene cache of the fine-tunes is rendered on the other cores
# 3. a probe of the fine-tunes side by side (start-up, then 15 s counted), then the runs with optim.steps
#    set from the probe's step rate so that they end inside BUDGET_S -> $OUT/train.tgz (configs, metrics,
#    final checkpoints, logs); exit 1 if a run failed or was stopped at the budget
# (Background jobs are waited for by PID: a bare `wait` would also wait for the log's tee.)
# Everything runs from the repository root with the machine's own python3 (PY to override). Needs the
# warm-start checkpoints named in the RUNS configs' model.init (carry them to a bare machine).
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_out}
BUDGET_S=${BUDGET_S:-540}
PY=${PY:-python3}
RUNS=${RUNS:-"pretrain_rt_ws_gpu"}
CHECKS=${CHECKS:-1}
for run in $RUNS; do
    [ -f "config/train/$run.yaml" ] || { echo "config/train/$run.yaml does not exist"; exit 2; }
    if [ -e "runs/$run" ]; then echo "runs/$run exists: move it away first (this script trains into it)"; exit 2; fi
done
mkdir -p "$OUT"
T0=$(date +%s)
PROBE=$(mktemp -d)
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
exec > >(tee -a "$OUT/session.log") 2>&1
left() { echo $((T0 + BUDGET_S - $(date +%s))); }
stamp() { echo "== [$(($(date +%s) - T0)) s] $*"; }

stamp "machine"
nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv 2>&1
nproc
$PY - <<'EOF' || { echo "imports failed: stopping"; exit 3; }
import sys, numpy, cv2, onnx, onnxruntime, skimage, safetensors, torch, tqdm, yaml
import torch.utils.tensorboard  # the trainer's SummaryWriter
print("python", sys.version.split()[0], "| torch", torch.__version__, "cuda", torch.version.cuda,
      "| onnxruntime", onnxruntime.__version__, onnxruntime.get_available_providers(),
      "| numpy", numpy.__version__, "| opencv", cv2.__version__, "| skimage", skimage.__version__)
print("cuda device:", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none")
EOF

if [ "$CHECKS" != 0 ]; then
    for model in m2s_rt m2s_rt_fast; do
        stamp "gpu_check $model"
        timeout 120 $PY bench/gpu_check.py --model "$model" --markdown "$OUT/gpu_check_$model.md"
    done
fi

stamp "scene cache$([ "$CHECKS" != 0 ] && echo " and tests (no ROS)")"
TESTS=""
if [ "$CHECKS" != 0 ]; then
    PYTEST_OPTS=""
    $PY -c "import xdist" 2>/dev/null && PYTEST_OPTS="-n 6"
    $PY -c "import pytest_timeout" 2>/dev/null && PYTEST_OPTS="$PYTEST_OPTS --timeout 100"
    timeout 120 $PY -m pytest -q -p no:cacheprovider -m "not ros" $PYTEST_OPTS --continue-on-collection-errors \
        tests/ >"$OUT/pytest.log" 2>&1 &
    TESTS=$!
    RENDER_JOBS=9
else
    RENDER_JOBS=$(nproc)
fi
RENDERERS=()
# Every run's scenes (the recipes may share them: the cache is keyed by scene and render settings).
for run in $RUNS; do
    for k in $(seq 0 $((RENDER_JOBS - 1))); do
        timeout 115 $PY training/pretrain.py --config "config/train/$run.yaml" --out "$PROBE/prerender_$run" \
            --no-progress --prerender 1000 --shard "$k/$RENDER_JOBS" >/dev/null 2>&1 &
        RENDERERS+=($!)
    done
    wait "${RENDERERS[@]}"
    RENDERERS=()
done
if [ -n "$TESTS" ]; then
    wait $TESTS
    echo "pytest rc $?: $(tail -n 1 "$OUT/pytest.log")"
fi
ls runs/scene_cache | wc -l

stamp "probe"
PROBES=()
for run in $RUNS; do
    $PY training/pretrain.py --config "config/train/$run.yaml" --out "$PROBE/$run" --no-progress \
        --set optim.steps=1000000 --set trainer.validate_every=0 --set trainer.checkpoint_minutes=0 \
        --set trainer.checkpoint_every=0 >"$PROBE/$run.log" 2>&1 &
    PROBES+=($!)
done
steps_now() { if [ -f "$PROBE/$1/metrics.jsonl" ]; then wc -l <"$PROBE/$1/metrics.jsonl"; else echo 0; fi; }
# Start-up (CUDA, workers, warm-start weights) first: wait until every probe has logged 5 steps (60 s at most).
for _ in $(seq 60); do
    ready=1
    for run in $RUNS; do [ "$(steps_now "$run")" -ge 5 ] || ready=0; done
    [ "$ready" = 1 ] && break
    sleep 1
done
sleep 5
declare -A FIRST
for run in $RUNS; do FIRST[$run]=$(steps_now "$run"); done
sleep 15
declare -A STEPS
train_s=$(($(left) - 45))
[ "$train_s" -lt 30 ] && train_s=30
for run in $RUNS; do
    done_steps=$(($(steps_now "$run") - FIRST[$run]))
    # 90 % of the measured rate over what is left (final validation and save need the rest)
    STEPS[$run]=$((done_steps * train_s * 9 / 10 / 15))
    [ "${STEPS[$run]}" -lt 20 ] && STEPS[$run]=20
    echo "$run: $done_steps steps in 15 s -> optim.steps=${STEPS[$run]} for ${train_s} s"
done
kill "${PROBES[@]}" 2>/dev/null; sleep 3; kill -9 "${PROBES[@]}" 2>/dev/null; wait "${PROBES[@]}" 2>/dev/null

stamp "train"
TRAINERS=()
for run in $RUNS; do
    limit=$(($(left) - 15))
    [ "$limit" -lt 30 ] && limit=30
    timeout -k 10 "$limit" $PY training/pretrain.py --config "config/train/$run.yaml" --out "runs/$run" \
        --no-progress --set "optim.steps=${STEPS[$run]}" >"runs/$run.log" 2>&1 &
    TRAINERS+=($!)
done
FAILED=0
for pid in "${TRAINERS[@]}"; do wait "$pid" || FAILED=1; done
for run in $RUNS; do echo "$run: $(tail -n 3 "runs/$run.log")"; done
stamp "pack"
tar czf "$OUT/train.tgz" --exclude='*.state.*' --exclude='tb' $(for run in $RUNS; do echo "runs/$run runs/$run.log"; done) \
    "$PROBE"/*.log 2>/dev/null
ls -la "$OUT"
stamp "done"
[ "$FAILED" = 0 ] || { echo "a training run failed: see runs/*.log in train.tgz"; exit 1; }
