#!/usr/bin/env bash
# One command for a fresh machine: create .venv, install the package, then run a job.
#   scripts/quickstart.sh demo [demo args]   # the main job: sample data -> bag -> node -> answers
#   scripts/quickstart.sh test [pytest args] # the test suite, as CI runs it
#   scripts/quickstart.sh doctor             # what this machine offers
# Set VENV=path to use another environment; an existing torch (e.g. a CUDA build) is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
job=${1:-demo}
shift || true

venv=${VENV:-.venv}
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
# shellcheck disable=SC1091
source "$venv/bin/activate"
export PIP_DISABLE_PIP_VERSION_CHECK=1
if ! python -c "import torch" 2>/dev/null; then
  # The CPU build: small and enough for tests and the demo. Bring your own CUDA/JetPack build.
  python -m pip install -q "torch==2.13.0"
fi
python -m pip install -q -e ".[ros,test,eval]"

# DDS traffic stays on this machine unless the caller says otherwise.
export ROS_AUTOMATIC_DISCOVERY_RANGE=${ROS_AUTOMATIC_DISCOVERY_RANGE:-LOCALHOST}

case "$job" in
  test)
    set +e
    python -m pytest "$@"
    rc=$?
    set -e
    if [ "$rc" -eq 5 ]; then
      echo "quickstart: pytest collected no tests; that is a failure" >&2
      exit 1
    fi
    exit "$rc"
    ;;
  demo) exec prune2drive demo "$@" ;;
  doctor) exec prune2drive doctor "$@" ;;
  *) echo "usage: $0 demo|test|doctor [args]" >&2; exit 2 ;;
esac
