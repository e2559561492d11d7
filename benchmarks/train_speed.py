"""Wall time of one training epoch: lit_seq2seq under lightning.Trainer vs a plain PyTorch loop, on the seed task
or on the pair files of a config (the G2P data of configs/g2p_cmudict.yaml).

Three sides train the same net from the same weights (built after the same `torch.manual_seed`) for one epoch with
cross-entropy over the non-pad tokens under teacher forcing, on the same batches in the same order:

- ours: `Trainer.fit` of Seq2SeqModule and the data module, with the config's optimizer (and, for a config, its
  learning-rate schedule and gradient clipping); no logger, checkpoints, progress bar or validation;
- plain: the loop a careful PyTorch user writes, with `torch.optim.Adam(params, lr=<the config's lr>)`;
- plain+same: that loop with ours' optimizer settings, schedule and clipping. Ours vs plain+same is what Lightning's
  machinery costs.

The seed task (default): configs/reverse.yaml's data (reverse_first, vocab 51, source 6, target 3, batch 32), net
(128-unit LSTM, one-hot inputs) and fused Adam. Every side generates the data inside its timed region; the plain
loops shuffle with the same seeded `torch.randperm` as the data module's sampler. Exact match on 1,000 fresh test
sequences (greedy decoding) is measured afterwards, outside the timing.

--config (a config whose data is lit_seq2seq.pairs.PairDataModule, e.g. configs/g2p_cmudict.yaml): its data module
over its train file (or --train_file; validation, test and predict files are not read), net, optimizer,
lr_scheduler, label_smoothing, trainer.gradient_clip_val and trainer.precision (32 or bf16-mixed: the plain loops
then run forward and loss under torch.autocast("cpu", torch.bfloat16), as Lightning does). Every side runs in one
process: a config's trainer.strategy/devices (DDP) and callbacks (the weights' moving average) are left out, and the
script says so. The data module is built and its file tokenized (or its cache read) once, before any timing; every
run of ours fits on that one module. The plain loops' batches are the data module's own: its train_dataloader (the
length-bucketed sampler at epoch 0, batches cut to their longest row) is iterated once before timing and the batch
list kept, so the plain loops train on the very tensors ours is handed, in the same order. That favours the plain
loops: ours fetches its batches inside its timed epoch, they do not; the script prints what the fetching cost, to
show it is small. Model, optimizer and Trainer construction are timed for all.

Two measurements, each printed as medians over `--repeats` with their min-max spread:

- whole runs: interleaved rounds (benchmarks/harness.py), each side training a whole epoch in turn, the order
  rotating from round to round;
- interleaved: one `Trainer.fit` per repeat during which a callback runs one step of each plain loop after each of
  ours, so all share the CPU's speed of the moment. Ours is the fit's time minus the plain steps run inside it, so
  the callback's own hook calls are charged to ours.

On a shared machine the CPU's speed drifts by tens of percent for seconds at a time (here the plain loop alone took
10.6 to 16.5 s per epoch in one process), so whole runs compare different machines; the interleaved figure cancels
that drift. Ours and plain+same start from the same weights, see the same batches and run the same optimizer (and
clipping) code: the script checks after every run that they end bit-identical, which is what "the same work" means,
and exits 1 if they do not. Dropout draws from torch's global RNG: each side keeps its own state of it. With
--mode both the whole-run rounds come first, then the interleaved fits. --limit_batches N stops every side after N
batches (Lightning's limit_train_batches), for short runs.

    .venv/bin/python benchmarks/train_speed.py [--repeats 3] [--train_size 100000] [--threads N] [--mode both]
    .venv/bin/python benchmarks/train_speed.py --repeats 1 --train_size 3200     # a quick check that it runs
    .venv/bin/python benchmarks/train_speed.py --config configs/g2p_cmudict.yaml \\
        --train_file data/cmudict/train.tsv --threads 1 [--limit_batches 300]
"""

from __future__ import annotations

import argparse
import functools
import importlib
import itertools
import logging
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
import yaml
from torch import Tensor

from lit_seq2seq.data import Seq2SeqDataModule
from lit_seq2seq.model import NetConfig, Seq2Seq, shift_right
from lit_seq2seq.module import Seq2SeqModule
from lit_seq2seq.pairs import PairDataModule
from lit_seq2seq.tasks import Task, make_task, split_rng
from lit_seq2seq.train_cli import DATA_TO_NET

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
PRECISIONS = ("32", "32-true", "bf16-mixed")  # a config's trainer.precision this benchmark reproduces (or none)
Batch = tuple[Tensor, Tensor]


@functools.cache
def shipped_adam() -> dict[str, Any]:
    """Adam's arguments in configs/reverse.yaml (the seed config), which ours trains with."""
    optimizer = SEED["model"]["optimizer"]
    if optimizer["class_path"] != "torch.optim.Adam" or optimizer["init_args"].get("lr") != LR:
        raise SystemExit(f"{SEED_CONFIG}: expected torch.optim.Adam with lr {LR}, got {optimizer}")
    return dict(optimizer["init_args"])


def plain_sides() -> dict[str, dict[str, Any]]:
    """Adam's arguments of each plain loop on the seed task: torch's default one, and ours'."""
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


def make_trainer(
    callbacks: list[L.Callback], limit_batches: int | None, clip: float | None = None, precision: str | None = None
) -> L.Trainer:
    """One epoch on the CPU, nothing but training: no logger, checkpoints, progress bar, summary or validation."""
    return L.Trainer(
        precision=precision or "32-true",
        max_epochs=EPOCHS,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        limit_train_batches=limit_batches if limit_batches is not None else 1.0,
        gradient_clip_val=clip,
        callbacks=callbacks,
    )


class PlainLoop:
    """What a careful PyTorch user writes: per epoch, over its batches, teacher-forced forward, cross-entropy over the
    non-pad tokens (label-smoothed if asked), backward, gradient clipping by norm (if `clip`), optimizer step; the
    scheduler steps per epoch, or per optimizer step with `per_step`. With `bf16`, forward and loss run under
    torch.autocast("cpu", torch.bfloat16) without its weight cache, as Lightning's "bf16-mixed" runs a training step
    (with the cache, weights differ after a step)."""

    def __init__(
        self,
        net: Seq2Seq,
        optimizer: torch.optim.Optimizer,
        epoch_batches: Callable[[int], Iterable[Batch]],
        limit_batches: int | None = None,
        clip: float | None = None,
        scheduler: Any = None,
        per_step: bool = False,
        label_smoothing: float = 0.0,
        bf16: bool = False,
    ) -> None:
        self.net, self.optimizer, self.epoch_batches = net, optimizer, epoch_batches
        self.limit_batches, self.clip, self.scheduler, self.per_step = limit_batches, clip, scheduler, per_step
        self.label_smoothing, self.bf16 = label_smoothing, bf16
        self.rng_state = torch.get_rng_state()  # where its dropout masks start: after the seeded construction

    def steps(self) -> Iterator[None]:
        """Trains; yields after every optimizer step."""
        net, optimizer, clip, smoothing = self.net, self.optimizer, self.clip, self.label_smoothing
        start_token, pad_token = net.config.start_token, net.config.pad_token
        autocast = functools.partial(
            torch.autocast, "cpu", dtype=torch.bfloat16, enabled=self.bf16, cache_enabled=False
        )
        params = list(net.parameters())  # the optimizer's order, which Lightning clips in
        net.train()
        for epoch in range(EPOCHS):
            for s, t in itertools.islice(self.epoch_batches(epoch), self.limit_batches):
                with autocast():
                    logits = net(s, shift_right(t, start_token))
                    loss = F.cross_entropy(
                        logits.flatten(0, 1).float(), t.flatten(), ignore_index=pad_token, label_smoothing=smoothing
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if clip is not None:
                    torch.nn.utils.clip_grad_norm_(params, clip)
                optimizer.step()
                if self.scheduler is not None and self.per_step:
                    self.scheduler.step()
                yield
            if self.scheduler is not None and not self.per_step:
                self.scheduler.step()


class SeedTask:
    """The seed task of configs/reverse.yaml, `train_size` samples generated by each side inside its timed region."""

    def __init__(self, train_size: int, limit_batches: int | None = None) -> None:
        self.train_size, self.limit_batches = train_size, limit_batches
        self.steps = min(-(-train_size // BATCH), limit_batches or sys.maxsize)

    def describe(self) -> list[str]:
        return [
            f"seed task {SEED_CONFIG.name}: train_size {self.train_size}, batch {BATCH}, {self.steps} steps per run",
            f"ours and plain+same: Adam({shipped_adam()}) as in {SEED_CONFIG.name}; plain: Adam({PLAIN_ADAM})",
        ]

    def ours(self, callbacks: list[L.Callback]) -> tuple[L.Trainer, Seq2SeqModule, L.LightningDataModule]:
        """Seq2SeqModule and Seq2SeqDataModule under a Trainer; the DataModule generates the data in setup."""
        data = Seq2SeqDataModule(**TASK, train_size=self.train_size, batch_size=BATCH, seed=DATA_SEED)
        adam = shipped_adam()
        torch.manual_seed(MODEL_SEED)
        module = Seq2SeqModule(net_config(data.task), optimizer=lambda params: torch.optim.Adam(params, **adam))
        return make_trainer(callbacks, self.limit_batches), module, data

    def plain(self, name: str) -> PlainLoop:
        """Tensors in memory, a seeded randperm per epoch (the sampler's), slices of BATCH, Adam."""
        task = make_task(TASK["task"], TASK["vocab_size"], TASK["source_length"], TASK["target_length"])
        source, target = (torch.from_numpy(a) for a in task.sample(self.train_size, split_rng(DATA_SEED, "train")))
        torch.manual_seed(MODEL_SEED)
        net = Seq2Seq(net_config(task))
        optimizer = torch.optim.Adam(net.parameters(), **plain_sides()[name])

        def epoch_batches(epoch: int) -> Iterator[Batch]:
            order = torch.randperm(len(source), generator=torch.Generator().manual_seed(DATA_SEED + epoch))
            src, tgt = source[order], target[order]
            for i in range(0, len(src), BATCH):
                yield src[i : i + BATCH], tgt[i : i + BATCH]

        return PlainLoop(net, optimizer, epoch_batches, self.limit_batches)

    @functools.cached_property
    def test(self) -> Batch | None:
        split = Seq2SeqDataModule(**TASK, seed=DATA_SEED).split("test")
        return split.source, split.target


def _class(path: str, flag: str) -> Any:
    module, _, name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        raise ValueError(f"{flag}: cannot import {path!r}") from None


class PairTask:
    """A config's PairDataModule (train file only), net, optimizer, lr_scheduler and gradient clipping. The data is
    loaded and the batch list of every epoch taken from the module's own train_dataloader here, before any timing."""

    def __init__(self, config_path: str, train_file: str | None = None, limit_batches: int | None = None) -> None:
        flag = f"--config {config_path}"
        try:
            config = yaml.safe_load(Path(config_path).read_text()) or {}
        except (OSError, yaml.YAMLError) as error:
            raise ValueError(f"{flag}: cannot read it ({error})") from None
        data, model, trainer = (config.get(key) or {} for key in ("data", "model", "trainer"))
        if not str(data.get("class_path", "")).endswith("PairDataModule"):
            raise ValueError(f"{flag}: data.class_path must be lit_seq2seq.pairs.PairDataModule, got {data}")
        unknown = set(model) - {"net", "optimizer", "lr_scheduler", "lr_scheduler_interval", "label_smoothing"}
        if unknown or trainer.get("gradient_clip_algorithm", "norm") != "norm":
            raise ValueError(f"{flag}: this benchmark does not reproduce model.{unknown or 'gradient_clip_algorithm'}")
        self.precision = None if trainer.get("precision") is None else str(trainer["precision"])
        if self.precision is not None and self.precision not in PRECISIONS:
            raise ValueError(f"{flag}: trainer.precision {self.precision}: this benchmark runs {', '.join(PRECISIONS)}")
        self.label_smoothing = float(model.get("label_smoothing", 0.0))
        init_args = data.get("init_args") or {}
        args = {k: v for k, v in init_args.items() if not k.endswith("_file")}  # training pairs only
        if train_file is not None:
            args.pop("file", None)
        args["train_file"] = train_file or init_args.get("train_file")
        self.config_path, self.limit_batches = config_path, limit_batches
        self.data = PairDataModule(**args)
        self.data.load()
        self.net = NetConfig(**{name: getattr(self.data, name) for name in DATA_TO_NET}, **(model.get("net") or {}))
        optimizer = model.get("optimizer") or {"class_path": "torch.optim.Adam"}  # Seq2SeqModule's default
        self.optimizer_class = _class(optimizer["class_path"], f"{flag}: model.optimizer")
        self.optimizer_args = dict(optimizer.get("init_args") or {})
        self.lr = self.optimizer_args.get("lr", 1e-3)  # torch.optim.Adam's default
        schedule = model.get("lr_scheduler")
        self.scheduler_class = _class(schedule["class_path"], f"{flag}: model.lr_scheduler") if schedule else None
        self.scheduler_args = dict((schedule or {}).get("init_args") or {})
        self.interval = model.get("lr_scheduler_interval", "epoch")
        self.clip = trainer.get("gradient_clip_val")
        # one process on every side, without the config's callbacks (the weights' moving average): the same work
        self.left_out = [f"trainer.{k}: {trainer[k]}" for k in ("strategy", "devices") if k in trainer]
        self.left_out += [f"callback {c['class_path']}" for c in trainer.get("callbacks") or [] if "class_path" in c]
        self.seed = config.get("seed_everything", MODEL_SEED)
        start = time.perf_counter()
        self.epochs = [self._batches(epoch) for epoch in range(EPOCHS)]
        self.fetch_seconds = time.perf_counter() - start
        self.steps = len(self.epochs[0])

    def _batches(self, epoch: int) -> list[Batch]:
        loader = self.data.train_dataloader()
        loader.sampler.set_epoch(epoch)  # as Lightning's fit loop does before each epoch
        return list(itertools.islice(loader, self.limit_batches))

    def data_and_net(self) -> list[str]:
        """The train file, its batches and the net: one line each."""
        data, net = self.data, self.net
        sizes = [len(s) for s, _ in self.epochs[0]]
        widths = [s.shape[1] for s, _ in self.epochs[0]]
        return [
            f"{self.config_path}: {data.files['train']}, {len(data.datasets['train'])} pairs, batch {data.batch_size}"
            f"{' length-bucketed' if data.bucketing else ''}, {self.steps} steps per run ({sum(sizes)} pairs, source "
            f"widths {min(widths)}-{max(widths)})",
            f"net: {net.cell} {net.hidden_size}{' bidirectional' if net.bidirectional else ''}"
            f"{' + attention' if net.attention else ''}, embedding {net.embedding_dim}, vocabularies "
            f"{net.source_vocab_size}/{net.target_vocab_size}, {net.max_target_length} target steps, "
            f"{net.parameter_count():,} weights",
        ]

    def recipe(self) -> tuple[str, str]:
        """The config's optimizer with its schedule and clipping; the precision and label smoothing."""
        clip = f", gradient clipping at norm {self.clip}" if self.clip else ""
        schedule = (
            f", {self.scheduler_class.__name__}({self.scheduler_args}) per {self.interval}"
            if self.scheduler_class
            else ""
        )
        optimizer = f"{self.optimizer_class.__name__}({self.optimizer_args}){schedule}{clip}"
        return optimizer, f"precision {self.precision or '32-true'}, label smoothing {self.label_smoothing}"

    def describe(self) -> list[str]:
        optimizer, work = self.recipe()
        return [
            *self.data_and_net(),
            f"ours and plain+same: {optimizer}; plain: Adam({{'lr': {self.lr}}}); all three: {work}",
            f"batches: taken from the data module's train_dataloader before timing ({self.fetch_seconds:.2f} s, "
            "which ours spends inside its timed epoch and the plain loops do not)",
            *self.not_reproduced(),
        ]

    def not_reproduced(self) -> list[str]:
        """The config's settings no side reproduces (one process each): one line, or none."""
        return [f"not reproduced on any side (one process each): {', '.join(self.left_out)}"] if self.left_out else []

    def _optimizer(self, params: Iterable[Tensor]) -> torch.optim.Optimizer:
        return self.optimizer_class(params, **self.optimizer_args)

    def _scheduler(self, optimizer: torch.optim.Optimizer) -> Any:
        return self.scheduler_class(optimizer, **self.scheduler_args)

    def ours(self, callbacks: list[L.Callback]) -> tuple[L.Trainer, Seq2SeqModule, L.LightningDataModule]:
        torch.manual_seed(self.seed)
        schedule = self._scheduler if self.scheduler_class else None
        module = Seq2SeqModule(
            self.net,
            optimizer=self._optimizer,
            lr_scheduler=schedule,
            lr_scheduler_interval=self.interval,
            label_smoothing=self.label_smoothing,
        )
        return make_trainer(callbacks, self.limit_batches, self.clip, self.precision), module, self.data

    def plain(self, name: str) -> PlainLoop:
        torch.manual_seed(self.seed)
        net = Seq2Seq(self.net)
        work = {"label_smoothing": self.label_smoothing, "bf16": self.precision == "bf16-mixed"}
        if name == "plain":
            return PlainLoop(net, torch.optim.Adam(net.parameters(), lr=self.lr), self.epochs.__getitem__, **work)
        optimizer = self._optimizer(net.parameters())
        scheduler = self._scheduler(optimizer) if self.scheduler_class else None
        work |= {"clip": self.clip, "scheduler": scheduler, "per_step": self.interval == "step"}
        return PlainLoop(net, optimizer, self.epochs.__getitem__, **work)

    test = None  # the weight checks prove the work; decoding after part of an epoch would say little


Work = SeedTask | PairTask


class PlainStepper(L.Callback):
    """After each training step of ours, runs one step of every plain loop and adds up the time each took. Each side
    draws from its own state of torch's global RNG (its dropout masks), as it would running alone; the swaps are
    charged to ours."""

    def __init__(self, loops: dict[str, PlainLoop]) -> None:
        self.loops = {name: loop.steps() for name, loop in loops.items()}
        self.rng = {name: loop.rng_state for name, loop in loops.items()}
        self.seconds, self.count = dict.fromkeys(loops, 0.0), 0

    def on_train_batch_end(self, *args: object) -> None:
        ours = torch.get_rng_state()
        for name, steps in self.loops.items():
            torch.set_rng_state(self.rng[name])
            start = time.perf_counter()
            next(steps)
            self.seconds[name] += time.perf_counter() - start
            self.rng[name] = torch.get_rng_state()
        torch.set_rng_state(ours)
        self.count += 1


def train_whole(work: Work, name: str) -> torch.nn.Module:
    """One side's whole epoch, its model construction included; returns the trained net."""
    if name == "ours":
        trainer, module, data = work.ours([])
        trainer.fit(module, data)
        return module.net
    plain = work.plain(name)
    for _ in plain.steps():
        pass
    return plain.net


def run_interleaved(work: Work) -> tuple[dict[str, float], dict[str, torch.nn.Module]]:
    """Seconds and trained net of each side, from one fit that steps the plain loops after each of its steps."""
    seconds, plain = {}, {}
    for name in SIDES[1:]:
        start = time.perf_counter()
        plain[name] = work.plain(name)
        seconds[name] = time.perf_counter() - start
    stepper = PlainStepper(plain)
    start = time.perf_counter()
    trainer, module, data = work.ours([stepper])
    trainer.fit(module, data)
    seconds["ours"] = time.perf_counter() - start - sum(stepper.seconds.values())
    for name, steps in stepper.loops.items():
        if next(steps, "done") != "done":
            raise RuntimeError(f"the {name} loop had steps left after ours finished ({stepper.count} run)")
        seconds[name] += stepper.seconds[name]
    return seconds, {"ours": module.net, **{name: loop.net for name, loop in plain.items()}}


def exact_match(net: torch.nn.Module, test: Batch) -> float:
    source, target = test
    net.eval()
    return (net.greedy(source) == target).all(1).float().mean().item()


def max_weight_diff(a: torch.nn.Module, b: torch.nn.Module) -> float:
    return max((x - y).abs().max().item() for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def checks(work: Work, nets: dict[str, torch.nn.Module]) -> tuple[bool, str]:
    """(ours and plain+same bit-identical, a line: exact match of each side, or ours' distance from plain)."""
    diff = max_weight_diff(nets["ours"], nets["plain+same"])
    same = f"ours vs plain+same weights {'bit-identical' if diff == 0 else f'differ by up to {diff:.2e}'}"
    if work.test is not None:
        scores = " / ".join(f"{exact_match(nets[name], work.test):.3f}" for name in SIDES)
        return diff == 0, f"exact match {scores}  {same}"
    return diff == 0, f"{same}; ours vs plain up to {max_weight_diff(nets['ours'], nets['plain']):.2e}"


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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="rounds of whole runs and interleaved fits (3)")
    parser.add_argument("--train_size", type=int, default=100_000, help="seed task: samples per epoch (100000)")
    parser.add_argument("--config", help="a config with a PairDataModule (configs/g2p_cmudict.yaml) instead")
    parser.add_argument("--train_file", help="with --config: this training file instead of the config's")
    parser.add_argument("--limit_batches", type=int, default=None, help="stop every side after N batches")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--mode", choices=("both", "whole", "interleaved"), default="both")
    args = parser.parse_args(argv)
    for flag in ("repeats", "train_size", "threads", "limit_batches"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            parser.error(f"--{flag} must be >= 1, got {value}")
    if args.train_file and not args.config:
        parser.error("--train_file needs --config")
    # Settings for this run only: a caller in the same process (the tests) gets its threads, filters and log level back.
    logger = logging.getLogger("lightning.pytorch")
    level = logger.level
    try:
        with warnings.catch_warnings(), harness.threads_pinned(args.threads):
            warnings.filterwarnings("ignore", ".*does not have many workers.*")  # num_workers=0 is the fast choice
            warnings.filterwarnings("ignore", ".*LeafSpec.*")
            logger.setLevel(logging.WARNING)  # "GPU available: ..." and the like
            return _run(args, parser)
    finally:
        logger.setLevel(level)


def _run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    print(f"{harness.versions()}; threads {torch.get_num_threads()}")
    before = harness.load_before()
    if args.config:
        try:
            work: Work = PairTask(args.config, args.train_file, args.limit_batches)
        except ValueError as error:
            parser.error(str(error))
    else:
        work = SeedTask(args.train_size, args.limit_batches)
    print("\n".join(work.describe()), flush=True)

    identical = True
    whole: dict[str, list[float]] = {}
    if args.mode in ("both", "whole"):

        def show(r: int, name: str, seconds: float, net: torch.nn.Module) -> None:
            line = f"exact match {exact_match(net, work.test):.3f}" if work.test is not None else ""
            print(f"repeat {r + 1}/{args.repeats} whole       {name:10s} {seconds:6.2f} s  {line}", flush=True)

        contenders = {name: functools.partial(train_whole, work, name) for name in SIDES}
        whole, nets = harness.interleaved(contenders, args.repeats, each=show)
        for r in range(args.repeats):
            same, line = checks(work, {name: nets[name][r] for name in SIDES})
            identical &= same
            print(f"repeat {r + 1}/{args.repeats} whole       {line}", flush=True)
        del nets

    inter: dict[str, list[float]] = {name: [] for name in SIDES}
    for r in range(args.repeats if args.mode in ("both", "interleaved") else 0):
        seconds, nets = run_interleaved(work)
        for name in SIDES:
            inter[name].append(seconds[name])
        same, line = checks(work, nets)
        identical &= same
        times = ", ".join(f"{name} {seconds[name]:.2f} s" for name in SIDES)
        print(f"repeat {r + 1}/{args.repeats} interleaved {times}  {line}", flush=True)

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
