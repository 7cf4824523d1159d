"""Compare evaluation runs of several pruning methods and retain ratios.

    prune2drive report RUN_DIR [RUN_DIR ...] [--out DIR]
    python -m prune2drive_ros.eval.report RUN_DIR ...        (the same, without the CLI entry)

Each RUN_DIR is an ``eval`` output folder (its metrics.json). Writes ``comparison.md`` (a table in
the layout of the Prune2Drive paper), ``comparison.json`` and ``quality_vs_flops.png``. Prefill
speed-up is the dense run's median prefill time of a keyframe's first question (which encodes and
prefills the six views) over the run's; it needs a ``none`` run among the folders.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prune2drive_ros.eval.files import write_json
from prune2drive_ros.eval.plots import plot_methods

COLUMNS = (
    "Method",
    "Retain",
    "K",
    "Tokens/view",
    "FLOPs",
    "Prefill speed-up",
    "Acc",
    "GPT",
    "Match",
    "BLEU-1",
    "BLEU-2",
    "BLEU-3",
    "BLEU-4",
    "ROUGE-L",
    "CIDEr",
    "L",
    "Final",
)


def load_run(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / "metrics.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {run_dir} an eval output folder?")
    m = json.loads(path.read_text())
    run = m.get("run") or {}
    ratios = run.get("view_ratios")
    pruning = run.get("pruning", "?")
    m["_label"] = {
        "folder": str(run_dir),
        "method": pruning,
        "retain": "1.0" if pruning == "none" else ("adaptive" if ratios else f"{run.get('retain', '?')}"),
    }
    return m


def _prefill_ms(m: dict[str, Any]) -> float | None:
    lat = m.get("latency_ms") or {}
    return (lat.get("prefill") or {}).get("p50")


def _fmt(v: Any, scale: float = 1.0, digits: int = 1) -> str:
    return "–" if v is None else f"{v * scale:.{digits}f}"


def comparison_rows(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    dense = next((r for r in runs if r["_label"]["method"] == "none"), None)
    base = _prefill_ms(dense) if dense else None
    rows = []
    for m in runs:
        prefill = _prefill_ms(m)
        kept = m.get("kept_per_view")
        rows.append(
            {
                "method": m["_label"]["method"],
                "retain": m["_label"]["retain"],
                "prune_layer": (m.get("run") or {}).get("prune_layer"),
                "folder": m["_label"]["folder"],
                "tokens_per_view": sum(kept) / len(kept) if kept else None,
                "flops_ratio": m.get("flops_ratio"),
                "prefill_speedup": base / prefill if base and prefill else None,
                **{k: m.get(k) for k in ("accuracy", "gpt", "match", "bleu_1", "bleu_2", "bleu_3", "bleu_4", "rouge_l")},
                "cider": m.get("cider"),
                "language_score": m.get("language_score"),
                "final_score": m.get("final_score"),
                "final_score_partial": m.get("final_score_partial"),
            }
        )
    return rows


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    partial = False
    for r in rows:
        final = _fmt(r["final_score"], 100)
        if r["final_score_partial"] and r["final_score"] is not None:
            final += "*"
            partial = True
        cells = [
            r["method"],
            r["retain"],
            "–" if r["prune_layer"] is None or r["method"] == "none" else str(r["prune_layer"]),
            _fmt(r["tokens_per_view"], 1, 0),
            _fmt(r["flops_ratio"], 100) + ("%" if r["flops_ratio"] is not None else ""),
            _fmt(r["prefill_speedup"], 1, 2) + ("x" if r["prefill_speedup"] is not None else ""),
            _fmt(r["accuracy"], 100),
            _fmt(r["gpt"]),
            _fmt(r["match"]),
            *(_fmt(r[f"bleu_{n}"], 100) for n in range(1, 5)),
            _fmt(r["rouge_l"], 100),
            _fmt(r["cider"], 1, 3),
            _fmt(r["language_score"], 100),
            final,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    notes = ["", "Acc, BLEU, ROUGE-L, L and Final x 100; GPT and Match 0-100; CIDEr 0-10; FLOPs of the dense prefill."]
    if partial:
        notes.append("\\* partial final score: no GPT judge, so 0.4*GPT/100 is missing (see metrics.json).")
    return "\n".join(lines + notes) + "\n"


def write_report(run_dirs: Sequence[str | Path], out_dir: str | Path) -> tuple[Path, Path]:
    """comparison.md, comparison.json and quality_vs_flops.png in ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    runs = [load_run(d) for d in run_dirs]
    rows = comparison_rows(runs)
    table = out_dir / "comparison.md"
    table.write_text("# DriveLM: pruning methods compared\n\n" + markdown_table(rows), encoding="utf-8")
    write_json(out_dir / "comparison.json", rows)
    use_final = all(r["final_score"] is not None for r in rows)
    key, label = ("final_score", "final score") if use_final else ("language_score", "language score L")
    series: dict[str, list[tuple[float, float]]] = {}
    for r in rows:
        if r["flops_ratio"] is not None and r[key] is not None:
            series.setdefault(r["method"], []).append((r["flops_ratio"], r[key]))
    plot = plot_methods(series, out_dir / "quality_vs_flops.png", ylabel=label)
    return table, plot


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR", help="eval output folders")
    parser.add_argument("--out", type=Path, default=Path("."), help="where the report goes (default: here)")


def run(args: argparse.Namespace) -> int:
    try:
        table, plot = write_report(args.run_dirs, args.out)
    except (FileNotFoundError, ValueError) as exc:
        print(f"prune2drive report: error: {exc}", file=sys.stderr)
        return 2
    print(table.read_text(encoding="utf-8"))
    print(f"wrote {table} and {plot}")
    return 0


if __name__ == "__main__":
    p = argparse.ArgumentParser(prog="prune2drive report", description="compare eval runs of several pruning methods")
    add_arguments(p)
    sys.exit(run(p.parse_args()))
