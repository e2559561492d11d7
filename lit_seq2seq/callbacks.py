"""Callbacks besides checkpointing (checkpoint.py): plain-text progress when there is no terminal and a predictions
file (the CLI adds both), and the exponential moving average of the weights that configs may add."""

from __future__ import annotations

import functools
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch import callbacks
from lightning.pytorch.trainer.states import TrainerFn

from lit_seq2seq.atomic import replacing
from lit_seq2seq.metrics import answer_tokens


class LogProgress(L.Callback):
    """One line every `every` fraction of a training epoch and one per validation: readable in CI logs. A line's
    train/loss is the mean over the batches since the line before (rank 0's): the logged one is written only every
    --trainer.log_every_n_steps steps, and would repeat a stale value across lines. Its rate too: batches since the
    line before over the time since (a resumed epoch starts at its first batch not yet trained on)."""

    def __init__(self, every: float = 0.1) -> None:
        self.every = every
        # (time, batches done) of the line before, or of the epoch's start (-1: no batch yet). A fit resumed mid-epoch
        # starts without on_train_epoch_start.
        self._since = (time.perf_counter(), -1)
        self._next = 0
        self._losses: list[float] = []

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._since, self._next, self._losses = (time.perf_counter(), -1), 0, []

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not trainer.is_global_zero:
            return
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor):
            self._losses.append(float(loss))  # training_step has synced this step already (its finiteness check)
        done, total = batch_idx + 1, trainer.num_training_batches
        resumed = self._since[1] < 0 and batch_idx > 0  # the batches before were trained before a resume
        if done >= self._next or resumed:
            self._next = done + max(1, int(total * self.every))
            now = time.perf_counter()
            rate = (done - max(self._since[1], 0)) / max(now - self._since[0], 1e-9)
            rate_text = "resumed here" if resumed else f"{rate:.0f} batches/s"
            self._since = (now, done)
            loss_text = f" train/loss {sum(self._losses) / len(self._losses):.4f}" if self._losses else ""
            self._losses = []
            print(f"epoch {trainer.current_epoch} batch {done}/{total}{loss_text} ({rate_text})", flush=True)

    def _print_metrics(self, trainer: L.Trainer, prefix: str) -> None:
        if trainer.is_global_zero and not trainer.sanity_checking:
            items = sorted((k, v) for k, v in trainer.callback_metrics.items() if k.startswith(prefix))
            text = " ".join(f"{k} {v.item():.4f}" for k, v in items if "position" not in k)
            print(f"{_result_label(trainer)} {text}", flush=True)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._print_metrics(trainer, "val/")

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._print_metrics(trainer, "test/")


def _result_label(trainer: L.Trainer) -> str:
    """ "epoch N" in a fit; in validate/test the checkpoint scored, if any (their epoch counter is 0 whatever was
    loaded)."""
    if trainer.state.fn == TrainerFn.FITTING:
        return f"epoch {trainer.current_epoch}"
    return f"{trainer.state.fn.value} of {trainer.ckpt_path}:" if trainer.ckpt_path else f"{trainer.state.fn.value}:"


class PredictionWriter(L.Callback):
    """Writes `predict` results to <log dir>/predictions.tsv: source, target and prediction per row; for file data
    (a row per line of the file, in its order) the line's number first.

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
        data = getattr(trainer, "datamodule", None)
        spec = getattr(data, "text_spec", None)
        config = getattr(getattr(pl_module, "net", None), "config", None)
        # Through a temporary moved into place at the end: a Ctrl-C while writing left a predictions.tsv cut at a
        # line's end, nothing telling it from a whole one.
        with replacing(path, fsync=False) as (temporary,), temporary.open("w", encoding="utf-8") as f:
            if spec is None:
                f.write("source\ttarget\tprediction\n")
            else:  # file data: each row's line in the file (its source here is normalised, maybe lowercased)
                f.write("line\tsource\ttarget\tprediction\n")
                lines = data.predict_lines.tolist()
            for i, (s, t, p) in enumerate(zip(rows["source"], rows["target"], rows["prediction"])):
                if spec is None:
                    if config is not None:  # as `sample` and `decode` write ids: no padding, no end token
                        eos, pad = config.eos_token, config.pad_token
                        s, t, p = answer_tokens(s, pad, pad), answer_tokens(t, eos, pad), answer_tokens(p, eos, pad)
                    f.write("\t".join(" ".join(map(str, x)) for x in (s, t, p)) + "\n")
                else:  # a text model: its text, up to the padding and end tokens
                    source = spec.source.join(spec.source_vocab.decode(s))
                    f.write(f"{lines[i]}\t{source}\t{data.predict_target(i)}\t{spec.decode(p)}\n")
        print(f"predictions written to {path}", file=sys.stderr)


class EMAWeightAveraging(callbacks.EMAWeightAveraging):
    """Lightning's exponential moving average of the weights: validation (hence best.ckpt), checkpoints' state_dict,
    test, predict and export all use the average; checkpoints keep the training weights for resuming.

    Three changes. The average is set up without copying the trainer (which fails under DDP). Before the average
    begins (``update_starting_at_step``), validation and checkpoints use the training weights, not the initial ones.
    And Lightning copies the average into the module when training ends, before the checkpoint written then (a
    max_time or early stop between validations) is saved, which stored the average as the training weights too, so
    a resume from it went on from the average; here that checkpoint keeps the weights training reached.
    """

    def __init__(self, decay: float = 0.999, update_starting_at_step: int | None = None, **kwargs: Any) -> None:
        """
        Args:
            decay: Weight of the old average at each training step (0.999: about the last 1,000 steps).
            update_starting_at_step: First step averaged (the average starts as a copy of the weights then); before
                it, validation and checkpoints see the training weights. Null: from the first step.
            kwargs: Other arguments of ``lightning.pytorch.callbacks.EMAWeightAveraging``.
        """
        if not 0.0 < decay < 1.0:
            raise ValueError(f"--trainer.callbacks.decay must be in (0, 1), got {decay}")
        super().__init__(decay=decay, update_starting_at_step=update_starting_at_step, **kwargs)
        self._trained: dict[str, torch.Tensor] | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # The average starts as a deepcopy of the module. Left out of it: the trainer the module points to and the
        # optimizer and scheduler factories LightningCLI hands the module (functools.partial); under DDP both hold
        # locks and the copy fails ("cannot pickle '_thread.lock' object"). The average needs only the weights.
        factories = {k: v for k, v in vars(pl_module).items() if isinstance(v, functools.partial)}
        pl_module.trainer = None
        vars(pl_module).update(dict.fromkeys(factories))
        try:
            super().setup(trainer, pl_module, stage)
        finally:
            pl_module.trainer = trainer
            vars(pl_module).update(factories)

    def _averaging(self) -> bool:
        """Whether the average has begun (update_starting_at_step reached): before, it holds the initial weights."""
        return self._average_model is not None and int(self._average_model.n_averaged) > 0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._trained = None

    # Until the average begins, validation and checkpoints see the training weights (Lightning's would see the
    # initial ones: a best.ckpt of untrained weights, and an export of them).
    # (No training step runs between a validation's start and end: both see the same _averaging().)
    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._averaging():
            super().on_validation_epoch_start(trainer, pl_module)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._averaging():
            super().on_validation_epoch_end(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._trained = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
        if self._averaging():
            super().on_train_end(trainer, pl_module)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(trainer, pl_module, checkpoint)
        if "current_model_state" not in checkpoint:
            return
        if self._trained is not None:
            checkpoint["current_model_state"] = self._trained
        if not self._averaging():
            checkpoint["state_dict"] = checkpoint["current_model_state"]
