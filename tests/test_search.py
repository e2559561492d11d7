"""search.py without a net: greedy and beam search over a fake step whose probabilities are a fixed table indexed
by the row and the previous token, so every expected output is worked out by hand; the settings checks, to_width
and select_rows."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lit_seq2seq.contract import MEMORY, H
from lit_seq2seq.search import (
    MAX_STEPS,
    beam_search,
    check_beam_settings,
    check_max_len,
    greedy_search,
    select_rows,
    to_width,
)

# Three distinct special tokens, none of them 0: a search that mixed them up, or took the usual 0, would show.
START, PAD, EOS = 3, 2, 1
V = 5
TOKENS = dict(start_token=START, pad_token=PAD, eos_token=EOS)


def table(*rules: dict[int, dict[int, float]]) -> np.ndarray:
    """(rows, V, V) probabilities: rules[row][previous token] = {next token: probability}; a previous token without
    a rule goes to token 0 for sure."""
    probs = np.zeros((len(rules), V, V))
    probs[:, :, 0] = 1.0
    for row, rule in enumerate(rules):
        for previous, nexts in rule.items():
            probs[row, previous] = 0.0
            for token, p in nexts.items():
                probs[row, previous, token] = p
    return probs


class TableStep:
    """step(tokens, state) -> (log of probs[row, token], state), recording the tokens it was fed. The row of each
    entry rides in state["h"] (batch axis 1), so beam search's reordering of the state is exercised too."""

    def __init__(self, probs: np.ndarray) -> None:
        self.probs, self.fed = probs, []

    def state(self, rows: int) -> dict[str, np.ndarray]:
        return {H: np.arange(rows, dtype=np.float32)[None, :, None]}

    def __call__(self, tokens: np.ndarray, state: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        self.fed.append(tokens.tolist())
        rows = state[H][0, :, 0].astype(int)
        with np.errstate(divide="ignore"):
            return np.log(self.probs[rows, tokens]), state


def run_greedy(probs: np.ndarray, max_len: int, **tokens) -> tuple[np.ndarray, TableStep]:
    step = TableStep(probs)
    out = greedy_search(step, step.state(len(probs)), batch_size=len(probs), max_len=max_len, **(TOKENS | tokens))
    return out, step


def run_beam(probs: np.ndarray, max_len: int, beam_size: int, **kwargs) -> tuple[np.ndarray, np.ndarray, TableStep]:
    step = TableStep(probs)
    tokens, scores = beam_search(
        step, step.state(len(probs)), batch_size=len(probs), max_len=max_len, beam_size=beam_size, **(TOKENS | kwargs)
    )
    return tokens, scores, step


# Row 0 ends at once; row 1 runs 4, 0, then ends. After the end the table would emit 4 again.
ENDING = table({START: {EOS: 1.0}, EOS: {4: 1.0}, PAD: {4: 1.0}}, {START: {4: 1.0}, 4: {0: 1.0}, 0: {EOS: 1.0}})


# ----------------------------------------------------------------------------------------------------- greedy


def test_greedy_feeds_the_start_token_then_its_argmax_and_pads_finished_rows():
    out, step = run_greedy(ENDING, max_len=8)
    assert out.dtype == np.int64
    assert out.tolist() == [[EOS, PAD, PAD], [4, 0, EOS]]
    # a finished row is fed its end token once, then padding: never what its step would have picked
    assert step.fed == [[START, START], [EOS, 4], [PAD, 0]]


def test_greedy_search_stops_when_every_row_has_ended():
    out, step = run_greedy(ENDING, max_len=MAX_STEPS)
    assert out.shape == (2, 3) and len(step.fed) == 3


def test_greedy_without_an_end_token_runs_max_len_steps_and_never_pads():
    out, step = run_greedy(ENDING, max_len=5, eos_token=None)
    # EOS is an ordinary token here: rows go on past it with whatever the table says
    assert out.tolist() == [[EOS, 4, 0, 0, 0], [4, 0, EOS, 0, EOS]]
    assert len(step.fed) == 5


def test_greedy_stops_at_max_len_before_the_rows_end():
    out, _ = run_greedy(ENDING, max_len=2)
    assert out.tolist() == [[EOS, PAD], [4, 0]]


def test_greedy_takes_the_first_maximum_on_ties():
    out, _ = run_greedy(table({START: {4: 0.5, 0: 0.5}}), max_len=1)
    assert out.tolist() == [[0]]


def test_greedy_treats_its_state_as_opaque():
    def step(tokens, state):
        logits = np.zeros((len(tokens), V))
        logits[:, (state + 1) % V] = 1.0
        return logits, state + 1

    out = greedy_search(step, 0, batch_size=2, max_len=3, start_token=START, eos_token=None, pad_token=PAD)
    assert out.tolist() == [[1, 2, 3], [1, 2, 3]]


# -------------------------------------------------------------------------------------------------- beam search

# Ending at once: p 0.4. Token 4 then the end: 0.6 * 0.6, lower in total (0.36) but higher per token (0.6).
SHORT_OR_LONG = table({START: {EOS: 0.4, 4: 0.6}, 4: {EOS: 0.6, 4: 0.4}})


def test_length_penalty_0_picks_the_best_total_and_1_the_best_per_token():
    tokens, scores, step = run_beam(SHORT_OR_LONG, max_len=8, beam_size=2, length_penalty=0.0)
    assert tokens.tolist() == [[EOS, PAD]]  # a finished beam is extended with padding only
    assert scores == pytest.approx([math.log(0.4)])
    assert len(step.fed) == 2  # both beams ended at step 2: no third step
    tokens, scores, _ = run_beam(SHORT_OR_LONG, max_len=8, beam_size=2, length_penalty=1.0)
    assert tokens.tolist() == [[4, EOS]]
    assert scores == pytest.approx([(math.log(0.6) + math.log(0.6)) / 2])


def test_beam_is_the_default_length_penalty_1():
    default = run_beam(SHORT_OR_LONG, max_len=8, beam_size=2)
    explicit = run_beam(SHORT_OR_LONG, max_len=8, beam_size=2, length_penalty=1.0)
    assert default[0].tolist() == explicit[0].tolist() and default[1] == pytest.approx(explicit[1])


def test_beam_of_one_follows_greedy():
    tokens, scores, step = run_beam(SHORT_OR_LONG, max_len=8, beam_size=1, length_penalty=0.0)
    assert tokens.tolist() == run_greedy(SHORT_OR_LONG, max_len=8)[0].tolist() == [[4, EOS]]
    assert scores == pytest.approx([math.log(0.36)])
    assert step.fed == [[START], [4]]


def test_beam_rows_of_a_batch_decode_as_they_would_alone():
    """Rows with different tables in one batch: the reordered state keeps each beam on its own row's table."""
    probs = np.concatenate([ENDING, SHORT_OR_LONG, ENDING[::-1]])
    tokens, scores, _ = run_beam(probs, max_len=6, beam_size=3)
    for row in range(len(probs)):
        alone, alone_score, _ = run_beam(probs[row : row + 1], max_len=6, beam_size=3)
        assert tokens[row].tolist() == to_width(alone, tokens.shape[1], PAD)[0].tolist()
        assert scores[row] == pytest.approx(alone_score[0])
    assert [row[:3] for row in tokens.tolist()[:3]] == [[EOS, PAD, PAD], [4, 0, EOS], [4, EOS, PAD]]


def test_n_best_ranks_the_final_beams_best_first_and_its_first_is_the_best():
    # beam 3 over SHORT_OR_LONG (length penalty 1), by hand: "4 EOS" log(0.36) / 2 = -0.511; "4 4", cut unfinished
    # by max_len 2, log(0.24) / 2 = -0.714; "EOS" log(0.4) = -0.916.
    tokens, scores, _ = run_beam(SHORT_OR_LONG, max_len=2, beam_size=3, n_best=3)
    assert tokens.shape == (1, 3, 2) and scores.shape == (1, 3)
    assert tokens[0].tolist() == [[4, EOS], [4, 4], [EOS, PAD]]
    assert scores[0] == pytest.approx([math.log(0.36) / 2, math.log(0.24) / 2, math.log(0.4)])
    best, best_score, _ = run_beam(SHORT_OR_LONG, max_len=2, beam_size=3)
    assert tokens[:, 0].tolist() == best.tolist() and scores[:, 0] == pytest.approx(best_score)
    two, _, _ = run_beam(np.concatenate([ENDING, SHORT_OR_LONG]), max_len=6, beam_size=3, n_best=2)
    assert two.shape[:2] == (3, 2) and two[2, 0, :2].tolist() == [4, EOS]  # rows of a batch rank their own beams


@pytest.mark.parametrize("n_best", [0, 4, 1.0, True])
def test_n_best_outside_1_to_beam_size_is_refused(n_best):
    with pytest.raises(ValueError, match=rf"^n_best must be an int in \[1, beam_size \(3\)\], got {n_best!r}$"):
        run_beam(SHORT_OR_LONG, max_len=2, beam_size=3, n_best=n_best, eos_token=None)


def test_beam_without_an_end_token_runs_max_len_steps():
    tokens, scores, step = run_beam(ENDING, max_len=4, beam_size=2, eos_token=None)
    assert tokens.tolist() == [[EOS, 4, 0, 0], [4, 0, EOS, 0]] and len(step.fed) == 4
    assert scores == pytest.approx([0.0, 0.0])  # probability 1 at every step


# ------------------------------------------------------------------------------------------------- settings


def test_searches_take_their_settings_by_keyword_only():
    step = TableStep(ENDING)
    with pytest.raises(TypeError):
        greedy_search(step, step.state(2), 2, 4, START, EOS, PAD)
    with pytest.raises(TypeError):
        beam_search(step, step.state(2), 2, 4, 2, START, EOS, PAD)
    assert not step.fed


@pytest.mark.parametrize("max_len", [0, -1, MAX_STEPS + 1, True, 2.0, "3", None, 10**12])
def test_bad_max_len_is_refused_before_any_step(max_len):
    with pytest.raises(ValueError, match=rf"max_len must be an int in \[1, {MAX_STEPS}\], got"):
        check_max_len(max_len)
    for search in (run_greedy, lambda probs, max_len: run_beam(probs, max_len, beam_size=2)):
        with pytest.raises(ValueError, match="max_len"):
            search(ENDING, max_len=max_len)


@pytest.mark.parametrize("max_len", [1, MAX_STEPS, np.int64(7)])
def test_max_len_bounds_are_accepted(max_len):
    assert check_max_len(max_len) == max_len and type(check_max_len(max_len)) is int


BAD_BEAM = [
    (0, 1.0, ValueError, "beam_size must be a positive int, got 0"),
    (-2, 1.0, ValueError, "beam_size must be a positive int"),
    (True, 1.0, ValueError, "beam_size must be a positive int, got True"),
    (2.0, 1.0, ValueError, "beam_size must be a positive int"),
    ("2", 1.0, ValueError, "beam_size must be a positive int"),
    (2, "long", TypeError, "length_penalty must be a finite number, got 'long'"),
    (2, None, TypeError, "length_penalty must be a finite number"),
    (2, True, TypeError, "length_penalty must be a finite number"),
    (2, float("nan"), ValueError, "length_penalty must be finite, got nan"),
    (2, float("inf"), ValueError, "length_penalty must be finite, got inf"),
    (2, -1e300, ValueError, "length_penalty must be in \\[-10, 10\\] \\(scores are log-probability / length"),
    (2, 10.5, ValueError, "length_penalty must be in \\[-10, 10\\]"),
    (1025, 1.0, ValueError, "beam_size must be <= 1024, got 1025"),
]


@pytest.mark.parametrize("beam_size,length_penalty,error,message", BAD_BEAM)
def test_bad_beam_settings_are_refused_before_any_step(beam_size, length_penalty, error, message):
    with pytest.raises(error, match=message):
        check_beam_settings(beam_size, length_penalty)
    with pytest.raises(error, match=message):
        run_beam(ENDING, max_len=4, beam_size=beam_size, length_penalty=length_penalty)


def test_good_beam_settings_come_back_as_int_and_float():
    settings = check_beam_settings(np.int32(3), np.float32(0.5))
    assert settings == (3, 0.5) and (type(settings[0]), type(settings[1])) == (int, float)
    assert check_beam_settings(1, 0) == (1, 0.0)


# ----------------------------------------------------------------------------------- to_width, select_rows


def test_to_width_pads_short_rows_and_cuts_long_ones():
    tokens = np.array([[4, EOS], [0, 0]])
    assert to_width(tokens, 4, PAD).tolist() == [[4, EOS, PAD, PAD], [0, 0, PAD, PAD]]
    assert to_width(np.array([[4, 0, 4, 0, EOS]]), 3, PAD).tolist() == [[4, 0, 4]]
    assert to_width(tokens, 2, PAD).tolist() == tokens.tolist()


@pytest.mark.parametrize("array", [np.asarray, torch.as_tensor], ids=["numpy", "torch"])
def test_select_rows_picks_along_each_entrys_batch_axis(array):
    h = np.arange(2 * 3 * 4).reshape(2, 3, 4)  # (layers, batch, hidden)
    memory = np.arange(3 * 5 * 2).reshape(3, 5, 2)  # (batch, source_len, dim)
    rows = np.array([2, 0, 0])
    picked = select_rows({H: array(h), MEMORY: array(memory)}, rows)
    assert np.asarray(picked[H]).tolist() == h[:, rows].tolist()
    assert np.asarray(picked[MEMORY]).tolist() == memory[rows].tolist()
