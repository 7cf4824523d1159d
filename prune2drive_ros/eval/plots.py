"""PNG plots for the budget search and the method comparison (matplotlib's Agg canvas, no display).

``matplotlib.figure.Figure`` is used directly rather than pyplot, so nothing touches global state
or needs a GUI backend, and plots can be made from worker processes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from prune2drive_ros.cameras import CAMERA_NAMES

METHOD_COLORS = {
    "none": "black",
    "tfps": "C0",
    "divprune": "C1",
    "fastv": "C2",
    "mvpruner": "C3",
    "random": "C7",
    "pool": "C4",
}
"""One colour per method in every plot, whichever methods a plot shows."""
_EXTRA_COLORS = ("C5", "C6", "C8", "C9")


def method_color(method: str) -> str:
    """The method's fixed colour; unknown names get a stable one from their spelling."""
    base = method.removesuffix("-adaptive")
    if base in METHOD_COLORS:
        return METHOD_COLORS[base]
    return _EXTRA_COLORS[sum(map(ord, base)) % len(_EXTRA_COLORS)]


def _banner(fig, text: str | None) -> None:
    if text:
        import textwrap

        fig.text(0.5, 0.995, "\n".join(textwrap.wrap(text, 95)), ha="center", va="top", fontsize=7, color="red",
                 weight="bold")  # fmt: skip


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
    points: Sequence[tuple[float, float]],
    best: tuple[float, float] | None,
    path: Path,
    title: str = "",
    banner: str | None = None,
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
    fig.tight_layout(rect=(0, 0, 1, 0.93) if banner else None)
    _banner(fig, banner)
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


@dataclass(frozen=True)
class MethodPoint:
    """One run in the quality-vs-FLOPs plot."""

    flops_ratio: float
    quality: float
    label: str
    """Written beside the point, e.g. ``r=0.1``."""
    interval: tuple[float, float] | None = None
    """Bootstrap 95% interval of ``quality``, drawn as an error bar."""


def quality_limits(values: Sequence[float], unit_max: float = 1.0, min_span: float = 0.1) -> tuple[float, float]:
    """A y-range that shows the data in proportion: at least ``min_span`` of the score's full scale
    wide, so differences of 1e-4 are not stretched over the whole axis, and within [0, unit_max]."""
    lo, hi = min(values), max(values)
    span = max(hi - lo, min_span * unit_max)
    mid = (lo + hi) / 2
    low, high = mid - 0.6 * span, mid + 0.6 * span
    if low < 0:
        low, high = 0.0, high - low
    if high > unit_max:
        low, high = max(0.0, low - (high - unit_max)), unit_max
    return low, high


def plot_methods(
    series: dict[str, list[MethodPoint]],
    path: Path,
    ylabel: str,
    *,
    note: str = "",
    banner: str | None = None,
    unit_max: float = 1.0,
) -> Path:
    """One line per method: quality against FLOPs (% of dense), points sorted by FLOPs and labelled.

    Colours are fixed per method (:data:`METHOD_COLORS`); ``note`` (what the score leaves out, how
    many questions) goes under the title and ``banner`` (a random-weight model) above it in red.
    """
    fig, ax = _figure(7.2, 5.0)
    values = []
    for method, pts in sorted(series.items()):
        pts = sorted(pts, key=lambda p: p.flops_ratio)
        color = method_color(method)
        xs, ys = [100 * p.flops_ratio for p in pts], [p.quality for p in pts]
        ax.plot(xs, ys, marker="o", color=color, label=method)
        if method == "none" and len(pts) == 1:  # the dense score as a reference level across the plot
            ax.axhline(pts[0].quality, color=color, lw=0.8, ls="--", alpha=0.6)
        for p, x in zip(pts, xs, strict=True):
            values.append(p.quality)
            if p.interval is not None:
                lo, hi = p.interval
                ax.errorbar([x], [p.quality], yerr=[[p.quality - lo], [hi - p.quality]], color=color, capsize=3, lw=1)
                values += [lo, hi]
            if p.label:
                ax.annotate(p.label, (x, p.quality), textcoords="offset points", xytext=(4, 4), fontsize=7, color=color)
    if values:
        ax.set_ylim(*quality_limits(values, unit_max))
    ax.set_xlim(left=0)
    ax.set_xlabel("FLOPs (% of dense prefill)")
    ax.set_ylabel(ylabel)
    import textwrap

    ax.set_title("\n".join(["quality against FLOPs", *textwrap.wrap(note, 90)]), fontsize=9)
    ax.grid(alpha=0.3)
    if series:
        ax.legend(fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 0.92) if banner else None)
    _banner(fig, banner)
    fig.savefig(path)
    return path
