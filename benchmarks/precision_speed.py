"""Training-step time of a config's net under --trainer.precision bf16-mixed against 32-true, side by side, and what
this CPU has for bfloat16 (AVX512-BF16 or AMX hardware; oneDNN's bf16 LSTM).

Each side is benchmarks/train_speed.py's plain loop (teacher-forced forward, the config's loss, label smoothing,
optimizer and gradient clipping; bf16-mixed: forward and loss under torch.autocast("cpu", torch.bfloat16), as
Lightning runs it) over the same batches of the config's train file, from the same weights. The sides take turns
step by step, in an order that rotates each step (harness.interleaved), so both meet the CPU's speed of the moment
alike; each draws its dropout masks from its own state of torch's global RNG. One process, --threads threads (1: as
each DDP process of the G2P configs). Medians of the per-step times over --batches steps, after --warmup untimed
steps of each side.

    .venv/bin/python benchmarks/precision_speed.py [--config configs/g2p_cmudict_15min.yaml] [--batches 100]
"""

from __future__ import annotations

import statistics
import sys
from collections.abc import Callable, Sequence

import torch

from lit_seq2seq.model import _cpu_bf16_lstm, cpu_native_bf16

try:
    from benchmarks import harness, train_speed
except ModuleNotFoundError:  # run as a script: its own folder, benchmarks/, is on sys.path
    import harness
    import train_speed

SIDES = ("32-true", "bf16-mixed")


def _stepper(loop: train_speed.PlainLoop) -> Callable[[], None]:
    """One optimizer step of `loop` per call, with its own state of torch's global RNG."""
    steps, rng = loop.steps(), [loop.rng_state]

    def step() -> None:
        torch.set_rng_state(rng[0])
        next(steps)
        rng[0] = torch.get_rng_state()

    return step


def main(argv: Sequence[str] | None = None) -> int:
    parser = harness.step_parser(__doc__, batches=100, warmup=5)
    args = harness.checked_steps(parser, argv)
    with harness.threads_pinned(args.threads):
        try:
            work = train_speed.PairTask(args.config, args.train_file, limit_batches=args.batches + args.warmup)
        except ValueError as error:
            parser.error(str(error))
        if work.steps < args.batches + args.warmup:
            parser.error(f"--batches + --warmup must be <= the {work.steps} batches of an epoch of the train file")
        steppers = {}
        for side in SIDES:
            work.precision = side
            steppers[side] = _stepper(work.plain("plain+same"))
        optimizer, recipe = work.recipe()
        print(*work.data_and_net(), f"every side: {optimizer}; {recipe.split(', ', 1)[1]}", sep="\n")
        print(*work.not_reproduced(), sep="\n")
        print(
            f"CPU: torch's kernels {torch.backends.cpu.get_cpu_capability()}; bfloat16 hardware (AVX512-BF16 or AMX): "
            f"{'yes' if cpu_native_bf16() else 'no'}; oneDNN bf16 LSTM: {'yes' if _cpu_bf16_lstm() else 'no'} "
            "(without one, lit_seq2seq runs the LSTMs of bf16-mixed in float32)"
        )
        print(f"{args.threads} thread(s); {harness.versions()}")
        before = harness.load_before()
        seconds, _ = harness.interleaved(steppers, args.batches, warmup=args.warmup)
        harness.load_after(before)
    ms = {side: 1000 * statistics.median(values) for side, values in seconds.items()}
    rows = [
        [side, f"{ms[side]:.1f}", harness.spread(seconds[side], 1000, ".1f"), f"{ms[side] / ms['32-true']:.2f}x"]
        for side in SIDES
    ]
    harness.table(
        f"training step, median over {args.batches} steps", ["precision", "ms/step", "min-max", "vs 32-true"], rows
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
