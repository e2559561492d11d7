"""contract.py: the state and I/O names, the content hash rule (stamp_content_hash / check_content_hash), and
export/consumer_example.py, a foreign app that uses the contract with numpy, onnxruntime and hashlib alone."""

from __future__ import annotations

import ast
import hashlib
import shutil
import subprocess
import sys

import onnx
import onnxruntime as ort
import pytest
from conftest import BLOCK_IMPORTS, REPO, flip_bit, pad_rows, run_python, strip_all

from lit_seq2seq import contract
from lit_seq2seq.contract import ModelFileError, check_content_hash, stamp_content_hash

CONSUMER = REPO / "export" / "consumer_example.py"
FILES = (contract.ENCODER_FILE, contract.DECODER_FILE, contract.GREEDY_FILE)

# ---------------------------------------------------------------------------------------------------- names

NAMES = [
    ("lstm", False, ["h", "c"], ["token", "h", "c"], ["logits", "h_out", "c_out"]),
    ("gru", False, ["h"], ["token", "h"], ["logits", "h_out"]),
    ("lstm", True, ["h", "c", "memory", "memory_mask"], ["token", "h", "c", "memory", "memory_mask"],
     ["logits", "h_out", "c_out"]),
    ("gru", True, ["h", "memory", "memory_mask"], ["token", "h", "memory", "memory_mask"], ["logits", "h_out"]),
]  # fmt: skip


@pytest.mark.parametrize("cell,attention,state,decoder_in,decoder_out", NAMES)
def test_state_and_graph_io_names(cell, attention, state, decoder_in, decoder_out):
    assert contract.state_names(cell, attention) == state
    # the encoder's outputs are the decoder's state inputs, so an app can feed one into the other
    assert contract.encoder_io(cell, attention) == (["source"], state)
    assert contract.decoder_io(cell, attention) == (decoder_in, decoder_out)
    assert set(state) <= set(contract.BATCH_AXIS)  # beam search can reorder every state entry


def test_greedy_graph_io_names_are_the_same_for_every_architecture():
    # source in (max_len optional, with a default), tokens out: a client needs no cell or attention flag
    assert contract.greedy_io() == (["source", "max_len"], ["tokens"])
    assert contract.GREEDY_FILE == "greedy.onnx"


# ----------------------------------------------------------------------------------------------- the hash


def graph_bytes(*hash_values: str, task: str = "copy") -> bytes:
    """A serialized ONNX model with a `task` entry and one content_sha256 entry per value."""
    model = onnx.ModelProto(ir_version=8, producer_name="test")
    model.metadata_props.add(key="task", value=task)
    for value in hash_values:
        model.metadata_props.add(key=contract.CONTENT_HASH_KEY, value=value)
    return model.SerializeToString()


def stored_hash(data: bytes) -> str:
    model = onnx.load_model_from_string(data)
    return next(p.value for p in model.metadata_props if p.key == contract.CONTENT_HASH_KEY)


def test_stamp_then_check_round_trip():
    unstamped = graph_bytes(contract.HASH_PLACEHOLDER)
    stamped = stamp_content_hash(unstamped)
    assert len(stamped) == len(unstamped)
    # the documented rule: sha256 of the file with the stored value as the placeholder
    assert stored_hash(stamped) == hashlib.sha256(unstamped).hexdigest()
    check_content_hash(stamped, "m.onnx")
    assert stamp_content_hash(graph_bytes(contract.HASH_PLACEHOLDER, task="sort")) != stamped


@pytest.mark.parametrize("where", ["task value", "stored hash"])
def test_an_altered_byte_fails_the_check(where):
    stamped = bytearray(stamp_content_hash(graph_bytes(contract.HASH_PLACEHOLDER)))
    at = stamped.find(b"copy") if where == "task value" else stamped.find(stored_hash(bytes(stamped)).encode()) + 7
    stamped[at] ^= 0x01
    with pytest.raises(ModelFileError, match="m.onnx: content hash mismatch"):
        check_content_hash(bytes(stamped), "m.onnx")


@pytest.mark.parametrize(
    "data",
    [graph_bytes(), b"", graph_bytes(contract.HASH_PLACEHOLDER)[:-10]],
    ids=["no hash entry", "empty", "cut inside the hash"],
)
def test_a_missing_hash_fails_the_check(data):
    with pytest.raises(ModelFileError, match=f"m.onnx: no {contract.CONTENT_HASH_KEY} metadata"):
        check_content_hash(data, "m.onnx")


def test_an_unstamped_file_fails_the_check():
    with pytest.raises(ModelFileError, match="content hash mismatch"):
        check_content_hash(graph_bytes(contract.HASH_PLACEHOLDER), "m.onnx")


@pytest.mark.parametrize(
    "values", [(), ("f" * 64,), (contract.HASH_PLACEHOLDER, contract.HASH_PLACEHOLDER)], ids=["none", "stamped", "two"]
)
def test_stamping_needs_exactly_one_placeholder_entry(values):
    with pytest.raises(ValueError, match="exactly one content_sha256 placeholder entry") as info:
        stamp_content_hash(graph_bytes(*values))
    assert not isinstance(info.value, ModelFileError)  # a bug in the exporter, not a bad model file


@pytest.mark.parametrize("name", ["lstm", "gru_bi_attention"])
def test_content_hash_is_checkable_with_a_hash_function_alone(name, exported):
    """As documented in contract.py: sha256 of the file with the stored hex value replaced by 64 zeros."""
    out = exported(name).model_dir
    for file in FILES:
        data = (out / file).read_bytes()
        stored = ort.InferenceSession(data).get_modelmeta().custom_metadata_map[contract.CONTENT_HASH_KEY]
        assert len(stored) == 64 and stored != contract.HASH_PLACEHOLDER
        assert data.count(stored.encode()) == 1
        assert hashlib.sha256(data.replace(stored.encode(), contract.HASH_PLACEHOLDER.encode())).hexdigest() == stored


# ------------------------------------------------------------------------------------- consumer example


def test_consumer_example_imports_only_numpy_and_onnxruntime():
    text = CONSUMER.read_text()
    assert text.startswith('"""')
    imported = set()
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module.split(".")[0])
    assert imported <= {"hashlib", "sys", "pathlib", "numpy", "onnxruntime"}, imported


@pytest.mark.parametrize(
    "name,rows",
    [
        ("lstm", [[1, 2, 3, 4], [8, 7, 6, 5], [4, 4], [2, 5, 7, 1, 3, 3]]),
        ("gru_bi_attention", [[2, 3, 4, 5, 6], [7], [3, 3, 2], [6, 5, 4, 3, 2, 7, 7]]),
        ("copy_trained", [[2, 3, 4], [5], [4, 2], [3, 3, 3]]),
    ],
)
def test_consumer_example_matches_the_runtime(name, rows, exported, runtime_model):
    """Run as a foreign app would, with lit_seq2seq and torch unimportable; sources as arguments and on stdin."""
    model = runtime_model(name)
    expected = strip_all(model, model.greedy(pad_rows(rows), allow_untrained_lengths=True))
    code = BLOCK_IMPORTS + "import runpy\nsys.argv = sys.argv[2:]\nrunpy.run_path(sys.argv[0], run_name='__main__')"
    lines = [" ".join(map(str, r)) for r in rows]
    by_args = run_python(code, "lit_seq2seq", str(CONSUMER), str(exported(name).model_dir), *lines)
    assert by_args.returncode == 0, by_args.stderr
    assert by_args.stdout.splitlines() == expected
    by_stdin = subprocess.run(
        [sys.executable, str(CONSUMER), str(exported(name).model_dir)],
        input="".join(f"{line}\tignored\n" for line in lines),
        capture_output=True,
        text=True,
    )
    assert by_stdin.returncode == 0, by_stdin.stderr
    assert by_stdin.stdout.splitlines() == expected


def test_consumer_example_refuses_a_damaged_file(exported, tmp_path):
    shutil.copytree(exported("gru").model_dir, tmp_path / "model")
    decoder = tmp_path / "model" / contract.DECODER_FILE
    flip_bit(decoder, decoder.stat().st_size // 2)
    result = subprocess.run(
        [sys.executable, str(CONSUMER), str(tmp_path / "model"), "2 3"], capture_output=True, text=True
    )
    assert result.returncode != 0 and "content hash mismatch" in result.stderr
