"""Wall time of one training epoch of the seed task: lit_seq2seq under lightning.Trainer vs a plain PyTorch loop.

Both sides do the same work in this one process: generate the reverse_first data (vocab 51, source 6, target 3),
build the same `Seq2Seq` net (128-unit LSTM, one-hot inputs) after the same `torch.manual_seed`, and train it for
one epoch with batch 32, Adam (lr 1e-3) and cross-entropy under teacher forcing. The timed region covers data
generation, model construction and training; exact match on the same 1,000 fresh test sequences (greedy decoding)
is measured afterwards, outside it. The plain loop shuffles with the same seeded `torch.randperm` as the data module's
sampler, so both see the same batches and reach the same exact match. Runs alternate in order; the table reports
medians, the ratio ours/plain by wall time and by this process's CPU time, and how busy other processes kept the CPU
(on a shared machine the CPU-time ratio is the steadier figure; `--threads 1` avoids intra-op threads stalling).

    .venv/bin/python benchmarks/train_speed.py [--repeats 3] [--train_size 100000] [--threads N]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import time
import warnings

import lightning as L
import torch
import torch.nn.functional as F

from lit_seq2seq.data import Seq2SeqDataModule
from lit_seq2seq.model import Seq2Seq, shift_right
from lit_seq2seq.module import Seq2SeqModule
from lit_seq2seq.tasks import make_task, split_rng

TASK = dict(task="reverse_first", vocab_size=51, source_length=6, target_length=3)
NET = dict(hidden_size=128, cell="lstm")  # one-hot inputs (embedding_dim None), one layer
BATCH, LR, EPOCHS, DATA_SEED, MODEL_SEED = 32, 1e-3, 1, 42, 0


def run_ours(train_size: int) -> tuple[float, float, torch.nn.Module]:
    """lightning.Trainer.fit(Seq2SeqModule, Seq2SeqDataModule); the DataModule generates the data in setup."""
    start, cpu_start = time.perf_counter(), time.process_time()
    data = Seq2SeqDataModule(**TASK, train_size=train_size, batch_size=BATCH, seed=DATA_SEED)
    torch.manual_seed(MODEL_SEED)
    module = Seq2SeqModule(
        vocab_size=data.vocab_size,
        max_target_length=data.max_target_length,
        eos_token=data.eos_token,
        **NET,
        optimizer=lambda params: torch.optim.Adam(params, lr=LR),
    )
    trainer = L.Trainer(
        max_epochs=EPOCHS,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    trainer.fit(module, data)
    return time.perf_counter() - start, time.process_time() - cpu_start, module.net


def run_plain(train_size: int) -> tuple[float, float, torch.nn.Module]:
    """What a careful PyTorch user writes: tensors in memory, a randperm per epoch, slices of 32, Adam."""
    start, cpu_start = time.perf_counter(), time.process_time()
    task = make_task(TASK["task"], TASK["vocab_size"], TASK["source_length"], TASK["target_length"])
    source, target = (torch.from_numpy(a) for a in task.sample(train_size, split_rng(DATA_SEED, "train")))
    torch.manual_seed(MODEL_SEED)
    net = Seq2Seq(vocab_size=task.vocab_size, max_target_length=task.target_length, eos_token=task.eos_token, **NET)
    optimizer = torch.optim.Adam(net.parameters(), lr=LR)
    generator = torch.Generator()
    net.train()
    for epoch in range(EPOCHS):
        generator.manual_seed(DATA_SEED + epoch)
        order = torch.randperm(train_size, generator=generator)
        src, tgt = source[order], target[order]
        for i in range(0, train_size, BATCH):
            s, t = src[i : i + BATCH], tgt[i : i + BATCH]
            logits = net(s, shift_right(t, net.start_token))
            loss = F.cross_entropy(logits.flatten(0, 1), t.flatten())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return time.perf_counter() - start, time.process_time() - cpu_start, net


def exact_match(net: torch.nn.Module, test: tuple[torch.Tensor, torch.Tensor]) -> float:
    source, target = test
    net.eval()
    prediction = net.greedy(source)
    return (prediction == target).all(1).float().mean().item()


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--train_size", type=int, default=100_000)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")  # num_workers=0 is the fast choice here
    warnings.filterwarnings("ignore", ".*LeafSpec.*")
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # "GPU available: ..." and the like
    test_split = Seq2SeqDataModule(**TASK, seed=DATA_SEED).split("test")
    test = (test_split.source, test_split.target)
    usage_start = _cpu_usage()
    print(
        f"torch {torch.__version__}, lightning {L.__version__}, threads {torch.get_num_threads()}, "
        f"train_size {args.train_size}, batch {BATCH}, {-(-args.train_size // BATCH)} steps per run",
        flush=True,
    )

    runners = {"ours": run_ours, "plain": run_plain}
    seconds: dict[str, list[float]] = {name: [] for name in runners}
    cpu: dict[str, list[float]] = {name: [] for name in runners}
    exact: dict[str, list[float]] = {name: [] for name in runners}
    for r in range(args.repeats):
        order = ("ours", "plain") if r % 2 == 0 else ("plain", "ours")
        for name in order:
            elapsed, cpu_s, net = runners[name](args.train_size)
            seconds[name].append(elapsed)
            cpu[name].append(cpu_s)
            exact[name].append(exact_match(net, test))
            print(
                f"repeat {r + 1}/{args.repeats} {name:5s} {elapsed:7.2f} s (CPU {cpu_s:6.2f} s)  "
                f"exact match {exact[name][-1]:.3f}",
                flush=True,
            )

    med = {name: statistics.median(v) for name, v in seconds.items()}
    steps = -(-args.train_size // BATCH)
    print()
    cpu_med = {name: statistics.median(v) for name, v in cpu.items()}
    header = ("median s", "min s", "max s", "steps/s", "median CPU s", "exact match")
    print(f"{'':8s}" + "".join(f"{h:>14s}" for h in header))
    for name in runners:
        v, e = seconds[name], exact[name]
        em = f"{statistics.median(e):.3f}" if len(set(e)) == 1 else f"{min(e):.3f}-{max(e):.3f}"
        row = (
            f"{med[name]:.2f}",
            f"{min(v):.2f}",
            f"{max(v):.2f}",
            f"{steps / med[name]:.0f}",
            f"{cpu_med[name]:.2f}",
            em,
        )
        print(f"{name:8s}" + "".join(f"{x:>14s}" for x in row))
    ratio = med["ours"] / med["plain"]
    print(f"ratio ours/plain (medians): {ratio:.3f}  (target <= 1.15: {'met' if ratio <= 1.15 else 'NOT met'})")
    print(f"ratio ours/plain (median CPU seconds of this process): {cpu_med['ours'] / cpu_med['plain']:.3f}")
    usage_end = _cpu_usage()
    if usage_start is not None and usage_end is not None:
        wall, busy, own = (end - start for start, end in zip(usage_start, usage_end))
        cores = os.cpu_count() or 1
        others = max(busy - own, 0.0) / (wall * cores)
        print(
            f"CPU: this process {own / wall:.2f} cores busy on average; other processes {others:.0%} of {cores} cores"
        )
        if others > 0.1:
            print("warning: other processes competed for the CPU; the times are noisy, rerun on a quiet machine")


if __name__ == "__main__":
    main()
