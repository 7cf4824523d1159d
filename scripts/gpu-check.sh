#!/usr/bin/env bash
# The GPU check: one run on a machine with an NVIDIA GPU that says pass or fail against every target.
#   scripts/gpu-check.sh           # DriveMM size (8B, bf16, random weights, 128k vocabulary); under 10 minutes
#   scripts/gpu-check.sh --quick   # a reduced model: a dry run of the whole flow (tests included)
#   scripts/gpu-check.sh --cpu     # the same flow on a CPU with a tiny model: every target "n/a (no GPU)"
# Needs only python3 with torch. Anything else missing (transformers, tokenizers, pytest, ...) is installed
# from wheels/ with --no-index (scripts/gpu-wheels.sh fills it where the registry is reachable). Then:
#   1. every version that matters is printed;
#   2. every gpu-marked test runs (pytest -m gpu over the test files that have one);
#   3. `prune2drive bench targets` measures each row at DriveMM size with cuda_graphs="on" and prints it
#      the moment it is measured (also to rows.jsonl, so a timeout loses nothing);
#   4. the target table is computed from those rows and the tests' report: measure, value, target, result,
#      against the GPU's own memory bandwidth. The exit code is non-zero when any target fails.
# Logs, rows.jsonl and table.txt go to $OUT (default gpu-check-out/). Time limits: GPU_CHECK_TESTS_S,
# GPU_CHECK_BENCH_S (seconds). Each failing test's traceback is printed the moment it fails, so a run cut
# off by its limit still says why.
set -uo pipefail
cd "$(dirname "$0")/.."
mode=full
case "${1:-}" in
  "") ;;
  --quick) mode=quick ;;
  --cpu) mode=cpu ;;
  -h | --help) sed -n '2,/^set /p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
  *) echo "usage: $0 [--quick | --cpu]" >&2; exit 2 ;;
esac
out=${OUT:-gpu-check-out}
mkdir -p "$out"
rm -f "$out/rows.jsonl" "$out/gpu-tests.xml" "$out/table.txt"
py=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # run from the checkout: nothing of ours to install
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
export PRUNE2DRIVE_FAILURES_AT_ONCE=1  # test/conftest.py: tracebacks as they happen
bench_args=()
case "$mode" in
  quick) bench_args=(--quick); bench_s=${GPU_CHECK_BENCH_S:-90} ;;
  cpu) bench_args=(--device cpu); bench_s=${GPU_CHECK_BENCH_S:-240}; export CUDA_VISIBLE_DEVICES="" ;;
  *) bench_s=${GPU_CHECK_BENCH_S:-300} ;;
esac
# On an H200 the first run took 150 s for 12 of the 15 tests (compiles dominate) and 72 s to configure
# the bench's DriveMM-size runner before its first row.
tests_s=${GPU_CHECK_TESTS_S:-240}
start=$(date +%s)
elapsed() { echo "$(($(date +%s) - start)) s"; }

echo "== packages (mode: $mode)"
if [ -f wheels/requirements.txt ]; then
  # pip installs only what is missing or too old; with everything present it changes nothing.
  if ! "$py" -m pip install -q --no-index --find-links wheels -r wheels/requirements.txt >"$out/install.log" 2>&1; then
    echo "installing from wheels/ failed (the tests below will say what is missing):"
    tail -n 5 "$out/install.log"
  fi
else
  echo "no wheels/ (scripts/gpu-wheels.sh fills it): using what the image has"
fi
"$py" - <<'EOF'
import importlib
import importlib.metadata as metadata
import platform
import sys

print(f"python {platform.python_version()} ({sys.executable})")
for dist in ("torch", "triton", "transformers", "tokenizers", "safetensors", "huggingface-hub", "numpy", "pyyaml",
             "tqdm", "packaging", "pytest", "hypothesis", "torchvision", "onnxruntime", "onnxruntime-gpu"):
    try:
        print(f"{dist} {metadata.version(dist)}")
    except metadata.PackageNotFoundError:
        print(f"{dist} missing")
try:
    print(f"cv2 {importlib.import_module('cv2').__version__}")
except ImportError:
    print("cv2 missing (the image codec's GPU test needs opencv-python-headless)")
try:
    import torch
except ImportError:
    sys.exit("torch is missing: the GPU check needs the image's CUDA build of torch")
print(f"torch CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, GPU: "
      + (f"{torch.cuda.get_device_name()} (capability {torch.cuda.get_device_capability()})"
         if torch.cuda.is_available() else "none"))
EOF
if [ "$mode" != cpu ] && command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,clocks.max.mem --format=csv,noheader
fi

echo "== gpu-marked tests (limit ${tests_s} s; $(elapsed))"
mapfile -t files < <(grep -l 'mark\.gpu' test/test_*.py)
timeout -k 10 "$tests_s" "$py" -m pytest -m gpu "${files[@]}" -v -p no:cacheprovider -rs --durations=0 \
  --junitxml="$out/gpu-tests.xml" 2>&1 | tee "$out/gpu-tests.log"
tests_rc=${PIPESTATUS[0]}
[ "$tests_rc" -eq 124 ] && echo "gpu tests: timed out after ${tests_s} s"

echo "== benchmarks: each row as measured (limit ${bench_s} s; $(elapsed))"
timeout -k 10 "$bench_s" "$py" -m prune2drive_ros.cli bench targets "${bench_args[@]}" --measure-only \
  --rows-out "$out/rows.jsonl" 2>&1 | tee "$out/bench.log"
bench_rc=${PIPESTATUS[0]}
[ "$bench_rc" -eq 124 ] && echo "benchmarks: timed out after ${bench_s} s; the rows above are kept, the rest fail"

echo "== target table ($(elapsed) in all)"
touch "$out/rows.jsonl"
"$py" -m prune2drive_ros.cli bench targets --rows "$out/rows.jsonl" --junit "$out/gpu-tests.xml" \
  2>&1 | tee "$out/table.txt"
rc=${PIPESTATUS[0]}
echo "gpu-check: exit $rc (tests rc $tests_rc, benchmarks rc $bench_rc, $(elapsed)); files in $out/"
exit "$rc"
