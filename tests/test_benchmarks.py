"""The training benchmark compares like with like: Trainer.fit and the plain loop end with bit-identical weights."""

from __future__ import annotations

import sys

from conftest import REPO

if str(REPO) not in sys.path:  # `python -m pytest` from the repo root has it; a bare `pytest` puts only tests/ there
    sys.path.insert(0, str(REPO))

from benchmarks import train_speed  # noqa: E402 - needs the repo root on sys.path


def test_trainer_fit_does_exactly_the_plain_loops_work():
    seconds, nets = train_speed.run_interleaved(640)  # 20 steps of batch 32
    # Same weights, batches and optimizer code: any extra or missing work in Seq2SeqModule would show here.
    assert train_speed.max_weight_diff(nets["ours"], nets["plain+same"]) == 0.0
    # The seed config's fused Adam is the same algorithm as torch's default one, up to rounding.
    assert train_speed.max_weight_diff(nets["ours"], nets["plain"]) < 1e-5
    assert train_speed.shipped_adam() == {"lr": 1e-3, "fused": True}
    assert set(seconds) == {"ours", "plain", "plain+same"} and all(s > 0 for s in seconds.values())
