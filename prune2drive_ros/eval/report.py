"""Compare evaluation runs of several pruning methods and retain ratios.

    prune2drive report RUN_DIR [RUN_DIR ...] [--out DIR]
    python -m prune2drive_ros.eval.report RUN_DIR ...        (the same, without the CLI entry)

Each RUN_DIR is an ``eval`` output folder (its metrics.json). Writes ``comparison.md`` (a table in
the layout of the Prune2Drive paper), ``comparison.json`` and ``quality_vs_flops.png``.

"Prefill/keyframe speed-up" is the dense run's median prefill time per keyframe over the run's. A
keyframe's prefill is all the prefill work of its one batched call: the six views and every question
of the keyframe, and for question-dependent methods (FastV, MVPruner) a whole prefill per question.
It is not the paper's single-question prefill speed-up; it needs a ``none`` run among the folders.
Scores from a random-weight model are flagged in the table and the plot.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prune2drive_ros.eval.files import write_json
from prune2drive_ros.eval.plots import MethodPoint, plot_methods
from prune2drive_ros.eval.weights import model_note, random_banner

COLUMNS = (
    "Method",
    "Retain",
    "K",
    "Tokens/view",
    "FLOPs",
    "Prefill/keyframe speed-up",
    "Acc",
    "GPT",
    "Match",
    "Match F1",
    "BLEU-1",
    "BLEU-2",
    "BLEU-3",
    "BLEU-4",
    "ROUGE-L",
    "CIDEr",
    "L",
    "Final",
    "Final 95% CI",
    "Scored",
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
        run = m.get("run") or {}
        counts = m.get("counts") or {}
        rows.append(
            {
                "method": m["_label"]["method"],
                "retain": m["_label"]["retain"],
                "prune_layer": run.get("prune_layer"),
                "folder": m["_label"]["folder"],
                "model": run.get("model"),
                "model_weights": run.get("model_weights"),
                "rules": m.get("rules", "lenient"),  # metrics.json written before the rules existed
                "tokens_per_view": sum(kept) / len(kept) if kept else None,
                "flops_ratio": m.get("flops_ratio"),
                "keyframe_prefill_speedup": base / prefill if base and prefill else None,
                **{k: m.get(k) for k in ("accuracy", "gpt", "match", "match_f1", "bleu_1", "bleu_2", "bleu_3", "bleu_4")},
                "rouge_l": m.get("rouge_l"),
                "cider": m.get("cider"),
                "language_score": m.get("language_score"),
                "final_score": m.get("final_score"),
                "final_score_partial": m.get("final_score_partial"),
                "final_score_formula": m.get("final_score_formula"),
                "final_score_missing": m.get("final_score_missing") or [],
                "ci95": m.get("ci95") or {},
                "scored": counts.get("scored"),
                "questions": counts.get("questions"),
                "gpt_failed": counts.get("gpt_failed", 0),
                "warnings": m.get("warnings") or [],
            }
        )
    return rows


def _interval(ci: Sequence[float] | None, scale: float = 100) -> str:
    return "–" if not ci else f"[{ci[0] * scale:.1f}, {ci[1] * scale:.1f}]"


def banner_of(rows: Sequence[dict[str, Any]]) -> str | None:
    """The random-weight warning when any compared run used an untrained model."""
    for r in rows:
        text = random_banner(r.get("model_weights"), r.get("model"))
        if text:
            return text
    return None


def partial_note(rows: Sequence[dict[str, Any]]) -> str:
    """What a partial final score leaves out and how many questions it covers, in one line."""
    partial = [r for r in rows if r["final_score_partial"] and r["final_score"] is not None]
    if not partial:
        return ""
    missing = list(dict.fromkeys(m for r in partial for m in r["final_score_missing"]))  # in the formula's order
    scored = sorted({(r["scored"], r["questions"]) for r in partial if r["scored"] is not None})
    counted = ", ".join(f"{s} of {q}" for s, q in scored) or "?"
    failed = sum(r["gpt_failed"] or 0 for r in partial)
    why = f"GPT judge failed on {failed} question(s)" if failed else "no GPT judge"
    return f"partial final score ({why}): without {' + '.join(missing)}; {counted} questions scored"


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    lines = []
    banner = banner_of(rows)
    if banner:
        lines += [f"> **{banner}**", ""]
    notes_of_models = sorted({n for r in rows if (n := model_note(r.get("model_weights")))})
    lines += [f"> Model: {n}" for n in notes_of_models] + ([""] if notes_of_models else [])
    lines += ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
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
            _fmt(r["keyframe_prefill_speedup"], 1, 2) + ("x" if r["keyframe_prefill_speedup"] is not None else ""),
            _fmt(r["accuracy"], 100),
            _fmt(r["gpt"]),
            _fmt(r["match"]),
            _fmt(r["match_f1"]),
            *(_fmt(r[f"bleu_{n}"], 100) for n in range(1, 5)),
            _fmt(r["rouge_l"], 100),
            _fmt(r["cider"], 1, 3),
            _fmt(r["language_score"], 100),
            final,
            _interval(r["ci95"].get("final_score")),
            "–" if r["scored"] is None else f"{r['scored']}/{r['questions']}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    rules = sorted({r["rules"] for r in rows})
    notes = [
        "",
        "Acc, BLEU, ROUGE-L, L and Final x 100; GPT, Match and Match F1 0-100; CIDEr 0-10; FLOPs of the dense prefill.",
        f"Scoring rules: {', '.join(rules)} (official = DriveLM challenge/evaluation.py: exact-match accuracy, Match = "
        "mean of point F1 x 100 and the judge's score; questions on objects the first answer missed are skipped).",
        "Final 95% CI: bootstrap over the scored questions (seeded). Prefill/keyframe speed-up: dense median prefill "
        "time per keyframe (six views + all its questions) over the run's; not a single-question prefill.",
    ]
    if partial:
        notes.append(f"\\* {partial_note(rows)} (see metrics.json).")
    warned = [f"- {r['method']} {r['retain']}: {w}" for r in rows for w in r["warnings"]]
    if warned:
        notes += ["", "**Warnings:**", *warned]
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
    if use_final and any(r["final_score_partial"] for r in rows):
        label = "final score (partial)"
    series: dict[str, list[MethodPoint]] = {}
    for r in rows:
        if r["flops_ratio"] is not None and r[key] is not None:
            point_label = "dense" if r["method"] == "none" else f"r={r['retain']}"
            ci = r["ci95"].get(key)
            series.setdefault(r["method"], []).append(
                MethodPoint(r["flops_ratio"], r[key], point_label, tuple(ci) if ci else None)
            )
    note = partial_note(rows) if use_final else "no run has a final score; L shown"
    plot = plot_methods(series, out_dir / "quality_vs_flops.png", ylabel=label, note=note, banner=banner_of(rows))
    for r in rows:
        for w in r["warnings"]:
            print(f"!! WARNING ({r['method']} {r['retain']}): {w}", file=sys.stderr)
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
