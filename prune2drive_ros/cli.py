"""The ``prune2drive`` command.

Each subcommand lives in its own module exposing ``add_arguments(parser)`` and ``run(args) -> int``.
Modules are imported only when their subcommand runs, so ``prune2drive --help`` and ``doctor`` stay
fast and work on a machine where torch or rclpy is broken.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

# name -> (module, one-line help). Order is the order ``--help`` lists them.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "doctor": ("prune2drive_ros.doctor", "check this machine: Python, torch/CUDA, ROS 2, TensorRT"),
    "demo": ("prune2drive_ros.demo", "end-to-end demo: sample data -> bag -> replay -> node -> answers"),
    "bench": ("prune2drive_ros.bench", "benchmarks: pruning, prefill, vision"),
    "make-tiny-model": ("prune2drive_ros.vlm.tiny", "write a tiny random-weight DriveMM-shaped checkpoint"),
    "convert-model": ("prune2drive_ros.vlm.convert", "convert a LLaVA-NeXT (DriveMM) checkpoint to transformers format"),
    "build-engine": ("prune2drive_ros.vlm.backends.build", "export/build the vision encoder (ONNX Runtime, TensorRT)"),
    "make-sample-nuscenes": ("prune2drive_ros.data.sample_nuscenes", "write a small synthetic nuScenes v1.0-mini data set"),
    "convert-nuscenes": ("prune2drive_ros.data.nuscenes_to_bag", "convert nuScenes to a rosbag2"),
    "play": ("prune2drive_ros.data.player", "replay a rosbag2 with rclpy (for machines without rosbag2)"),
    "eval": ("prune2drive_ros.eval.run", "evaluate on DriveLM"),
    "optimize": ("prune2drive_ros.eval.optimize", "search per-camera budgets with TPE"),
    "report": ("prune2drive_ros.eval.report", "compare eval runs of several methods: table and plot"),
    "train-testbed": ("prune2drive_ros.training.testbed", "train the small test-bed VLM on the synthetic street"),
    "study": ("prune2drive_ros.training.study", "pruning study on the trained test bed: methods, CIs, budget search"),
}


INTERRUPTED = 130
"""Exit code after Ctrl-C (128 + SIGINT), as shells report it."""

# Top-level module -> the setup.py extra that installs it, for a one-line hint when a command lacks it.
EXTRA_OF_MODULE: dict[str, str] = {
    "rosbags": "nuscenes",
    "nuscenes": "nuscenes",
    "rclpy": "ros",
    "sensor_msgs": "ros",
    "std_msgs": "ros",
    "diagnostic_msgs": "ros",
    "optuna": "eval",
    "matplotlib": "eval",
    "pycocoevalcap": "eval",
}


def missing_dependency_message(command: str, exc: ModuleNotFoundError) -> str:
    missing = (exc.name or "").split(".")[0]
    extra = EXTRA_OF_MODULE.get(missing)
    fix = (f"install the '{extra}' extra: pip install 'prune2drive_ros[{extra}]' (in a checkout: "
           f"pip install '.[{extra}]')" if extra else f"pip install {missing}")
    return f"prune2drive {command}: the Python package {missing!r} is not installed; {fix}"


def _available(module: str) -> bool:
    """Whether ``module`` ships in this build, without importing it (or its heavy parents)."""
    parts = module.split(".")
    base = Path(__file__).resolve().parent.joinpath(*parts[1:])
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def build_parser() -> argparse.ArgumentParser:
    from prune2drive_ros import __version__

    parser = argparse.ArgumentParser(
        prog="prune2drive",
        description="Prune2Drive for ROS 2: multi-view driving VQA with visual token pruning.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in SUBCOMMANDS.items():
        if not _available(module):
            continue
        sub.add_parser(name, help=help_text, description=help_text, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv:
        parser.print_help()
        return 2
    if argv[0].startswith("-"):
        parser.parse_args(argv)  # --help / --version exit here; anything else is an error
        return 2
    if argv[0] not in SUBCOMMANDS:
        parser.error(f"unknown command {argv[0]!r}; run 'prune2drive --help' for the list")

    name, rest = argv[0], argv[1:]
    module_name, help_text = SUBCOMMANDS[name]
    if not _available(module_name):
        parser.error(f"command {name!r} is not available in this build")
    try:
        module = importlib.import_module(module_name)
        sub_parser = argparse.ArgumentParser(prog=f"prune2drive {name}", description=help_text)
        module.add_arguments(sub_parser)
        args = sub_parser.parse_args(rest)
        return int(module.run(args) or 0)
    except KeyboardInterrupt:
        # The command's own clean-up (finally blocks, context managers) has run on the way here.
        print(f"prune2drive {name}: interrupted", file=sys.stderr)
        return INTERRUPTED
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] == "prune2drive_ros":
            raise  # a broken install, not a missing optional dependency
        print(f"error: {missing_dependency_message(name, exc)}", file=sys.stderr)
        return 1


def console() -> None:
    """The ``prune2drive`` console script: ``main``, then exit with its code.

    After Ctrl-C the process ends at once (``os._exit``) instead of tearing the interpreter down: joining
    worker threads and unloading torch can take seconds, and Ctrl-C must end a command within two.
    """
    # A command started in the background of a script inherits an ignored SIGINT; `kill -INT` and Ctrl-C
    # must still stop it.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    code = main()
    if code == INTERRUPTED:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    console()
