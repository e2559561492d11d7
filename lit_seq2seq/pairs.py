"""PairDataModule: sequence pairs from TSV / JSON Lines files (text.TextSpec vocabularies), length-bucketed batches."""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from lit_seq2seq.data import ResumableSampler, ShardSampler, _already_batched, train_position, warn_no_validation
from lit_seq2seq.pairfiles import (
    PairFile,
    Side,
    file_format,
    file_sha256,
    first_line,
    header_line,
    pad_rows,
    read_pairs,
    rows_with_unknown,
    to_vocab_ids,
)
from lit_seq2seq.search import MAX_STEPS, plain, plain_values
from lit_seq2seq.tasks import check_memory
from lit_seq2seq.text import (
    EOS_ID,
    EOS_STR,
    PAD_STR,
    TEXT_KEY,
    UNK_ID,
    UNK_STR,
    TextSpec,
    Tokenizer,
    Vocab,
    read_text_entry,
    show_token,
)

SPLITS = ("train", "val", "test", "predict")
ABSENT = -1  # a reference slot a source does not use


def _id_dtype(spec: TextSpec) -> type:
    """int16 where both vocabularies fit, else int32: 2 bytes a cell, the padded rows of a large file being held in
    every process."""
    return np.int16 if max(len(spec.source_vocab), len(spec.target_vocab)) <= np.iinfo(np.int16).max else np.int32


def _lengths(rows: Tensor) -> Tensor:
    """Non-pad ids per row of a padded (rows, width) array. (torch's (rows != 0).sum(1) makes an int64 copy of the
    whole array first: 8 bytes a cell, 29 GB for one 200,000-character line among 18,000.)"""
    return torch.from_numpy(np.count_nonzero(rows.numpy(), axis=1))


class PairRows(Dataset):
    """Training rows (source, target), fetched a batch at a time and cut to the batch's longest row: a batch of short
    words does not run the RNN over the padding of the longest word in the file. Stored int16/32, handed out int64.

    With `unk_rate`, each source token of a batch is replaced by UNK_ID with that probability, so that the model learns
    what <unk> (an unknown token at decode time) means. The draws are seeded by `seed` and the batch's row indices:
    the same batch of a resumed epoch gets the same ones, in any process or DataLoader worker."""

    def __init__(self, source: Tensor, target: Tensor, unk_rate: float = 0.0, seed: int = 0) -> None:
        self.source, self.target = source, target
        self.source_lengths, self.target_lengths = _lengths(source), _lengths(target)
        self.unk_rate, self.seed = unk_rate, seed

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        source, target = self.__getitems__([i])
        return source[0], target[0]

    def __getitems__(self, indices: list[int]) -> tuple[Tensor, Tensor]:
        idx = torch.as_tensor(indices)
        s, t = int(self.source_lengths[idx].max()), int(self.target_lengths[idx].max())
        source = self.source[idx, :s].long()
        if self.unk_rate:
            key = np.frombuffer(hashlib.blake2b(idx.numpy().tobytes(), digest_size=16).digest(), np.uint64)
            drawn = np.random.default_rng([self.seed, *key.tolist()]).random(tuple(source.shape)) < self.unk_rate
            source = source.masked_fill(torch.from_numpy(drawn) & (source != 0), UNK_ID)
        return source, self.target[idx, :t].long()


class ReferenceRows(Dataset):
    """Evaluation rows (source, target, references (R, T)): the references of row i are references[offsets[i]:
    offsets[i + 1]] (group_references), padded per batch to its most references with -1 rows, so that one source
    with many references widens its batch, not every batch. Targets keep their full width (the metrics count per
    target position); sources are cut per batch."""

    def __init__(self, source: Tensor, target: Tensor, references: Tensor, offsets: Tensor) -> None:
        self.source, self.target, self.references, self.offsets = source, target, references, offsets
        self.source_lengths = _lengths(source)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor, Tensor]:
        references = self.references[int(self.offsets[i]) : int(self.offsets[i + 1])]
        return self.source[i].long(), self.target[i].long(), references.long()

    def __getitems__(self, indices: list[int]) -> tuple[Tensor, Tensor, Tensor]:
        idx = torch.as_tensor(indices)
        s = int(self.source_lengths[idx].max())
        starts, counts = self.offsets[idx], self.offsets[idx + 1] - self.offsets[idx]
        references = torch.full((len(idx), int(counts.max()), self.references.shape[1]), ABSENT, dtype=torch.long)
        row = torch.repeat_interleave(torch.arange(len(idx)), counts)
        slot = torch.arange(len(row)) - torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
        references[row, slot] = self.references[torch.repeat_interleave(starts, counts) + slot].long()
        return self.source[idx, :s].long(), self.target[idx].long(), references


class BucketSampler(ResumableSampler):
    """Length-bucketed shuffled batches: each epoch (seeded by seed and epoch) the rows are shuffled, sorted by source
    length (stable, so rows of one length stay shuffled), cut into batches of `batch_size`, and the batches shuffled;
    rank r takes batches r, r + replicas, ... Rows of a batch have the same or neighbouring lengths, so little of a
    batch is padding. The one partial batch comes last (a DataLoader cuts batches from the index stream); ranks are
    evened out by repeating full batches, as DistributedSampler repeats rows. Resumes mid-epoch like its parent."""

    def __init__(
        self, dataset: Dataset, lengths: np.ndarray, num_replicas: int, rank: int, seed: int, batch_size: int
    ) -> None:
        super().__init__(dataset, num_replicas, rank, seed, batch_size)
        self.lengths = np.asarray(lengths)
        rows = len(self.lengths)
        self.full, self.rest = divmod(rows, batch_size)
        batches = self.full + (self.rest > 0)
        self.per_rank = math.ceil(batches / num_replicas)
        sizes = [batch_size] * (self.per_rank * num_replicas - (self.rest > 0)) + ([self.rest] if self.rest else [])
        self.num_samples = sum(sizes[rank::num_replicas])
        self.total_size = sum(sizes)

    def epoch_indices(self) -> list[int]:
        rng = np.random.default_rng([self.seed, self.epoch])
        shuffled = rng.permutation(len(self.lengths))
        ordered = shuffled[np.argsort(self.lengths[shuffled], kind="stable")]
        size, replicas = self.batch_size, self.num_replicas
        batches = list(ordered[: self.full * size].reshape(self.full, size)[rng.permutation(self.full)])
        rest = [ordered[self.full * size :]] if self.rest else []
        pad = self.per_rank * replicas - len(batches) - len(rest)
        filler = batches or rest
        batches += [filler[i % len(filler)] for i in range(pad)]
        mine = (batches + rest)[self.rank :: replicas]
        return np.concatenate(mine).tolist() if mine else []


SPLIT_FRACTIONS = (0.9, 0.05, 0.05)  # train, val, test of --data.file
UNK_RATE = 0.01  # --data.unk_rate's default with --data.unknown_source unk
FIT_TEXT_FROM = (
    "fit builds its vocabularies from --data.train_file or --data.file; --data.text_from is for validate, test and "
    "predict"
)


def _path(flag: str, value: Any) -> str | None:
    """A file argument as a str (a pathlib.Path in the checkpoint's hyperparameters stops it from loading)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"{flag} must be a file path or null, got {value!r}")


class PairDataModule(L.LightningDataModule):
    """Sequence pairs read from files: TSV (``source<TAB>target`` lines) or JSON Lines (``{"source": ..,
    "target": ..}``), UTF-8, by suffix (.tsv/.txt, .jsonl/.json). Give train_file (+ val_file, test_file,
    predict_file), or one ``file`` split by ``split_fractions``. Vocabularies come from the training split only, or,
    to validate, test or predict without the training file, from a trained model's checkpoint (``text_from``).

    Args:
        train_file: Training pairs (every reference of a source is a pair of its own).
        val_file: Validation pairs (several lines of one source = several references of it).
        test_file: Test pairs.
        predict_file: Sources for ``predict`` (default: the test split): pairs, or sources alone (a line without a
            tab; JSON Lines without "target"), whose target column in predictions.tsv stays empty. Its targets are
            echoed there, never checked (tokens the model lacks, any length).
        file: One file holding every pair instead of train/val/test files, split by ``split_fractions``.
        split_fractions: Train, validation and test fractions for ``file``; a hash of each source decides its split,
            so every pair of one source lands in one split, the same on every run and machine.
        header: Skip line 1 of every pair file, a header such as ``word<TAB>pronunciation``. Without it, a line 1
            of usual column names (``source<TAB>target``, ``src<TAB>tgt`` and the like) is trained on, with a
            warning; other names pass unwarned.
        source_tokenizer: ``char`` (each Unicode character a token, after NFC normalisation) or ``space``
            (whitespace-separated tokens).
        target_tokenizer: ``char`` or ``space``, as for the source.
        source_lowercase: Lowercase sources (after normalisation).
        target_lowercase: Lowercase targets.
        unknown_source: A source token that the training sources lack, in a val/test/predict file: ``error`` (the
            default: a clear error naming file, line, token and position; a silently replaced letter would be
            scored as the model's fault) or ``unk`` (maps to an ``<unk>`` id, learned in training: see unk_rate).
        unk_rate: With unknown_source unk, the share of training source tokens replaced by ``<unk>`` (drawn anew for
            each batch), so that the model learns to read it from the context; with 0 its embedding stays as
            initialised (benchmarks/unknown_letter.py measures both). Default: 0.01 with unknown_source unk.
        max_source_tokens: Cap on source length in tokens (default: the longest training source).
        max_target_tokens: Cap on target length in tokens, end token excluded (default: the longest training target).
        skip_long: Skip and count pairs outside the trained lengths (longer than the caps; in val/test/predict, also
            longer than the longest training pair, or with a source shorter than the shortest training source)
            instead of stopping with an error naming file:line.
        skip_unknown_targets: Skip and count val/test pairs whose target holds a token the training targets
            lack (the model can never produce it), instead of stopping with an error naming file:line.
        batch_size: Pairs per training batch, distinct sources per val/test batch (per device under DDP).
        seed: Seed of the training order (shuffle and buckets), the same in every process and rank.
        num_workers: DataLoader worker processes (0 is fastest: the data already sits in memory).
        bucketing: Length-bucketed training batches (shuffled batches of similar source length).
        cache: Keep the tokenized arrays beside each file (``.NAME.lit-seq2seq-cache/``), reused while the file and
            tokenizer settings are unchanged.
        text_from: A text model's checkpoint whose vocabularies, tokenizers and trained lengths to use instead of a
            training file's (validate, test and predict only; leave train_file and file unset). The CLI sets it to
            ``--ckpt_path`` when those are unset. The checkpoint's tokenizers override the tokenizer and lowercase
            flags (a line names any that differ).
    """

    def __init__(
        self,
        train_file: str | None = None,
        val_file: str | None = None,
        test_file: str | None = None,
        predict_file: str | None = None,
        file: str | None = None,
        split_fractions: tuple[float, float, float] = SPLIT_FRACTIONS,
        header: bool = False,
        source_tokenizer: Literal["char", "space"] = "char",
        target_tokenizer: Literal["char", "space"] = "char",
        source_lowercase: bool = False,
        target_lowercase: bool = False,
        unknown_source: Literal["error", "unk"] = "error",
        unk_rate: float | None = None,
        max_source_tokens: int | None = None,
        max_target_tokens: int | None = None,
        skip_long: bool = False,
        skip_unknown_targets: bool = False,
        batch_size: int = 32,
        seed: int = 42,
        num_workers: int = 0,
        bucketing: bool = True,
        cache: bool = True,
        text_from: str | None = None,
    ) -> None:
        super().__init__()
        # From a script of one's own: "no" was a true flag and "8" failed inside a comparison; Paths and numpy numbers
        # in the checkpoint's hyperparameters (save_hyperparameters reads these) stop it from loading
        files = dict(train_file=train_file, val_file=val_file, test_file=test_file, predict_file=predict_file)
        files |= dict(file=file, text_from=text_from)
        train_file, val_file, test_file, predict_file, file, text_from = (
            _path(f"--data.{name}", value) for name, value in files.items()
        )
        header, source_lowercase, target_lowercase, skip_long, skip_unknown_targets, bucketing, cache = plain_values(
            "--data.",
            "bool",
            header=header,
            source_lowercase=source_lowercase,
            target_lowercase=target_lowercase,
            skip_long=skip_long,
            skip_unknown_targets=skip_unknown_targets,
            bucketing=bucketing,
            cache=cache,
        )
        batch_size, seed, num_workers = plain_values(
            "--data.", "int", batch_size=batch_size, seed=seed, num_workers=num_workers
        )
        max_source_tokens = plain("--data.max_source_tokens", max_source_tokens, "int", optional=True)
        max_target_tokens = plain("--data.max_target_tokens", max_target_tokens, "int", optional=True)
        unk_rate = plain("--data.unk_rate", unk_rate, "float", optional=True)
        if isinstance(split_fractions, (str, bytes)) or not isinstance(split_fractions, Sequence):
            raise TypeError(f"--data.split_fractions must be 3 fractions (train, val, test), got {split_fractions!r}")
        split_fractions = tuple(plain("--data.split_fractions", f, "float") for f in split_fractions)
        if text_from is not None and (file is not None or train_file is not None):
            raise ValueError(
                "--data.text_from takes the vocabularies from a checkpoint instead of a training file: leave "
                "--data.train_file and --data.file unset"
            )
        if text_from is None and (file is None) == (train_file is None):
            raise ValueError("give --data.train_file (with --data.val_file, ...) or --data.file, one of them")
        if file is not None and (val_file or test_file):
            raise ValueError("--data.file is split by --data.split_fractions; leave --data.val_file/test_file unset")
        if train_file is not None and split_fractions != SPLIT_FRACTIONS:
            raise ValueError(
                "--data.split_fractions splits --data.file; with --data.train_file give the other splits as "
                "--data.val_file and --data.test_file"
            )
        fractions = split_fractions
        if len(fractions) != 3 or min(fractions) < 0 or not math.isclose(sum(fractions), 1.0) or fractions[0] <= 0:
            raise ValueError(
                f"--data.split_fractions must be 3 fractions >= 0 (train > 0) summing to 1, got {fractions}"
            )
        if unknown_source not in ("error", "unk"):
            raise ValueError(f"--data.unknown_source must be error or unk, got {unknown_source!r}")
        if unk_rate is not None and unknown_source != "unk":
            raise ValueError("--data.unk_rate trains <unk>: it needs --data.unknown_source unk")
        if unk_rate is not None and not 0.0 <= unk_rate < 1.0:
            raise ValueError(f"--data.unk_rate must be in [0, 1), got {unk_rate}")
        sizes = (("batch_size", batch_size), ("max_source_tokens", max_source_tokens))
        for name, value in (*sizes, ("max_target_tokens", max_target_tokens)):
            if value is not None and value < 1:
                raise ValueError(f"--data.{name} must be >= 1, got {value}")
        for name, value in (("num_workers", num_workers), ("seed", seed)):
            if value < 0:  # a negative seed failed inside numpy at the first batch
                raise ValueError(f"--data.{name} must be >= 0, got {value}")
        self.save_hyperparameters()
        self.tokenizers = {}
        for side, kind, lowercase in (
            ("source", source_tokenizer, source_lowercase),
            ("target", target_tokenizer, target_lowercase),
        ):
            try:
                self.tokenizers[side] = Tokenizer(kind, lowercase)
            except ValueError as error:  # the CLI's Literal type catches it first; a script of one's own gets here
                raise ValueError(f"--data.{side}_{error}") from None
        self.files = {"train": train_file, "val": val_file, "test": test_file, "predict": predict_file}
        self.file, self.fractions, self.text_from = file, fractions, text_from
        self.unknown_source, self.skip_long, self.skip_unknown_targets = unknown_source, skip_long, skip_unknown_targets
        self.unk_rate = (UNK_RATE if unk_rate is None else unk_rate) if unknown_source == "unk" else 0.0
        self.caps = {"source": max_source_tokens, "target": max_target_tokens}
        self.batch_size, self.seed, self.num_workers = batch_size, seed, num_workers
        self.bucketing, self.cache, self.header = bucketing, cache, header
        self._datasets: dict[str, Dataset] = {}
        self._pending: dict[str, tuple[PairFile, np.ndarray, np.ndarray]] = {}  # split -> (pairs, ids): to pad
        self.skipped: dict[str, int] = {}  # over-long pairs skipped per split (skip_long)
        self.skipped_unknown: dict[str, int] = {}  # pairs with an unknown target token skipped (skip_unknown_targets)
        self.train_sha256 = ""
        self._spec: TextSpec | None = None
        self._lengths: dict[str, int] = {}
        self._train_source_lengths: np.ndarray | None = None
        self._resume: dict[str, int] = {}
        self._train_sampler: ResumableSampler | None = None
        self._predict_pairs: PairFile | None = None  # the rows of the predict dataset, as read

    # --- what the model and the export need (linked into --model.net.* by the CLI) ----------------------------------

    @property
    def text_spec(self) -> TextSpec:
        self.load()
        return self._spec  # type: ignore[return-value]

    @property
    def source_length(self) -> int:
        """Longest source in tokens (the cap if given)."""
        self.load()
        return self._lengths["source"]

    @property
    def min_source_length(self) -> int:
        """Shortest training source in tokens."""
        self.load()
        return self._lengths["min_source"]

    @property
    def source_vocab_size(self) -> int:
        return len(self.text_spec.source_vocab)

    @property
    def target_vocab_size(self) -> int:
        return len(self.text_spec.target_vocab)

    @property
    def max_target_length(self) -> int:
        """Decoder steps: the longest target (or the cap) + 1 for the end token."""
        self.load()
        return self._lengths["target"] + 1

    @property
    def eos_token(self) -> int:
        return EOS_ID

    # --- reading --------------------------------------------------------------------------------------------------

    def _read(self, split: str) -> PairFile | None:
        name = self.files[split]
        if name is None:
            return None
        return self._read_file(name, f"--data.{split}_file")

    def _read_file(self, name: str, flag: str) -> PairFile:
        tokenizers = self.tokenizers["source"], self.tokenizers["target"]
        alone = flag == "--data.predict_file"
        pairs = read_pairs(name, *tokenizers, flag, self.cache, sources_alone=alone, header=self.header)
        first = first_line(name)
        header = header_line(name, first)
        if header is not None and not self.header:
            rank_zero_warn(
                f"{flag} {name}:1: {header!r} looks like a header line; it is read as a pair (delete it, or pass "
                "--data.header true to skip line 1 of every file)"
            )
        elif self.header and header is None:  # a file without one loses a pair, unsaid
            rank_zero_info(f"{flag} {name}:1: {first!r} skipped as a header (--data.header true)")
        return pairs

    def load(self) -> None:
        """Read every given file once (before training starts, so that a bad line anywhere stops it first), build the
        vocabularies from the training split and the id arrays of every split."""
        if self._spec is not None:
            return
        if self.text_from is not None:
            spec, self._lengths = checkpoint_text(self.text_from)
            self._say_overridden({"source": spec.source, "target": spec.target})
            self.tokenizers = {"source": spec.source, "target": spec.target}  # the files are read as it was trained
            splits = {name: self._read(name) for name in SPLITS}
            splits["predict"] = splits["predict"] or splits["test"]
            self._make_datasets(splits, spec)
            return
        if self.file is not None:
            whole = self._read_file(self.file, "--data.file")
            parts = split_by_source(whole.source, self.fractions)
            splits = {name: _select(whole, rows) for name, rows in zip(("train", "val", "test"), parts, strict=True)}
            splits["predict"] = self._read("predict") or splits["test"]
            if len(splits["train"]) == 0:
                raise ValueError(
                    f"--data.file {self.file}: --data.split_fractions {self.fractions} left no training pair"
                )
        else:
            splits = {name: self._read(name) for name in SPLITS}
            if splits["predict"] is None:
                splits["predict"] = splits["test"]
        train = splits["train"]
        self.train_sha256 = self._train_digest(train.sha256)
        train = self._cap(train, "train", "source", self.caps["source"])
        splits["train"] = train = self._cap(train, "train", "target", self.caps["target"])
        if len(train) == 0:  # --data.skip_long skipped them all
            raise ValueError(
                f"{self._train_flag()}: --data.skip_long skipped all {self.skipped['train']} training pairs: every one "
                "is longer than --data.max_source_tokens/--data.max_target_tokens; raise them"
            )
        # after the caps: an over-long line is refused first, and pairs that --data.skip_long drops are not counted
        trained = source_hashes(train.source)
        if self.file is None:  # --data.file splits by source: no source is in two splits
            self._warn_seen_sources(splits, trained)
        _warn_repeated_pairs(train, trained)
        source_vocab = _vocab(train, "source", self.unknown_source == "unk")
        target_vocab = _vocab(train, "target", False)
        spec = TextSpec(self.tokenizers["source"], self.tokenizers["target"], source_vocab, target_vocab)
        lengths = train.source.lengths
        self._lengths = {  # the data's (within the caps: a cap above the data widens no trained length)
            "source": int(lengths.max()),
            "min_source": int(lengths.min()),
            "target": int(train.target.lengths.max()),
        }
        self._train_source_lengths = lengths
        if self._lengths["target"] + 1 > MAX_STEPS:  # the decode loop's bound; the fit failed at its first validation
            longest = int(np.argmax(train.target.lengths))
            raise ValueError(
                f"{train.where(longest)}: its target of {self._lengths['target']:,} tokens is longer than the "
                f"{MAX_STEPS - 1:,} (and end token) a model decodes; --data.max_target_tokens {MAX_STEPS - 1} with "
                "--data.skip_long true skips (and counts) longer pairs"
            )
        self._check_lengths(train, spec, splits)
        self._make_datasets(splits, spec)

    def _warn_seen_sources(self, splits: dict[str, PairFile | None], trained: np.ndarray) -> None:
        """Warn of val/test sources that are training sources too (`trained`: their `source_hashes`; files split by
        line, not by source: a word's alternate pronunciations on both sides): their scores flatter the model."""
        evaluated = [splits[name] for name in ("val", "test") if splits[name] is not None]
        for pairs in evaluated:
            seen = np.isin(source_hashes(pairs.source), trained)
            if seen.any():
                rank_zero_warn(
                    f"{pairs.where(int(np.argmax(seen)))}: {int(seen.sum()):,} of the file's {len(seen):,} pairs (this "
                    "the first) have a source the training file holds too: their scores flatter the model; split by "
                    "source (--data.file with --data.split_fractions does)"
                )

    def _check_lengths(self, train: PairFile, spec: TextSpec, splits: dict[str, PairFile | None]) -> None:
        """Every row of every split is stored padded to the longest training source and target. Name an outlier that
        sets that width (one long line among short ones), and refuse a width whose arrays cannot fit in memory, both
        pointing at the line and at the flags that cap the lengths. (Capped sides are the user's widths.)"""
        sides = {side: getattr(train, side).lengths for side in ("source", "target") if self.caps[side] is None}
        if not sides:
            return
        side = max(sides, key=lambda name: sides[name].max())  # the side whose longest row dominates the width
        lengths = sides[side]
        longest = int(np.argmax(lengths))
        where = f"{train.where(longest)}: its {side} of {int(lengths[longest])} tokens, the longest"
        rows = sum(len(p) for p in splits.values() if p is not None)
        width = self._lengths["source"] + self._lengths["target"] + 1
        cell = np.dtype(_id_dtype(spec)).itemsize
        top = math.ceil(len(lengths) / 1000)  # the longest 0.1% of the pairs, at least one
        usual = int(np.partition(lengths, len(lengths) - top - 1)[len(lengths) - top - 1]) if len(lengths) > top else 0
        outlier = max(4 * usual, usual + 64)  # far beyond 99.9% of the pairs
        if usual and lengths[longest] > outlier:
            # the cap to suggest: the longest pair that is no outlier (the 99.9% mark would skip usual pairs too)
            cap = int(lengths[lengths <= outlier].max())
            rank_zero_warn(
                f"{where}, is {lengths[longest] / cap:.0f}x the longest pair without outliers ({cap} tokens; all "
                f"but the longest {top} of the {len(lengths)} pairs have at most {usual}, an outlier over {outlier}): "
                f"every row is stored padded to it "
                f"(~{rows * width * cell / 2**20:.0f} MiB) and its batch runs that many steps; "
                f"--data.max_{side}_tokens {cap} --data.skip_long true would skip the {int((lengths > cap).sum())} "
                "pair(s) above that"
            )
        check_memory(  # the padded ids, a second copy of the targets as references (val/test), a byte a cell counted
            rows * width * (2 * cell + 1),
            f"{where}, sets the width every row is stored padded to: {rows} pairs x {width} ids need",
            f"cap the lengths: --data.max_{side}_tokens N with --data.skip_long true skips (and counts) longer pairs",
        )

    def _say_overridden(self, trained: dict[str, Tokenizer]) -> None:
        """Name the tokenizer flags that --data.text_from overrides (the model reads only the tokens it learned); a
        flag at its default (char, not lowercased) says nothing: the checkpoint's setting is what the user means."""
        default = Tokenizer()
        flags = [
            f"--data.{side}_{name} {str(getattr(self.tokenizers[side], field)).lower()}"
            for side, tokenizer in trained.items()
            for name, field in (("tokenizer", "kind"), ("lowercase", "lowercase"))
            if getattr(default, field) != getattr(self.tokenizers[side], field) != getattr(tokenizer, field)
        ]
        if flags:
            rank_zero_info(overridden_note(trained, flags))

    def _make_datasets(self, splits: dict[str, PairFile | None], spec: TextSpec) -> None:
        """The ids of every split given, with `spec` and the trained lengths (val/test/predict rows outside those are
        an error or skipped, `_cap`), checked now; padded into `datasets` on first use, so that `fit` can refuse
        lengths whose training step cannot fit in memory before their arrays are made."""
        done: dict[int, tuple[PairFile, np.ndarray, np.ndarray] | None] = {}  # predict is the test split by default
        for name, pairs in splits.items():
            if pairs is None or len(pairs) == 0:
                continue
            key = id(pairs)
            if key in done:  # checked, counted and mapped once
                if done[key] is not None:
                    self._pending[name] = done[key]
                continue
            done[key] = None  # until its ids are made: a split emptied by skipping stays absent for both
            if name == "predict":  # predict reads the sources; a target in its file is only echoed, never checked
                pairs = self._cap(pairs, name, "source", self._lengths["source"], self._lengths["min_source"])
                if len(pairs):
                    self._pending[name] = done[key] = (pairs, self._ids(pairs, spec, targets=False)[0], None)
                continue
            if name != "train":
                pairs = self._cap(pairs, name, "source", self._lengths["source"], self._lengths["min_source"])
                pairs = self._cap(pairs, name, "target", self._lengths["target"])
                if self.skip_unknown_targets:
                    unknown = rows_with_unknown(pairs.target, spec.target_vocab)
                    if unknown.any():
                        self.skipped_unknown[name] = int(unknown.sum())
                        pairs = _select(pairs, np.flatnonzero(~unknown))
                if len(pairs) == 0:  # all skipped: the split is absent, so a stage that needs it says so
                    continue
            self._pending[name] = done[key] = (pairs, *self._ids(pairs, spec))
        self._spec = spec
        for flag, what, skipped in (
            ("skip_unknown_targets", "pairs whose target the model cannot produce", self.skipped_unknown),
            ("skip_long", "pairs outside the lengths trained on", self.skipped),
        ):
            if skipped:  # say how many, once (rank 0)
                counts = ", ".join(f"{n} {split}" for split, n in skipped.items())
                rank_zero_info(f"--data.{flag}: skipped {what}: {counts}")

    def _cap(self, pairs: PairFile, split: str, side: str, cap: int | None, least: int = 0) -> PairFile:
        """Pairs whose `side` has `least` to `cap` tokens; others are an error naming file:line unless --data.skip_long.
        (A source shorter than any trained is untrained, as the runtime and decode refuse it.)"""
        if cap is None:
            return pairs
        lengths = getattr(pairs, side).lengths
        outside = (lengths > cap) | (lengths < least)
        if not outside.any():
            return pairs
        if not self.skip_long:
            row = int(np.argmax(outside))
            if lengths[row] < least:
                limit = f"fewer than the shortest training {side} ({least})"
            elif self.caps[side] == cap:
                limit = f"more than --data.max_{side}_tokens {cap}"
            else:
                limit = f"more than the longest training {side} ({cap})"
            raise ValueError(
                f"{pairs.where(row)}: the {side} has {lengths[row]} tokens, {limit}; pass --data.skip_long true to "
                "skip (and count) pairs outside the trained lengths"
            )
        self.skipped[split] = self.skipped.get(split, 0) + int(outside.sum())
        return _select(pairs, np.flatnonzero(~outside))

    @property
    def datasets(self) -> dict[str, Dataset]:
        """The datasets of the splits given (a split without pairs has none), padded on first use."""
        self.load()
        for name, (pairs, source_ids, target_ids) in self._pending.items():
            source, target = self._pad(pairs, source_ids, target_ids)
            if name == "train":
                rows = (torch.from_numpy(source), torch.from_numpy(target))
                self._datasets[name] = PairRows(*rows, self.unk_rate, self.seed)  # unk_rate > 0: the vocab has <unk>
            elif name == "predict":  # a row per line, in file order: predictions.tsv names each line's number
                arrays = (source, target, target, np.arange(len(source) + 1))
                self._datasets[name] = ReferenceRows(*(torch.from_numpy(a) for a in arrays))
                self._predict_pairs = pairs
            else:
                self._datasets[name] = ReferenceRows(*(torch.from_numpy(a) for a in group_references(source, target)))
        self._pending.clear()
        return self._datasets

    def _ids(self, pairs: PairFile, spec: TextSpec, targets: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
        """The vocabulary ids of every token (flat; the targets' None unless `targets`); an unknown one is an error
        naming its file, line and position."""

        def unknown(side: str, hint: str) -> Callable[[int, int, str], str]:
            return lambda row, pos, token: (
                f"{pairs.where(row)}: unknown {side} token {show_token(token)} at position {pos}: the training "
                f"{side}s lack it{hint}"
            )

        if spec.source_vocab.has_unk:
            hint = ""
        elif self.text_from is not None:  # the checkpoint's vocabulary: no flag of this run adds <unk> to it
            hint = " (the model was trained without <unk>: fit it with --data.unknown_source unk to map such tokens)"
        else:
            hint = " (--data.unknown_source unk maps such tokens to <unk>)"
        source_ids = to_vocab_ids(pairs.source, spec.source_vocab, unknown("source", hint))
        if not targets:
            return source_ids, None
        skip = " (--data.skip_unknown_targets true skips and counts such pairs: the model can never produce them)"
        target_ids = to_vocab_ids(pairs.target, spec.target_vocab, unknown("target", skip))
        return source_ids, target_ids

    def _pad(
        self, pairs: PairFile, source_ids: np.ndarray, target_ids: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Padded id arrays (int16, or int32 past 32767 ids): sources (rows, source_length), targets (rows,
        max_target_length) with the end token (the end token alone where the targets were not read)."""
        dtype = _id_dtype(self.text_spec)
        source = pad_rows(pairs.source, source_ids, self._lengths["source"], None, dtype)
        if target_ids is None:
            target = np.zeros((len(pairs), self._lengths["target"] + 1), dtype)
            target[:, 0] = EOS_ID
        else:
            target = pad_rows(pairs.target, target_ids, self._lengths["target"] + 1, EOS_ID, dtype)
        return source, target

    @property
    def predict_lines(self) -> np.ndarray:
        """The file's line number of each predict row."""
        return self._predict_pairs.lines

    def predict_target(self, row: int) -> str:
        """Predict row `row`'s target as its file gives it (tokenized as the model reads targets; "" for a source
        alone): predictions.tsv echoes it, whatever tokens or length it has."""
        return self.tokenizers["target"].join(self._predict_pairs.target.tokens(row))

    # --- Lightning hooks ------------------------------------------------------------------------------------------

    def setup(self, stage: str) -> None:
        if stage == "fit" and self.text_from is not None:
            raise ValueError(FIT_TEXT_FROM)
        self.load()
        stage = str(getattr(stage, "value", stage))
        missing = self.missing_split(stage)
        if missing:
            raise ValueError(missing)
        if stage == "fit" and not self._has("val"):
            if self.file:
                flag = "--data.split_fractions gives it none"
            elif self.files["val"] is None:
                flag = "--data.val_file is unset"
            else:
                flag = f"--data.val_file gives none{self._all_skipped('val')}"
            warn_no_validation(flag)

    def _has(self, split: str) -> bool:
        """Whether `split` has pairs (without padding them)."""
        self.load()
        return split in self._pending or split in self._datasets

    def missing_split(self, stage: str) -> str:
        """Why `stage` (fit, validate, test, predict) has no pairs to run on, or "" when it has them."""
        self.load()
        needed = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("predict",)}
        for name in needed[stage]:
            if not self._has(name) and (name != "val" or stage == "validate"):
                if self.file:
                    flag = "--data.file/--data.split_fractions"
                elif name == "predict":
                    flag = "--data.predict_file (or --data.test_file, its default)"
                else:
                    flag = f"--data.{name}_file"
                return f"{stage} needs {name} pairs: {flag} gives none{self._all_skipped(name)}"
        return ""

    def _all_skipped(self, split: str) -> str:
        """How a split given lost all its pairs, or "" (it was not given, or is empty)."""
        counts = {"--data.skip_long": self.skipped, "--data.skip_unknown_targets": self.skipped_unknown}
        used = [flag for flag, skipped in counts.items() if skipped.get(split)]
        return f" ({' and '.join(used)} skipped all its pairs)" if used else ""

    def _replicas(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)

    def _loader(self, name: str, sampler: DistributedSampler | None) -> DataLoader:
        return DataLoader(
            self.datasets[name],
            batch_size=self.batch_size,
            sampler=sampler,
            collate_fn=_already_batched,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            generator=torch.Generator().manual_seed(self.seed),  # not the global RNG: see Seq2SeqDataModule._loader
        )

    def train_dataloader(self) -> DataLoader:
        self.load()
        replicas, rank = self._replicas()
        data = self.datasets["train"]
        if self.bucketing:
            lengths = self._train_source_lengths
            sampler = BucketSampler(data, lengths, replicas, rank, self.seed, self.batch_size)
        else:
            sampler = ResumableSampler(data, replicas, rank, self.seed, self.batch_size)
        if self._resume:
            sampler.resume_epoch, sampler.skip_batches = self._resume["epoch"], self._resume["batches"]
            self._resume = {}
        self._train_sampler = sampler
        return self._loader("train", sampler)

    def _eval_loader(self, name: str) -> DataLoader | list:
        self.load()
        if name not in self.datasets:
            return []  # no validation pairs given: fit trains without validating
        replicas, rank = self._replicas()
        return self._loader(name, ShardSampler(self.datasets[name], replicas, rank) if replicas > 1 else None)

    def val_dataloader(self) -> DataLoader | list:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader | list:
        return self._eval_loader("test")

    def predict_dataloader(self) -> DataLoader | list:
        return self._eval_loader("predict")

    def state_dict(self) -> dict[str, Any]:
        """Position in the training data (as Seq2SeqDataModule.state_dict) and the training file's sha256."""
        position = train_position(self.trainer, self._train_sampler)
        return position | {"train_sha256": self.train_sha256} if position else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._resume = {k: v for k, v in state_dict.items() if k in ("epoch", "batches")}

    def resume_differences(self, checkpoint: dict[str, Any]) -> list[str]:
        """Why a fit cannot resume from `checkpoint` with this data (empty: it can): the training pairs changed."""
        state = checkpoint.get(type(self).__qualname__) or {}
        saved = state.get("train_sha256")
        self.load()
        differ = []
        if saved and saved != self.train_sha256:
            fitted = (checkpoint.get("datamodule_hyper_parameters") or {}).get("file" if self.file else "train_file")
            if self._holds(fitted, saved):  # the fit's file is there as it was: this one is another file
                read = f"{fitted}, the file the checkpoint's fit read"
                differ.append(f"{self._train_flag()} holds other pairs than {read}")
            else:
                differ.append(f"{self._train_flag()} changed since the checkpoint was written (other contents)")
        return differ + self.text_differences(checkpoint, lengths=True)

    def _train_digest(self, sha: str) -> str:
        """train_sha256 of a training file whose sha256 is `sha` (of --data.file: that sha256 hashed again)."""
        return sha if self.file is None else hashlib.sha256(sha.encode()).hexdigest()

    def _holds(self, path: Any, train_sha256: str) -> bool:
        """Whether the file at `path` (as the fit was given it: relative to where that ran, so maybe not here) holds
        the training pairs of `train_sha256`."""
        if not isinstance(path, str) or not os.path.isfile(path):
            return False
        return self._train_digest(file_sha256(Path(path))) == train_sha256

    def text_differences(self, checkpoint: dict[str, Any], lengths: bool = False) -> list[str]:
        """Why the model in `checkpoint` cannot read this data's ids (empty: it can): its vocabularies or tokenizers
        (and with `lengths`, its trained source lengths) differ from those built from the training file now."""
        text = checkpoint.get(TEXT_KEY)
        if text is None:
            return [f"{self._train_flag()}: the checkpoint's model was not trained on text pairs"]
        ours = self.text_spec.to_dict()
        if lengths:
            ours |= {"source_length": self.source_length, "min_source_length": self.min_source_length}
        changed = [key for key in ours if text.get(key) != ours[key]]
        return [f"{self._train_flag()} gives other {', '.join(changed)} than the checkpoint's"] if changed else []

    def split_differences(self, checkpoint: dict[str, Any]) -> list[str]:
        """Why this data's val/test pairs would hold pairs the checkpoint's model trained on (empty: they would not):
        --data.file split by other fractions, which move sources between the splits."""
        trained = (checkpoint.get("datamodule_hyper_parameters") or {}).get("split_fractions")
        if self.file is None or trained is None or tuple(map(float, trained)) == self.fractions:
            return []
        return [
            f"--data.split_fractions {list(self.fractions)} splits --data.file otherwise than the checkpoint's fit "
            f"({list(trained)}): pairs it trained on would be scored as unseen ones"
        ]

    def _train_flag(self) -> str:
        if self.text_from is not None:
            return f"--data.text_from {self.text_from}"
        return f"--data.file {self.file}" if self.file else f"--data.train_file {self.files['train']}"


def checkpoint_text(path: str) -> tuple[TextSpec, dict[str, int]]:
    """The TextSpec and trained lengths ({"source", "min_source", "target"}, as PairDataModule._lengths) of a text
    model's checkpoint; ValueError naming --data.text_from when the file is bad or holds no text model."""
    from lit_seq2seq.checkpoint import read_checkpoint
    from lit_seq2seq.model import upgrade_hparams

    where = f"--data.text_from {path}"
    ckpt = read_checkpoint(path, "--data.text_from")
    if ckpt.get(TEXT_KEY) is None:
        raise ValueError(f"{where}: the checkpoint's model was not trained on text pairs")
    spec, longest, shortest = read_text_entry(ckpt[TEXT_KEY], where)
    try:
        steps = int(upgrade_hparams(ckpt["hyper_parameters"])["net"]["max_target_length"])
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{where}: its hyper_parameters are damaged ({type(error).__name__}: {error})") from None
    return spec, {"source": longest, "min_source": shortest, "target": steps - 1}  # the decoder's steps less the end


def _vocab(pairs: PairFile, side: str, unk: bool) -> Vocab:
    """The vocabulary of one side of the training pairs; a reserved token in them is a ValueError naming its line."""
    tokens: Side = getattr(pairs, side)
    used = np.unique(tokens.ids)
    table = tokens.table[used]
    for token in Vocab.head(unk):
        hits = np.flatnonzero(table == token)
        if len(hits):
            position = np.flatnonzero(tokens.ids == used[hits[0]])[0]
            row = int(np.searchsorted(tokens.offsets, position, side="right")) - 1
            role = {PAD_STR: "padding", EOS_STR: "end", UNK_STR: "unknown-token (--data.unknown_source unk)"}[token]
            raise ValueError(
                f"{pairs.where(row)}: the {side} holds {token!r}, the vocabulary's reserved {role} token; it cannot "
                "be told from the reserved id"
            )
    return Vocab.build((str(t) for t in table), unk=unk)


def _select(pairs: PairFile, rows: np.ndarray) -> PairFile:
    rows = np.asarray(rows, np.int64)
    return PairFile(
        pairs.path, pairs.flag, pairs.lines[rows], pairs.source.select(rows), pairs.target.select(rows), pairs.sha256
    )


def source_hashes(side: Side) -> np.ndarray:
    """A 64-bit hash of each row's token sequence (uint64), the same on every machine and run (no Python hash())."""
    token_hash = np.array(
        [int.from_bytes(hashlib.blake2b(str(t).encode(), digest_size=8).digest(), "little") for t in side.table],
        np.uint64,
    )
    lengths = side.lengths
    position = (np.arange(len(side.ids)) - np.repeat(side.offsets[:-1], lengths)).astype(np.uint64)
    mixed = token_hash[side.ids] if len(token_hash) else np.zeros(0, np.uint64)
    mixed = _mix(mixed ^ (position * np.uint64(0x9E3779B97F4A7C15)))
    sums = np.zeros(len(lengths), np.uint64)
    rows = lengths > 0  # reduceat gives an empty row the next row's first element
    if rows.any():
        sums[rows] = np.add.reduceat(mixed, side.offsets[:-1][rows])  # wraps modulo 2**64
    return _mix(sums ^ lengths.astype(np.uint64))


def overridden_note(trained: dict[str, Tokenizer], flags: list[str]) -> str:
    """What --data.text_from says of tokenizer `flags` it overrides with the `trained` tokenizers (by side)."""
    used = ", ".join(f"{side} {t.kind}{' lowercased' if t.lowercase else ''}" for side, t in trained.items())
    return f"--data.text_from reads the files as the model was trained ({used}); not {', '.join(flags)}"


def _warn_repeated_pairs(pairs: PairFile, sources: np.ndarray) -> None:
    """Warn of training pairs that repeat an earlier line's source and target (files concatenated or scraped twice):
    each copy weighs once more in the loss, which a user rarely means. `sources`: the source_hashes of `pairs`."""
    pair = _mix(sources ^ (source_hashes(pairs.target) * np.uint64(0x9E3779B97F4A7C15)))
    order = np.argsort(pair, kind="stable")  # equal hashes in row order: the first of each is the original
    again = np.flatnonzero(pair[order][1:] == pair[order][:-1]) + 1
    if not len(again):
        return
    first = int(order[again].min())  # the earliest row that repeats one before it
    original = int(order[np.searchsorted(pair[order], pair[first])])
    # compared as tokenized (lowercasing, runs of spaces, JSON key order aside): a line-wise tool may keep some
    tsv = file_format(pairs.path) == "tsv"
    tool = " (for identical lines, awk '!seen[$0]++' keeps the first of each)" if tsv else ""
    rank_zero_warn(
        f"{pairs.where(first)}: {len(again):,} of the {len(pairs):,} training pairs repeat an earlier line's source "
        f"and target as tokenized (this the first; it repeats line {int(pairs.lines[original])}): each copy weighs "
        f"once more in training; remove the repeats if that is not meant{tool}"
    )


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: spreads every input bit over the output."""
    x = x.astype(np.uint64)
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return x


def split_by_source(side: Side, fractions: tuple[float, float, float]) -> list[np.ndarray]:
    """Row indices of the train, val and test splits: a row's source hash, as a fraction of 2**64, picks its split."""
    point = (source_hashes(side) >> np.uint64(11)).astype(np.float64) / float(1 << 53)
    bounds = np.cumsum(fractions)[:2]
    which = np.searchsorted(bounds, point, side="right")
    return [np.flatnonzero(which == i) for i in range(3)]


def group_references(source: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One row per distinct source (in order of first appearance): its source, its first target, and its distinct
    targets as references, flat: row i's are references[offsets[i]:offsets[i + 1]], in order of first appearance. A
    repeated reference changes no score (a match, or the fewest edits, the first among equals), so a source given N
    times over holds one reference, not N."""
    _, first, group = np.unique(source, axis=0, return_index=True, return_inverse=True)
    group = group.reshape(-1)
    order = np.argsort(first, kind="stable")  # groups in file order
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    group = rank[group]
    keyed = np.column_stack([group, target.astype(np.int64)])  # (group, reference) pairs
    _, kept = np.unique(keyed, axis=0, return_index=True)
    kept = kept[np.lexsort((kept, group[kept]))]  # by group, then file order
    offsets = np.zeros(len(order) + 1, np.int64)
    np.cumsum(np.bincount(group[kept], minlength=len(order)), out=offsets[1:])
    firsts = first[order]
    return source[firsts], target[firsts], target[kept], offsets


def describe(data: PairDataModule) -> str:
    """One line about the data, for logs: sizes, vocabularies, lengths."""
    spec = data.text_spec
    sizes = ", ".join(f"{name} {len(ds)}" for name, ds in data.datasets.items())
    return (
        f"pairs: {sizes}; source vocabulary {len(spec.source_vocab)}, target vocabulary {len(spec.target_vocab)}; "
        f"source length {data.min_source_length}-{data.source_length}, target steps {data.max_target_length}"
        + (f"; skipped as too long: {data.skipped}" if data.skipped else "")
    )
