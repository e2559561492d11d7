"""Training report from a run's CSV logs: learning curves and per-position accuracy as report.png + report.csv."""

from __future__ import annotations

import csv
import math
import os
import re
from pathlib import Path

CURVES = (
    ("loss", ("train/loss", "val/loss")),
    ("token accuracy", ("val/token_acc",)),
    ("exact match", ("val/exact_match",)),
)
_POSITION = re.compile(r"^(val|test)/position_(\d+)_acc$")


def read_metrics(log_dir: Path) -> list[dict[str, float]]:
    """Rows of <log_dir>/metrics.csv (Lightning's CSVLogger) with the empty cells dropped."""
    path = log_dir / "metrics.csv"
    if not path.is_file():
        raise ValueError(f"--log_dir {log_dir}: no metrics.csv (pass a run folder such as runs/reverse/version_0)")
    with path.open() as f:
        rows = [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(f)]
    if not rows:
        raise ValueError(f"--log_dir {log_dir}: metrics.csv holds no rows yet")
    return rows


def collect(rows: list[dict[str, float]]) -> tuple[dict[str, list[tuple[float, float]]], dict[int, float]]:
    """(curves: metric -> [(step, value)], positions: index -> last logged accuracy at that target position)."""
    curves: dict[str, list[tuple[float, float]]] = {}
    positions: dict[int, float] = {}
    for row in rows:
        step = row.get("step", math.nan)
        for key, value in row.items():
            if key in ("step", "epoch"):
                continue
            match = _POSITION.match(key)
            if match:
                positions[int(match.group(2))] = value
            else:
                curves.setdefault(key, []).append((step, value))
    return curves, positions


def write_report(log_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Write <log_dir>/report.csv and <log_dir>/report.png; returns their paths."""
    log_dir = Path(log_dir)
    curves, positions = collect(read_metrics(log_dir))
    csv_path = log_dir / "report.csv"
    with csv_path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["metric", "step", "value"])
        for name, points in sorted(curves.items()):
            writer.writerows([name, int(step) if step == step else "", value] for step, value in points)
        writer.writerows([f"position_{i}_acc", "", positions[i]] for i in sorted(positions))

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ValueError("the PNG report needs matplotlib: pip install 'lit-seq2seq[report]'") from None
    fig, axes = plt.subplots(1, 4, figsize=(18, 4), constrained_layout=True)
    for ax, (title, names) in zip(axes, CURVES):
        for name in names:
            points = curves.get(name, [])
            if points:
                steps, values = zip(*points)
                ax.plot(steps, values, marker="o" if len(points) < 30 else None, label=name)
        ax.set(title=title, xlabel="step")
        if title != "loss":
            ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
    ax = axes[-1]
    if positions:
        idx = sorted(positions)
        ax.bar([str(i) for i in idx], [positions[i] for i in idx], color="tab:green")
        for i in idx:
            ax.annotate(f"{positions[i]:.3f}", (idx.index(i), positions[i]), ha="center", va="bottom", fontsize=8)
        ax.set_ylim(0, 1.05)
    ax.set(title="greedy accuracy per target position (last eval)", xlabel="position")
    fig.suptitle(f"lit-seq2seq training report: {log_dir}")
    png_path = log_dir / "report.png"
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return png_path, csv_path
