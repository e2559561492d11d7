"""Generated sequence tasks in plain numpy (no torch): the seed task and variable-length tasks with an end token.

Token ids: 0 is padding and the decoder's start token in every task. Tasks with an end token use 1 for it, and
their content tokens start at 2; the seed task has no end token and its content tokens start at 1.
Sources are right-padded with 0; targets are right-padded with 0 after the end token.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import numpy as np

from lit_seq2seq.contract import vocab_sizes

PAD = 0
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


MAX_VOCAB_SIZE = 2**63  # token ids are int64
# add counts the digits of a number with float64 log10, exact up to 14 digits: (30 - 1) // 2 = 14 digits per operand.
MAX_ADD_SOURCE_LENGTH = 30


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
    if vocab_size > MAX_VOCAB_SIZE:
        raise ValueError(f"--data.vocab_size must be <= 2**63 (token ids are int64), got {vocab_size}")
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
        if source_length > MAX_ADD_SOURCE_LENGTH:
            raise ValueError(
                f"--data.source_length must be <= {MAX_ADD_SOURCE_LENGTH} for task add (operands of up to "
                f"{(MAX_ADD_SOURCE_LENGTH - 1) // 2} digits: the digits of longer numbers are not exact here), "
                f"got {source_length}"
            )
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


# ------------------------------------------------------------------------------------------------------ memory

UNKNOWN_MEMORY = 2**40  # assumed when the platform does not say what is available: generous, refuses only the absurd
SAMPLE_PEAK = 3.2  # generating a split holds up to this many times its final arrays (measured: 1.6x-3.1x by task)


def available_memory() -> int:
    """Bytes of memory a new allocation can take without swapping: MemAvailable of /proc/meminfo on Linux, else the
    free physical pages (os.sysconf), else UNKNOWN_MEMORY. (psutil is not a dependency.)"""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024  # in kB
    except (OSError, ValueError, IndexError):
        pass
    try:
        pages = os.sysconf("SC_AVPHYS_PAGES")
        if pages > 0:
            return os.sysconf("SC_PAGE_SIZE") * pages
    except (AttributeError, OSError, ValueError):  # no sysconf, or no such name (macOS has no SC_AVPHYS_PAGES)
        pass
    return UNKNOWN_MEMORY


def format_count(n: int) -> str:
    """`4.0e18`: the order of magnitude of a count, however large (a setting can ask for more than a float holds)."""
    mantissa, exponent = f"{Decimal(n) if n > 1e300 else float(n):.1e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def format_bytes(n: int) -> str:
    """`4.0e18 bytes (3.5 EiB)`: the order of magnitude, and a size a person reads at a glance."""
    units = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")
    unit = 0
    while unit < len(units) - 1 and n >= 1024 ** (unit + 1):
        unit += 1
    if n >= 1024 ** len(units):  # beyond any machine: the order of magnitude says it all
        return f"{format_count(n)} bytes"
    return f"{format_count(n)} bytes ({n / 1024**unit:.1f} {units[unit]})"


def check_memory(need: int, what: str, hint: str) -> None:
    """Refuse a setting whose arrays cannot fit: ValueError "<what> N bytes (...), more than the M bytes (...) of
    memory available; <hint>" when `need` exceeds `available_memory()`. `what` names the flags and ends in "need(s)"."""
    available = available_memory()
    if need > available:
        raise ValueError(
            f"{what} {format_bytes(need)}, more than the {format_bytes(available)} of memory available; {hint}"
        )


def sample_bytes(task: Task, sizes: Sequence[int]) -> int:
    """Peak bytes of generating splits of these sizes one after another: every split's int64 source and target
    ((source_length + target_length) x 8 bytes a sample) and the temporaries of the largest while it is drawn."""
    stored = [n * (task.source_length + task.target_length) * 8 for n in sizes]
    return sum(stored) + int((SAMPLE_PEAK - 1) * max(stored, default=0))


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
        vocab_sizes(meta)[0],
        int(meta["source_length"]),
        int(meta["max_target_length"]) if name == "reverse_first" else None,
        int(meta["min_source_length"]) if name not in ("reverse_first", "add") else None,
    )
