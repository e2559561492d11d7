"""Training report from a run's CSV logs: learning curves and per-position accuracy as report.png + report.csv."""

from __future__ import annotations

import csv
import io
import math
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from lit_seq2seq import install_hint
from lit_seq2seq.atomic import remove_dead_temporaries, replacing
from lit_seq2seq.runs import resume_record

CURVES = (  # (a test run's folder holds test/* alone)
    ("loss", ("train/loss", "val/loss", "test/loss")),
    ("token accuracy", ("val/token_acc", "test/token_acc")),
    ("exact match", ("val/exact_match", "test/exact_match")),
)
_POSITION = re.compile(r"^(val|test)/position_(\d+)_acc$")


class ReportError(ValueError):
    """metrics.csv holds a bad row, or the report could not be written; an existing report is left as it was."""


def read_metrics(log_dir: Path, empty_ok: bool = False) -> list[dict[str, float]]:
    """Rows of <log_dir>/metrics.csv (Lightning's CSVLogger) with the empty cells dropped; one without rows is a
    ValueError unless `empty_ok`.

    A cell that is not a number is a data error naming file, line and column. Non-finite values (nan, inf: a run whose
    loss diverged logs them) are left out of the report, counted in one line on stderr: the finite points still show
    how the run went."""
    path = log_dir / "metrics.csv"
    if not path.is_file():
        what = "no metrics.csv" if log_dir.is_dir() else "no such folder"
        raise ValueError(f"--log_dir {log_dir}: {what} (pass a run folder such as runs/reverse/version_0)")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise ReportError(f"{path} line {line}: not UTF-8 text ({error.reason})") from None
    rows, skipped = [], []
    reader = csv.DictReader(io.StringIO(text, newline=""))
    for row in _rows(reader, path):
        values = {}
        for key, cell in row.items():
            where = f"{path} line {reader.line_num}"
            if key is None:  # DictReader collects cells beyond the header under None
                width = len(reader.fieldnames)
                raise ReportError(f"{where}: {width + len(cell)} cells, the header has {width}")
            if cell in ("", None):
                continue
            try:
                value = float(cell)
            except ValueError:
                raise ReportError(f"{where}: {cell!r} in column {key} is not a number") from None
            if math.isfinite(value):
                values[key] = value
            else:
                skipped.append(f"line {reader.line_num} {key} {cell}")
        rows.append(values)
    if skipped:
        note = f"left out {len(skipped)} non-finite value(s) of {path} (not plotted); the first: {skipped[0]}"
        print(f"lit-seq2seq report: {note}", file=sys.stderr)
    if not rows and not empty_ok:
        raise ValueError(f"--log_dir {log_dir}: metrics.csv holds no rows yet")
    return rows


def evaluation_run(curves: dict[str, list[tuple[float, float]]]) -> bool:
    """Whether `collect`'s curves are a validate or test run's: no training value, every point at step 0. (A fit logs
    at the steps it reached, even one that logged no training loss: log_every_n_steps.)"""
    steps = [step for points in curves.values() for step, _ in points]
    return bool(steps) and all(step == 0 for step in steps) and not any(name.startswith("train/") for name in curves)


def run_history(log_dir: Path) -> tuple[list[dict[str, float]], list[tuple[float, Path]]]:
    """The rows of <log_dir>/metrics.csv preceded by those of the runs it resumed, each up to the step it was resumed
    at (a resumed fit logs into a new version folder; its checkpoints folder records what it continued); and the
    resumes, oldest first: (step, the run folder resumed). A record without a step (written by older versions), or
    an earlier run folder without metrics.csv, ends the history there."""
    rows, resumes = read_metrics(log_dir), []
    folder, seen = log_dir, {log_dir.resolve()}
    while (record := resume_record(folder / "checkpoints")) is not None:
        source, step = record
        earlier = source.parent.parent  # <run>/checkpoints/<name>.ckpt
        if step is None or earlier.resolve() in seen or not (earlier / "metrics.csv").is_file():
            break
        seen.add(earlier.resolve())
        # an earlier run killed before its first log has an empty metrics.csv: nothing of it to show, not an error
        rows = [row for row in read_metrics(earlier, empty_ok=True) if row.get("step", math.inf) <= step] + rows
        resumes.append((float(step), earlier))
        folder = earlier
    return rows, resumes[::-1]


def _rows(reader: csv.DictReader, path: Path) -> Iterator[dict[str | None, Any]]:
    """The reader's rows; a CSV error (a NUL byte, an unclosed quote) as ReportError naming file and line."""
    try:
        yield from reader
    except csv.Error as error:
        raise ReportError(f"{path} line {reader.line_num}: {error}") from None


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
    """Write <log_dir>/report.csv and <log_dir>/report.png; returns their paths.

    Both are rendered in full into hidden temporary files first, then each is moved over the old one (os.replace): a
    failure at any point leaves an existing report as it was. Raises ReportError for a bad metrics.csv row or a write
    failure (full disk, read-only folder)."""
    log_dir = Path(log_dir)
    rows, resumes = run_history(log_dir)
    curves, positions = collect(rows)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ReportError(f"the PNG report needs matplotlib (the report extra): {install_hint('report')}") from None
    csv_path, png_path = log_dir / "report.csv", log_dir / "report.png"
    remove_dead_temporaries([log_dir], "report.*")
    try:
        with replacing(csv_path, png_path) as (csv_tmp, png_tmp):
            with csv_tmp.open("wb") as f:
                _write_table(f, curves, positions)
            figure = _figure(plt, curves, positions, log_dir, resumes)
            try:
                figure.savefig(png_tmp, format="png", dpi=100)
            finally:
                plt.close(figure)
    except OSError as error:
        raise ReportError(
            f"--log_dir {log_dir}: cannot write the report ({error.strerror or error}); free some space or make the "
            "folder writable; an existing report is unchanged"
        ) from error
    return png_path, csv_path


def _write_table(f: BinaryIO, curves: dict[str, list[tuple[float, float]]], positions: dict[int, float]) -> None:
    text = io.TextIOWrapper(f, newline="", encoding="utf-8")
    writer = csv.writer(text)
    writer.writerow(["metric", "step", "value"])
    for name, points in sorted(curves.items()):
        writer.writerows([name, int(step) if step == step else "", value] for step, value in points)
    writer.writerows([f"position_{i}_acc", "", positions[i]] for i in sorted(positions))
    text.flush()
    text.detach()  # leave `f` open for the caller's fsync


def _figure(
    plt: Any,
    curves: dict[str, list[tuple[float, float]]],
    positions: dict[int, float],
    log_dir: Path,
    resumes: list[tuple[float, Path]],
) -> Any:
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
        for step, _ in resumes:  # after the legend, which lists the curves only
            ax.axvline(step, color="grey", linestyle=":", linewidth=1)
    ax = axes[-1]
    if positions:
        idx = sorted(positions)
        ax.bar([str(i) for i in idx], [positions[i] for i in idx], color="tab:green")
        for i in idx:
            ax.annotate(f"{positions[i]:.3f}", (idx.index(i), positions[i]), ha="center", va="bottom", fontsize=8)
        ax.set_ylim(0, 1.05)
        ax.set(title="greedy accuracy per target position (last eval)", xlabel="position")
    else:  # pair-file data logs no per-position accuracy (its references differ in length): the token error rate
        for name in ("val/token_error_rate", "test/token_error_rate"):
            if curves.get(name):
                steps, values = zip(*curves[name])
                ax.plot(steps, values, marker="o" if len(steps) < 30 else None, label=name)
        ax.set(title="token error rate", xlabel="step")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
        for step, _ in resumes:
            ax.axvline(step, color="grey", linestyle=":", linewidth=1)
    resumed = "; ".join(f"{run.name} to step {int(step)}" for step, run in resumes)
    if evaluation_run(curves):  # its metrics are logged at step 0, whatever the checkpoint's step
        fig.suptitle(f"lit-seq2seq evaluation report: {log_dir} (a validate or test run: one point per metric)")
    else:
        fig.suptitle(f"lit-seq2seq training report: {log_dir}" + (f" (resumed: {resumed}, dotted)" if resumed else ""))
    return fig
