"""`lit-seq2seq fit` under CPU load: our default OMP_WAIT_POLICY=PASSIVE against torch's own OpenMP default.

Both run the same fit (the seed config, a fixed number of steps) in a fresh process while `--hogs` busy-loop
processes compete for the cores, rounds interleaved. "torch default" imports torch before lit-seq2seq's entry point
sees the environment, so OpenMP starts with its default (spin-waiting) exactly as a plain PyTorch script does.

    .venv/bin/python benchmarks/omp_under_load.py --steps 300 --rounds 3 --hogs 2
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import subprocess
import sys
import tempfile

import harness

FIT = ["fit", "--config", "reverse_fast", "--data.train_size", "20000", "--trainer.limit_val_batches", "0"]


def _hog() -> None:
    while True:
        pass


def _fit(first_import_torch: bool, steps: int) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    prelude = "import torch; " if first_import_torch else ""
    with tempfile.TemporaryDirectory() as root:
        args = [*FIT, "--trainer.max_steps", str(steps), "--trainer.default_root_dir", root]
        code = f"{prelude}from lit_seq2seq.cli import main; main({args!r})"
        subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--hogs", type=int, default=2, help="busy-loop processes competing for the CPU")
    o = parser.parse_args()
    print(f"{harness.versions()} | {os.cpu_count()} cores, {o.hogs} busy-loop hogs, {o.steps} steps a fit")
    hogs = [multiprocessing.Process(target=_hog, daemon=True) for _ in range(o.hogs)]
    for hog in hogs:
        hog.start()
    try:
        seconds, _ = harness.interleaved(
            {"lit-seq2seq (PASSIVE)": lambda: _fit(False, o.steps), "torch default": lambda: _fit(True, o.steps)},
            o.rounds,
        )
    finally:
        for hog in hogs:
            hog.terminate()
    med = harness.medians(seconds)
    rows = [[name, f"{med[name]:.1f}", harness.spread(seconds[name])] for name in seconds]
    harness.table("fit wall time under load (s, median of rounds)", ["run", "median", "min-max"], rows)
    ratio = med["torch default"] / med["lit-seq2seq (PASSIVE)"]
    print(f"torch's default OpenMP waiting is {ratio:.2f}x the time of lit-seq2seq's default under this load")


if __name__ == "__main__":
    main()
