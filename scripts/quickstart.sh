#!/usr/bin/env bash
# One command for a fresh machine: create .venv, install the package (and the ROS 2 CLI), then run a job.
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
# Not editable: an editable install has no ament index entry, share/ or lib/, so ros2 launch / ros2 run
# would not find the package. pip builds in the source tree and setuptools never prunes build/lib, so
# clear it first, or a module deleted from the source would still be installed.
rm -rf build/lib build/bdist.*
python -m pip install -q ".[ros,test,eval]"

# The ROS 2 command line (ros2 launch | run | topic | param | lifecycle ...) for this venv, from the
# vendored upstream packages beside this repo; elsewhere it comes with a ROS 2 install.
ros2_cli=${ROS2_CLI_DIR:-../shared/ros2-cli}
if [ -f "$ros2_cli/install.sh" ]; then
  bash "$ros2_cli/install.sh" "$venv"
elif ! command -v ros2 > /dev/null; then
  echo "quickstart: no ROS 2 command line (ros2): source your ROS 2 install for the README's ros2 commands;" \
    "its tests are skipped" >&2
fi

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
