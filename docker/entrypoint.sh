#!/usr/bin/env bash
# Container entrypoint: build or reuse the TensorRT engine for this GPU, then launch the stereo node.
#
# The engine cache (M2S_ENGINE_CACHE, a volume) holds one engine per ONNX hash + TensorRT version + GPU name +
# compute capability + precision + input shape; see mono2stereo_core/inference/engine_cache.py.
# Extra arguments are passed to `ros2 launch mono2stereo stereo.launch.py`.
#
# Environment:
#   M2S_ONNX           ONNX model (default: the shipped weights/m2s_rt_640x480.onnx)
#   M2S_ENGINE_CACHE   engine cache directory (default /var/cache/mono2stereo)
#   M2S_PRECISION      fp16 (default) | fp32
#   M2S_SKIP_ENGINE=1  run the ONNX through ONNX Runtime instead of TensorRT
#   M2S_DRY_RUN=1      print the engine decision and the launch command, build and run nothing; with
#                      M2S_GPU_NAME, M2S_COMPUTE_CAPABILITY, M2S_TRT_VERSION standing in for the real GPU
set -euo pipefail

M2S_HOME="${M2S_HOME:-/opt/mono2stereo}"
ONNX="${M2S_ONNX:-$M2S_HOME/weights/m2s_rt_640x480.onnx}"
CACHE="${M2S_ENGINE_CACHE:-/var/cache/mono2stereo}"
PRECISION="${M2S_PRECISION:-fp16}"
PYTHON="${M2S_PYTHON:-python3}"

log() { echo "[mono2stereo] $*" >&2; }

if [[ "${M2S_DRY_RUN:-0}" != "1" ]]; then
    # ROS 2 environments: the distro's, then the workspace built into the image. setup.bash reads unset
    # variables, so relax nounset while sourcing.
    set +u
    # shellcheck disable=SC1090
    source "/opt/ros/${ROS_DISTRO:?ROS_DISTRO is not set}/setup.bash"
    # shellcheck disable=SC1091
    source "$M2S_HOME/ros2_ws/install/setup.bash"
    set -u
fi

if [[ ! -f "$ONNX" ]]; then
    log "error: ONNX model '$ONNX' does not exist (set M2S_ONNX, or mount your model and point M2S_ONNX at it)"
    exit 1
fi

MODEL="$ONNX"
BACKEND="onnxruntime"
if [[ "${M2S_SKIP_ENGINE:-0}" != "1" ]]; then
    mkdir -p "$CACHE"
    args=(--onnx "$ONNX" --cache-dir "$CACHE" --precision "$PRECISION")
    if [[ "${M2S_DRY_RUN:-0}" == "1" ]]; then
        args+=(--dry-run)
        [[ -n "${M2S_GPU_NAME:-}" ]] && args+=(--gpu-name "$M2S_GPU_NAME" --compute-capability "${M2S_COMPUTE_CAPABILITY:?M2S_COMPUTE_CAPABILITY goes with M2S_GPU_NAME}")
        [[ -n "${M2S_TRT_VERSION:-}" ]] && args+=(--trt-version "$M2S_TRT_VERSION")
    fi
    log "checking the TensorRT engine cache in $CACHE (a first build on a new GPU takes minutes)"
    if ! output="$("$PYTHON" -m mono2stereo_core.inference.engine_cache "${args[@]}")"; then
        log "error: no TensorRT engine could be built or reused for $ONNX (see the message above)."
        log "       On a machine without an NVIDIA GPU/TensorRT, run with M2S_SKIP_ENGINE=1 (ONNX Runtime)."
        exit 2
    fi
    decision="$(head -n1 <<<"$output")"
    MODEL="$(tail -n1 <<<"$output")"
    BACKEND="tensorrt"
    log "engine: ${decision%% *} -> $MODEL"
fi

cmd=(ros2 launch mono2stereo stereo.launch.py "model_path:=$MODEL" "backend:=$BACKEND" "$@")
if [[ "${M2S_DRY_RUN:-0}" == "1" ]]; then
    printf '%q ' "${cmd[@]}"
    echo
    exit 0
fi
exec "${cmd[@]}"
