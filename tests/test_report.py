"""report.py: report.png and report.csv rendered from a tiny run's CSV logs (`lit-seq2seq report`)."""

from __future__ import annotations

import csv

import matplotlib.image as mpimg
import numpy as np
import pytest
from conftest import REVERSE_YAML, TINY_TASK, root_args, run_cli, tiny_run, version_dirs

# reverse.yaml validates 4x per epoch: 8 points per validation curve.
CURVES = [*TINY_TASK, *tiny_run(train=1000, val=100, test=100, hidden=16, epochs=2), "--trainer.log_every_n_steps", "5"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    run_cli(["fit", "--config", REVERSE_YAML, *CURVES, *root_args(root)])
    return version_dirs(root)[-1]


def test_report_writes_curves_and_positions(run_dir):
    assert run_cli(["report", "--log_dir", run_dir]) == 0
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
