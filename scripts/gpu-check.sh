#!/usr/bin/env bash
# GPU check for a machine with an NVIDIA GPU and a stock PyTorch + transformers 5.x image (no ROS, no
# network, nothing installed): runs the `gpu`-marked tests and the runtime benchmarks at DriveMM size
# (random weights: hidden 4096, FFN 14336, 32 layers, bf16; six 729-token views) and prints one
# summary. Each section has its own time limit, so one failure still leaves the others' results.
#   scripts/gpu-check.sh            # logs and summary.txt go to $OUT (default: ./gpu-check-out)
# pytest is installed from ./wheels when the image lacks it (pip download pytest -d wheels).
# BENCH_ARGS is appended to the runtime benchmarks, e.g. BENCH_ARGS="--hidden 64 --layers 2" for a dry run.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu-check-out}
mkdir -p "$out"
py=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # run from the checkout: nothing to install
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
status="$out/status.txt"
: >"$status"
start_all=$(date +%s)

# section NAME LIMIT_S COMMAND...: run with a time limit, log to $out/NAME.log, record rc and seconds.
section() {
  local name=$1 limit=$2
  shift 2
  local t0 rc
  t0=$(date +%s)
  echo "== $name (limit ${limit}s)"
  timeout "$limit" "$@" >"$out/$name.log" 2>&1
  rc=$?
  printf '%-10s rc=%-4s %4ss\n' "$name" "$rc" "$(( $(date +%s) - t0 ))" | tee -a "$status"
  tail -n 3 "$out/$name.log"
}

section env 30 bash -c "nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; \
  $py -c 'import torch, transformers, sys; print(\"python\", sys.version.split()[0], \"torch\", torch.__version__, \
\"cuda\", torch.version.cuda, \"transformers\", transformers.__version__, \"gpu\", torch.cuda.is_available())'"

if ! $py -c "import pytest" 2>/dev/null && [ -d wheels ]; then
  $py -m pip install -q --no-index --find-links wheels pytest >"$out/pytest-install.log" 2>&1
fi
section gpu-tests 150 $py -m pytest -m gpu test/test_vlm_static.py test/test_vlm_quantize.py -q -p no:cacheprovider -rs
# shellcheck disable=SC2086  # BENCH_ARGS is a list of words
section prefill 100 $py -m prune2drive_ros.cli bench prefill --repeats 3 --retain 0.1 0.25 ${BENCH_ARGS:-}
# shellcheck disable=SC2086
section decode 100 $py -m prune2drive_ros.cli bench decode --repeats 3 --new-tokens 32 --retain 0.1 ${BENCH_ARGS:-}
# The int8/int4 (and fp8 where the GPU has 8.9) rows: targets int4 b=1 ms/token <= 0.5x bf16, graphs captured.
# shellcheck disable=SC2086
section weights 240 $py -m prune2drive_ros.cli bench decode --repeats 3 --new-tokens 32 --retain 0.1 \
  --weights bf16 int8 int4 fp8 ${BENCH_ARGS:-}
section tfps 30 $py -m prune2drive_ros.cli bench pruning --dims 4096 --retain 0.1 --methods tfps --repeats 20

summary="$out/summary.txt"
{
  echo "# scripts/gpu-check.sh summary ($(( $(date +%s) - start_all )) s)"
  cat "$out/env.log"
  echo
  echo "section    rc    time"
  cat "$status"
  echo
  echo "## gpu tests"
  tail -n 4 "$out/gpu-tests.log"
  for name in prefill decode weights tfps; do
    echo
    echo "## bench $name"
    grep -v '^\s*$' "$out/$name.log" | tail -n 14
  done
} >"$summary"
echo
cat "$summary"
! grep -qv 'rc=0 ' "$status"
