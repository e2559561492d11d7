"""Callbacks the CLI adds besides checkpointing (checkpoint.py): plain-text progress when there is no terminal, and
a predictions file."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch


class LogProgress(L.Callback):
    """One line every `every` fraction of a training epoch and one per validation: readable in CI logs."""

    def __init__(self, every: float = 0.1) -> None:
        self.every = every
        self._start = 0.0
        self._next = 0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start, self._next = time.perf_counter(), 0

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        done, total = batch_idx + 1, trainer.num_training_batches
        if trainer.is_global_zero and done >= self._next:
            self._next = done + max(1, int(total * self.every))
            loss = trainer.callback_metrics.get("train/loss")
            rate = done / max(time.perf_counter() - self._start, 1e-9)
            loss_text = f" train/loss {loss.item():.4f}" if loss is not None else ""
            print(f"epoch {trainer.current_epoch} batch {done}/{total}{loss_text} ({rate:.0f} batches/s)", flush=True)

    def _print_metrics(self, trainer: L.Trainer, prefix: str) -> None:
        if trainer.is_global_zero and not trainer.sanity_checking:
            items = sorted((k, v) for k, v in trainer.callback_metrics.items() if k.startswith(prefix))
            text = " ".join(f"{k} {v.item():.4f}" for k, v in items if "position" not in k)
            print(f"epoch {trainer.current_epoch} {text}", flush=True)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._print_metrics(trainer, "val/")

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._print_metrics(trainer, "test/")


class PredictionWriter(L.Callback):
    """Writes `predict` results to <log dir>/predictions.tsv: source, target and prediction per line.

    Under DDP every rank predicts a shard (rows rank, rank + world_size, ...: the data module's ShardSampler);
    rank 0 gathers them and writes the rows in the split's order.
    """

    KEYS = ("source", "target", "prediction")

    def __init__(self) -> None:
        self._outputs: list[dict[str, torch.Tensor]] = []

    def on_predict_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._outputs = []

    def on_predict_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, *args: Any) -> None:
        self._outputs.append(outputs)

    def on_predict_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        outputs, self._outputs = self._outputs, []
        # Row by row: batches of file data differ in width (source and prediction lengths).
        rows = {k: [row for o in outputs for row in o[k].tolist()] for k in self.KEYS}
        world = trainer.world_size
        if world > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            shards: list[Any] = [None] * world
            torch.distributed.all_gather_object(shards, rows)
            total = sum(len(shard["source"]) for shard in shards)
            rows = {k: [shards[i % world][k][i // world] for i in range(total)] for k in self.KEYS}
        log_dir = trainer.log_dir  # a broadcast under DDP: every rank must ask
        if not rows["source"] or not trainer.is_global_zero:
            return
        path = Path(log_dir or trainer.default_root_dir) / "predictions.tsv"
        path.parent.mkdir(parents=True, exist_ok=True)
        spec = getattr(getattr(trainer, "datamodule", None), "text_spec", None)
        with path.open("w", encoding="utf-8") as f:
            f.write("source\ttarget\tprediction\n")
            for s, t, p in zip(rows["source"], rows["target"], rows["prediction"]):
                if spec is None:
                    f.write("\t".join(" ".join(map(str, x)) for x in (s, t, p)) + "\n")
                else:  # a text model: its text, up to the padding and end tokens
                    source = spec.source.join(spec.source_vocab.decode(s))
                    f.write(f"{source}\t{spec.decode(t)}\t{spec.decode(p)}\n")
        print(f"predictions written to {path}", file=sys.stderr)
