"""Greedy and beam search over a single decoder step, in numpy: one implementation for PyTorch and onnxruntime.

A `step(tokens (N,) int64, state) -> (logits (N, V), state)` callable hides the engine. Greedy search treats
`state` as opaque (whatever `step` takes and returns); beam search reorders it, so there it is a dict of arrays
(numpy or torch) keyed by the contract names, each with its batch axis in `contract.BATCH_AXIS`.
The settings are checked here, so every engine refuses the same bad values with the same message.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np

from lit_seq2seq.contract import BATCH_AXIS

State = dict[str, Any]
S = TypeVar("S")
Step = Callable[[np.ndarray, S], tuple[np.ndarray, S]]
MAX_STEPS = 4096  # longest decode accepted: far past any generated task, short of exhausting memory
MAX_BEAM_SIZE = 1024  # widest beam accepted: batch x beam rows of state are decoded at once
# |length_penalty| accepted: 0 ranks by total log-probability, 1 per token; beyond ~300, length ** length_penalty
# overflows (or underflows to 0) and the ranking is noise. HF and GNMT use values within [-2, 2].
MAX_LENGTH_PENALTY = 10.0


def is_integer(value: Any) -> bool:
    """An int or a numpy integer, not a bool (True would pass for 1)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """An int, float or numpy number, not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


TYPE_WORDS = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string"}  # in messages
_KINDS: dict[str, tuple[Callable[[Any], bool], type]] = {
    "int": (is_integer, int),
    "float": (is_number, float),
    "bool": (lambda v: isinstance(v, (bool, np.bool_)), bool),
    "str": (lambda v: isinstance(v, str), str),
}


def plain(flag: str, value: Any, kind: str, optional: bool = False) -> Any:
    """`value` as the plain Python int, float, bool or str (`kind`) it stands for; numpy scalars too, which torch's
    RNNs and DataLoader refuse and which a checkpoint's hyperparameters must not hold (torch.load(weights_only=True)
    refuses them: the checkpoint would not load). TypeError naming `flag` for anything else ("32", 1.5 for an int);
    None passes when `optional`."""
    if value is None and optional:
        return None
    check, cast = _KINDS[kind]
    if not check(value):
        raise TypeError(f"{flag} must be {TYPE_WORDS[kind]}{' or null' if optional else ''}, got {value!r}")
    return cast(value)


def plain_values(prefix: str, kind: str, **values: Any) -> list[Any]:
    """plain() of each keyword argument, in their order: `a, b = plain_values("--data.", "int", a=a, b=b)`."""
    return [plain(prefix + name, value, kind) for name, value in values.items()]


def check_max_len(max_len: Any) -> int:
    """`max_len` as an int in [1, MAX_STEPS], or ValueError naming the bounds."""
    if not is_integer(max_len) or not 1 <= max_len <= MAX_STEPS:
        raise ValueError(f"max_len must be an int in [1, {MAX_STEPS}], got {max_len!r}")
    return int(max_len)


def check_beam_settings(beam_size: Any, length_penalty: Any) -> tuple[int, float]:
    """(beam_size, length_penalty) as (int >= 1, finite float), or ValueError/TypeError naming the value."""
    if not is_integer(beam_size) or beam_size < 1:
        raise ValueError(f"beam_size must be a positive int, got {beam_size!r}")
    if beam_size > MAX_BEAM_SIZE:
        raise ValueError(f"beam_size must be <= {MAX_BEAM_SIZE}, got {beam_size}")
    if not is_number(length_penalty):
        raise TypeError(f"length_penalty must be a finite number, got {length_penalty!r}")
    if not math.isfinite(length_penalty):
        raise ValueError(f"length_penalty must be finite, got {length_penalty}")
    if abs(length_penalty) > MAX_LENGTH_PENALTY:
        raise ValueError(
            f"length_penalty must be in [-{MAX_LENGTH_PENALTY:g}, {MAX_LENGTH_PENALTY:g}] (scores are "
            f"log-probability / length ** length_penalty), got {length_penalty}"
        )
    return int(beam_size), float(length_penalty)


def check_n_best(n_best: Any, beam_size: int) -> int:
    """n_best as an int in [1, beam_size] (the final beams are all there is to rank), or ValueError naming it."""
    if not is_integer(n_best) or not 1 <= n_best <= beam_size:
        raise ValueError(f"n_best must be an int in [1, beam_size ({beam_size})], got {n_best!r}")
    return int(n_best)


def to_width(tokens: np.ndarray, width: int, pad_token: int) -> np.ndarray:
    """Decoded tokens (B, T) -> (B, width), to compare with targets of that width: padded after an early stop,
    cut past `width`."""
    tokens = tokens[:, :width]
    return np.pad(tokens, ((0, 0), (0, width - tokens.shape[1])), constant_values=pad_token)


def select_rows(state: State, rows: np.ndarray) -> State:
    """Rows `rows` of every state entry along its batch axis (works for numpy arrays and torch tensors)."""
    return {k: v[(slice(None),) * BATCH_AXIS[k] + (rows,)] for k, v in state.items()}


def greedy_search(
    step: Step[S],
    state: S,
    *,
    batch_size: int,
    max_len: int,
    start_token: int,
    eos_token: int | None,
    pad_token: int,
) -> np.ndarray:
    """Feed back the argmax token (the first maximum on ties). Returns (batch, steps) int64; rows are padded after
    their end token.

    Finished rows stop changing; decoding stops when every row has emitted `eos_token` or after `max_len`.
    """
    max_len = check_max_len(max_len)
    tokens = np.full(batch_size, start_token, dtype=np.int64)
    out = np.full((batch_size, max_len), pad_token, dtype=np.int64)
    done = np.zeros(batch_size, dtype=bool)
    for t in range(max_len):
        logits, state = step(tokens, state)
        tokens = np.asarray(logits).argmax(-1)  # a new array, intp: int64 wherever numpy is 64-bit
        if tokens.dtype != np.int64:
            tokens = tokens.astype(np.int64)
        if eos_token is not None:  # without one no row ever finishes
            if t:  # finished rows emit padding; none is finished before the first step
                np.putmask(tokens, done, pad_token)
            done |= tokens == eos_token
        out[:, t] = tokens
        if eos_token is not None and done.all():
            return out[:, : t + 1]
    return out


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def beam_search(
    step: Step[State],
    state: State,
    *,
    batch_size: int,
    max_len: int,
    beam_size: int,
    start_token: int,
    eos_token: int | None,
    pad_token: int,
    length_penalty: float = 1.0,
    n_best: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Beam search; returns the best sequence per row (batch, steps) and its score (batch,); with `n_best` N, the N
    best final beams per row, best first: (batch, N, steps) and (batch, N).

    The score is the sum of token log-probabilities (end token included) divided by length ** length_penalty;
    0 turns length normalisation off. Beams are ranked by raw sums while searching and by the normalised score
    at the end (ties: the beam ranked first by raw sum). A finished beam keeps its score and is extended with
    padding only.
    """
    max_len = check_max_len(max_len)
    k, length_penalty = check_beam_settings(beam_size, length_penalty)
    n = 1 if n_best is None else check_n_best(n_best, k)
    state = select_rows(state, np.repeat(np.arange(batch_size), k))
    tokens = np.full(batch_size * k, start_token, dtype=np.int64)
    scores = np.full((batch_size, k), -np.inf)
    scores[:, 0] = 0.0  # all beams start identical: expand only the first
    parents, picked = [], []  # per step (B, K): each beam's parent and token, followed back at the end
    lengths = np.zeros((batch_size, k), dtype=np.int64)
    done = np.zeros((batch_size, k), dtype=bool)
    for _ in range(max_len):
        logits, state = step(tokens, state)
        logp = _log_softmax(np.asarray(logits)).reshape(batch_size, k, -1)  # (B, K, V)
        vocab = logp.shape[-1]
        logp[done] = -np.inf
        logp[done, pad_token] = 0.0
        flat = (scores[:, :, None] + logp).reshape(batch_size, k * vocab)
        best = np.argsort(-flat, axis=1, kind="stable")[:, :k]  # (B, K)
        parent, token = best // vocab, best % vocab
        scores = np.take_along_axis(flat, best, axis=1)
        done = np.take_along_axis(done, parent, axis=1)
        lengths = np.take_along_axis(lengths, parent, axis=1) + ~done
        parents.append(parent)
        picked.append(token)
        if eos_token is not None:
            done |= token == eos_token
        state = select_rows(state, (parent + np.arange(batch_size)[:, None] * k).ravel())
        tokens = token.ravel().astype(np.int64)
        if done.all():
            break
    normed = scores / np.maximum(lengths, 1) ** length_penalty if length_penalty else scores
    pick = np.argsort(-normed, axis=1, kind="stable")[:, :n]  # (B, N); N = 1: argmax's pick, the first of ties
    rows = np.arange(batch_size)[:, None]
    # Back along the parents: linear in the steps (gathering whole histories every step was quadratic: 25 s for one
    # source at beam 1,024 and 1,200 steps)
    out, beam = np.empty((batch_size, n, len(picked)), dtype=np.int64), pick
    for t in range(len(picked) - 1, -1, -1):
        out[:, :, t] = picked[t][rows, beam]
        beam = parents[t][rows, beam]
    best = normed[rows, pick]
    return (out[:, 0], best[:, 0]) if n_best is None else (out, best)
