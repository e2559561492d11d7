"""Seq2SeqDataModule: generated task data, deterministic per seed and split, sharded by DDP, resumable mid-epoch."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from lit_seq2seq.search import plain, plain_values
from lit_seq2seq.tasks import SAMPLE_PEAK, Task, check_memory, make_task, sample_bytes, split_rng


class TensorPairs(Dataset):
    """(source, target) rows; fetched a whole batch at a time through `__getitems__` (one indexing op)."""

    def __init__(self, source: Tensor, target: Tensor) -> None:
        self.source, self.target = source, target

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self.source[i], self.target[i]

    def __getitems__(self, indices: list[int]) -> tuple[Tensor, Tensor]:
        idx = torch.as_tensor(indices)
        return self.source[idx], self.target[idx]


def warn_no_validation(why: str) -> None:
    """A fit without validation pairs runs (either data module), with no metrics to pick best.ckpt by: said once."""
    rank_zero_warn(f"fit without validation pairs ({why}): no validation metrics and no best.ckpt")


def _already_batched(batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    return batch


class ResumableSampler(DistributedSampler):
    """DistributedSampler (shuffled per seed and epoch, one shard per rank) that can start mid-epoch.

    Being a DistributedSampler, Lightning leaves it in place under DDP instead of wrapping it. `skip_batches`
    drops the batches a resumed run already trained on, for the epoch `resume_epoch` only.
    """

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, seed: int, batch_size: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.batch_size = batch_size
        self.resume_epoch, self.skip_batches = -1, 0

    def epoch_indices(self) -> list[int]:
        """This rank's rows of the current epoch, in order (a subclass may order them otherwise)."""
        return list(super().__iter__())

    def __iter__(self) -> Iterator[int]:
        indices = self.epoch_indices()
        if self.epoch == self.resume_epoch:
            indices = indices[self.skip_batches * self.batch_size :]
            self.resume_epoch = -1
        return iter(indices)


class ShardSampler(DistributedSampler):
    """Rows rank, rank + replicas, rank + 2 * replicas, ... in order: each row on exactly one rank.

    For val/test/predict under DDP. Lightning's default there, a DistributedSampler, pads the split with repeated
    rows to an equal count per rank, which skews the metrics whenever the size is not a multiple of the world size.
    Being a DistributedSampler, this one is left in place by Lightning.
    """

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False)
        self.indices = range(rank, len(dataset), num_replicas)  # type: ignore[arg-type]
        self.num_samples = len(self.indices)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)


def train_position(trainer: L.Trainer | None, sampler: DistributedSampler | None) -> dict[str, int]:
    """{"epoch", "batches", "epoch_batches", "processes"}: where a fit stands in its training data (a data module's
    state_dict; batches per process, so a resume mid-epoch must run in as many processes); {} outside fit."""
    if trainer is None or trainer.state.fn != "fit":
        return {}
    return {
        "epoch": sampler.epoch if sampler is not None else trainer.current_epoch,
        "batches": trainer.fit_loop.epoch_loop.batch_progress.current.processed,
        "epoch_batches": trainer.num_training_batches,
        "processes": trainer.world_size,
    }


class Seq2SeqDataModule(L.LightningDataModule):
    """Generated sequence-to-sequence data.

    Args:
        task: Task name: reverse_first (the seed: first target_length tokens reversed), copy, reverse, sort, add.
        vocab_size: Number of token ids, the reserved ones included (0 pad/start, 1 end for tasks with one).
        source_length: Source length (the longest one for variable-length tasks).
        target_length: Target length of reverse_first (default 3); derived by the other tasks, leave unset.
        min_source_length: Shortest source of variable-length tasks (default 1).
        train_size: Training samples.
        val_size: Validation samples.
        test_size: Test samples.
        predict_size: Samples for ``predict``.
        batch_size: Samples per batch (per device under DDP).
        seed: Seed of the data; each split draws from its own stream of it.
        num_workers: DataLoader worker processes (0 is fastest: the data already sits in memory).
    """

    def __init__(
        self,
        task: str = "reverse_first",
        vocab_size: int = 51,
        source_length: int = 6,
        target_length: int | None = None,
        min_source_length: int | None = None,
        train_size: int = 100_000,
        val_size: int = 1_000,
        test_size: int = 1_000,
        predict_size: int = 1_000,
        batch_size: int = 32,
        seed: int = 42,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        # From a script of one's own, "32" or 1.5 failed inside a comparison or numpy (the CLI checks types itself),
        # and numpy integers in the DataLoader or the checkpoint's hyperparameters (save_hyperparameters reads these)
        vocab_size, source_length, train_size, val_size, test_size, predict_size, batch_size, seed, num_workers = (
            plain_values(
                "--data.",
                "int",
                vocab_size=vocab_size,
                source_length=source_length,
                train_size=train_size,
                val_size=val_size,
                test_size=test_size,
                predict_size=predict_size,
                batch_size=batch_size,
                seed=seed,
                num_workers=num_workers,
            )
        )
        target_length = plain("--data.target_length", target_length, "int", optional=True)
        min_source_length = plain("--data.min_source_length", min_source_length, "int", optional=True)
        self.task: Task = make_task(task, vocab_size, source_length, target_length, min_source_length)
        for name, value in (("train_size", train_size), ("batch_size", batch_size)):
            if value < 1:
                raise ValueError(f"--data.{name} must be >= 1, got {value}")
        for name, value in (
            ("val_size", val_size),
            ("test_size", test_size),
            ("predict_size", predict_size),
            ("num_workers", num_workers),
            ("seed", seed),
        ):
            if value < 0:
                raise ValueError(f"--data.{name} must be >= 0, got {value}")
        # Every split is generated in memory (a copy in each DDP process): refuse sizes that cannot fit before any.
        made, others = self.task, val_size + test_size + predict_size  # (not `task`: save_hyperparameters reads it)
        check_memory(
            sample_bytes(made, [train_size, val_size, test_size, predict_size]),
            f"--data.train_size {train_size} (and {others} val/test/predict samples) x --data.source_length "
            f"{made.source_length}: the generated data (int64: (source {made.source_length} + target "
            f"{made.target_length}) x 8 bytes a sample, and the split being drawn {SAMPLE_PEAK}x) needs",
            "lower --data.train_size or --data.source_length",
        )
        self.save_hyperparameters()
        self.sizes = {"train": train_size, "val": val_size, "test": test_size, "predict": predict_size}
        self.batch_size, self.seed, self.num_workers = batch_size, seed, num_workers
        self.datasets: dict[str, TensorPairs] = {}
        self._resume: dict[str, int] = {}
        self._train_sampler: ResumableSampler | None = None

    # Sizes the net needs; linked into --model.net.* by the CLI. Generated tasks share one vocabulary.
    @property
    def source_vocab_size(self) -> int:
        return self.task.vocab_size

    @property
    def target_vocab_size(self) -> int:
        return self.task.vocab_size

    @property
    def max_target_length(self) -> int:
        return self.task.target_length

    @property
    def source_length(self) -> int:
        """Longest source in tokens (as PairDataModule.source_length)."""
        return self.task.source_length

    @property
    def eos_token(self) -> int | None:
        return self.task.eos_token

    def split(self, name: str) -> TensorPairs:
        """The samples of a split, generated on first use; identical in every process for the same seed."""
        if name not in self.datasets:
            source, target = self.task.sample(self.sizes[name], split_rng(self.seed, name))
            self.datasets[name] = TensorPairs(torch.from_numpy(source), torch.from_numpy(target))
        return self.datasets[name]

    def setup(self, stage: str) -> None:
        splits = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("predict",)}
        for name in splits[stage]:
            self.split(name)
        if stage == "fit" and self.sizes["val"] == 0:
            warn_no_validation("--data.val_size 0")

    def _replicas(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)

    def _eval_loader(self, name: str) -> DataLoader:
        replicas, rank = self._replicas()
        return self._loader(name, ShardSampler(self.split(name), replicas, rank) if replicas > 1 else None)

    def _loader(self, name: str, sampler: DistributedSampler | None = None) -> DataLoader:
        return DataLoader(
            self.split(name),
            batch_size=self.batch_size,
            sampler=sampler,
            collate_fn=_already_batched,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            # Every `iter(loader)` draws a worker base seed from `generator`, by default the global torch RNG.
            # Dropout and scheduled sampling draw from that RNG too, and a resumed fit restores it at its first
            # batch: a draw made by the val and train loaders between the checkpoint and the next step would be
            # lost on resume and shift every random number after an epoch boundary. An own generator keeps the
            # global stream for training alone.
            generator=torch.Generator().manual_seed(self.seed),
        )

    def train_dataloader(self) -> DataLoader:
        replicas, rank = self._replicas()
        sampler = ResumableSampler(self.split("train"), replicas, rank, self.seed, self.batch_size)
        if self._resume:
            sampler.resume_epoch, sampler.skip_batches = self._resume["epoch"], self._resume["batches"]
            self._resume = {}
        self._train_sampler = sampler
        return self._loader("train", sampler)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._eval_loader("predict")

    def state_dict(self) -> dict[str, Any]:
        """Position in the training data: the sampler's epoch and how many of its batches were trained on.

        The epoch is the sampler's own (the one its shuffle used), not `trainer.current_epoch`: Lightning counts an
        epoch as processed before its `on_train_epoch_end` hooks and completed after them, so the trainer's count
        depends on where the checkpoint is written, while the batches trained belong to the sampler's epoch.
        """
        return train_position(self.trainer, self._train_sampler)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._resume = dict(state_dict)
