#!/usr/bin/env bash
# The GPU check, in one go, on a fresh GPU machine that has this repository and no internet:
# install from a wheel folder, build and export the demo voice on GPU providers, then
# (bench/gpu_check.py) FP16 agreement with torch float32, TensorRT engines with optimization
# profiles (build vs cache hit, native refit vs full build), in-process RTF per provider, the eager
# torch baseline on the same GPU, and through a real tritonserver: single-stream RTF, first-chunk
# latency, throughput at concurrency 1-64 and a hot swap under load. About 8 minutes; every step
# that cannot run says why and the next one runs. Everything goes to ONE folder: $OUT when set,
# else bench/results/gpu-<UTC time> (summary.json, summary.md, gpu_check.log, tritonserver.log).
#
#   bash bench/gpu_check.sh [--wheels DIR] [--cpu-dry-run] [-- extra bench.gpu_check options]
#
# Fill the wheel folder on a machine with internet, for the GPU machine's Python (3.12 and x86_64
# here). The GPU wheels are binary-only (CUDA 12 builds run on any driver >= 525, CUDA 13 drivers
# included); take the TensorRT major that this onnxruntime-gpu release's TensorRT EP was built
# with (its release notes say; 10.x for the 1.2x/1.3x line):
#
#   python3 -m pip download --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
#       --platform manylinux2014_x86_64 -d .whl 'onnxruntime-gpu==1.31.1' 'tensorrt-cu12-libs==10.*' \
#       'tensorrt-cu12-bindings==10.*' 'nvidia-cudnn-cu12==9.*' 'nvidia-cublas-cu12==12.9.*' \
#       'nvidia-cuda-runtime-cu12==12.9.*' 'nvidia-cufft-cu12==11.*' 'nvidia-curand-cu12==10.*' \
#       'nvidia-cuda-nvrtc-cu12==12.9.*'
#   python3.12 -m pip wheel -w .whl '.[export,serve]'  # the project and its dependencies (some are sdists: built
#                                                      # here, so with the GPU machine's Python version)
#
# The folder is several GB (torch, onnxruntime-gpu, TensorRT, cuDNN), so it goes to the GPU
# machine beside the repository, not through a 64 MiB carry. Where the machine already has
# torch, leave torch out; pip keeps what is installed.
#
# --cpu-dry-run: the same steps with the CPU provider on the tiny demo voice, writing the same
# files (a few minutes on 2 busy cores, mostly the export and tritonserver's start);
# tests/test_gpu_check.py runs it.
set -u -o pipefail
cd "$(dirname "$0")/.."

main() {  # parsed whole before it runs: editing this file mid-run cannot change a run in progress

local WHEELS="" DRY="" EXTRA=()
while [ $# -gt 0 ]; do
  case "$1" in
    --wheels) WHEELS="$2"; shift 2 ;;
    --cpu-dry-run) DRY="--cpu-dry-run"; shift ;;
    --) shift; EXTRA=("$@"); break ;;
    *) if [ -z "$WHEELS" ] && [ -d "$1" ]; then WHEELS="$1"; shift; else echo "gpu_check.sh: unknown argument $1 (use --wheels DIR, --cpu-dry-run, -- OPTIONS)" >&2; return 2; fi ;;
  esac
done

RESULTS="${OUT:-bench/results/gpu-$(date -u +%Y%m%dT%H%M%SZ)}"
mkdir -p "$RESULTS"
LOG="$RESULTS/gpu_check.log"
say() { echo "[gpu_check.sh] $*" | tee -a "$LOG"; }
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && PY=.venv/bin/python

# ---- install (skipped, with the reason, where there is no wheel folder)
if [ -n "$WHEELS" ] && [ -d "$WHEELS" ]; then
  # the project first: its onnxruntime requirement would otherwise replace onnxruntime-gpu's module
  "$PY" -m pip install -q --no-index --no-build-isolation --find-links "$WHEELS" -e '.[export,serve]' >>"$LOG" 2>&1 \
    && say "installed gsv-triton[export,serve]" || say "install of gsv-triton[export,serve] failed (see $LOG); continuing"
  for spec in onnxruntime-gpu tensorrt-cu12-libs tensorrt-cu12-bindings nvidia-cudnn-cu12 nvidia-cublas-cu12 \
              nvidia-cuda-runtime-cu12 nvidia-cufft-cu12 nvidia-curand-cu12 nvidia-cuda-nvrtc-cu12; do
    if ls "$WHEELS"/$(echo "$spec" | tr - _)-*.whl >/dev/null 2>&1; then
      # onnxruntime and onnxruntime-gpu install the same module: keep only the GPU one
      [ "$spec" = onnxruntime-gpu ] && "$PY" -m pip uninstall -y -q onnxruntime >>"$LOG" 2>&1
      "$PY" -m pip install -q --no-index --no-deps --force-reinstall --find-links "$WHEELS" "$spec" >>"$LOG" 2>&1 \
        && say "installed $spec" || say "install of $spec failed (see $LOG); continuing"
    else
      say "no $spec wheel in $WHEELS; its steps will say so"
    fi
  done
elif [ -n "$WHEELS" ]; then
  say "wheel folder $WHEELS not found; using what is installed"
else
  say "no wheel folder given; using what is installed"
fi

# ---- CUDA / cuDNN / TensorRT libraries from the wheels on the loader's path
LIBS=$("$PY" - <<'EOF' 2>/dev/null
import glob, os, site
dirs = []
for base in site.getsitepackages() + [site.getusersitepackages()]:
    dirs += glob.glob(os.path.join(base, "nvidia", "*", "lib")) + glob.glob(os.path.join(base, "tensorrt_libs"))
print(":".join(d for d in dirs if os.path.isdir(d)))
EOF
)
[ -n "$LIBS" ] && export LD_LIBRARY_PATH="$LIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PYTHONUNBUFFERED=1

say "results in $RESULTS; GPU: $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 || true)"
"$PY" -m bench.gpu_check --out "$RESULTS" $DRY "${EXTRA[@]+"${EXTRA[@]}"}" 2>&1 | tee -a "$LOG"
rc=${PIPESTATUS[0]}
say "done (exit $rc): $RESULTS/summary.md"
return "$rc"
}

main "$@"
