"""Training throughput of a config's `lit-seq2seq fit`: one process using every core against Lightning's DDP over
one process per core (gloo, one thread each), side by side.

Both sides run the config as it is (net, data, precision, optimizer, callbacks) for --batches batches per process
of one epoch, without validation or report; DDP gets --batches / processes per process, so both train
on the same number of pairs. A callback times training from the end of batch --warmup to the end of the last one
(process start-up, data loading and the first batches are left out) and counts the pairs every rank trained on:
pairs per second, rounds interleaved (benchmarks/harness.py), medians with their min-max spread.

    .venv/bin/python benchmarks/ddp_speed.py --config configs/g2p_cmudict.yaml [--batches 600] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning as L

try:
    from benchmarks import harness
except ModuleNotFoundError:  # run as a script: its own folder, benchmarks/, is on sys.path
    import harness

CLOCK_FILE = "train_clock.json"


class TrainClock(L.Callback):
    """Writes {"pairs": ..., "seconds": ...} of the batches after `warmup` to <default_root_dir>/train_clock.json."""

    def __init__(self, warmup: int = 10) -> None:
        self.warmup, self.pairs, self.start = warmup, 0, 0.0

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, i: int):
        if i + 1 == self.warmup:
            self.start, self.pairs = time.perf_counter(), 0
        elif i + 1 > self.warmup:
            self.pairs += len(batch[0]) * trainer.world_size  # every rank's batch is as large (but an epoch's last)
        if i + 1 == trainer.num_training_batches and trainer.is_global_zero:
            seconds = time.perf_counter() - self.start
            (Path(trainer.default_root_dir) / CLOCK_FILE).write_text(
                json.dumps({"pairs": self.pairs, "seconds": seconds})
            )


def fit(config: str, processes: int, batches: int, warmup: int) -> float:
    """Pairs per second of `processes` DDP ranks (1: one process with os.cpu_count() threads)."""
    threads = 1 if processes > 1 else os.cpu_count() or 1
    if processes > 1:
        side = ["--trainer.strategy", "ddp", "--trainer.devices", str(processes), "--trainer.accelerator", "cpu"]
    else:
        side = ["--trainer.strategy", "auto", "--trainer.devices", "1"]
    with tempfile.TemporaryDirectory() as root:
        args = [
            "fit", "--config", config, *side, "--torch_threads", str(threads), "--trainer.max_epochs", "1",
            "--trainer.max_time", "null", "--trainer.limit_train_batches", str(batches // processes),
            "--trainer.limit_val_batches", "0", "--trainer.num_sanity_val_steps", "0", "--report", "false",
            "--trainer.default_root_dir", root,
            "--trainer.callbacks+=benchmarks.ddp_speed.TrainClock", f"--trainer.callbacks.warmup={warmup}",
        ]  # fmt: skip
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=str(harness.ROOT))
        done = subprocess.run([sys.executable, "-m", "lit_seq2seq", *args], env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"lit-seq2seq fit ({processes} processes) failed:\n{done.stderr[-3000:]}")
        clock = json.loads((Path(root) / CLOCK_FILE).read_text())
    return clock["pairs"] / clock["seconds"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/g2p_cmudict.yaml")
    parser.add_argument("--batches", type=int, default=600, help="batches per side, split among the DDP processes")
    parser.add_argument("--warmup", type=int, default=20, help="batches per process before the clock starts")
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1, help="DDP processes (default: cores)")
    parser.add_argument("--rounds", type=int, default=3)
    o = parser.parse_args(argv)
    if o.processes < 2:
        parser.error(f"--processes must be >= 2, got {o.processes}")
    if o.warmup < 1 or o.batches // o.processes <= o.warmup:
        parser.error(f"--batches / --processes must exceed --warmup (>= 1): {o.batches} / {o.processes}, {o.warmup}")
    if not Path(o.config).is_file():
        parser.error(f"--config {o.config}: no such file")
    cores = os.cpu_count()
    print(f"{harness.versions()} | {cores} cores | {o.config}, {o.batches} batches a side, {o.rounds} rounds")
    before = harness.load_before()
    sides = {
        f"one process, {cores} threads": lambda: fit(o.config, 1, o.batches, o.warmup),
        f"DDP, {o.processes} processes x 1 thread": lambda: fit(o.config, o.processes, o.batches, o.warmup),
    }
    _, rates = harness.interleaved(sides, o.rounds)
    harness.load_after(before)
    med = harness.medians(rates)
    rows = [[name, f"{med[name]:.0f}", harness.spread(rates[name], fmt=".0f")] for name in rates]
    harness.table("training throughput (pairs/s, median of rounds)", ["side", "median", "min-max"], rows)
    one, ddp = med.values()
    print(f"DDP trains {ddp / one:.2f}x the pairs per second of one process")
    return 0


if __name__ == "__main__":
    sys.exit(main())
