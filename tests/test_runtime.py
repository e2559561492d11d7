"""runtime.OnnxSeq2Seq, the torch-free runtime: loading and decoding without torch, validation of every input,
damaged model files, thread safety.

Models are the session's tiny exports (conftest.exported).
"""

from __future__ import annotations

import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import BLOCK_IMPORTS, cli_exit, cli_output, flip_bit, restamp, run_python

from lit_seq2seq import contract
from lit_seq2seq.runtime import ModelFileError, OnnxSeq2Seq

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*LeafSpec"),  # lightning vs torch 2.13 pytree deprecation notice
    pytest.mark.filterwarnings("ignore::UserWarning"),
]


# ------------------------------------------------------------------------------------------- without torch


def test_runtime_loads_and_decodes_without_torch_or_lightning(exported):
    code = (
        BLOCK_IMPORTS
        + """
import numpy as np
from lit_seq2seq.runtime import OnnxSeq2Seq
model = OnnxSeq2Seq.load(sys.argv[2])
print(model.greedy(np.array([[2, 3, 4], [5, 0, 0]])).tolist())
print(model.beam_search(np.array([[2, 3, 4]]), beam_size=2)[0].shape[0])
assert not any(m.split(".")[0] in _Blocked.names for m in sys.modules), sorted(sys.modules)
try:
    import torch
except ImportError:
    pass
else:
    raise SystemExit("the import blocker let torch in")
"""
    )
    result = run_python(code, "none", str(exported("gru_bi_attention").model_dir))
    assert result.returncode == 0, result.stderr
    expected = (
        OnnxSeq2Seq.load(exported("gru_bi_attention").model_dir).greedy(np.array([[2, 3, 4], [5, 0, 0]])).tolist()
    )
    assert result.stdout.splitlines() == [str(expected), "1"]


# --------------------------------------------------------------------------------------------- bad inputs
# Each case also says what raw onnxruntime (encoder/decoder session.run, found by calling it directly) does with
# the same input: an error (often from deep inside a kernel), silent garbage, or a crash of the whole process.

GOOD = np.array([[3, 4, 5, 6], [2, 3, 0, 0]])  # row 1 is shorter than the fixed-length (4) exports were trained on
SOURCE_CASES = [
    # raw: error, INVALID_ARGUMENT "Unexpected input data type. Actual: (tensor(float)), expected: (tensor(int64))"
    pytest.param("lstm", GOOD.astype(np.float32), TypeError, "integer token ids", id="float source"),
    # raw: error, INVALID_ARGUMENT "Unexpected input data type. Actual: (tensor(bool)) ..."
    pytest.param("lstm", GOOD.astype(bool), TypeError, "integer token ids", id="bool source"),
    # raw: error, INVALID_ARGUMENT "Invalid rank for input: source Got: 3 Expected: 2"
    pytest.param("lstm", GOOD[None], ValueError, "shape [batch, source_len]", id="3-D source"),
    # raw: CRASH, the encoder segfaults (exit code 139) and takes the whole process down, every cell
    pytest.param("lstm", np.zeros((0, 5), np.int64), ValueError, "empty batch", id="empty batch"),
    # raw: silent garbage, all-zero h/c (and a (2, 0, M) memory); decoding then runs from a blank state
    pytest.param("lstm", np.zeros((2, 0), np.int64), ValueError, "empty sequence", id="empty sequence"),
    # raw: silent garbage, the packed length counts non-pad tokens, so the row is read from the wrong positions
    pytest.param("lstm", np.array([[3, 4], [0, 3]]), ValueError, "source[1]: empty sequence", id="row starts with pad"),
    # raw: silent garbage, all-zero state; with attention an all-False memory_mask row
    pytest.param("lstm_attention", np.array([[3, 4], [0, 0]]), ValueError, "source[1]: empty", id="padding only"),
    # raw: silent garbage, as for a row that starts with padding
    pytest.param("lstm", np.array([[3, 0, 4], [2, 3, 4]]), ValueError, "token after padding", id="pad in middle"),
    # raw: error from the Gather kernel: "indices element out of data bounds, idx=9 must be within [-9,8]"
    pytest.param("lstm", np.array([[3, 9]]), ValueError, "token 9 is out of range", id="token = vocab_size"),
    # raw: error from the Gather kernel, as above
    pytest.param("gru", np.array([[3, 99]]), ValueError, "token 99 is out of range", id="token too large"),
    # raw: silent garbage, Gather wraps -1 around to the last id (vocab_size - 1)
    pytest.param("lstm", np.array([[3, -1]]), ValueError, "token -1 is out of range", id="negative token"),
    # raw: error from the Gather kernel (below -vocab_size nothing wraps)
    pytest.param("lstm", np.array([[3, -100]]), ValueError, "token -100 is out of range", id="very negative token"),
    # raw: silent garbage, the end token is a valid id but never appears in a training source
    pytest.param("gru", np.array([[3, 1, 4]]), ValueError, "token 1 is out of range", id="eos id in source"),
    # raw: silent garbage, as for a pad in the middle
    pytest.param("gru", np.array([[3, 0, 4]]), ValueError, "token after padding", id="pad id 0 in eos source"),
    # raw: error, RuntimeError "Could not create tensor from given input list"
    pytest.param("lstm", [[1, 2], [3]], ValueError, "different lengths", id="ragged lists"),
    # raw: error, RuntimeError "Could not create tensor from given input list"
    pytest.param("lstm", [[1, 2], [3, [4]]], ValueError, "different lengths", id="ragged nested lists"),
    # raw: error, "Invalid rank for input: source Got: 1 Expected: 2"
    pytest.param("lstm", [], (ValueError, TypeError), "empty", id="empty list"),
    # raw: silent garbage on the LSTM (all-zero state for a (1, 0) source); the bidirectional GRU fails inside
    # its Reshape kernel ("The input tensor cannot be reshaped to the requested shape")
    pytest.param("lstm", [[]], (ValueError, TypeError), "empty", id="list of one empty row"),
    # raw: silent garbage, a Python list is converted to the input's type: [[1.5, 2.7]] is read as [[1, 2]]
    pytest.param("lstm", [[1.5, 2.7]], TypeError, "integer token ids", id="list of floats"),
    # raw: error, RuntimeError "Input must be a list of dictionaries or a single numpy array for input 'source'"
    pytest.param("lstm", "3 4", TypeError, "numpy array or a list", id="string"),
]


@pytest.mark.parametrize("name,source,error,message", SOURCE_CASES)
def test_bad_source_is_refused_with_a_clear_message(name, source, error, message, runtime_model):
    model = runtime_model(name)
    for call in (model.encode, model.greedy, lambda s: model.beam_search(s, beam_size=2)):
        with pytest.raises(error, match=re.escape(message)):
            call(source)


def _with(token: np.ndarray | None = None, **changes):
    """A step case: a batch-2 token and GOOD's encoding with entries replaced (a callable gets the state; None
    removes the entry)."""

    def make(state):
        new = {**state, **{k: (v(state) if callable(v) else v) for k, v in changes.items()}}
        return np.zeros(2, np.int64) if token is None else token, {k: v for k, v in new.items() if v is not None}

    return make


def _poisoned(value):
    def make(state):
        h = state["h"].copy()
        h[0, 0, 0] = value
        return h

    return make


def _mask_row_false(state):
    mask = state["memory_mask"].copy()
    mask[1] = False
    return mask


STEP_CASES = [
    # raw: error, "Unexpected input data type. Actual: (tensor(float)), expected: (tensor(int64))"
    pytest.param(
        "lstm", _with(token=np.zeros(2, np.float32)), TypeError, "token must be a numpy integer", id="float token"
    ),
    # raw: error, "Invalid rank for input: token Got: 2 Expected: 1"
    pytest.param("lstm", _with(token=np.zeros((2, 1), np.int64)), ValueError, "token must have shape", id="2-D token"),
    # raw: error from the Gather kernel, "idx=9 must be within the inclusive range [-9,8]"
    pytest.param("lstm", _with(token=np.array([9, 0])), ValueError, "token ids must be in", id="token too large"),
    # raw: silent garbage, -1 reads the embedding of id vocab_size - 1
    pytest.param("lstm", _with(token=np.array([-1, 0])), ValueError, "token ids must be in", id="negative token"),
    # raw: error, ValueError "Required inputs (['h']) are missing from input feed"
    pytest.param("lstm", _with(h=None), ValueError, "exactly", id="missing state key"),
    # raw: error, INVALID_ARGUMENT "Invalid input name: extra"
    pytest.param("lstm", _with(extra=lambda s: s["h"]), ValueError, "exactly", id="extra state key"),
    # raw: error, "Unexpected input data type. Actual: (tensor(double)), expected: (tensor(float))"
    pytest.param("lstm", _with(h=lambda s: s["h"].astype(np.float64)), TypeError, "float32", id="float64 state"),
    # raw: error, "Got invalid dimensions for input: h ... index: 2 Got: 3 Expected: 16"
    pytest.param("lstm", _with(h=np.zeros((1, 2, 3), np.float32)), ValueError, "must have shape", id="wrong h shape"),
    # raw: error, "Invalid rank for input: h Got: 2 Expected: 3"
    pytest.param("gru", _with(h=lambda s: s["h"][0]), ValueError, "must have shape", id="2-D h"),
    # raw: error from inside the LSTM kernel: "Input initial_h must have shape {1,3,16}. Actual:{1,2,16}"
    pytest.param("lstm", _with(token=np.zeros(3, np.int64)), ValueError, "for token batch 3", id="token batch 3, h 2"),
    # raw: error from inside the GRU kernel, as above
    pytest.param("gru", _with(h=lambda s: s["h"][:, :1]), ValueError, "for token batch 2", id="h batch 1, token 2"),
    # raw: error from inside the LSTM kernel: "Input initial_c must have shape {1,2,16}. Actual:{1,3,16}"
    pytest.param("lstm", _with(c=np.zeros((1, 3, 16), np.float32)), ValueError, "state\\['c'\\]", id="c batch 3"),
    # raw: silent garbage; GRU: NaN logits, argmax 0 (reads as padding); LSTM: finite, plausible-looking logits
    pytest.param("gru", _with(h=_poisoned(np.nan)), ValueError, "NaN or infinite", id="NaN in h (gru)"),
    pytest.param("lstm", _with(h=_poisoned(np.nan)), ValueError, "NaN or infinite", id="NaN in h (lstm)"),
    # raw: silent garbage, as for NaN
    pytest.param("gru", _with(h=_poisoned(np.inf)), ValueError, "NaN or infinite", id="inf in h"),
    # raw: error from inside the Where kernel: BroadcastIterator "axis == 1 || axis == bias was false"
    pytest.param(
        "lstm_attention",
        _with(memory_mask=lambda s: s["memory_mask"][:, :3]),
        ValueError,
        "memory_mask",
        id="mask shorter than memory",
    ),  # fmt: skip
    # raw: silent garbage, a (1, S) mask broadcasts over every row of the batch
    pytest.param(
        "lstm_attention",
        _with(memory_mask=lambda s: s["memory_mask"][:1]),
        ValueError,
        "memory_mask",
        id="mask batch 1",
    ),  # fmt: skip
    # raw: silent garbage, masked_fill with finfo.min makes the attention uniform over the padding
    pytest.param("lstm_attention", _with(memory_mask=_mask_row_false), ValueError, "no True", id="all-False mask row"),
    # raw: error, "Unexpected input data type. Actual: (tensor(int64)), expected: (tensor(bool))"
    pytest.param(
        "gru_bi_attention",
        _with(memory_mask=lambda s: s["memory_mask"].astype(np.int64)),
        TypeError,
        "bool",
        id="int mask",
    ),  # fmt: skip
    # raw: error, "Got invalid dimensions for input: memory ... index: 2 Got: 5 Expected: 32"
    pytest.param(
        "gru_bi_attention",
        _with(memory=np.zeros((2, 4, 5), np.float32)),
        ValueError,
        "memory",
        id="memory width",
    ),  # fmt: skip
    # raw: silent garbage, NaN logits for that row (argmax 0, which reads as padding)
    pytest.param(
        "gru_bi_attention",
        _with(memory=lambda s: s["memory"] * np.nan),
        ValueError,
        "NaN",
        id="NaN in memory",
    ),  # fmt: skip
    # raw: n/a, an app builds the feed dict itself (`{**state}` of a list is a Python TypeError)
    pytest.param("lstm", lambda s: (np.zeros(2, np.int64), list(s.values())), ValueError, "dict", id="state as list"),
]


@pytest.mark.parametrize("name,make,error,message", STEP_CASES)
def test_bad_step_input_is_refused_with_a_clear_message(name, make, error, message, runtime_model):
    model = runtime_model(name)
    token, state = make(model.encode(GOOD, allow_untrained_lengths=True))
    with pytest.raises(error, match=message):
        model.step(token, state)


def test_good_step_input_passes_the_same_checks(runtime_model):
    for name in ("lstm", "gru", "lstm_attention", "gru_bi_attention"):
        model = runtime_model(name)
        logits, state = model.step(np.zeros(2, np.int64), model.encode(GOOD, allow_untrained_lengths=True))
        assert logits.shape == (2, model.target_vocab_size) and set(state) == set(model.state_names)


@pytest.mark.parametrize(
    "call,message",
    [
        # Not graph inputs: beam 0 would reach numpy's argsort[:, :0] and max_len 0 an empty (batch, 0) answer.
        (lambda m: m.beam_search(GOOD, beam_size=0), "beam_size must be a positive int"),
        (lambda m: m.beam_search(GOOD, beam_size=True), "beam_size must be a positive int"),
        (lambda m: m.beam_search(GOOD, beam_size=2.0), "beam_size must be a positive int"),
        (lambda m: m.beam_search(GOOD, beam_size=10**9), "beam_size must be <= 1024"),
        (lambda m: m.greedy(GOOD, max_len=0), "max_len must be an int in \\[1, 4096\\]"),
        (lambda m: m.greedy(GOOD, max_len=-2), "max_len must be an int in \\[1, 4096\\]"),
        (lambda m: m.beam_search(GOOD, max_len=0), "max_len must be an int in \\[1, 4096\\]"),
        (lambda m: m.beam_search(GOOD, length_penalty=float("nan")), "length_penalty must be finite"),
        (lambda m: m.beam_search(GOOD, length_penalty="long"), "length_penalty"),
    ],
    ids=[
        "beam 0",
        "beam True",
        "beam 2.0",
        "beam 1e9",
        "max_len 0",
        "max_len -2",
        "beam max_len 0",
        "penalty nan",
        "penalty str",
    ],
)
def test_bad_search_settings_are_refused(call, message, runtime_model):
    with pytest.raises((ValueError, TypeError), match=message):
        call(runtime_model("gru"))  # trained on 1 to 5 tokens: GOOD is a good source


# ------------------------------------------------------------------------------------------ damaged files


def _stored_hash_offset(path: Path) -> int:
    data = path.read_bytes()
    stored = onnx.load(str(path)).metadata_props
    value = next(p.value for p in stored if p.key == contract.CONTENT_HASH_KEY)
    return data.find(value.encode()) + 10


def _damage(how: str, model_dir: Path, other_dirs: dict[str, Path]) -> None:
    enc, dec = model_dir / contract.ENCODER_FILE, model_dir / contract.DECODER_FILE
    if how == "truncated encoder":
        enc.write_bytes(enc.read_bytes()[: enc.stat().st_size // 2])
    elif how == "empty encoder":
        enc.write_bytes(b"")
    elif how == "flipped byte in the middle of the decoder":
        flip_bit(dec, dec.stat().st_size // 2)
    elif how == "flipped byte in the stored hash":
        flip_bit(enc, _stored_hash_offset(enc))
    elif how == "encoder of another model":
        shutil.copy(other_dirs["lstm"] / contract.ENCODER_FILE, enc)
    elif how == "encoder of another export of the same checkpoint":
        shutil.copy(other_dirs["again"] / contract.ENCODER_FILE, enc)
    elif how == "missing decoder":
        dec.unlink()
    elif how == "unknown format_version":
        restamp(dec, format_version="99")
    elif how == "missing folder":
        shutil.rmtree(model_dir)
    elif how == "a file, e.g. a checkpoint":
        shutil.rmtree(model_dir)
        model_dir.write_bytes(b"PK")
    elif how == "flipped byte in the middle of greedy.onnx":
        flip_bit(model_dir / contract.GREEDY_FILE, (model_dir / contract.GREEDY_FILE).stat().st_size // 2)
    elif how == "greedy.onnx of another export of the same checkpoint":
        shutil.copy(other_dirs["again"] / contract.GREEDY_FILE, model_dir / contract.GREEDY_FILE)
    elif how == "unknown format_version of greedy.onnx":
        restamp(model_dir / contract.GREEDY_FILE, format_version="99")
    elif how == "a listed metadata key removed (task)":
        restamp(dec, task=None)
    elif how == "export_id removed from every file, the encoder another export's":
        shutil.copy(other_dirs["again"] / contract.ENCODER_FILE, enc)
        for name in contract.GRAPH_FILES:
            restamp(model_dir / name, export_id=None)


DAMAGE = {
    "truncated encoder": "no content_sha256 metadata",
    "empty encoder": "no content_sha256 metadata",
    "flipped byte in the middle of the decoder": "content hash mismatch",
    "flipped byte in the stored hash": "content hash mismatch",
    "encoder of another model": "different exports",
    "encoder of another export of the same checkpoint": "different exports",
    "missing decoder": "decoder_step.onnx: missing",
    "unknown format_version": "format_version '99'",
    "missing folder": "no such folder",
    "a file, e.g. a checkpoint": "a file, not an export folder; `lit-seq2seq export --ckpt_path CKPT --output_dir",
    "flipped byte in the middle of greedy.onnx": "greedy.onnx: content hash mismatch",
    "greedy.onnx of another export of the same checkpoint": "encoder.onnx and greedy.onnx come from different exports",
    "unknown format_version of greedy.onnx": "greedy.onnx: contract format_version '99'",
    "a listed metadata key removed (task)": "decoder_step.onnx: no metadata task (damaged, or not written by",
    "export_id removed from every file, the encoder another export's": "encoder.onnx: no metadata export_id",
}


@pytest.fixture(scope="module")
def other_exports(exported, tmp_path_factory):
    """A second export of the gru checkpoint (same graphs, new export_id) and the lstm export."""
    from lit_seq2seq.export import export_checkpoint

    again = tmp_path_factory.mktemp("again") / "model"
    export_checkpoint(exported("gru").ckpt, again, verify_samples=4)
    return {"again": again, "lstm": exported("lstm").model_dir}


@pytest.mark.parametrize("how", list(DAMAGE))
def test_damaged_model_files_raise_model_file_error_and_decode_exits_2(how, exported, other_exports, tmp_path, capsys):
    model_dir = tmp_path / "model"
    shutil.copytree(exported("gru").model_dir, model_dir)
    _damage(how, model_dir, other_exports)
    with pytest.raises(ModelFileError, match=re.escape(DAMAGE[how])) as info:
        OnnxSeq2Seq.load(model_dir)
    assert isinstance(info.value, ValueError)
    code, err = cli_exit(["decode", "--model_dir", model_dir, "2 3"], capsys)
    assert code == 2 and DAMAGE[how] in err and "Traceback" not in err


def test_pristine_copy_loads(exported, tmp_path):
    shutil.copytree(exported("gru").model_dir, tmp_path / "model")
    assert OnnxSeq2Seq.load(tmp_path / "model").greedy([[2, 3]]).shape[0] == 1


def _as_format_1(path: Path) -> None:
    """Rewrite one graph's metadata as lit-seq2seq 0.2 wrote it: format 1, one vocab_size, no text keys."""
    size = meta_value(onnx.load(str(path)), "target_vocab_size")
    gone = dict.fromkeys((*contract.TEXT_KEYS, "source_vocab_size", "target_vocab_size", "context_rnn"))
    restamp(path, **gone, format_version="1", vocab_size=size)


def meta_value(model: onnx.ModelProto, key: str) -> str:
    return next(p.value for p in model.metadata_props if p.key == key)


def test_context_rnn_is_the_one_metadata_key_an_export_may_lack(exported, tmp_path):
    """Exports made before context_rnn existed lack it (no context RNN); every other listed key is required."""
    assert contract.OPTIONAL_KEYS == ("context_rnn",)
    shutil.copytree(exported("gru").model_dir, tmp_path / "model")
    for name in contract.GRAPH_FILES:
        restamp(tmp_path / "model" / name, context_rnn=None)
    source = np.array([[2, 3, 4], [5, 0, 0]])
    old, new = OnnxSeq2Seq.load(tmp_path / "model"), OnnxSeq2Seq.load(exported("gru").model_dir)
    assert "context_rnn" not in old.meta
    np.testing.assert_array_equal(old.greedy(source), new.greedy(source))


def test_format_1_exports_still_load_and_decode_alike(exported, tmp_path):
    """Exports of lit-seq2seq 0.2 (format 1: one vocab_size for both sides, no text keys) are read as before."""
    for name in ("gru_bi_attention", "copy_trained"):
        new = OnnxSeq2Seq.load(exported(name).model_dir)
        old = tmp_path / name
        shutil.copytree(exported(name).model_dir, old)
        for file in (contract.ENCODER_FILE, contract.DECODER_FILE, contract.GREEDY_FILE):
            _as_format_1(old / file)
        model = OnnxSeq2Seq.load(old)
        assert model.meta["format_version"] == "1" and "source_tokens" not in model.meta and model.text is None
        assert (model.source_vocab_size, model.target_vocab_size) == (new.source_vocab_size, new.target_vocab_size)
        source = np.array([[2, 3, 4], [5, 0, 0], [3, 3, 0]])
        np.testing.assert_array_equal(model.greedy(source), new.greedy(source))
        np.testing.assert_array_equal(
            model.beam_search(source, beam_size=3)[0], new.beam_search(source, beam_size=3)[0]
        )


# ------------------------------------------------------------------------------- greedy.onnx or the two graphs


class _Refusing:
    """Stands in for a graph session that must not be run."""

    def run(self, *args, **kwargs):
        raise AssertionError("this graph was run")


@pytest.mark.parametrize("name", ["lstm", "gru_bi_attention", "copy_trained"])
def test_greedy_runs_greedy_onnx_in_one_call_when_present(name, exported, monkeypatch):
    model = OnnxSeq2Seq.load(exported(name).model_dir)
    assert model.greedy_graph is not None
    source = np.array([[2, 3, 4], [5, 0, 0]]) if name != "lstm" else np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    expected = model._greedy_steps(source, model.max_target_length)
    for batch in (1, 2, 64):  # the small-batch bound path and session.run of the two-graph loop are not used
        monkeypatch.setattr(model, "_greedy_steps", None)
        got = model.greedy(np.repeat(source, batch, 0))
        np.testing.assert_array_equal(got, np.repeat(expected, batch, 0))
    np.testing.assert_array_equal(model.greedy(source[0]), expected[0])  # one sequence in, one out
    monkeypatch.undo()
    monkeypatch.setattr(model, "_greedy_graph", None)  # two_graph: the loop alone, as decode --two_graph runs it
    np.testing.assert_array_equal(model.greedy(source, two_graph=True), expected)
    with pytest.raises(TypeError, match="^two_graph must be True or False, got 'yes'$"):
        model.greedy(source, two_graph="yes")


def test_an_export_without_greedy_onnx_loads_and_decodes_with_the_two_graphs(exported, tmp_path, capsys):
    """Exports older than greedy.onnx have only the two step graphs: they load, decode and give the same tokens."""
    for name in ("gru_bi_attention", "copy_trained"):
        full = OnnxSeq2Seq.load(exported(name).model_dir)
        old = tmp_path / name
        shutil.copytree(exported(name).model_dir, old)
        (old / contract.GREEDY_FILE).unlink()
        model = OnnxSeq2Seq.load(old)
        assert model.greedy_graph is None
        source = np.array([[2, 3, 4], [5, 0, 0], [3, 3, 0]])
        for max_len in (None, 1, 2, 9):
            np.testing.assert_array_equal(model.greedy(source, max_len), full.greedy(source, max_len))
        code, out, _ = cli_output(["decode", "--model_dir", old, "2 3 4", "5"], capsys)
        assert code == 0 and out.splitlines() == [" ".join(map(str, full.strip(r))) for r in full.greedy(source[:2])]


def test_max_len_past_a_fixed_length_models_answer_is_refused_unless_allowed(runtime_model):
    """Without an end token every answer runs max_len steps: past the trained length they would be untrained noise."""
    model = runtime_model("lstm")  # reverse_first: answers of exactly 2 tokens, no end token
    source = np.array([[2, 3, 4, 5], [6, 7, 8, 1]])
    message = "max_len 3: this model has no end token and was trained to answer with exactly 2 tokens"
    for search in (model.greedy, model.beam_search):
        with pytest.raises(ValueError, match=message):
            search(source, max_len=3)
    assert model.greedy(source, max_len=3, allow_untrained_lengths=True).shape == (2, 3)
    assert model.beam_search(source, max_len=3, allow_untrained_lengths=True)[0].shape == (2, 3)
    np.testing.assert_array_equal(model.greedy(source, max_len=1), model.greedy(source)[:, :1])  # shorter: a prefix
    assert runtime_model("copy_trained").greedy([[2, 3, 4], [5, 2, 3]], max_len=9).shape[0] == 2  # has an end token


@pytest.mark.parametrize(
    "source, max_len, message",
    [
        (np.zeros((0, 3), np.int64), None, "empty batch"),
        (np.zeros((2, 0), np.int64), None, "empty sequence"),
        ([[2, 3]], 0, "max_len must be an int in"),
        ([[2, 3]], -1, "max_len must be an int in"),
        ([[2, 0, 3]], None, "token after padding"),
        ([[2, 3, 4, 5, 6, 7]], None, "trained on sources of 1 to 5 tokens"),
    ],
)
def test_greedy_onnx_is_never_run_on_input_the_runtime_refuses(source, max_len, message, exported):
    """onnxruntime's LSTM aborts the process on an empty batch: validation comes first, in Python."""
    model = OnnxSeq2Seq.load(exported("gru").model_dir)
    model.greedy_graph = _Refusing()
    with pytest.raises(ValueError, match=message):
        model.greedy(source, max_len)


# ------------------------------------------------------------------------------------------ thread safety


def test_one_instance_serves_8_threads_with_the_serial_results(runtime_model):
    model = runtime_model("gru_bi_attention")
    rng = np.random.default_rng(5)
    batches = []
    for i in range(8):
        source = rng.integers(2, 8, size=(3 + 5 * i, 1 + i % 5))
        source[1::2, 1:] = 0  # some padded rows
        batches.append(source)
    serial = [(model.greedy(b), model.beam_search(b, beam_size=2)[0]) for b in batches]

    def work(i):
        return [(model.greedy(batches[i]), model.beam_search(batches[i], beam_size=2)[0]) for _ in range(5)]

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(work, range(8)))
    for i, runs in enumerate(results):
        for greedy, beam in runs:
            np.testing.assert_array_equal(greedy, serial[i][0])
            np.testing.assert_array_equal(beam, serial[i][1])


# ------------------------------------------------------------------ issue 12: sources of untrained lengths
# The graphs run on any length, but a model answers lengths it never saw with confident garbage (the seed model,
# trained on exactly 6 tokens: 0% exact match on 3-token sources). The runtime refuses them unless asked not to.

UNTRAINED = [
    # lstm: reverse_first, exactly 4 tokens; gru: copy, 1 to 5 tokens
    pytest.param("lstm", [[1, 2, 3, 4, 5]], "source[0]: 5 tokens; this model was trained on sources of exactly 4 "
                 "tokens (pass allow_untrained_lengths=True / --allow_untrained_lengths", id="longer, fixed length"),
    pytest.param("lstm", [1, 2, 3], "source: 3 tokens; this model was trained on sources of exactly 4 tokens",
                 id="shorter, one sequence"),
    pytest.param("lstm", [[1, 2, 3, 4], [5, 6, 0, 0]], "source[1]: 2 tokens", id="a row's length before padding"),
    pytest.param("gru", [[2, 3, 0, 0, 0, 0], [2, 3, 4, 5, 6, 7]], "source[1]: 6 tokens; this model was trained "
                 "on sources of 1 to 5 tokens", id="longer, range"),
]  # fmt: skip


@pytest.mark.parametrize("name,source,message", UNTRAINED)
def test_untrained_source_lengths_are_refused_naming_the_range(name, source, message, runtime_model):
    model = runtime_model(name)
    for call in (model.encode, model.greedy, lambda s: model.beam_search(s, beam_size=2)):
        with pytest.raises(ValueError, match=re.escape(message)):
            call(source)
    # The explicit opt-in decodes them, as the graphs always could.
    rows = len(np.atleast_2d(source))
    assert model.encode(source, allow_untrained_lengths=True)["h"].shape[1] == rows
    tokens = model.greedy(source, allow_untrained_lengths=True)
    assert tokens.ndim == np.ndim(source) and len(np.atleast_2d(tokens)) == rows
    beam = model.beam_search(source, beam_size=1, allow_untrained_lengths=True)[0]
    np.testing.assert_array_equal(beam, tokens)


def test_lengths_inside_the_trained_range_decode_whatever_the_padding(runtime_model):
    model = runtime_model("gru")  # trained on 1 to 5 tokens
    assert (model.min_source_length, model.source_length) == (1, 5)
    wide = np.zeros((3, 9), np.int64)  # 9 columns, but each row's length is in range
    wide[0, :1], wide[1, :5], wide[2, :3] = [2], [2, 3, 4, 5, 6], [7, 6, 5]
    np.testing.assert_array_equal(model.greedy(wide), model.greedy(wide[:, :5]))
    assert model.beam_search(wide, beam_size=2)[0].shape[0] == 3 and len(model.encode(wide)["h"][0]) == 3
    fixed = runtime_model("lstm")  # exactly 4 tokens
    assert fixed.greedy([[1, 2, 3, 4, 0, 0]]).tolist() == fixed.greedy([[1, 2, 3, 4]]).tolist()


@pytest.mark.parametrize("value", ["yes", 1, None, "False"])
def test_allow_untrained_lengths_takes_only_a_bool(value, runtime_model):
    with pytest.raises(TypeError, match="allow_untrained_lengths must be True or False"):
        runtime_model("lstm").greedy([[1, 2, 3, 4]], allow_untrained_lengths=value)


def test_bad_tokens_are_named_before_the_length(runtime_model):
    # A 2-token row with an out-of-range token: the token is the first problem to fix.
    with pytest.raises(ValueError, match="token 9 is out of range"):
        runtime_model("lstm").greedy([[3, 9]])


def test_non_finite_logits_stop_the_two_graph_loop_instead_of_decoding_garbage(exported, tmp_path, capsys):
    """numpy's argmax takes the first NaN as the maximum: a decoder whose weights hold NaN would print token 0 for
    every step. The runtime refuses instead (greedy.onnx's ArgMax cannot be asked, so that file is left out)."""
    model_dir = tmp_path / "nan"
    shutil.copytree(exported("gru").model_dir, model_dir)
    (model_dir / contract.GREEDY_FILE).unlink()
    path = model_dir / contract.DECODER_FILE
    model = onnx.load(str(path))
    bias = next(t for t in model.graph.initializer if t.name.endswith("output.bias"))  # (V,)
    bias.CopyFrom(onnx.numpy_helper.from_array(np.full_like(onnx.numpy_helper.to_array(bias), np.nan), bias.name))
    for prop in model.metadata_props:
        prop.value = contract.HASH_PLACEHOLDER if prop.key == contract.CONTENT_HASH_KEY else prop.value
    path.write_bytes(contract.stamp_content_hash(model.SerializeToString()))
    runtime = OnnxSeq2Seq.load(model_dir)
    for batch in (1, 300):  # the bound small-batch loop and session.run
        with pytest.raises(ValueError, match="non-finite logits"):
            runtime.greedy(np.full((batch, 4), 2))
    with pytest.raises(ValueError, match="non-finite logits"):
        runtime.beam_search(np.full((2, 4), 2), beam_size=2)
    with pytest.raises(contract.ModelFileError, match="^decoder_step.onnx produced non-finite logits"):
        runtime.step(np.array([0]), runtime.encode(np.full((1, 4), 2)))  # every call, as export/README.md says
    code, err = cli_exit(["decode", "--model_dir", model_dir, "2 3 4 5"], capsys)
    assert code == 2 and "non-finite logits" in err and "Traceback" not in err


def test_strip_takes_one_row_and_says_so_for_a_batch(runtime_model):
    model = runtime_model("gru")  # an end token: 1
    assert model.strip([2, 3, 1, 0]) == [2, 3] and model.strip(np.array([4, 0, 0])) == [4]
    with pytest.raises(ValueError, match=r"strip takes one row of ids; for a batch: \[model.strip\(row\) for row"):
        model.strip(np.array([[2, 1], [3, 1]]))


@pytest.mark.parametrize("cell", [True, None, 5.0], ids=["bool", "None", "float"])
def test_a_list_holding_a_non_integer_is_named(cell, runtime_model):
    """numpy would read [True, 3] as [1, 3] and decode it; None made a ragged-rows message."""
    model = runtime_model("gru")
    for source in ([[2, cell]], [2, cell], [np.array([2, 3]), [2, cell]]):
        with pytest.raises(TypeError, match=rf"^source must hold integer token ids, got {cell!r} \("):
            model.greedy(source)
    assert model.greedy([np.array([2, 3]), [2, 3]]).tolist() == model.greedy([[2, 3], [2, 3]]).tolist()


@pytest.mark.parametrize("token", [-1, 9])
def test_a_large_batch_is_range_checked_too(token, runtime_model):
    """Past _PY_RANGE_CHECK_MAX tokens numpy checks the range: a mutation that skipped it passed every small case."""
    model = runtime_model("lstm")  # vocabulary 9, sources of exactly 4 tokens
    source = np.full((17, 4), 3)
    source[11, 2] = token
    with pytest.raises(ValueError, match=rf"^source\[11, 2\]: token {token} is out of range"):
        model.greedy(source)


def test_reference_ids_of_no_references_is_an_empty_batch(text_exported):
    model = OnnxSeq2Seq.load(text_exported("trained").model_dir)
    assert model.reference_ids([]).shape == (0, 0, 1)


@pytest.mark.parametrize(
    "references, message",
    [
        (["hello"], "references[0] must be a list of str (a source's references), got 'hello'"),  # was 5 references
        ("hello", "references must be a list of lists of str, got str"),
        ([["ab"], None], "references[1] must be a list of str (a source's references), got None"),
        ([["ab", 3]], "references[0]: references must be str, got 3"),
    ],
)
def test_reference_ids_refuses_what_is_not_a_list_of_lists_of_texts(references, message, text_exported):
    model = OnnxSeq2Seq.load(text_exported("trained").model_dir)
    with pytest.raises(TypeError, match=f"^{re.escape(message)}$"):
        model.reference_ids(references)


def test_a_token_beyond_int64_is_named_as_such(runtime_model):
    model = runtime_model("gru")
    for source in ([2**70, 3], [[2, 3], [2**64, 2]]):
        with pytest.raises(ValueError, match=r"^source: token \d+ is out of range \(beyond int64\)$"):
            model.greedy(source)


@pytest.mark.parametrize("value", [-3, "2", 1.5, True])
def test_thread_counts_are_checked_before_onnxruntime_sees_them(value, exported):
    """-3 was taken silently, "2" got onnxruntime's "incompatible function arguments"."""
    for name in ("intra_op_threads", "inter_op_threads"):
        with pytest.raises(ValueError, match=f"^{name} must be an integer >= 0 \\(0: onnxruntime's default\\), got"):
            OnnxSeq2Seq.load(exported("gru").model_dir, **{name: value})


def test_load_names_a_bad_model_dir_or_provider(exported, tmp_path):
    """onnxruntime fell back to the CPU after three banners for an unknown provider; "" loaded the current folder;
    a folder or a dangling link in place of a graph file got IsADirectoryError or loaded without greedy.onnx."""
    source = exported("lstm").model_dir
    with pytest.raises(ValueError, match=r"^providers: Nope is not in this onnxruntime; it has .*CPUExecutionProvider"):
        OnnxSeq2Seq.load(source, providers=["Nope"])
    for providers in ("CPUExecutionProvider", [], [3]):
        with pytest.raises(TypeError, match="^providers must be a non-empty list of provider names, got"):
            OnnxSeq2Seq.load(source, providers=providers)
    assert OnnxSeq2Seq.load(source, providers=[("CPUExecutionProvider", {})]).greedy([3, 4, 5, 6]).ndim == 1
    with pytest.raises(ValueError, match="^model_dir is empty: pass the folder `lit-seq2seq export` wrote$"):
        OnnxSeq2Seq.load("")
    with pytest.raises(TypeError, match="^model_dir must be a folder path, got None$"):  # failed inside pathlib
        OnnxSeq2Seq.load(None)
    for file in (contract.ENCODER_FILE, contract.GREEDY_FILE):
        damaged = tmp_path / file
        shutil.copytree(source, damaged)
        (damaged / file).unlink()
        (damaged / file).mkdir()
        with pytest.raises(ModelFileError, match=f"{file}: a folder, not a graph file; export the model again$"):
            OnnxSeq2Seq.load(damaged)
    linked = tmp_path / "link"
    shutil.copytree(source, linked)
    (linked / contract.GREEDY_FILE).unlink()
    (linked / contract.GREEDY_FILE).symlink_to(tmp_path / "gone.onnx")
    with pytest.raises(ModelFileError, match=f"{contract.GREEDY_FILE}: missing \\(a link to a missing file\\)"):
        OnnxSeq2Seq.load(linked)


@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_chunks_of_a_large_id_batch_decode_as_one_batch(name, runtime_model, monkeypatch):
    """Rows of mixed lengths over several chunks (CHUNK_ROWS 4; beam search's BEAM_CHUNK_ROWS, sources x beams, 7): the
    tokens and beam scores of one call, in order."""
    import lit_seq2seq.runtime as runtime
    from lit_seq2seq.runtime import pad_batch

    model = runtime_model(name)
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, model.source_length + 3, 19)  # untrained lengths too: the chunks' widths differ
    rows = [rng.integers(model.min_token, model.source_vocab_size, n).tolist() for n in lengths]
    source, allow = pad_batch(rows, model.pad_token), {"allow_untrained_lengths": True}

    def run() -> tuple[np.ndarray, ...]:
        return model.greedy(source, **allow), *model.beam_search(source, beam_size=3, **allow)

    whole = run()
    monkeypatch.setattr(runtime, "CHUNK_ROWS", 4)
    chunked = run()
    assert chunked[0].tolist() == whole[0].tolist() and chunked[1].tolist() == whole[1].tolist()
    np.testing.assert_allclose(chunked[2], whole[2], rtol=1e-5)
    monkeypatch.setattr(runtime, "CHUNK_ROWS", 256)
    monkeypatch.setattr(runtime, "BEAM_CHUNK_ROWS", 7)  # beam 3: chunks of 2 sources (6 rows of state)
    beam = model.beam_search(source, beam_size=3, **allow)
    assert beam[0].tolist() == whole[1].tolist()
    np.testing.assert_allclose(beam[1], whole[2], rtol=1e-5)
    with pytest.raises(ValueError, match="^pad_batch: no rows$"):
        pad_batch([], model.pad_token)


# Metadata no exporter writes, the content hash stamped again (by hand, or by an app that edits exports): each was
# used unchecked, to loop a billion steps, decode with an end token greedy.onnx does not know, print a target token
# holding a newline as two lines, or fail inside onnxruntime at the first call.
HOSTILE_METADATA = [
    ("gru", {"max_target_length": "1000000000"}, "metadata max_target_length is 1000000000, 1 to 4096 expected"),
    ("gru", {"max_target_length": "0"}, "metadata max_target_length is 0, 1 to 4096 expected"),
    ("gru", {"source_length": "1000000000000"}, "source_length is 1000000000000, min_source_length to 100,000"),
    ("gru", {"min_source_length": "9"}, "metadata source_length is 5, min_source_length to 100,000 expected"),
    ("gru", {"pad_token": "99"}, "metadata pad_token is 99, a target id (0 to 7) expected"),
    ("gru", {"start_token": "999"}, "metadata start_token is 999, a target id (0 to 7) expected"),
    ("gru", {"min_token": "-100"}, "metadata min_token is -100, above pad_token and below source_vocab_size"),
    ("gru", {"hidden_size": "64"}, "metadata hidden_size is 64, but the graphs' h has 16 on axis 2"),
    ("gru", {"num_layers": "-3"}, "metadata num_layers is -3, at least 1 expected"),
    ("lstm_attention", {"memory_dim": "7"}, "metadata memory_dim is 7, but the graphs' memory has 16 on axis 2"),
    ("lstm_attention", {"memory_dim": "0"}, "metadata memory_dim is 0, above 0 with attention, else 0, expected"),
    ("text", {"eos_token": "3"}, "metadata pad_token, eos_token is (0, 3), 0, 1 for a text model"),
    ("text", {"format_version": "1", "vocab_size": "8"}, "metadata format_version is '1', 2 for a text model"),
    ("text", {"source_lowercase": "2"}, "text metadata is damaged (ValueError: source_lowercase must be 0 or 1, got"),
    ("text", {"target_tokens": '["<pad>", "</s>", "A\\nB", "AH"]', "target_vocab_size": "4"},
     "(ValueError: target_tokens holds 'A\\nB': tokens are non-empty printable strings)"),
    ("text", {"target_tokens": '["<pad>", "</s>", "A B", "AH"]', "target_vocab_size": "4"},
     "(ValueError: target_tokens holds 'A B', which the space tokenizer never makes)"),
    ("text", {"source_tokens": '["<pad>", "</s>", "ab", "c"]', "source_vocab_size": "4"},
     "(ValueError: source_tokens holds 'ab', which the char tokenizer never makes)"),
    ("text", {"target_tokens": '["<pad>", "</s>", null, "AH"]', "target_vocab_size": "4"},
     "(ValueError: target_tokens holds None: tokens are non-empty printable strings)"),
]  # fmt: skip


@pytest.mark.parametrize(
    "name, changes, message", HOSTILE_METADATA, ids=[f"{n}-{next(iter(c))}" for n, c, _ in HOSTILE_METADATA]
)
def test_metadata_no_export_writes_is_refused_at_load_naming_the_key(
    name, changes, message, exported, text_exported, tmp_path
):
    source = text_exported("trained").model_dir if name == "text" else exported(name).model_dir
    model_dir = tmp_path / "m"
    shutil.copytree(source, model_dir)
    for graph in contract.GRAPH_FILES:
        restamp(model_dir / graph, **changes)
    with pytest.raises(ModelFileError, match=re.escape(message)):
        OnnxSeq2Seq.load(model_dir)


def test_a_source_past_the_longest_decoded_is_refused_even_when_untrained_lengths_are_allowed(runtime_model):
    """A 20,000,000-character line with --allow_untrained_lengths took 22 GB; the limit holds for ids and texts."""
    from lit_seq2seq.runtime import MAX_SOURCE_TOKENS

    model = runtime_model("gru")
    wide = np.full((1, MAX_SOURCE_TOKENS + 1), 3)
    with pytest.raises(ValueError, match=r"^source: 100,001 tokens wide; at most 100,000 are decoded"):
        model.greedy(wide, allow_untrained_lengths=True)


def test_integer_ids_in_an_object_array_are_read_as_ids(runtime_model):
    """pandas' .values of an id column gives an object array: it was refused as "rows have different lengths"."""
    model = runtime_model("gru")
    ids = [[2, 3, 4], [5, 6, 7]]
    assert model.greedy(np.array(ids, dtype=object)).tolist() == model.greedy(ids).tolist()
    with pytest.raises(TypeError, match=r"^source must hold integer token ids, got 'x' \(str\)$"):
        model.greedy(np.array([[2, "x"]], dtype=object))
    with pytest.raises(ValueError, match="rows have different lengths"):
        model.greedy(np.array([[2, 3], [4]], dtype=object))
