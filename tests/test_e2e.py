"""End to end: the seed config trains to the tutorial's result and a new `test` call confirms it (~40 s on CPU)."""

from __future__ import annotations

import pytest
import yaml
from conftest import REVERSE_YAML, last_metric, run_cli, version_dirs


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:The dirpath has changed")  # test logs to a new version dir
def test_reverse_yaml_fit_then_test_reaches_99_percent(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "runs"
    run_cli(["fit", "--config", REVERSE_YAML, "--trainer.default_root_dir", root])
    fit_dir = root / "version_0"
    assert (fit_dir / "checkpoints" / "best.ckpt").exists() and (fit_dir / "checkpoints" / "last.ckpt").exists()
    val = last_metric(fit_dir, "val/exact_match")

    run_cli(["test", "--config", REVERSE_YAML, "--ckpt_path", "best", "--trainer.default_root_dir", root])
    test_dir = version_dirs(root)[-1]
    assert test_dir.name == "version_1"
    config = yaml.safe_load((test_dir / "config.yaml").read_text())
    assert config["ckpt_path"] == str(fit_dir / "checkpoints" / "best.ckpt")
    exact = last_metric(test_dir, "test/exact_match")
    # Measured with seed 42: val 0.998, test 0.994 (1 epoch of 100,000 samples, LSTM 128, Adam 1e-3).
    assert exact >= 0.99, f"test/exact_match {exact:.4f} (val {val:.4f})"
    assert val >= 0.99
