"""Shared helpers for the training-core tests: repo paths, in-process CLI calls, CSV metrics."""

from __future__ import annotations

import csv
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch

from lit_seq2seq.model import NetConfig

# Tiny nets gain nothing from intra-op threads, and on a busy 2-core machine two OpenMP threads spinning against
# other processes make an LSTM backward ~100x slower (measured: 1 ms -> 250 ms per step). One thread keeps the
# suite fast and its timings stable.
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))
REVERSE_YAML = REPO / "configs" / "reverse.yaml"


def net_config(vocab_size: int = 9, **kwargs) -> NetConfig:
    """A NetConfig with one vocabulary for source and target, as every generated task has."""
    return NetConfig(source_vocab_size=vocab_size, target_vocab_size=vocab_size, **kwargs)


def run_cli(args: Sequence[str]) -> None:
    """`lit-seq2seq ARGS` in this process (LightningCLI)."""
    from lit_seq2seq.cli import main

    argv = sys.argv
    sys.argv = ["lit-seq2seq"]  # as from a shell; pytest's own arguments would trip LightningCLI's args warning
    try:
        main([str(a) for a in args])
    finally:
        sys.argv = argv


def cli_exit(args: Sequence[str], capsys: pytest.CaptureFixture[str]) -> tuple[int | str | None, str]:
    """Run the CLI expecting it to exit; returns (exit code, captured stderr)."""
    capsys.readouterr()  # drop whatever came before
    with pytest.raises(SystemExit) as info:
        run_cli(args)
    return info.value.code, capsys.readouterr().err


def read_metrics(version_dir: Path) -> list[dict[str, str]]:
    """Rows of <version_dir>/metrics.csv written by the CSVLogger the CLI configures."""
    with (Path(version_dir) / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


def last_metric(version_dir: Path, name: str) -> float:
    """The last logged value of metric `name` in a version directory."""
    values = [float(r[name]) for r in read_metrics(version_dir) if r.get(name)]
    assert values, f"{name} never logged in {version_dir}/metrics.csv"
    return values[-1]


def version_dirs(root: Path) -> list[Path]:
    """<root>/version_N directories, by N."""
    return sorted(Path(root).glob("version_*"), key=lambda p: int(p.name.split("_")[1]))


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run the test inside tmp_path so stray relative outputs (runs/, lightning_logs/) land there."""
    monkeypatch.chdir(tmp_path)
    return tmp_path
