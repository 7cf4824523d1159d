"""``prune2drive bench {pruning,prefill,decode,vision,targets}``: side-by-side benchmarks.

Each benchmark module exposes ``add_arguments(parser)`` and ``run(args) -> int``. Benchmarks report
medians and ratios measured in the same run, each row printed as it is measured; absolute times
are only meaningful on a quiet GPU (CUDA events there).
"""

from __future__ import annotations

import argparse
import importlib
import sys

BENCHMARKS = {
    "pruning": ("prune2drive_ros.bench.pruning", "token selection: each method vs the published loop"),
    "prefill": ("prune2drive_ros.bench.prefill", "time to first token: transformers generate vs ours dense vs pruned"),
    "decode": ("prune2drive_ros.bench.decode", "ms per token at batch 1 and 8: transformers generate vs ours"),
    "vision": ("prune2drive_ros.bench.vision", "vision encoder backends vs torch eager"),
    "targets": ("prune2drive_ros.bench.check", "every GPU target measured at DriveMM size, then pass/fail"),
    "memory": ("prune2drive_ros.bench.memory", "weight memory of the 8B DriveMM-shaped LLM per precision (--weights)"),
    "load": ("prune2drive_ros.bench.load", "start time: checkpoint load vs quantizing vs the quantized-weights cache"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    for name, (module, help_text) in BENCHMARKS.items():
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:  # a real missing dependency, not a benchmark not written yet
                raise
            continue
        p = sub.add_parser(name, help=help_text, description=help_text)
        mod.add_arguments(p)
        p.set_defaults(_bench_run=mod.run)


def run(args: argparse.Namespace) -> int:
    # Each line leaves when printed, also into a pipe or a log file: a benchmark cut short by a
    # timeout keeps every row it measured.
    sys.stdout.reconfigure(line_buffering=True)
    return int(args._bench_run(args) or 0)
