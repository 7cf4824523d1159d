"""``prune2drive eval``: answer DriveLM with a model, or score a given submission.

    prune2drive eval --model M --drivelm FILE --dataroot D --out DIR [--pruning tfps --retain 0.1]
    prune2drive eval --score-only SUBMISSION --drivelm FILE --out DIR
    prune2drive eval --model M ... --out DIR --compare none,tfps,fastv --compare-retain 0.1,0.25
    [--rules official|lenient] [--bootstrap 1000] [--judge URL]

A model run writes DIR/answers.jsonl (resumable), DIR/submission.json and DIR/metrics.json; under
``torchrun`` the keyframes are sharded across ranks. ``--compare`` runs every method and retain
ratio into DIR/<method>-r<retain>/ and writes the comparison report (``prune2drive_ros.eval.report``)
into DIR. Scores follow DriveLM's official rules unless ``--rules lenient`` (``eval.scoring``); a
finished folder is rescored, without the model, when run again with other scoring options.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from prune2drive_ros.eval.options import (
    add_judge_arguments,
    add_model_arguments,
    add_scoring_arguments,
    make_judge,
)
from prune2drive_ros.settings import PRUNING_METHODS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--drivelm", required=True, type=Path, help="DriveLM file (nested release or flat LLaVA list)")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--model", help="model folder or hub id (transformers LLaVA-OneVision or DriveMM)")
    mode.add_argument("--score-only", metavar="SUBMISSION", type=Path, help="score this submission.json; no model")
    parser.add_argument("--dataroot", type=Path, help="nuScenes root (holds samples/); default: the DriveLM file's folder")
    parser.add_argument("--limit", type=int, help="only the first N questions (file order)")
    add_model_arguments(parser)
    add_scoring_arguments(parser)
    add_judge_arguments(parser)
    g = parser.add_argument_group("comparing methods")
    g.add_argument(
        "--compare", metavar="METHODS", help=f"comma list of methods to run and compare ({','.join(PRUNING_METHODS)})"
    )
    g.add_argument("--compare-retain", default="0.1", metavar="R[,R...]", help="retain ratios for --compare (default 0.1)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--dist-timeout-min",
        type=float,
        default=360.0,
        help="torch.distributed timeout: ranks wait this long for each other",
    )


def run(args: argparse.Namespace) -> int:
    try:
        judge = make_judge(args)
        if args.score_only is not None:
            return score_only(args, judge)
        from prune2drive_ros.eval.engine import compare_cli, evaluate_cli

        if args.compare:
            return compare_cli(args, judge)
        return evaluate_cli(args, judge)
    except (ValueError, FileNotFoundError) as exc:
        print(f"prune2drive eval: error: {exc}", file=sys.stderr)
        return 2


def score_only(args: argparse.Namespace, judge=None) -> int:
    from prune2drive_ros.data.drivelm import load_drivelm
    from prune2drive_ros.eval.files import write_json
    from prune2drive_ros.eval.scoring import metrics_document, score
    from prune2drive_ros.eval.submission import answers_by_id, read_submission

    dataset = load_drivelm(args.drivelm, args.dataroot).limit(args.limit)
    answers = answers_by_id(read_submission(args.score_only))
    quality = score(dataset.questions(), answers, judge, rules=args.rules, resamples=args.bootstrap)
    run_info = {"mode": "score-only", "submission": str(args.score_only), "drivelm": str(args.drivelm), "limit": args.limit}
    path = write_json(args.out / "metrics.json", metrics_document(quality, None, run_info))
    print_summary(quality, path)
    return 0


def print_summary(m: dict, path: Path) -> None:
    """One line of scores on stdout; judge failures and a random-weight model loudly on stderr."""
    from prune2drive_ros.eval.weights import random_banner

    def fmt(v: float | None, spec: str = ".4f") -> str:
        return "n/a" if v is None else format(v, spec)

    run_info = m.get("run") or {}
    banner = random_banner(run_info.get("model_weights"), run_info.get("model"))
    if banner:
        print(f"!! {banner}", file=sys.stderr)
    for warning in m.get("warnings") or ():
        print(f"!! WARNING: {warning}", file=sys.stderr)
    counts = m.get("counts") or {}
    partial = ""
    if m.get("final_score_partial"):
        missing = " + ".join(m.get("final_score_missing") or ()) or "?"
        partial = f" (PARTIAL: {m['final_score_formula']}; missing {missing})"
    ci = (m.get("ci95") or {}).get("final_score")
    interval = f" 95% CI [{ci[0]:.4f}, {ci[1]:.4f}]" if ci else ""
    skipped = counts.get("skipped_unmatched")
    scored = f"{counts.get('scored', '?')} of {counts.get('questions', '?')} questions scored"
    if skipped:
        scored += f", {skipped} skipped (objects the first answer missed)"
    print(
        f"[{m.get('rules', 'official')} rules] accuracy {fmt(m['accuracy'])}  L {fmt(m['language_score'])}  "
        f"match {fmt(m['match'], '.2f')} (F1 {fmt(m.get('match_f1'), '.2f')})  gpt {fmt(m['gpt'], '.2f')}  "
        f"final {fmt(m['final_score'])}{interval}{partial}\n{scored}\nwrote {path}"
    )
