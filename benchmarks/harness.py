"""What the benchmarks share: interleaved timing with medians, the machine-load caveat, thread pinning, the seed
model, and side-by-side tables.

Timing: each round runs every contender once, in an order that rotates from round to round, so all of them meet the
machine's speed of the moment alike; a figure is the median over rounds, shown with its min-max spread. On a shared
machine the CPU's speed drifts by tens of percent for seconds at a time: `load_before` / `load_after` print the load
around a run and warn when other jobs competed for the CPU.

torch and onnxruntime are imported only by the functions that use them, so a torch-free benchmark stays torch-free.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SEED_CONFIG = ROOT / "configs" / "reverse.yaml"
CLOCKS = {"wall": time.perf_counter, "cpu": time.thread_time}  # cpu: this thread's CPU time, blind to descheduling


# ---- arguments ------------------------------------------------------------------------------------------------------
def step_parser(doc: str, batches: int, warmup: int) -> argparse.ArgumentParser:
    """The flags of a benchmark timing a pair config's training steps (precision_speed, dropout_speed), its
    description the first paragraph of `doc`; `checked_steps` checks what it parsed."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--config", default="configs/g2p_cmudict_15min.yaml", help="a PairDataModule config")
    parser.add_argument("--train_file", help="instead of the config's train file")
    parser.add_argument("--batches", type=int, default=batches, help="timed steps of each side")
    parser.add_argument("--warmup", type=int, default=warmup, help="untimed steps of each side first")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    return parser


def checked_steps(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """`step_parser`'s flags parsed, counts out of range refused naming the flag (exit code 2)."""
    args = parser.parse_args(argv)
    for flag in ("batches", "threads"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag} must be >= 1, got {getattr(args, flag)}")
    if args.warmup < 0:
        parser.error(f"--warmup must be >= 0, got {args.warmup}")
    return args


# ---- timing ---------------------------------------------------------------------------------------------------------
def interleaved(
    contenders: Mapping[str, Callable[[], Any]],
    rounds: int,
    *,
    calls: int = 1,
    warmup: int = 0,
    clock: Callable[[], float] = time.perf_counter,
    each: Callable[[int, str, float, Any], None] | None = None,
) -> tuple[dict[str, list[float]], dict[str, list[Any]]]:
    """Time each contender `calls` times back to back per round; round r starts at contender r (mod their number).

    Returns (seconds per call, the result of each round's last call), each a list of one entry per round by name.
    `warmup` untimed calls of each come first; `each(round, name, seconds, result)` is called after every timing.
    """
    names = list(contenders)
    for fn in contenders.values():
        for _ in range(warmup):
            fn()
    seconds: dict[str, list[float]] = {n: [] for n in names}
    results: dict[str, list[Any]] = {n: [] for n in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            fn = contenders[name]
            start = clock()
            for _ in range(calls):
                result = fn()
            elapsed = (clock() - start) / calls
            seconds[name].append(elapsed)
            results[name].append(result)
            if each is not None:
                each(r, name, elapsed, result)
    return seconds, results


def medians(seconds: Mapping[str, Sequence[float]]) -> dict[str, float]:
    return {name: statistics.median(values) for name, values in seconds.items()}


def spread(values: Sequence[float], scale: float = 1.0, fmt: str = ".2f") -> str:
    """'min-max' of `values` times `scale`."""
    return f"{min(values) * scale:{fmt}}-{max(values) * scale:{fmt}}"


# ---- the machine ----------------------------------------------------------------------------------------------------
def _cpu_usage() -> tuple[float, float, float] | None:
    """(wall s, CPU s busy on the whole machine, CPU s of this process) from /proc/stat; None where unavailable."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    busy = sum(fields) - fields[3] - fields[4]  # all but idle and iowait
    own = os.times()
    return time.monotonic(), busy / os.sysconf("SC_CLK_TCK"), own.user + own.system


def _print_load(when: str) -> None:
    load, cores = os.getloadavg(), os.cpu_count() or 1
    print(f"load average {when}: {' '.join(f'{x:.2f}' for x in load)} on {cores} cores", flush=True)
    if load[0] > cores:
        print(f"warning: load {load[0]:.2f} > {cores} cores: other jobs compete for the CPU; the times are noisy")


def load_before() -> tuple[float, float, float] | None:
    """Print the load average (and a warning when it exceeds the cores); pass the result to `load_after`."""
    _print_load("at start")
    return _cpu_usage()


def load_after(before: tuple[float, float, float] | None) -> None:
    """Print the load average again and how busy this process and the others kept the CPU since `load_before`."""
    _print_load("at end")
    after = _cpu_usage()
    if before is None or after is None:
        return
    wall, busy, own = (end - start for start, end in zip(before, after))
    cores = os.cpu_count() or 1
    others = max(busy - own, 0.0) / (wall * cores)
    print(f"CPU: this process {own / wall:.2f} cores busy on average; other processes {others:.0%} of {cores} cores")
    if others > 0.1:
        print("warning: other processes competed for the CPU; the times are noisy, rerun on a quiet machine")


def versions() -> str:
    """Versions of the engines this process has imported."""
    names = ("torch", "lightning", "onnxruntime", "numpy")
    loaded = [f"{n} {sys.modules[n].__version__}" for n in names if n in sys.modules]
    return ", ".join([f"python {sys.version.split()[0]}", *loaded])


def pin_threads(threads: int = 1) -> None:
    """`threads` intra-op threads and one inter-op thread for torch (onnxruntime: see `ort_options`)."""
    import torch

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # only settable before the first inter-op work; then it already is what it will be
        pass


@contextlib.contextmanager
def threads_pinned(threads: int | None = 1) -> Iterator[None]:
    """`pin_threads(threads)` (None: leave them) for the block, then torch's intra-op thread count as it was: a caller
    in the same process (the tests) gets its threads back."""
    import torch

    before = torch.get_num_threads()
    if threads is not None:
        pin_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def ort_options(threads: int = 1) -> Any:
    """onnxruntime SessionOptions with `threads` intra-op and inter-op threads, as `OnnxSeq2Seq.load` sets them."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = threads
    options.log_severity_level = 3
    return options


# ---- the models -----------------------------------------------------------------------------------------------------
def train_seed(workdir: Path, config: Path = SEED_CONFIG) -> tuple[Path, Path]:
    """`lit-seq2seq fit --config CONFIG`, then `lit-seq2seq export` of its best.ckpt: (checkpoint, export folder)."""
    run_dir, onnx_dir = workdir / "run", workdir / "onnx"
    cli = [sys.executable, "-m", "lit_seq2seq"]
    print(f"training {config.name} in {run_dir} ...", flush=True)
    fit = [*cli, "fit", "--config", str(config), "--trainer.default_root_dir", str(run_dir)]
    subprocess.run(fit, check=True, stdout=subprocess.DEVNULL)
    ckpt = sorted(run_dir.glob("version_*/checkpoints/best.ckpt"))[-1]
    subprocess.run([*cli, "export", "--ckpt_path", str(ckpt), "--output_dir", str(onnx_dir)], check=True)
    return ckpt, onnx_dir


def model_files(
    ckpt_path: str | None, model_dir: str | None, workdir: Path, train: bool = False
) -> tuple[Path | None, Path]:
    """(checkpoint or None, export folder): the seed model fit and exported in `workdir` when `train`; else the given
    ones, `ckpt_path` being exported into `workdir` (and verified by the exporter) when no `model_dir` is given."""
    if train:
        return train_seed(workdir)
    ckpt = Path(ckpt_path) if ckpt_path else None
    if model_dir is None:
        from lit_seq2seq.export import export_checkpoint

        model_dir = workdir / "onnx"
        print(export_checkpoint(ckpt, model_dir), flush=True)
    return ckpt, Path(model_dir)


# ---- output ---------------------------------------------------------------------------------------------------------
def table(title: str, header: Sequence[str], rows: Sequence[Sequence[str]], align: str | None = None) -> None:
    """Print `rows` under `header`, each column as wide as its widest cell. `align` holds one '<' or '>' per column
    (default: the first left, the others right)."""
    align = align or "<" + ">" * (len(header) - 1)
    widths = [max(len(str(row[i])) for row in (header, *rows)) for i in range(len(header))]
    print(f"\n{title}")
    for row in (header, *rows):
        print("  " + "  ".join(f"{str(c):{a}{w}}" for c, a, w in zip(row, align, widths)).rstrip())


def goal(ok: bool, text: str) -> str:
    return f"{text}: {'met' if ok else 'NOT met'}"
