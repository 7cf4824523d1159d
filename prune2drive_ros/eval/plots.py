"""PNG plots for the budget search and the method comparison (matplotlib's Agg canvas, no display).

``matplotlib.figure.Figure`` is used directly rather than pyplot, so nothing touches global state
or needs a GUI backend, and plots can be made from worker processes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from prune2drive_ros.cameras import CAMERA_NAMES


def pareto_front(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points not beaten by another with fewer-or-equal FLOPs (x) and higher-or-equal quality (y)."""
    front: list[tuple[float, float]] = []
    best = float("-inf")
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if y > best:
            front.append((x, y))
            best = y
    return front


def _figure(width: float = 6.4, height: float = 4.4):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=120)
    return fig, fig.subplots()


def plot_search(
    points: Sequence[tuple[float, float]], best: tuple[float, float] | None, path: Path, title: str = ""
) -> Path:
    """Trials as quality against FLOPs (% of dense), the Pareto front, and the best trial."""
    fig, ax = _figure()
    if points:
        ax.scatter([100 * x for x, _ in points], [y for _, y in points], s=14, alpha=0.5, label="trials")
        front = pareto_front(points)
        ax.step([100 * x for x, _ in front], [y for _, y in front], where="post", color="C3", label="Pareto front")
    if best is not None:
        ax.scatter([100 * best[0]], [best[1]], marker="*", s=180, color="C2", zorder=3, label="best objective")
    ax.set_xlabel("FLOPs (% of dense prefill)")
    ax.set_ylabel("quality 0.5 L + 0.5 Acc")
    ax.set_title(title or "per-camera budget search")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    return path


def plot_view_ratios(ratios: Sequence[float], path: Path, title: str = "") -> Path:
    """Bar chart of one ratio per camera, in camera order."""
    fig, ax = _figure()
    labels = [c.removeprefix("CAM_").replace("_", "\n") for c in CAMERA_NAMES]
    bars = ax.bar(labels, ratios, color="C0")
    for bar, r in zip(bars, ratios, strict=True):
        ax.annotate(f"{r:.2f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom")
    ax.set_ylim(0, 1.08)
    ax.set_ylabel("kept fraction of visual tokens")
    ax.set_title(title or "per-camera ratios")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    return path


def plot_methods(series: dict[str, list[tuple[float, float]]], path: Path, ylabel: str) -> Path:
    """One line per method: quality against FLOPs (% of dense), points sorted by FLOPs."""
    fig, ax = _figure()
    for i, (method, pts) in enumerate(sorted(series.items())):
        pts = sorted(pts)
        ax.plot([100 * x for x, _ in pts], [y for _, y in pts], marker="o", color=f"C{i % 10}", label=method)
    ax.set_xlabel("FLOPs (% of dense prefill)")
    ax.set_ylabel(ylabel)
    ax.set_title("quality against FLOPs")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    return path
