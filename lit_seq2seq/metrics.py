"""Multi-reference scoring of decoded token ids: exact match and token error rate, in numpy alone (no torch).

The module's validation/test and the torch-free CLI's `decode` share it. Edit distance is a hand-written vectorised
Levenshtein over a whole batch of padded id arrays: torchmetrics' edit distance needs torch and works one string pair
at a time in Python (benchmarks/edit_distance.py measures both; tests/test_metrics.py checks they agree).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ABSENT = -1  # a reference slot a source does not use (references (B, R, T): sources have 1..R references)


def answer_tokens(row: list[int], eos_token: int | None, pad_token: int) -> list[int]:
    """The answer in a decoded or target row of ids: the tokens before the first end token or padding (a model
    without an end token, a fixed-length task: every token). What decode prints and scores, and predictions.tsv."""
    stops = () if eos_token is None else (eos_token, pad_token)
    for i, token in enumerate(row):
        if token in stops:
            return row[:i]
    return list(row)


@dataclass(frozen=True)
class Scores:
    """Per row of a batch: `exact` (equals some reference), `errors` (edit distance to the closest reference) and
    `length` (that reference's length); the corpus figures are sums of these over the rows."""

    exact: np.ndarray  # (B,) bool
    errors: np.ndarray  # (B,) int64
    length: np.ndarray  # (B,) int64

    @property
    def exact_match(self) -> float:
        """Share of rows equal to one of their references (word error rate = 1 - this)."""
        return float(self.exact.mean()) if len(self.exact) else 0.0

    @property
    def token_error_rate(self) -> float:
        """Edit operations over reference tokens, summed over the rows (the phoneme error rate for G2P)."""
        return float(self.errors.sum() / max(int(self.length.sum()), 1))


def lengths_before(tokens: np.ndarray, stops: tuple[int, ...]) -> np.ndarray:
    """Per row of `tokens` (..., T): the index of the first token in `stops`, or T when there is none."""
    hit = np.isin(tokens, stops)
    return np.where(hit.any(-1), hit.argmax(-1), tokens.shape[-1])


def edit_distance(a: np.ndarray, a_length: np.ndarray, b: np.ndarray, b_length: np.ndarray) -> np.ndarray:
    """Levenshtein distance (unit insertion, deletion, substitution) of a[n, :a_length[n]] and b[n, :b_length[n]].

    a (N, La) and b (N, Lb) int arrays, padded with anything. Row-by-row dynamic programme over a's positions, all N
    pairs and all of b's positions at once: the substitution/deletion part of a row is elementwise, and the insertion
    chain along the row is a running minimum, D[i, j] = j + min_{k <= j}(E[i, k] - k).
    """
    a, b = np.asarray(a), np.asarray(b)
    a_length, b_length = np.asarray(a_length, dtype=np.int64), np.asarray(b_length, dtype=np.int64)
    n, width = len(a), b.shape[1] + 1
    column = np.arange(width, dtype=np.int64)
    rows = np.arange(n)
    row = np.broadcast_to(column, (n, width)).copy()  # D[0, j] = j: j insertions
    out = b_length.copy()  # pairs with an empty a
    cell = np.empty_like(row)
    for i in range(1, int(a_length.max(initial=0)) + 1):
        cell[:, 0] = i
        np.minimum(row[:, 1:] + 1, row[:, :-1] + (a[:, i - 1 : i] != b), out=cell[:, 1:])
        np.minimum.accumulate(cell - column, axis=1, out=row)
        row += column
        done = a_length == i
        out[done] = row[rows[done], b_length[done]]
    return out


def score(predictions: np.ndarray, references: np.ndarray, eos_token: int | None, pad_token: int = 0) -> Scores:
    """Score predictions (B, T') against references (B, R, T), both int arrays.

    A prediction's tokens are its answer (`answer_tokens`, the contract's step 6): those before its first `eos_token`
    or `pad_token`; with no end token, the fixed-length generated tasks, the whole row. A reference's tokens are those
    before its first end, pad or -1; slots of -1 are absent, and every row needs one present. The closest reference
    is the one with the fewest errors; on a tie the first in order (its length is the denominator).
    """
    predictions, references = np.asarray(predictions), np.asarray(references)
    if predictions.ndim != 2 or references.ndim != 3 or len(predictions) != len(references):
        raise ValueError(
            f"predictions (B, T') and references (B, R, T) expected, got {predictions.shape} and {references.shape}"
        )
    if eos_token is not None:
        pred_length = lengths_before(predictions, (eos_token, pad_token))
    else:
        pred_length = np.full(len(predictions), predictions.shape[1])
    stops = (pad_token, ABSENT) if eos_token is None else (eos_token, pad_token, ABSENT)
    ref_length = lengths_before(references, stops)  # (B, R)
    present = references[..., 0] != ABSENT
    if not present.any(1).all():
        raise ValueError(f"row {int(np.argmin(present.any(1)))} has no reference (every slot -1)")
    row, slot = np.nonzero(present)  # only present references are compared
    errors = np.full(present.shape, np.iinfo(np.int64).max, dtype=np.int64)
    errors[row, slot] = edit_distance(predictions[row], pred_length[row], references[row, slot], ref_length[row, slot])
    best = errors.argmin(1)  # the first of the fewest
    rows = np.arange(len(best))
    best_errors = errors[rows, best]
    return Scores(exact=best_errors == 0, errors=best_errors, length=ref_length[rows, best])
