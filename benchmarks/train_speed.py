"""Wall time of one training epoch of the seed task: lit_seq2seq under lightning.Trainer vs a plain PyTorch loop.

All sides do the same work in this one process: generate the data of configs/reverse.yaml (reverse_first, vocab 51,
source 6, target 3, batch 32), build the same `Seq2Seq` net (its `model.net`: 128-unit LSTM, one-hot inputs) after
the same `torch.manual_seed`, and train it for one epoch with cross-entropy under teacher forcing. The plain loops
shuffle with the same seeded `torch.randperm` as the data module's sampler, so all see the same batches in the same
order; the timed region covers data generation, model construction and training. Exact match on the same 1,000
fresh test sequences (greedy decoding) is measured afterwards, outside it.

- ours: `Trainer.fit` of Seq2SeqModule and Seq2SeqDataModule, with the optimizer of configs/reverse.yaml (Adam,
  lr 1e-3, fused: one kernel per step instead of ~8 ops per parameter);
- plain: the loop a careful PyTorch user writes, with `torch.optim.Adam(params, lr=1e-3)`;
- plain+same: that loop with ours' optimizer settings. Ours vs plain+same is what Lightning's machinery costs.

Two measurements, each printed as medians over `--repeats` with their min-max spread:

- whole runs: interleaved rounds (benchmarks/harness.py), each side training a whole epoch in turn, the order
  rotating from round to round;
- interleaved: one `Trainer.fit` per repeat during which a callback runs one step of each plain loop after each of
  ours, so all share the CPU's speed of the moment. Ours is the fit's time minus the plain steps run inside it, so
  the callback's own hook calls are charged to ours.

On a shared machine the CPU's speed drifts by tens of percent for seconds at a time (here the plain loop alone took
10.6 to 16.5 s per epoch in one process), so whole runs compare different machines; the interleaved figure cancels
that drift. Ours and plain+same start from the same weights, see the same batches and run the same optimizer code:
the script checks that they end bit-identical, which is what "the same work" means, and exits 1 if they do not.
With --mode both the whole-run rounds come first, then the interleaved fits.

    .venv/bin/python benchmarks/train_speed.py [--repeats 3] [--train_size 100000] [--threads N] [--mode both]
    .venv/bin/python benchmarks/train_speed.py --repeats 1 --train_size 3200     # a quick check that it runs
"""

from __future__ import annotations

import argparse
import functools
import logging
import sys
import time
import warnings
from collections.abc import Iterator
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
import yaml

from lit_seq2seq.data import Seq2SeqDataModule
from lit_seq2seq.model import NetConfig, Seq2Seq, shift_right
from lit_seq2seq.module import Seq2SeqModule
from lit_seq2seq.tasks import Task, make_task, split_rng

try:
    from benchmarks import harness
except ModuleNotFoundError:  # run as a script: its own folder, benchmarks/, is on sys.path
    import harness

SEED_CONFIG = harness.SEED_CONFIG
SEED = yaml.safe_load(SEED_CONFIG.read_text())
TASK = {k: SEED["data"][k] for k in ("task", "vocab_size", "source_length", "target_length")}
NET: dict[str, Any] = SEED["model"]["net"]  # hidden_size 128, lstm; one-hot inputs, one layer
BATCH, DATA_SEED = SEED["data"]["batch_size"], SEED["data"]["seed"]
LR, EPOCHS, MODEL_SEED = 1e-3, 1, 0
PLAIN_ADAM: dict[str, Any] = {"lr": LR}  # what a careful PyTorch user writes
SIDES = ("ours", "plain", "plain+same")


@functools.cache
def shipped_adam() -> dict[str, Any]:
    """Adam's arguments in configs/reverse.yaml (the seed config), which ours trains with."""
    optimizer = SEED["model"]["optimizer"]
    if optimizer["class_path"] != "torch.optim.Adam" or optimizer["init_args"].get("lr") != LR:
        raise SystemExit(f"{SEED_CONFIG}: expected torch.optim.Adam with lr {LR}, got {optimizer}")
    return dict(optimizer["init_args"])


def plain_sides() -> dict[str, dict[str, Any]]:
    """Adam's arguments of each plain loop: torch's default one, and ours'."""
    return {"plain": PLAIN_ADAM, "plain+same": shipped_adam()}


def net_config(task: Task) -> NetConfig:
    """The seed config's net, sized for `task` as the CLI links it from the data."""
    return NetConfig(
        source_vocab_size=task.vocab_size,
        target_vocab_size=task.vocab_size,
        max_target_length=task.target_length,
        eos_token=task.eos_token,
        **NET,
    )


def build_ours(train_size: int, callbacks: list[L.Callback]) -> tuple[L.Trainer, Seq2SeqModule, Seq2SeqDataModule]:
    """Seq2SeqModule and Seq2SeqDataModule under a Trainer; the DataModule generates the data in setup."""
    data = Seq2SeqDataModule(**TASK, train_size=train_size, batch_size=BATCH, seed=DATA_SEED)
    torch.manual_seed(MODEL_SEED)
    module = Seq2SeqModule(net_config(data.task), optimizer=lambda params: torch.optim.Adam(params, **shipped_adam()))
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
        callbacks=callbacks,
    )
    return trainer, module, data


class PlainLoop:
    """What a careful PyTorch user writes: tensors in memory, a randperm per epoch, slices of 32, Adam."""

    def __init__(self, train_size: int, adam: dict[str, Any]) -> None:
        task = make_task(TASK["task"], TASK["vocab_size"], TASK["source_length"], TASK["target_length"])
        self.source, self.target = (torch.from_numpy(a) for a in task.sample(train_size, split_rng(DATA_SEED, "train")))
        torch.manual_seed(MODEL_SEED)
        self.net = Seq2Seq(net_config(task))
        self.optimizer = torch.optim.Adam(self.net.parameters(), **adam)

    def steps(self) -> Iterator[None]:
        """Trains; yields after every optimizer step."""
        net, optimizer, generator, n = self.net, self.optimizer, torch.Generator(), len(self.source)
        start_token = net.config.start_token
        net.train()
        for epoch in range(EPOCHS):
            generator.manual_seed(DATA_SEED + epoch)
            order = torch.randperm(n, generator=generator)
            src, tgt = self.source[order], self.target[order]
            for i in range(0, n, BATCH):
                s, t = src[i : i + BATCH], tgt[i : i + BATCH]
                logits = net(s, shift_right(t, start_token))
                loss = F.cross_entropy(logits.flatten(0, 1), t.flatten())
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                yield


class PlainStepper(L.Callback):
    """After each training step of ours, runs one step of every plain loop and adds up the time each took."""

    def __init__(self, loops: dict[str, Iterator[None]]) -> None:
        self.loops, self.seconds, self.count = loops, dict.fromkeys(loops, 0.0), 0

    def on_train_batch_end(self, *args: object) -> None:
        for name, steps in self.loops.items():
            start = time.perf_counter()
            next(steps)
            self.seconds[name] += time.perf_counter() - start
        self.count += 1


def train_whole(name: str, train_size: int) -> torch.nn.Module:
    """One side's whole epoch, data generation and model construction included; returns the trained net."""
    if name == "ours":
        trainer, module, data = build_ours(train_size, [])
        trainer.fit(module, data)
        return module.net
    plain = PlainLoop(train_size, plain_sides()[name])
    for _ in plain.steps():
        pass
    return plain.net


def run_interleaved(train_size: int) -> tuple[dict[str, float], dict[str, torch.nn.Module]]:
    """Seconds and trained net of each side, from one fit that steps the plain loops after each of its steps."""
    seconds, plain = {}, {}
    for name, adam in plain_sides().items():
        start = time.perf_counter()
        plain[name] = PlainLoop(train_size, adam)
        seconds[name] = time.perf_counter() - start
    stepper = PlainStepper({name: loop.steps() for name, loop in plain.items()})
    start = time.perf_counter()
    trainer, module, data = build_ours(train_size, [stepper])
    trainer.fit(module, data)
    seconds["ours"] = time.perf_counter() - start - sum(stepper.seconds.values())
    for name, steps in stepper.loops.items():
        if next(steps, "done") != "done":
            raise RuntimeError(f"the {name} loop had steps left after ours finished ({stepper.count} run)")
        seconds[name] += stepper.seconds[name]
    return seconds, {"ours": module.net, **{name: loop.net for name, loop in plain.items()}}


def exact_match(net: torch.nn.Module, test: tuple[torch.Tensor, torch.Tensor]) -> float:
    source, target = test
    net.eval()
    return (net.greedy(source) == target).all(1).float().mean().item()


def max_weight_diff(a: torch.nn.Module, b: torch.nn.Module) -> float:
    return max((x - y).abs().max().item() for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def report(label: str, seconds: dict[str, list[float]]) -> None:
    med = harness.medians(seconds)
    rows = [
        (name, f"{med[name]:.2f}", harness.spread(seconds[name]), " ".join(f"{x:.2f}" for x in seconds[name]))
        for name in SIDES
    ]
    harness.table(f"{label}: seconds per epoch", ("side", "median", "min-max", "runs"), rows, "<>><")
    for other in ("plain", "plain+same"):
        ratio = med["ours"] / med[other]
        verdict = f"  ({harness.goal(ratio <= 1.15, 'target <= 1.15')})" if other == "plain" else ""
        print(f"  ratio ours/{other}: {ratio:.3f}{verdict}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="rounds of whole runs and interleaved fits (3)")
    parser.add_argument("--train_size", type=int, default=100_000, help="samples per epoch (100000)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--mode", choices=("both", "whole", "interleaved"), default="both")
    args = parser.parse_args()
    for flag in ("repeats", "train_size", "threads"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            parser.error(f"--{flag} must be >= 1, got {value}")
    if args.threads is not None:
        harness.pin_threads(args.threads)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")  # num_workers=0 is the fast choice here
    warnings.filterwarnings("ignore", ".*LeafSpec.*")
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # "GPU available: ..." and the like
    test_split = Seq2SeqDataModule(**TASK, seed=DATA_SEED).split("test")
    test = (test_split.source, test_split.target)
    steps = -(-args.train_size // BATCH)
    print(
        f"{harness.versions()}; threads {torch.get_num_threads()}, train_size {args.train_size}, batch {BATCH}, "
        f"{steps} steps per run"
    )
    before = harness.load_before()
    print(f"ours and plain+same: Adam({shipped_adam()}) as in {SEED_CONFIG.name}; plain: Adam({PLAIN_ADAM})")

    whole: dict[str, list[float]] = {}
    if args.mode in ("both", "whole"):

        def show(r: int, name: str, seconds: float, net: torch.nn.Module) -> None:
            print(
                f"repeat {r + 1}/{args.repeats} whole       {name:10s} {seconds:6.2f} s  "
                f"exact match {exact_match(net, test):.3f}",
                flush=True,
            )

        contenders = {name: functools.partial(train_whole, name, args.train_size) for name in SIDES}
        whole, _ = harness.interleaved(contenders, args.repeats, each=show)

    inter: dict[str, list[float]] = {name: [] for name in SIDES}
    identical = True
    for r in range(args.repeats if args.mode in ("both", "interleaved") else 0):
        seconds, nets = run_interleaved(args.train_size)
        for name in SIDES:
            inter[name].append(seconds[name])
        diff = max_weight_diff(nets["ours"], nets["plain+same"])
        identical &= diff == 0
        print(
            f"repeat {r + 1}/{args.repeats} interleaved "
            + ", ".join(f"{name} {seconds[name]:.2f} s" for name in SIDES)
            + "  exact match "
            + " / ".join(f"{exact_match(nets[name], test):.3f}" for name in SIDES)
            + f"  ours vs plain+same weights {'bit-identical' if diff == 0 else f'differ by up to {diff:.2e}'}",
            flush=True,
        )

    if whole:
        report("whole runs", whole)
    if inter["ours"]:
        report("interleaved (drift-free)", inter)
    print()
    harness.load_after(before)
    if not identical:
        print("FAILED: ours and plain+same did not end with bit-identical weights: the two do different work")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
