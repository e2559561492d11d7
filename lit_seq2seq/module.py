"""Seq2SeqModule: a thin LightningModule around the Seq2Seq nets (loss, metrics, optimizer, resume state)."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.plugins.precision import Precision
from lightning.pytorch.utilities import GradClipAlgorithmType, rank_zero_warn
from torch import Tensor
from torchmetrics import Metric

from lit_seq2seq.checkpoint import NonFiniteError, SettingError
from lit_seq2seq.metrics import Scores, score
from lit_seq2seq.model import NetConfig, Seq2Seq, cpu_native_bf16, shift_right
from lit_seq2seq.search import plain, to_width
from lit_seq2seq.text import TEXT_KEY

EPOCH_METRICS = ("loss", "token_acc", "exact_match", "token_error_rate")  # of val and test, every epoch


class Seq2SeqMetrics(Metric):
    """Sums behind loss, token accuracy (teacher forced), exact match, token error rate and per-position accuracy
    (greedy).

    All states are sums reduced with "sum" across DDP ranks, so every rank computes the same global figures. Exact
    match and token error rate count against every reference of a source (metrics.score); loss and token accuracy
    against its first (the target). Position accuracy only counts batches with one reference per source laid out
    position by position (the generated tasks): with alternative references of other lengths a position has no one
    right token, so for those batches it is not counted, and not logged when no batch counted.
    """

    full_state_update = False

    def __init__(self, max_target_length: int) -> None:
        super().__init__()
        names = ("loss_sum", "tokens", "token_correct", "sequences", "exact", "errors", "reference_tokens")
        for name in (*names, "positioned"):
            self.add_state(name, torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("position_correct", torch.zeros(max_target_length, dtype=torch.float64), dist_reduce_fx="sum")

    def update(
        self,
        loss_sum: Tensor,
        logits: Tensor,
        target: Tensor,
        scores: Scores,
        pad_token: int,
        greedy: Tensor | None = None,
    ) -> None:
        """One batch: `scores` from metrics.score; `greedy` (B, T) at the target's width for position accuracy, or
        None where positions mean nothing (several references)."""
        mask = target != pad_token
        self.loss_sum += loss_sum.double()
        self.tokens += mask.sum()
        self.token_correct += ((logits.argmax(-1) == target) & mask).sum()
        self.sequences += len(target)
        self.exact += int(scores.exact.sum())
        self.errors += int(scores.errors.sum())
        self.reference_tokens += int(scores.length.sum())
        if greedy is not None:
            self.positioned += len(target)
            self.position_correct[: target.shape[1]] += (greedy == target).sum(0)

    def compute(self) -> dict[str, Tensor]:
        out = {
            "loss": self.loss_sum / self.tokens.clamp(min=1),
            "token_acc": self.token_correct / self.tokens.clamp(min=1),
            "exact_match": self.exact / self.sequences.clamp(min=1),
            "token_error_rate": self.errors / self.reference_tokens.clamp(min=1),
        }
        if self.positioned > 0:
            positions = self.position_correct / self.positioned
            out.update({f"position_{i}_acc": positions[i] for i in range(len(positions))})
        return {k: v.float() for k, v in out.items()}


class Seq2SeqModule(L.LightningModule):
    """Teacher-forced training of a Seq2Seq net; validation and test also decode greedily for exact match and token
    error rate (against every reference of a source when batches carry them).

    Args:
        net: The net's sizes and architecture (``--model.net.*``); the sizes the data decides are linked from it.
        teacher_forcing_ratio: Probability of feeding the true previous token while training; below 1 the
            model's own prediction is fed otherwise (scheduled sampling, decoded step by step).
        optimizer: Optimizer, e.g. ``--model.optimizer Adam --model.optimizer.lr 0.003``.
        lr_scheduler: Optional learning-rate scheduler, stepped every epoch (or every optimizer step, see
            ``lr_scheduler_interval``); ReduceLROnPlateau after each validation, on ``val/loss`` or the ``monitor`` of
            ``lightning.pytorch.cli.ReduceLROnPlateau``.
        lr_scheduler_interval: When the scheduler steps: ``epoch``, or ``step`` for schedules counted in optimizer
            steps (``LinearLR``, ``OneCycleLR``, ``CosineAnnealingLR`` with ``total_iters``/``T_max`` in steps).
        label_smoothing: Label smoothing of the training loss (validation and test losses stay plain cross-entropy).
    """

    def __init__(
        self,
        net: NetConfig = NetConfig(),  # noqa: B008 - frozen, so one shared default is safe
        teacher_forcing_ratio: float = 1.0,
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: LRSchedulerCallable | None = None,
        lr_scheduler_interval: Literal["epoch", "step"] = "epoch",
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        teacher_forcing_ratio = plain("--model.teacher_forcing_ratio", teacher_forcing_ratio, "float")
        label_smoothing = plain("--model.label_smoothing", label_smoothing, "float")
        if isinstance(net, Mapping):  # load_from_checkpoint passes the stored hparams back: a plain dict
            net = NetConfig(**net)
        if not isinstance(net, NetConfig):
            raise TypeError(f"--model.net must be a NetConfig (or a dict of its fields), got {type(net).__name__}")
        for flag, value, takes, example in (
            ("optimizer", optimizer, "the parameters", "torch.optim.Adam"),
            ("lr_scheduler", lr_scheduler, "the optimizer", "torch.optim.lr_scheduler.StepLR"),
        ):
            if not callable(value) and (flag == "optimizer" or value is not None):  # "adam" failed at the first step
                raise TypeError(
                    f"--model.{flag} must be a class or callable taking {takes}, such as {example}, got {value!r}"
                )
        if lr_scheduler_interval not in ("epoch", "step"):
            raise ValueError(f"--model.lr_scheduler_interval must be epoch or step, got {lr_scheduler_interval!r}")
        if not 0.0 <= teacher_forcing_ratio <= 1.0:
            raise ValueError(f"--model.teacher_forcing_ratio must be in [0, 1], got {teacher_forcing_ratio}")
        if teacher_forcing_ratio < 1.0 and net.variational_dropout:  # a mask drawn per step is not one per sequence
            raise ValueError(
                "--model.teacher_forcing_ratio < 1 steps the decoder one token at a time, so --model.net."
                "variational_dropout cannot share its masks across the steps: set one or the other"
            )
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"--model.label_smoothing must be in [0, 1), got {label_smoothing}")
        # Only primitives go into hparams, so checkpoints load with torch.load(weights_only=True).
        self.save_hyperparameters(
            {
                "net": net.to_dict(),
                "teacher_forcing_ratio": teacher_forcing_ratio,
                "label_smoothing": label_smoothing,
                "lr_scheduler_interval": lr_scheduler_interval,  # a resume must keep it (the CLI checks)
            }
        )
        self.net = Seq2Seq(net)
        self.optimizer, self.lr_scheduler, self.lr_scheduler_interval = optimizer, lr_scheduler, lr_scheduler_interval
        self.teacher_forcing_ratio, self.label_smoothing = teacher_forcing_ratio, label_smoothing
        self.metrics = torch.nn.ModuleDict({s: Seq2SeqMetrics(net.max_target_length) for s in ("val", "test")})
        self._trained_text: dict[str, Any] | None = None  # {TEXT_KEY: ...} of the checkpoint the weights came from

    def __setattr__(self, name: str, value: Any) -> None:
        # Lightning sets `_current_fx_name` twice around every hook it calls, ~44 times a training step, and
        # nn.Module.__setattr__ checks parameters, modules and buffers each time: ~15% of Lightning's per-step cost.
        if name == "_current_fx_name":
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    def _logits(self, source: Tensor, target: Tensor) -> Tensor:
        net, start = self.net, self.net.config.start_token
        if not self.training or self.teacher_forcing_ratio >= 1.0:
            return net(source, shift_right(target, start))
        # Scheduled sampling: step by step, feeding the true token with probability teacher_forcing_ratio.
        state, token, steps = net.encode(source), torch.full_like(target[:, 0], start), []
        for t in range(target.shape[1]):
            logits, state = net.step(token, state)
            steps.append(logits)
            teacher = torch.rand(len(target), device=target.device) < self.teacher_forcing_ratio
            token = torch.where(teacher, target[:, t], logits.argmax(-1))
        return torch.stack(steps, 1)

    def _cross_entropy(self, logits: Tensor, target: Tensor, reduction: str) -> Tensor:
        """Over the non-pad tokens: "mean" is the training loss (label-smoothed if asked), "sum" what the metrics
        add up (plain cross-entropy, so validation losses compare across settings)."""
        return F.cross_entropy(
            logits.flatten(0, 1).float(),
            target.flatten(),
            ignore_index=self.net.config.pad_token,
            reduction=reduction,
            label_smoothing=self.label_smoothing if reduction == "mean" else 0.0,
        )

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        source, target = batch
        loss = self._cross_entropy(self._logits(source, target), target, "mean")
        value, trainer = loss.detach(), self.trainer
        if trainer.world_size > 1:
            # Every rank must stop at the same step: a rank that raised alone would leave the others waiting
            # forever in the gradient all-reduce. One all-gather of the losses; every rank decides alike.
            value = trainer.strategy.all_gather(value)
        values = value.reshape(-1).tolist()  # one host sync: this rank's loss, or every rank's
        if not all(map(math.isfinite, values)):
            where = ", ".join(f"{v} on rank {r}" for r, v in enumerate(values) if not math.isfinite(v))
            raise NonFiniteError(
                f"non-finite training loss ({where if len(values) > 1 else values[0]}) at global step "
                f"{self.global_step} (epoch {self.current_epoch}, batch {batch_idx}); stopped before that step's "
                "update and without saving, so the last good checkpoint is left as it was. Lower "
                "--model.optimizer.lr or check the data."
            )
        # Only on the steps the logger writes: self.log costs ~0.5 ms a call, a tenth of a seed-task step.
        trainer = self.trainer
        if (self.global_step + 1) % trainer.log_every_n_steps == 0 or trainer.should_stop:
            self.log("train/loss", loss, prog_bar=True)
        return loss

    def _evaluate(self, batch: tuple[Tensor, ...], stage: str) -> None:
        """A batch of (source, target) (generated tasks) or (source, target, references (B, R, T), -1 where absent).

        Always in float32, whatever --trainer.precision trains in: the exported graphs decode in float32, so what
        val/exact_match selects a checkpoint by is what its export delivers (and step-by-step decoding under CPU
        autocast is slower than without: every step casts the weights again).
        """
        source, target = batch[0], batch[1]
        with torch.autocast(source.device.type, enabled=False):
            logits = self._logits(source, target)
            greedy = self.net.greedy(source).cpu().numpy()
        config = self.net.config
        if len(batch) == 3:
            references, positioned = batch[2].cpu().numpy(), None
        else:  # the target is the one reference, and positions line up
            references = target.cpu().numpy()[:, None]
            positioned = torch.from_numpy(to_width(greedy, target.shape[1], config.pad_token)).to(target.device)
        scores = score(greedy, references, config.eos_token, config.pad_token)
        loss_sum = self._cross_entropy(logits, target, "sum")
        self.metrics[stage].update(loss_sum, logits, target, scores, config.pad_token, positioned)

    def _log_epoch(self, stage: str) -> None:
        values = self.metrics[stage].compute()
        self.metrics[stage].reset()
        for name, value in values.items():
            self.log(f"{stage}/{name}", value, prog_bar=name in EPOCH_METRICS, sync_dist=False)

    @staticmethod
    def logs(name: str) -> bool:
        """Whether a fit logs `name`, which a checkpoint, early stopping or ReduceLROnPlateau may then watch:
        train/loss, val/<EPOCH_METRICS>, val/position_<i>_acc (generated tasks), and Lightning's epoch and step."""
        stage, _, metric = name.partition("/")
        if name in ("train/loss", "epoch", "step"):
            return True
        return stage == "val" and (metric in EPOCH_METRICS or re.fullmatch(r"position_\d+_acc", metric) is not None)

    def validation_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    def test_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    def predict_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> dict[str, Tensor]:
        """(source, target) or (source, target, references): the greedy decoding beside the source and target (its
        first reference); the references too when the batch has them."""
        source, target = batch[0], batch[1]
        with torch.autocast(source.device.type, enabled=False):  # float32, as in _evaluate
            prediction = self.net.greedy(source)
        out = {"source": source, "target": target, "prediction": prediction}
        if len(batch) == 3:
            out["references"] = batch[2]
        return out

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # A text model's vocabularies travel with its weights (export reads them from here): rebuilding them from the
        # training file later would silently differ if that file changed.
        data = self.trainer.datamodule if self._trainer is not None else None
        spec = getattr(data, "text_spec", None)
        if spec is not None:  # with the trained source lengths, which the runtime enforces
            lengths = {"source_length": data.source_length, "min_source_length": data.min_source_length}
            checkpoint[TEXT_KEY] = spec.to_dict() | lengths

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # load_from_checkpoint (before any trainer: checked at setup), or a trainer's ckpt_path (after setup: checked
        # now; a resumed fit's training file's contents too). The CLI checks the same before its run folder exists.
        self._trained_text = {TEXT_KEY: checkpoint.get(TEXT_KEY)}
        if self._trainer is not None:
            self._check_text(checkpoint, resume=self.trainer.state.fn == "fit")

    def setup(self, stage: str) -> None:
        """A data module whose sizes are not the net's: a clear error now, not an index error inside the embedding or a
        shape mismatch in the loss (the CLI links them; a script of one's own copies them). Weights loaded from a
        text model's checkpoint need data of its vocabularies: other ones of the same sizes would give every id
        another token, and every figure would be silently wrong."""
        data, config = getattr(self.trainer, "datamodule", None), self.net.config
        for name in ("source_vocab_size", "target_vocab_size", "max_target_length", "eos_token"):
            if data is not None and hasattr(type(data), name) and getattr(data, name) != getattr(config, name):
                raise ValueError(
                    f"net {name} is {getattr(config, name)}, the data module's {getattr(data, name)}: build the "
                    f"NetConfig from the data module's sizes (NetConfig({name}=data.{name}, ...))"
                )
        if self._trained_text is not None:
            self._check_text(self._trained_text)
        trainer = self.trainer  # (the module reaches its device after setup: the strategy's root device says where)
        cpu = trainer.strategy.root_device.type == "cpu"
        if stage == "fit" and trainer.precision == "bf16-mixed" and cpu and not cpu_native_bf16():
            rank_zero_warn(
                "precision bf16-mixed (--trainer.precision) on a CPU without bfloat16 hardware (AVX512-BF16 or AMX): "
                "torch emulates its 16-bit math, and G2P training steps took 4.3x as long as under 32-true on an "
                "AVX2 CPU; pass --trainer.precision 32-true (Trainer(precision='32-true'))"
            )

    def _check_text(self, checkpoint: dict[str, Any], resume: bool = False) -> None:
        data = getattr(self.trainer, "datamodule", None)
        if data is None:
            return
        if not hasattr(data, "text_differences"):
            if checkpoint.get(TEXT_KEY) is not None:
                raise ValueError("these weights were trained on text pairs: give them a PairDataModule of those files")
            return
        differ = data.resume_differences(checkpoint) if resume else data.text_differences(checkpoint)
        if differ:
            raise ValueError(
                f"{'; '.join(differ)}: its ids would stand for other tokens than these weights learned; give the "
                "training file and tokenizer settings they were trained with (or PairDataModule(text_from=CKPT))"
            )

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: Any = None,
    ) -> None:
        # Lightning's mixed-precision plugin refuses to clip for an optimizer that unscales its gradients itself (a
        # fused one), even under bf16-mixed, which has no grad scaler: the gradients are the true ones, so clip
        # them as Lightning's fp32 path does.
        fused = any(group.get("fused") for group in optimizer.param_groups)
        if not (gradient_clip_val and fused and self.trainer.precision == "bf16-mixed"):
            self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)
            return
        # the plugin's base class: Lightning's own clipping by norm or value, less the subclass's refusal
        algorithm = gradient_clip_algorithm or GradClipAlgorithmType.NORM
        Precision.clip_gradients(self.trainer.precision_plugin, optimizer, gradient_clip_val, algorithm)

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer(self.parameters())
        if self.lr_scheduler is None:
            return optimizer
        scheduler = self.lr_scheduler(optimizer)
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            # Lightning steps it with a logged metric after each validation: lightning.pytorch.cli's subclass names
            # it (`monitor`); torch's own watches the validation loss.
            if self.lr_scheduler_interval == "step":  # it waits for a metric that exists after validation only
                raise ValueError(
                    "ReduceLROnPlateau steps on a validation metric: leave --model.lr_scheduler_interval at epoch"
                )
            monitor = getattr(scheduler, "monitor", None) or "val/loss"
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "monitor": monitor}}
        self._check_schedule_length(scheduler)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": self.lr_scheduler_interval},
        }

    def _check_schedule_length(self, scheduler: torch.optim.lr_scheduler.LRScheduler) -> None:
        """OneCycleLR raises when stepped past its total_steps: mid-fit, after hours maybe. Refuse the fit at its start
        when it plans more steps (or epochs, stepped per epoch) than the schedule has."""
        total = getattr(scheduler, "total_steps", None)
        if total is None:
            return
        try:
            trainer = self.trainer
        except RuntimeError:  # not attached: the CLI's early check of the flags, before any fit
            return
        if self.lr_scheduler_interval == "step":
            planned, unit, stop = trainer.estimated_stepping_batches, "optimizer steps", "--trainer.max_steps"
        else:
            planned, unit, stop = trainer.max_epochs, "epochs", "--trainer.max_epochs"
            planned = math.inf if planned is None or planned < 0 else planned
        if planned > total:
            planned = "unbounded" if math.isinf(planned) else int(planned)
            raise SettingError(
                f"--model.lr_scheduler {type(scheduler).__name__} has {total} steps (total_steps, or epochs x "
                f"steps_per_epoch) and fails when stepped past them, but this fit plans {planned} {unit} "
                f"(--model.lr_scheduler_interval {self.lr_scheduler_interval}): raise them, or stop the fit there "
                f"with {stop} {total}"
            )
