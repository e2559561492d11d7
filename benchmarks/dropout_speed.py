"""Training-step time of a config's net with torch's per-element dropout against `--model.net.variational_dropout`
(one mask per sequence, shared by its time steps), and without dropout, side by side.

Each side is benchmarks/train_speed.py's plain loop (teacher-forced forward, the config's loss, label smoothing,
precision, optimizer and gradient clipping) over the same batches of the config's train file, from the same weights;
the config's dropout and embedding_dropout are kept, only the masks' shape differs ("none": both set to 0, the floor
that dropout's cost is measured against). The sides take turns step by step, in an order that rotates each step, so
all meet the CPU's speed of the moment alike; each side draws its masks from its own state of torch's global RNG.
One process, --threads threads (1: as each DDP process of the G2P configs). Medians of the per-step times over
--batches steps, after --warmup untimed steps of each side.

    .venv/bin/python benchmarks/dropout_speed.py --config configs/g2p_cmudict_15min.yaml [--batches 300]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from collections.abc import Sequence

import torch

try:
    from benchmarks import harness, train_speed
except ModuleNotFoundError:  # run as a script: its own folder, benchmarks/, is on sys.path
    import harness
    import train_speed

SIDES = {  # name -> NetConfig changes
    "per element": {"variational_dropout": False},
    "variational": {"variational_dropout": True},
    "none": {"variational_dropout": False, "dropout": 0.0, "embedding_dropout": 0.0},
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = harness.step_parser(__doc__, batches=300, warmup=10)
    args = harness.checked_steps(parser, argv)
    with harness.threads_pinned(args.threads):
        return _run(args, parser)


def _run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    try:
        work = train_speed.PairTask(args.config, args.train_file, limit_batches=args.batches + args.warmup)
    except ValueError as error:
        parser.error(str(error))
    base = work.net
    if not (base.dropout or base.embedding_dropout):
        parser.error(f"--config {args.config}: its net has no dropout to compare")
    if work.steps <= args.warmup:
        parser.error(f"--warmup {args.warmup} must be below the {work.steps} batches of an epoch of the train file")
    loops, steps, rng = {}, {}, {}
    for name, changes in SIDES.items():
        work.net = dataclasses.replace(base, **changes)
        loops[name] = work.plain("plain+same")
        steps[name], rng[name] = loops[name].steps(), loops[name].rng_state
    work.net = base
    optimizer, recipe = work.recipe()
    print(*work.data_and_net(), f"every side: {optimizer}; {recipe}", *work.not_reproduced(), sep="\n")
    print(
        f"dropout {base.dropout}, embedding_dropout {base.embedding_dropout} (the config's variational_dropout: "
        f"{str(base.variational_dropout).lower()}); {args.threads} thread(s)"
    )
    print(harness.versions())
    seconds: dict[str, list[float]] = {name: [] for name in SIDES}
    names = list(SIDES)
    before = harness.load_before()
    for step in range(work.steps):  # warmup + batches, or fewer where an epoch has fewer
        for name in names[step % len(names) :] + names[: step % len(names)]:
            torch.set_rng_state(rng[name])
            start = time.perf_counter()
            next(steps[name])
            elapsed = time.perf_counter() - start
            rng[name] = torch.get_rng_state()
            if step >= args.warmup:
                seconds[name].append(elapsed)
    harness.load_after(before)
    ms = {name: 1000 * statistics.median(values) for name, values in seconds.items() if values}
    rows = [
        [name, f"{ms[name]:.1f}", harness.spread(seconds[name], 1000, ".1f"), f"{ms[name] / ms['variational']:.2f}x"]
        for name in ms
    ]
    harness.table(
        f"training step, median over {len(seconds['variational'])} steps",
        ["dropout masks", "ms/step", "min-max", "vs variational"],
        rows,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
