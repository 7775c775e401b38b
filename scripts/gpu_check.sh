#!/usr/bin/env bash
# The GPU check in one call of a lent machine (at most 8 minutes): install the carried wheels over the machine's own
# torch, then train a LLaVA of a real shape (CLIP-L/14-336 + 1.1B Llama, built from config) with DeepSpeed ZeRO-2 in
# bf16 through mixlab's train_llava, score it with answer_nll, and print JSON lines (also in $OUT/gpu_check.json).
#
#   scripts/gpu_check.sh --download    # here, once: fetch scripts/gpu_wheels.txt's wheels into .whl/ and check them
#   scripts/gpu_check.sh --cpu-smoke   # here: the same Python on a tiny shape, fp32, no DeepSpeed, in seconds
#   scripts/gpu_check.sh [ARGS...]     # on the GPU machine (device `run` with carry [".whl"]); ARGS go to
#                                      # `scripts/gpu_check.py run` (e.g. --samples 512 --attn sdpa)
#
# The machine has python3 3.12 with torch 2.11 but no trl, deepspeed, datasets or pydantic, and no network: the
# wheels travel in .whl/ (ignored by git), mixlab itself travels as the working tree (put on PYTHONPATH).
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$PWD"
# Offline: no hub look-ups, and no hub kernels (transformers 5.25 would download Liger's RMSNorm etc. for CUDA
# layers by default; kernels is not carried, see scripts/gpu_wheels.txt). The same in the smoke run.
export USE_HUB_KERNELS=NO HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1

# A Python with torch (to build DeepSpeed's wheel and to run the smoke test): $PYTHON, else the venv, else python3.
py="${PYTHON:-}"
if [[ -z "$py" ]]; then
  if [[ -x .venv/bin/python ]]; then py=.venv/bin/python; else py=python3; fi
fi

download() {
  local tmp
  tmp="$(mktemp -d)"
  rm -rf .whl && mkdir -p .whl
  mapfile -t binary < <("$py" scripts/gpu_check.py pins)
  mapfile -t build < <("$py" scripts/gpu_check.py pins --build)
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "${binary[@]}"
  # PyPI has only sdists of these: build pure-Python wheels here (DS_BUILD_OPS=0: DeepSpeed JIT-compiles its ops
  # on first use on the GPU machine, which has nvcc and ninja; ZeRO-2 with torch's AdamW compiles none).
  for pin in "${build[@]}"; do
    python3 -m pip download -q --no-deps --no-binary=:all: -d "$tmp" "$pin"
  done
  for sdist in "$tmp"/*.tar.gz; do
    [[ -e "$sdist" ]] || continue
    DS_BUILD_OPS=0 "$py" -m pip wheel -q --no-deps --no-build-isolation -w .whl "$sdist"
  done
  rm -rf "$tmp"
  "$py" scripts/gpu_check.py wheels .whl
}

gpu_run() {
  # GPU_CHECK_WHEELS / GPU_CHECK_SITE / GPU_CHECK_TIMEOUT_S: where the wheels are, where they go, the Python's limit
  local wheels="${GPU_CHECK_WHEELS:-.whl}" site="${GPU_CHECK_SITE:-/tmp/site}" started=$SECONDS
  ls "$wheels"/*.whl >/dev/null 2>&1 || { echo "no wheels in $wheels/: run scripts/gpu_check.sh --download here" \
    "and call run with carry [\".whl\"]"; return 2; }
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
    "$wheels"/*.whl
  export PYTHONPATH="$site:$repo" DS_ACCELERATOR=cuda PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
  echo "gpu_check: wheels installed in $((SECONDS - started))s"
  python3 scripts/gpu_check.py preflight
  python3 -c "import mixlab, deepspeed, trl; print('gpu_check: mixlab from', mixlab.__file__)"
  # stop the Python in time for its output to come back within the 8-minute call
  timeout --signal=INT --kill-after=20 "${GPU_CHECK_TIMEOUT_S:-420}" python3 scripts/gpu_check.py run "$@"
  echo "gpu_check: done in $((SECONDS - started))s"
}

case "${1:-}" in
  --download)
    download
    ;;
  --cpu-smoke)
    shift
    CUDA_VISIBLE_DEVICES="" PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" exec "$py" scripts/gpu_check.py run \
      --cpu-smoke "$@"
    ;;
  *)
    out="${OUT:-/tmp/gpu-check-out}"
    mkdir -p "$out"
    gpu_run "$@" 2>&1 | tee "$out/gpu_check.log"
    ;;
esac
