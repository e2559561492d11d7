"""Seq2SeqCLI: the LightningCLI behind `lit-seq2seq fit|validate|test|predict`."""

from __future__ import annotations

import sys
from pathlib import Path

from jsonargparse import Namespace
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from lit_seq2seq.callbacks import LogProgress, PredictionWriter
from lit_seq2seq.data import Seq2SeqDataModule
from lit_seq2seq.module import Seq2SeqModule

CHECKPOINT_NAMES = ("best", "last")


class Seq2SeqCLI(LightningCLI):
    """LightningCLI with the data sizes linked into the model, best/last checkpoints and CI-friendly logging."""

    def __init__(self, args: list[str] | None = None, run: bool = True) -> None:
        interactive = sys.stderr.isatty()
        super().__init__(
            Seq2SeqModule,
            Seq2SeqDataModule,
            args=args,
            run=run,
            seed_everything_default=42,
            save_config_kwargs={"overwrite": True},
            auto_configure_optimizers=False,
            trainer_defaults={
                "enable_progress_bar": interactive,
                "callbacks": [PredictionWriter()] + ([] if interactive else [LogProgress()]),
            },
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # The data decides the sizes; the model takes them, so a YAML never states them twice.
        for source, target in (
            ("data.vocab_size", "model.vocab_size"),
            ("data.max_target_length", "model.max_target_length"),
            ("data.eos_token", "model.eos_token"),
        ):
            parser.link_arguments(source, target, apply_on="instantiate")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/exact_match",
                "checkpoint.mode": "max",
                "checkpoint.filename": "best",
                "checkpoint.save_last": True,
            }
        )

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        root = config.trainer.default_root_dir or "."
        if config.trainer.logger in (None, True):
            # CSV logs under <default_root_dir>/version_N: the report reads them; no TensorBoard needed.
            config.trainer.logger = Namespace(
                class_path="lightning.pytorch.loggers.CSVLogger", init_args=Namespace(save_dir=root, name="")
            )
        if self.subcommand in ("validate", "test", "predict") and config.ckpt_path in CHECKPOINT_NAMES:
            config.ckpt_path = str(self._newest_checkpoint(Path(root), config.ckpt_path))

    def _newest_checkpoint(self, root: Path, name: str) -> Path:
        """`--ckpt_path best|last` in a new process: the newest <root>/version_*/checkpoints/<name>.ckpt."""
        found = sorted(root.glob(f"*/checkpoints/{name}.ckpt"), key=lambda p: p.stat().st_mtime)
        if not found:
            self.parser.error(
                f"--ckpt_path {name}: no {name}.ckpt under {root}/*/checkpoints; run fit first or pass a file path"
            )
        return found[-1]

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except ValueError as error:  # our argument checks: report like any other bad flag (exit code 2)
            self.parser.error(str(error))
