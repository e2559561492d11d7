"""Generated sequence tasks in plain numpy (no torch): the seed task and variable-length tasks with an end token.

Token ids: 0 is padding and the decoder's start token in every task. Tasks with an end token use 1 for it, and
their content tokens start at 2; the seed task has no end token and its content tokens start at 1.
Sources are right-padded with 0; targets are right-padded with 0 after the end token.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

PAD = 0
START = 0
EOS = 1

SPLITS = ("train", "val", "test", "predict")


@dataclass(frozen=True)
class Task:
    """A generated task: sizes, and `sample(n, rng) -> (source (n, S), target (n, T))` as int64 arrays."""

    name: str
    vocab_size: int
    source_length: int  # longest source
    min_source_length: int
    target_length: int  # decoder steps, the end token included
    eos_token: int | None
    min_token: int  # smallest id of a content token in a source

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        return self._build([rng.integers(low, high, size=(n, width)) for low, high, width in self._draws()])

    def sample_chunks(
        self, n: int, rng: np.random.Generator, rows: int = 65536
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """sample(n, rng) in pieces of at most `rows` rows, in memory that does not grow with n: the same rows in the
        same order, and `rng` left where sample() leaves it."""
        # sample() makes each draw for all n rows before the next (all lengths, then all tokens), and a piece needs
        # its rows of every draw. So each draw but the last reads a copy of rng taken where sample() starts that
        # draw, and rng itself is advanced past it by drawing and dropping the values, piece by piece. numpy draws
        # the same values, and leaves the generator in the same state, whether one call or many make them.
        draws, sizes = self._draws(), [min(rows, n - start) for start in range(0, n, rows)]
        streams = []
        for low, high, width in draws[:-1]:
            streams.append(copy.deepcopy(rng))
            for size in sizes:
                rng.integers(low, high, size=(size, width))
        streams.append(rng)
        for size in sizes:
            yield self._build(
                [g.integers(low, high, size=(size, width)) for g, (low, high, width) in zip(streams, draws)]
            )

    def _draws(self) -> list[tuple[int, int, int]]:
        """The rng.integers draws of sample(), in order: (low, high, values per row)."""
        if self.name == "add":
            top = 10 ** _operand_digits(self)
            return [(0, top, 1), (0, top, 1)]  # a, b
        return [
            (self.min_source_length, self.source_length + 1, 1),
            (self.min_token, self.vocab_size, self.source_length),
        ]

    def _build(self, drawn: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(source, target) from the values of the draws in _draws(), one row each."""
        if self.name == "add":
            source, lengths = _add_sources(self, drawn[0][:, 0], drawn[1][:, 0])
        else:
            lengths, tokens = drawn[0][:, 0], drawn[1]
            mask = np.arange(self.source_length) < lengths[:, None]
            source = np.where(mask, tokens, PAD).astype(np.int64)
        return source, _TARGETS[self.name](self, source, lengths)


def _reverse_first(task: Task, source: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    return source[:, : task.target_length][:, ::-1].copy()


def _with_eos(body: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Append EOS after each row's `lengths` tokens of `body` (n, S) -> (n, S + 1)."""
    n, s = body.shape
    target = np.zeros((n, s + 1), dtype=np.int64)
    target[:, :s] = np.where(np.arange(s) < lengths[:, None], body, PAD)
    target[np.arange(n), lengths] = EOS
    return target


def _copy(task: Task, source: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    return _with_eos(source, lengths)


def _reverse(task: Task, source: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    idx = lengths[:, None] - 1 - np.arange(source.shape[1])  # (n, S), negative past the row's length
    body = np.take_along_axis(source, np.clip(idx, 0, None), axis=1)
    return _with_eos(body, lengths)


def _sort(task: Task, source: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    big = np.where(source == PAD, task.vocab_size, source)
    return _with_eos(np.sort(big, axis=1), lengths)


# add: "a+b" -> digits of a+b. Digits d are tokens 2 + d, the plus sign is token 12.
_DIGIT0 = 2
_PLUS = 12


def _digits(values: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Most-significant-first digit tokens of `values`, left-aligned in (n, width), and their counts."""
    counts = np.maximum(1, np.floor(np.log10(np.maximum(values, 1))).astype(np.int64) + 1)
    pos = counts[:, None] - 1 - np.arange(width)  # power of ten shown at each column
    digits = (values[:, None] // 10 ** np.clip(pos, 0, None)) % 10
    return np.where(pos >= 0, digits + _DIGIT0, PAD), counts


def _operand_digits(task: Task) -> int:
    return (task.source_length - 1) // 2


def _add_sources(task: Task, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sources "a+b" as digit tokens, right-padded, and their lengths."""
    d, n = _operand_digits(task), len(a)
    da, na = _digits(a, d)
    db, nb = _digits(b, d)
    source = np.zeros((n, task.source_length), dtype=np.int64)
    source[:, :d] = da
    rows = np.arange(n)
    source[rows, na] = _PLUS
    cols = na[:, None] + 1 + np.arange(d)  # where b's digits go
    valid = np.arange(d) < nb[:, None]
    source[np.repeat(rows, d)[valid.ravel()], cols[valid]] = db[valid]
    return source, na + 1 + nb


def _add(task: Task, source: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    d = _operand_digits(task)
    plus = np.argmax(source == _PLUS, axis=1)
    rows = np.arange(len(source))
    value = np.zeros(len(source), dtype=np.int64)
    # Read each operand right to left between its bounds: a in (-1, plus), b in (plus, length).
    for starts, ends in ((np.full_like(plus, -1), plus), (plus, lengths)):
        power = np.ones(len(source), dtype=np.int64)
        for k in range(1, d + 1):
            col = ends - k
            tok = source[rows, np.clip(col, 0, None)]
            value += np.where(col > starts, (tok - _DIGIT0) * power, 0)
            power *= 10
    body, counts = _digits(value, d + 1)
    return _with_eos(body, counts)


_TARGETS = {"reverse_first": _reverse_first, "copy": _copy, "reverse": _reverse, "sort": _sort, "add": _add}
TASKS = tuple(_TARGETS)


def make_task(
    name: str = "reverse_first",
    vocab_size: int = 51,
    source_length: int = 6,
    target_length: int | None = None,
    min_source_length: int | None = None,
) -> Task:
    """Validate the settings of a task and build it; errors name the CLI flag (--data.*)."""
    if name not in _TARGETS:
        raise ValueError(f"--data.task: unknown task {name!r}; choose one of {', '.join(TASKS)}")
    if source_length < 1:
        raise ValueError(f"--data.source_length must be >= 1, got {source_length}")
    if name == "reverse_first":
        target_length = 3 if target_length is None else target_length
        if target_length < 1:
            raise ValueError(f"--data.target_length must be >= 1, got {target_length}")
        if target_length > source_length:
            raise ValueError(
                f"--data.target_length ({target_length}) must be <= --data.source_length ({source_length})"
            )
        if min_source_length not in (None, source_length):
            raise ValueError("--data.min_source_length: task reverse_first has fixed-length sources; leave it unset")
        if vocab_size < 2:
            raise ValueError(
                f"--data.vocab_size must be >= 2 (token 0 is reserved, at least one real token), got {vocab_size}"
            )
        return Task(name, vocab_size, source_length, source_length, target_length, None, 1)

    if name == "add":
        if source_length < 3:
            raise ValueError(f"--data.source_length must be >= 3 for task add (a+b), got {source_length}")
        if vocab_size < _PLUS + 1:
            raise ValueError(f"--data.vocab_size must be >= {_PLUS + 1} for task add (digits and +), got {vocab_size}")
        if min_source_length is not None:
            raise ValueError("--data.min_source_length: task add draws its own lengths; leave it unset")
        derived = _operand_digits(Task(name, vocab_size, source_length, 3, 0, EOS, _DIGIT0)) + 2
        min_len, min_token = 3, _DIGIT0
    else:
        min_len = 1 if min_source_length is None else min_source_length
        if not 1 <= min_len <= source_length:
            raise ValueError(
                f"--data.min_source_length must be in [1, --data.source_length={source_length}], got {min_len}"
            )
        if vocab_size < 3:
            raise ValueError(
                f"--data.vocab_size must be >= 3 for task {name} (0 pad, 1 end, at least one real token), "
                f"got {vocab_size}"
            )
        derived, min_token = source_length + 1, EOS + 1
    if target_length is not None and target_length != derived:
        raise ValueError(f"--data.target_length: task {name} derives it ({derived} with the end token); leave it unset")
    return Task(name, vocab_size, source_length, min_len, derived, EOS, min_token)


def split_rng(seed: int, split: str) -> np.random.Generator:
    """Independent, reproducible stream per (seed, split): train, val, test and predict never share draws."""
    return np.random.default_rng([seed, SPLITS.index(split)])


def task_from_hparams(data: Mapping[str, Any]) -> Task:
    """The task of a checkpoint, from its datamodule_hyper_parameters (the Seq2SeqDataModule's arguments)."""
    return make_task(
        data.get("task", "reverse_first"),
        data.get("vocab_size", 51),
        data.get("source_length", 6),
        data.get("target_length"),
        data.get("min_source_length"),
    )


def task_from_metadata(meta: dict[str, str]) -> Task:
    """The task an export was trained on, rebuilt from its ONNX metadata (see lit_seq2seq/contract.py)."""
    name = meta["task"]
    return make_task(
        name,
        int(meta["vocab_size"]),
        int(meta["source_length"]),
        int(meta["max_target_length"]) if name == "reverse_first" else None,
        int(meta["min_source_length"]) if name not in ("reverse_first", "add") else None,
    )
