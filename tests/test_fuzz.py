"""Fuzzing the torch-free runtime and `lit-seq2seq decode` (hypothesis).

Whatever it is given, OnnxSeq2Seq.greedy/beam_search/step and decode never crash the process or hang: they
return well-formed results (token ids in range, the right shape and dtype) or raise ValueError/TypeError; decode
exits 0 (one output line per input line) or 2 with a one-line message. Without allow_untrained_lengths, nothing is
decoded for a row whose length lies outside the trained range.

The model is the session's tiny "lstm_attention" export (conftest.exported): reverse task with an end token, LSTM
with attention, so the decoder state has all four entries h, c, memory, memory_mask.
"""

from __future__ import annotations

import copy
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import cli_output
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from lit_seq2seq.runtime import OnnxSeq2Seq

# deadline: a generous bound per example (the machine is shared); a real hang takes minutes. No example
# database: nothing written into the repository.
FUZZ = settings(
    max_examples=150,
    deadline=timedelta(seconds=10),
    database=None,
    derandomize=bool(os.environ.get("CI")),  # CI replays one fixed set of examples; local runs explore anew
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
INT64 = (-(2**63), 2**63 - 1)


FUZZED = "lstm_attention"


@pytest.fixture(scope="module")
def model_dir(exported) -> Path:
    return exported(FUZZED).model_dir


@pytest.fixture(scope="module")
def model(runtime_model) -> OnnxSeq2Seq:
    return runtime_model(FUZZED)


# ------------------------------------------------------------------------------------------------- strategies

DTYPES = [np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64, np.float16, np.float32,
          np.float64, np.bool_, np.complex64, np.dtype("U3"), np.dtype("S2"), np.dtype("M8[s]")]  # fmt: skip


@st.composite
def near_valid_sources(draw: st.DrawFn) -> np.ndarray:
    """Mostly decodable (batch, length) int arrays: tokens in range, right-padded rows; sometimes one bad cell."""
    batch, length = draw(st.integers(1, 5)), draw(st.integers(1, 8))
    source = draw(hnp.arrays(np.int64, (batch, length), elements=st.integers(2, 7)))
    for row in range(batch):
        source[row, draw(st.integers(1, length)) :] = 0
    if draw(st.booleans()):
        r, c = draw(st.integers(0, batch - 1)), draw(st.integers(0, length - 1))
        source[r, c] = draw(st.one_of(st.sampled_from([-1, 0, 1, 8, 9, 2**31, -(2**31)]), st.integers(*INT64)))
    dtype = draw(st.sampled_from([np.int64, np.int64, np.int32, np.int16, np.uint8, np.uint64]))
    with np.errstate(all="ignore"):
        source = source.astype(dtype)  # may wrap around: still an int array, range-checked by the runtime
    return source[0] if draw(st.integers(0, 4)) == 0 else source


any_arrays = st.sampled_from(DTYPES).flatmap(
    lambda dtype: hnp.arrays(dtype, hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=6))
)
python_values = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=5), st.binary(max_size=5),
    st.lists(st.integers(-3, 12), max_size=6),
    st.lists(st.lists(st.integers(-3, 12), max_size=6), max_size=4),  # ragged rows too
    st.lists(st.lists(st.one_of(st.integers(), st.floats(), st.text(max_size=2)), max_size=3), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)  # fmt: skip
sources = st.one_of(near_valid_sources(), near_valid_sources(), any_arrays, python_values)
odd_numbers = st.sampled_from([None, True, False, 2.0, 2.5, "3", b"3", np.int32(2), np.float64(2.0), [2], -(2**63)])
max_lens = st.one_of(st.none(), st.integers(-3, 12), odd_numbers)


def _check_tokens(model: OnnxSeq2Seq, source: Any, tokens: Any, max_len: Any) -> None:
    """A returned decoding: int64, (batch, steps) or (steps,) for one sequence, ids in range, padded after the end."""
    source = np.asarray(source)
    assert isinstance(tokens, np.ndarray) and tokens.dtype == np.int64
    assert tokens.ndim == source.ndim
    rows = tokens if tokens.ndim == 2 else tokens[None]
    assert len(rows) == (len(source) if source.ndim == 2 else 1)
    limit = model.max_target_length if max_len is None else int(max_len)
    assert 1 <= rows.shape[1] <= limit
    assert ((rows >= 0) & (rows < model.target_vocab_size)).all()
    for row in rows:  # after the end token only padding
        ends = np.flatnonzero(row == model.eos_token)
        if len(ends):
            assert (row[ends[0] + 1 :] == model.pad_token).all()


def _check_trained_lengths(model: OnnxSeq2Seq, source: Any) -> None:
    """A source that was decoded without allow_untrained_lengths: every row's length in the trained range."""
    rows = np.atleast_2d(np.asarray(source))
    lengths = (rows != model.pad_token).sum(1)
    assert ((model.min_source_length <= lengths) & (lengths <= model.source_length)).all(), lengths


def _expect_bad_input(error: BaseException) -> None:
    assert isinstance(error, (ValueError, TypeError)), f"{type(error).__name__}: {error}"
    assert str(error)  # a message, not a bare exception


# ------------------------------------------------------------------------------------------- greedy and beam


@FUZZ
@given(source=sources, max_len=max_lens, allow=st.booleans())
def test_greedy_returns_valid_tokens_or_rejects_the_input(model, source, max_len, allow):
    try:
        tokens = model.greedy(source, max_len=max_len, allow_untrained_lengths=allow)
    except Exception as error:  # noqa: BLE001 - the type is what is checked
        _expect_bad_input(error)
        return
    _check_tokens(model, source, tokens, max_len)
    if not allow:
        _check_trained_lengths(model, source)


@FUZZ
@given(
    source=sources,
    beam_size=st.one_of(st.integers(-3, 6), odd_numbers),
    length_penalty=st.one_of(st.floats(), st.sampled_from([None, "x", True, np.float32(0.5), 0])),
    max_len=max_lens,
    allow=st.booleans(),
)
def test_beam_search_returns_valid_tokens_or_rejects_the_input(
    model, source, beam_size, length_penalty, max_len, allow
):
    try:
        tokens, scores = model.beam_search(
            source, beam_size, length_penalty, max_len=max_len, allow_untrained_lengths=allow
        )
    except Exception as error:  # noqa: BLE001
        _expect_bad_input(error)
        return
    _check_tokens(model, source, tokens, max_len)
    if not allow:
        _check_trained_lengths(model, source)
    assert np.shape(scores) == tokens.shape[:-1]  # (batch,), or a scalar for one sequence
    assert np.asarray(scores).dtype.kind == "f" and not np.isnan(scores).any()


def test_greedy_and_beam_1_agree_on_valid_sources(model):
    @FUZZ
    @given(source=near_valid_sources())
    def check(source):
        try:
            greedy = model.greedy(source, allow_untrained_lengths=True)
        except ValueError:
            return
        beam, _ = model.beam_search(source, beam_size=1, allow_untrained_lengths=True)
        assert np.array_equal(greedy, beam)

    check()


# ------------------------------------------------------------------------------------------------------ step


@st.composite
def states(draw: st.DrawFn, model: OnnxSeq2Seq) -> tuple[np.ndarray, Any]:
    """(token, state): a real encoder state for a valid batch, then maybe damaged in one way."""
    source = np.atleast_2d(draw(near_valid_sources()))
    try:
        state = model.encode(source, allow_untrained_lengths=True)
    except ValueError:  # an invalid source: greedy/beam tests cover those
        assume(False)
    batch = len(source)
    token = draw(st.one_of(hnp.arrays(np.int64, batch, elements=st.integers(0, 7)), any_arrays, python_values))
    how = draw(st.sampled_from(["none", "value", "array", "drop", "extra", "dtype", "not_a_dict", "batch"]))
    name = draw(st.sampled_from(sorted(state)))
    if how == "value" and state[name].dtype != np.bool_:
        flat = state[name].reshape(-1)
        flat[draw(st.integers(0, flat.size - 1))] = draw(st.floats(width=32))  # NaN, inf, huge, tiny
    elif how == "value":
        state[name][...] = draw(st.booleans())  # all-False mask: an empty source
    elif how == "array":
        state[name] = draw(any_arrays)
    elif how == "drop":
        del state[name]
    elif how == "extra":
        state["extra"] = state[name]
    elif how == "dtype":
        state[name] = state[name].astype(draw(st.sampled_from([np.float64, np.float16, np.int64, np.bool_])))
    elif how == "not_a_dict":
        state = draw(st.one_of(python_values, st.just(list(state.values()))))
    elif how == "batch":
        state[name] = np.concatenate([state[name], state[name]], axis=1 if name in ("h", "c") else 0)
    return token, state


def test_step_returns_a_valid_step_or_rejects_the_input(model):
    @FUZZ
    @given(case=states(model))
    def check(case):
        token, state = case
        original = {k: copy.deepcopy(v) for k, v in state.items()} if isinstance(state, dict) else None
        try:
            logits, new = model.step(token, state)
        except Exception as error:  # noqa: BLE001
            _expect_bad_input(error)
            return
        batch = len(token)
        assert isinstance(logits, np.ndarray) and logits.dtype == np.float32
        assert logits.shape == (batch, model.target_vocab_size)
        assert set(new) == set(model.state_names)
        for name, value in new.items():
            assert value.dtype == state[name].dtype and value.shape == state[name].shape
        moderate = all(np.abs(v.astype(np.float64)).max(initial=0) < 1e4 for v in state.values())
        if moderate:  # finite inputs of sane size give finite outputs
            assert np.isfinite(logits).all() and all(np.isfinite(v).all() for v in new.values())
        assert all(np.array_equal(original[k], state[k]) for k in original)  # the caller's state is not changed

    check()


# ---------------------------------------------------------------------------------------------------- decode

token_words = st.one_of(
    st.integers(-2, 9).map(str),
    st.sampled_from(["0", "00", "+3", "-0", "٣", "2_3", "1e3", "0x3", "3.0", "", "nan", "--help", "-h", "\x00"]),
    st.text(max_size=4),
)
lines = st.lists(token_words, max_size=7).flatmap(
    lambda words: st.sampled_from([" ", "\t", "  ", " \t "]).map(lambda sep: sep.join(words))
)


def _fits_int64(text: str) -> bool:
    """False for a line with an integer beyond int64 (the overflow is covered by its own test below)."""
    for word in text.split():
        try:
            value = int(word)
        except ValueError:
            continue
        if not INT64[0] <= value <= INT64[1]:
            return False
    return True


def test_decode_lines_exit_0_or_2(model_dir, capsys):
    @FUZZ
    @given(
        text=st.lists(lines, min_size=1, max_size=4).map("\n".join),
        beam=st.sampled_from(["1", "2"]),
        flags=st.sampled_from([[], ["--allow_untrained_lengths"], ["--batch_size", "1"]]),
    )
    def check(text, beam, flags):
        assume(_fits_int64(text))
        code, out, err = cli_output(["decode", "--model_dir", model_dir, "--beam_size", beam, *flags], capsys, text)
        assert code in (0, 2), (code, err)
        assert "Traceback" not in err
        if code == 0:  # a line per "\n" ("\r\n" too); a leading BOM and the empty lines at the end dropped
            read = [line.removesuffix("\r") for line in text.removeprefix("\ufeff").split("\n")]
            while read and not read[-1]:
                read.pop()
            assert len(out.splitlines()) == len(read)
        else:
            (message,) = [line for line in err.splitlines() if "error:" in line]  # after the usage lines
            assert message.startswith("lit-seq2seq decode: error: ") and err.endswith(message + "\n")
            if message.startswith("lit-seq2seq decode: error: line "):  # the lines before the bad one were printed
                assert len(out.splitlines()) == int(message.split()[4].rstrip(":")) - 1

    check()


def test_decode_positional_sequences_exit_0_or_2(model_dir, capsys):
    @FUZZ
    @given(words=st.lists(lines, min_size=1, max_size=3))
    def check(words):
        assume(all(_fits_int64(w) for w in words))
        code, out, err = cli_output(["decode", "--model_dir", model_dir, *words], capsys, "")
        assert code in (0, 2), (code, err)
        assert "Traceback" not in err
        if code == 2:
            assert "error: " in err

    check()


# ------------------------------------------------------------------ known failures in code owned elsewhere


def test_decode_a_token_beyond_int64_exits_2(model_dir, capsys):
    code, _, err = cli_output(["decode", "--model_dir", model_dir], capsys, "99999999999999999999 3\n")
    assert code == 2 and "line 1" in err


@pytest.mark.parametrize("kwargs", [{"max_len": 10**12}, {"beam_size": 10**12}], ids=["max_len", "beam_size"])
def test_absurd_max_len_or_beam_size_is_rejected(model, kwargs):
    source = np.array([[2, 3, 4]])
    with pytest.raises(ValueError):
        if "beam_size" in kwargs:
            model.beam_search(source, **kwargs)
        else:
            model.greedy(source, **kwargs)
