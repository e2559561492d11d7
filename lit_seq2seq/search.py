"""Greedy and beam search over a single decoder step, in numpy: one implementation for PyTorch and onnxruntime.

A `step(tokens (N,) int64, state) -> (logits (N, V), state)` callable hides the engine; `state` is a dict of
arrays (numpy or torch) keyed by the contract names, each with its batch axis in `contract.BATCH_AXIS`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from lit_seq2seq.contract import BATCH_AXIS

State = dict[str, Any]
Step = Callable[[np.ndarray, State], tuple[np.ndarray, State]]


def select_rows(state: State, rows: np.ndarray) -> State:
    """Rows `rows` of every state entry along its batch axis (works for numpy arrays and torch tensors)."""
    return {k: v[(slice(None),) * BATCH_AXIS[k] + (rows,)] for k, v in state.items()}


def greedy_search(
    step: Step,
    state: State,
    batch_size: int,
    max_len: int,
    start_token: int = 0,
    eos_token: int | None = None,
    pad_token: int = 0,
) -> np.ndarray:
    """Feed back the argmax token. Returns (batch, steps) int64; rows are padded after their end token.

    Finished rows stop changing; decoding stops when every row has emitted `eos_token` or after `max_len`.
    """
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
    step: Step,
    state: State,
    batch_size: int,
    max_len: int,
    beam_size: int = 4,
    start_token: int = 0,
    eos_token: int | None = None,
    pad_token: int = 0,
    length_penalty: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Beam search; returns the best sequence per row (batch, steps) and its score (batch,).

    The score is the sum of token log-probabilities (end token included) divided by length ** length_penalty;
    0 turns length normalisation off. Beams are ranked by raw sums while searching and by the normalised score
    at the end. A finished beam keeps its score and is extended with padding only.
    """
    if beam_size < 1:
        raise ValueError(f"beam_size must be >= 1, got {beam_size}")
    k = beam_size
    state = select_rows(state, np.repeat(np.arange(batch_size), k))
    tokens = np.full(batch_size * k, start_token, dtype=np.int64)
    scores = np.full((batch_size, k), -np.inf)
    scores[:, 0] = 0.0  # all beams start identical: expand only the first
    history = np.zeros((batch_size, k, 0), dtype=np.int64)
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
        history = np.concatenate([np.take_along_axis(history, parent[:, :, None], axis=1), token[:, :, None]], axis=2)
        if eos_token is not None:
            done |= token == eos_token
        state = select_rows(state, (parent + np.arange(batch_size)[:, None] * k).ravel())
        tokens = token.ravel().astype(np.int64)
        if done.all():
            break
    normed = scores / np.maximum(lengths, 1) ** length_penalty if length_penalty else scores
    pick = normed.argmax(axis=1)
    rows = np.arange(batch_size)
    return history[rows, pick], normed[rows, pick]
