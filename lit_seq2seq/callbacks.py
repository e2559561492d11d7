"""Callbacks and plugins the CLI adds: checkpoints that resume exactly, written atomically; plain-text progress
when there is no terminal; a predictions file."""

from __future__ import annotations

import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint


class AtomicCheckpointIO(TorchCheckpointIO):
    """torch.save to a hidden temporary file beside the target, fsync, then os.replace onto it.

    A process killed at any moment (SIGKILL, OOM killer, preemption) leaves either the previous complete file or
    the new complete one, never a truncated checkpoint, and no stray temporary file elsewhere. (Lightning's own
    writer stages the bytes in the system temp folder and *moves* them, which is a copy when that folder is on
    another file system.) Remote paths (``s3://`` ...) go through Lightning's writer unchanged.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None or "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            with tmp.open("wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        return None


class Seq2SeqCheckpoint(ModelCheckpoint):
    """ModelCheckpoint (same arguments) with best.ckpt holding validated weights and last.ckpt the newest state.

    With a monitored metric and ``save_last=True`` (the CLI's defaults), Lightning 2.6 has three flaws this fixes:

    * last.ckpt is written only together with a top-k save: when the metric did not improve in the final epoch
      it stays an epoch behind, and with ``every_n_train_steps`` nothing is written until the metric exists (the
      whole first epoch, and the first epoch after a resume).
    * with ``every_n_train_steps``, top-k saves happen at those steps, scoring weights that were never validated
      with the metric of an earlier validation.
    * a step save on an epoch's last batch lands before that epoch's validation; Lightning resumes from such a
      checkpoint straight into the next epoch, so that validation (and its best.ckpt) never happens.

    Here best.ckpt (top-k) is considered right after each validation, with its fresh metric; last.ckpt is written
    every ``every_n_train_steps`` steps (except on an epoch's last batch), at every epoch end after its validation,
    after a mid-epoch validation, and when training ends if the newest state is not in it yet. Other settings
    (no monitor, ``save_last`` "link" or false, ``train_time_interval``) keep Lightning's behaviour.

    A resumed fit logs into a new version folder; the best score so far is carried over from the checkpoint, so a
    new best.ckpt is only written when the resumed run beats the run it continues (as an uninterrupted fit would).
    The earlier best.ckpt is left where it is; `--ckpt_path best` picks the newest best.ckpt.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._last_written_at: tuple[int, str] | None = None  # (global step, hook) of the newest last.ckpt

    @property
    def state_key(self) -> str:
        # Saved under ModelCheckpoint's key, so checkpoints stay interchangeable with a plain ModelCheckpoint.
        return super().state_key.replace(type(self).__qualname__, ModelCheckpoint.__qualname__, 1)

    @property
    def _own_rules(self) -> bool:
        return self.monitor is not None and self.save_last is True and self._train_time_interval is None

    @staticmethod
    def _saving(trainer: L.Trainer) -> bool:
        return trainer.state.fn == "fit" and not trainer.sanity_checking and not trainer.fast_dev_run

    def _write_last(self, trainer: L.Trainer, hook: str) -> None:
        if self._last_written_at != (trainer.global_step, hook):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
            self._last_written_at = (trainer.global_step, hook)

    def _top_k(self, trainer: L.Trainer) -> None:
        self._save_topk_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any, **kwargs: Any) -> None:
        if not self._own_rules:
            return super().on_train_batch_end(trainer, pl_module, *args, **kwargs)
        every = self._every_n_train_steps
        if not (self._saving(trainer) and every >= 1 and trainer.global_step % every == 0):
            return None
        if trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            return None  # the epoch end, right after this epoch's validation, writes it
        self._write_last(trainer, "batch")
        return None

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._own_rules:
            return super().on_validation_end(trainer, pl_module)
        if self._saving(trainer) and not self._should_save_on_train_epoch_end(trainer):
            # a validation that is not followed by this epoch's end (val_check_interval < 1, and the like)
            self._top_k(trainer)
            self._write_last(trainer, "validation")
        return None

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._own_rules:
            return super().on_train_epoch_end(trainer, pl_module)
        if not self._saving(trainer):
            return None
        every = self._every_n_epochs
        if self._should_save_on_train_epoch_end(trainer) and (every < 1 or (trainer.current_epoch + 1) % every == 0):
            self._top_k(trainer)  # this epoch's validation just ran: its metric belongs to these weights
        self._write_last(trainer, "epoch")
        return None

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._own_rules:
            return super().on_train_end(trainer, pl_module)
        if self._saving(trainer) and (self._last_written_at is None or self._last_written_at[0] != trainer.global_step):
            self._write_last(trainer, "end")  # e.g. max_steps reached mid-epoch
        return None

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        same_dir = state_dict.get("dirpath", self.dirpath) == self.dirpath
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The dirpath has changed")
            super().load_state_dict(state_dict)
        if not same_dir and self.monitor is not None and state_dict.get("monitor") == self.monitor:
            # Carry the scores over: best_k_models still names the files in the old folder, which Lightning
            # never deletes (they are outside this callback's dirpath).
            self.best_model_score = state_dict["best_model_score"]
            self.best_k_models = dict(state_dict.get("best_k_models", {}))
            self.kth_best_model_path = state_dict.get("kth_best_model_path", "")
            self.kth_value = state_dict.get("kth_value", self.kth_value)


class LogProgress(L.Callback):
    """One line every `every` fraction of a training epoch and one per validation: readable in CI logs."""

    def __init__(self, every: float = 0.1) -> None:
        self.every = every
        self._start = 0.0
        self._next = 0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start, self._next = time.perf_counter(), 0

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        done, total = trainer.fit_loop.epoch_loop.batch_progress.current.processed, trainer.num_training_batches
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

    def on_predict_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        outputs = trainer.predict_loop.predictions or []
        rows = {k: torch.cat([o[k] for o in outputs]).tolist() if outputs else [] for k in self.KEYS}
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
        with path.open("w") as f:
            f.write("source\ttarget\tprediction\n")
            for s, t, p in zip(rows["source"], rows["target"], rows["prediction"]):
                f.write("\t".join(" ".join(map(str, x)) for x in (s, t, p)) + "\n")
        print(f"predictions written to {path}", file=sys.stderr)
