"""The training report: report.png and report.csv rendered from a tiny run's CSV logs."""

from __future__ import annotations

import csv

import matplotlib.image as mpimg
import numpy as np
import pytest
from conftest import REVERSE_YAML, cli_exit, run_cli, version_dirs

from lit_seq2seq.cli import main

TINY = [
    "--data.vocab_size", "11", "--data.source_length", "4", "--data.target_length", "2",
    "--data.train_size", "1000", "--data.val_size", "100", "--data.test_size", "100",
    "--model.net.hidden_size", "16", "--trainer.max_epochs", "2", "--trainer.log_every_n_steps", "5",
]  # fmt: skip


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    run_cli(["fit", "--config", REVERSE_YAML, *TINY, "--trainer.default_root_dir", root])
    return version_dirs(root)[-1]


def test_report_writes_curves_and_positions(run_dir):
    assert main(["report", "--log_dir", str(run_dir)]) == 0
    rows = list(csv.DictReader((run_dir / "report.csv").open()))
    metrics = {r["metric"] for r in rows}
    assert {"train/loss", "val/loss", "val/token_acc", "val/exact_match", "position_0_acc", "position_1_acc"} <= metrics
    assert sum(r["metric"] == "val/exact_match" for r in rows) == 8  # reverse.yaml validates 4x per epoch
    assert all(0.0 <= float(r["value"]) <= 1.0 for r in rows if "acc" in r["metric"] or "exact" in r["metric"])
    image = mpimg.imread(run_dir / "report.png")
    assert image.shape[:2] == (400, 1800)  # 18 x 4 inches at 100 dpi
    assert image[..., :3].std() > 0.05  # drawn, not blank
    # Plotted lines are coloured: some pixels are far from grey.
    rgb = image[..., :3]
    assert (np.ptp(rgb, axis=-1) > 0.3).mean() > 0.001


def test_report_of_a_folder_without_logs_exits_2(tmp_path, capsys):
    code, err = cli_exit(["report", "--log_dir", tmp_path], capsys)
    assert code == 2 and "--log_dir" in err and "metrics.csv" in err
