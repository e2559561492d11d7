"""The training benchmark compares like with like: Trainer.fit and the plain loop end with bit-identical weights."""

from __future__ import annotations

import importlib.util

from conftest import REPO


def _train_speed():
    spec = importlib.util.spec_from_file_location("train_speed", REPO / "benchmarks" / "train_speed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_trainer_fit_does_exactly_the_plain_loops_work():
    bench = _train_speed()
    seconds, nets = bench.run_interleaved(640)  # 20 steps of batch 32
    # Same weights, batches and optimizer code: any extra or missing work in Seq2SeqModule would show here.
    assert bench.max_weight_diff(nets["ours"], nets["plain+same"]) == 0.0
    # The seed config's fused Adam is the same algorithm as torch's default one, up to rounding.
    assert bench.max_weight_diff(nets["ours"], nets["plain"]) < 1e-5
    assert bench.shipped_adam() == {"lr": 1e-3, "fused": True}
    assert set(seconds) == {"ours", "plain", "plain+same"} and all(s > 0 for s in seconds.values())
