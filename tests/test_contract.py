"""contract.py: the state and I/O names, the content hash rule (stamp_content_hash / check_content_hash); the contract
document (export/README.md, CONTRACT.md in every export folder) against the code; and export/consumer_example.py, a
foreign app that follows the document with numpy and onnxruntime alone."""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import re
import runpy
import shlex
import shutil
import sys
import unicodedata

import onnx
import onnxruntime as ort
import pytest
from conftest import BLOCK_IMPORTS, REPO, cli_output, flip_bit, into_closed_pipe, pad_rows, restamp, run_python

from lit_seq2seq import bundled, contract
from lit_seq2seq.contract import ModelFileError, check_content_hash, stamp_content_hash
from lit_seq2seq.runtime import OnnxSeq2Seq
from lit_seq2seq.text import TextSpec, Tokenizer, Vocab

CONSUMER = REPO / "export" / "consumer_example.py"
DOC = REPO / "export" / "README.md"
FILES = contract.GRAPH_FILES

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


def test_a_hash_marker_that_occurs_twice_fails_the_check():
    """Two content_sha256 entries, the first one right for the whole file: which entry is the hash would depend on
    the reader, so the file is refused (the contract's corner case), not accepted by the first one found."""
    data = graph_bytes(contract.HASH_PLACEHOLDER, "a" * 64)
    digest = hashlib.sha256(data).hexdigest().encode()
    first = data.find(contract.HASH_PLACEHOLDER.encode())
    stamped = data[:first] + digest + data[first + 64 :]
    with pytest.raises(ModelFileError, match=f"m.onnx: {contract.CONTENT_HASH_KEY} occurs more than once"):
        check_content_hash(stamped, "m.onnx")


def test_an_upper_case_hash_is_a_mismatch():
    """The stored value is lowercase hex and compared byte for byte, as the contract says."""
    stamped = stamp_content_hash(graph_bytes(contract.HASH_PLACEHOLDER))
    value = stored_hash(stamped)
    assert value == value.lower() and value != value.upper()
    with pytest.raises(ModelFileError, match="content hash mismatch"):
        check_content_hash(stamped.replace(value.encode(), value.upper().encode()), "m.onnx")


def test_an_unstamped_file_fails_the_check():
    with pytest.raises(ModelFileError, match="content hash mismatch"):
        check_content_hash(graph_bytes(contract.HASH_PLACEHOLDER), "m.onnx")


@pytest.mark.parametrize(
    "values",
    [(), ("f" * 64,), (contract.HASH_PLACEHOLDER, contract.HASH_PLACEHOLDER), (contract.HASH_PLACEHOLDER, "f" * 64)],
    ids=["none", "stamped", "two", "placeholder and another"],
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


# ------------------------------------------------------------------------------------- the contract document


def doc_section(text: str, title: str) -> str:
    """The body of the `## title` section of a markdown text."""
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else len(text)]


def anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lowercase, punctuation other than - and _ dropped, spaces as -."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize("name", ["lstm", "gru_bi_attention"])
def test_every_export_folder_holds_the_graphs_and_the_contract(name, exported):
    out = exported(name).model_dir
    assert sorted(p.name for p in out.iterdir()) == sorted([*contract.GRAPH_FILES, contract.CONTRACT_FILE])
    # the bundled document, byte for byte: export/README.md in a checkout, lit_seq2seq/contract_doc/ in a wheel
    assert (out / contract.CONTRACT_FILE).read_bytes() == bundled.contract_path().read_bytes() == DOC.read_bytes()


def test_the_contract_states_the_format_version_the_code_writes():
    first = DOC.read_text().splitlines()[0]
    assert first.startswith("# ")
    assert re.search(r"contract format_version (\d+)$", first).group(1) == contract.FORMAT_VERSION
    versions = re.search(r"this version: (.*?)\)", DOC.read_text()).group(1)
    assert re.findall(r"`(\d+)`", versions) == list(contract.READABLE_VERSIONS)


def test_the_contract_documents_every_metadata_key():
    """Every key the export writes (contract.META_KEYS) has a row in the table: the document cannot drift from it."""
    table = doc_section(DOC.read_text(), "Metadata keys")
    rows = [line.split("|")[1] for line in table.splitlines() if line.startswith("| `")]
    documented = {key for row in rows for key in re.findall(r"`([a-z_0-9]+)`", row)}
    assert set(contract.META_KEYS) | {"vocab_size"} == documented  # vocab_size: format 1
    assert contract.CONTENT_HASH_KEY in contract.META_KEYS


def test_the_contract_names_the_files_and_the_tensors_of_the_code():
    text = DOC.read_text()
    files = doc_section(text, "Files")
    for name in (*contract.GRAPH_FILES, contract.CONTRACT_FILE):
        assert f"| `{name}` |" in files
    tensors = doc_section(text, "Tensors")
    for name in (
        contract.SOURCE,
        contract.TOKEN,
        contract.LOGITS,
        *contract.BATCH_AXIS,
        contract.MAX_LEN,
        contract.TOKENS,
    ):
        assert f"`{name}`" in tensors
    assert "Every output named `X_out` gives the value of input `X` at the next step" in tensors
    assert contract.OUT_SUFFIX == "_out" and set(contract.RECURRENT) == {contract.H, contract.C}
    # the hash marker as the document spells it is the one contract.py looks for
    assert "`content_sha256` (ASCII) followed by `0x12 0x40`" in text
    assert contract._HASH_ENTRY == contract.CONTENT_HASH_KEY.encode() + bytes([0x12, 0x40])


def test_the_contract_links_work_with_the_export_folder_alone():
    """CONTRACT.md lies in the export folder, alone: every link is an anchor of one of its own headings."""
    text = DOC.read_text()
    anchors = {anchor(h) for h in re.findall(r"^#+ (.*)$", text, re.M)}
    links = re.findall(r"\]\(([^)]*)\)", text)
    assert links and all(link.startswith("#") for link in links), [x for x in links if not x.startswith("#")]
    assert {link[1:] for link in links} <= anchors, {link[1:] for link in links} - anchors
    assert "../" not in text


def test_the_runtime_does_not_need_the_contract_document(exported, tmp_path):
    """Exports older than CONTRACT.md lack it; they load and decode alike."""
    shutil.copytree(exported("gru").model_dir, tmp_path / "model")
    (tmp_path / "model" / contract.CONTRACT_FILE).unlink()
    source = pad_rows([[2, 3, 4], [5]])
    expected = OnnxSeq2Seq.load(exported("gru").model_dir).greedy(source, allow_untrained_lengths=True)
    assert (OnnxSeq2Seq.load(tmp_path / "model").greedy(source, allow_untrained_lengths=True) == expected).all()


# ------------------------------------------------------------------------------------- consumer example


# export/consumer_example.py as a foreign app runs it: lit_seq2seq and torch cannot be imported
AS_FOREIGN_APP = (
    BLOCK_IMPORTS + "import runpy\nsys.argv = sys.argv[2:]\nrunpy.run_path(sys.argv[0], run_name='__main__')"
)


def consumer(*args: str, stdin: str | None = None):
    """export/consumer_example.py ARGS, as a foreign app runs it."""
    return run_python(AS_FOREIGN_APP, "lit_seq2seq", str(CONSUMER), *map(str, args), stdin=stdin)


def decode_output(model_dir, lines: str, capsys, *flags: str) -> list[str]:
    code, out, err = cli_output(["decode", "--model_dir", model_dir, *flags], capsys, stdin=lines)
    assert code == 0, err
    return out.splitlines()


def sample_lines(model_dir, capsys, n: int = 40) -> str:
    code, out, err = cli_output(["sample", "--model_dir", model_dir, "-n", n, "--seed", "7"], capsys)
    assert code == 0, err
    return out


def test_consumer_example_requires_the_metadata_keys_the_runtime_requires():
    spec = importlib.util.spec_from_file_location("consumer_example", REPO / "export" / "consumer_example.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    assert {v: sorted(keys) for v, keys in example.REQUIRED.items()} == {
        v: sorted(contract.required_keys(v)) for v in contract.READABLE_VERSIONS
    }


def test_consumer_example_imports_only_the_standard_library_numpy_and_onnxruntime():
    text = CONSUMER.read_text()
    assert text.startswith('"""')
    imported = set()
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module.split(".")[0])
    standard = {"argparse", "hashlib", "json", "os", "re", "sys", "unicodedata", "pathlib"}
    assert imported <= standard | {"numpy", "onnxruntime"}


@pytest.mark.parametrize("name", ["lstm", "gru_bi_attention", "copy_trained"])
def test_consumer_example_reads_the_metadata_by_the_documented_field_numbers(name, exported):
    """Its protobuf reader (ModelProto field 14, key 1, value 2) finds what onnxruntime's metadata map holds."""
    reader = runpy.run_path(str(CONSUMER))
    for file in FILES:
        data = (exported(name).model_dir / file).read_bytes()
        assert reader["metadata_props"](data) == ort.InferenceSession(data).get_modelmeta().custom_metadata_map
        reader["check_hash"](data)


@pytest.mark.parametrize("path", ["greedy.onnx", "two-graph"])
@pytest.mark.parametrize("name", ["lstm", "gru_bi_attention", "copy_trained"])
def test_consumer_example_prints_what_decode_prints(name, path, exported, capsys):
    """Fresh samples of the model's task (trained lengths), as `lit-seq2seq decode` reads them: the same lines."""
    model_dir = exported(name).model_dir
    lines = sample_lines(model_dir, capsys)
    expected = decode_output(model_dir, lines, capsys)
    flags = ["--two-graph"] if path == "two-graph" else []
    result = consumer(model_dir, *flags, stdin=lines)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert result.stdout.splitlines() == expected and len(expected) == 40
    sources = [line.partition("\t")[0] for line in lines.splitlines()[:3]]  # sources as arguments: the same
    assert consumer(model_dir, *sources, *flags).stdout.splitlines() == expected[:3]


@pytest.mark.parametrize("lines, reader", [(30000, "head -1"), (2, "true")])
def test_consumer_example_into_a_closed_pipe_exits_0_quietly(exported, tmp_path, lines, reader):
    """`consumer_example.py DIR < lines | head -1`, as decode does (it ended in a BrokenPipeError traceback): more
    output than a pipe holds, and a little left in Python's buffer (unbuffered here, the CI's stdout is not)."""
    (tmp_path / "in.txt").write_text("2 3 4 5\n" * lines)
    args = " ".join(shlex.quote(a) for a in ("-c", AS_FOREIGN_APP, "lit_seq2seq", str(CONSUMER)))
    command = f"{shlex.quote(sys.executable)} {args} {shlex.quote(str(exported('lstm').model_dir))}"
    done = into_closed_pipe(f"{command} < in.txt", reader, tmp_path)
    assert (done.returncode, done.stderr) == (0, "")


def test_consumer_example_decodes_untrained_lengths_only_when_asked(exported, capsys):
    model_dir = exported("lstm").model_dir  # trained on exactly 4 tokens
    lines = "2 3 4\n5 6 7 8 2 3\n4 5 6 7\n"
    expected = decode_output(model_dir, lines, capsys, "--allow_untrained_lengths")
    for flags in ([], ["--two-graph"]):
        result = consumer(model_dir, "--allow-untrained-lengths", *flags, stdin=lines)
        assert result.returncode == 0 and result.stdout.splitlines() == expected


def refused(result) -> str:
    """The one line a refusal prints (exit code 2, nothing on stdout)."""
    assert result.returncode == 2 and result.stdout == "", (result.returncode, result.stdout, result.stderr)
    assert len(result.stderr.splitlines()) == 1 and "Traceback" not in result.stderr, result.stderr
    return result.stderr


@pytest.mark.parametrize(
    "line,message",
    [
        (
            "2 3 4",
            "line 2: 3 tokens; this model was trained on sources of exactly 4 tokens (pass --allow-untrained-lengths",
        ),
        ("", "line 2: empty source"),
        ("0 0 0 0", "line 2: empty source"),
        ("2 3 9 4", "line 2: token 9 is out of range; tokens must be in [1, 8]"),
        ("2 0 3 4", "line 2: token 0 is out of range"),
        ("2 x 3 4", "line 2: '2 x 3 4' is not a list of space-separated integer token ids"),
        ("2 1_3 3 4", "line 2: '2 1_3 3 4' is not a list of space-separated integer token ids"),  # int() reads 13
    ],
    ids=["untrained length", "empty line", "only padding", "token out of range", "padding inside", "not ids", "1_3"],
)
def test_consumer_example_refuses_a_bad_source(line, message, exported):
    result = consumer(exported("lstm").model_dir, stdin=f"2 3 4 5\n{line}\n3 4 5 6\n")
    assert f"consumer_example.py: {message}" in refused(result)


MISSING = "no metadata min_source_length (damaged, or not written by lit-seq2seq)"


@pytest.mark.parametrize(
    "change, message",
    [
        ({"min_source_length": None}, "metadata min_source_length is None, an integer expected"),
        ({"eos_token": "one"}, "metadata eos_token is 'one', an integer expected"),
        ({"cell": "rnn"}, "metadata cell is 'rnn', one of lstm, gru expected"),
    ],
    ids=["missing", "not an integer", "unknown cell"],
)
def test_malformed_metadata_is_refused_naming_file_and_key(change, message, exported, tmp_path, capsys):
    """A well-formed, hash-stamped export whose metadata an app got wrong: a ModelFileError naming the key, not a
    KeyError or int() traceback (decode.mjs already said so). The runtime checks that every listed key is there
    before it reads one."""
    model_dir = tmp_path / "model"
    shutil.copytree(exported("gru").model_dir, model_dir)
    for name in FILES:
        restamp(model_dir / name, **change)
    with pytest.raises(ModelFileError) as info:
        OnnxSeq2Seq.load(model_dir)
    missing = None in change.values()  # found before any value is read, in the first file
    expected = f"{model_dir / contract.ENCODER_FILE}: {MISSING}; export it again" if missing else None
    expected = expected or f"{model_dir / contract.DECODER_FILE}: {message}"
    assert str(info.value) == expected
    code, out, err = cli_output(["decode", "--model_dir", model_dir, "2 3"], capsys)
    assert (code, err) == (2, f"lit-seq2seq decode: error: {expected}\n")
    if "cell" not in change:  # what the consumer reads: the token settings (the cell is the graphs' business)
        result = consumer(model_dir, "2 3")
        said = MISSING if missing else message
        assert result.stderr == f"consumer_example.py: {model_dir / contract.ENCODER_FILE}: {said}\n"
        assert result.returncode == 2


def test_consumer_example_accepts_trailing_padding_as_decode_does(exported, capsys):
    model_dir = exported("lstm").model_dir
    lines = "2 3 4 5 0 0\n6 7 8 2\n"
    assert consumer(model_dir, stdin=lines).stdout.splitlines() == decode_output(model_dir, lines, capsys)


@pytest.mark.parametrize(
    "fault,message",
    [
        ("version 3 decoder", "decoder_step.onnx: contract format_version '3'; this reader knows 1 and 2"),
        ("version 3 greedy", "greedy.onnx: contract format_version '3'"),
        ("no version", "encoder.onnx: contract format_version None"),
        ("mixed pair", "encoder.onnx and decoder_step.onnx come from different exports"),
        ("mixed greedy", "encoder.onnx and greedy.onnx come from different exports"),
        ("damaged", "decoder_step.onnx: content hash mismatch"),
        ("missing", "decoder_step.onnx: No such file or directory"),
        ("two hash entries", "encoder.onnx: content_sha256 occurs 2 times, not once"),
        ("truncated", "encoder.onnx: content_sha256 occurs 0 times, not once"),
    ],
)
def test_consumer_example_refuses_a_bad_export(fault, message, exported, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(exported("lstm").model_dir, model)
    other = exported("lstm_2layer").model_dir  # same task and sizes: only export_id tells them apart
    if fault.startswith("version 3"):
        restamp(model / (contract.DECODER_FILE if "decoder" in fault else contract.GREEDY_FILE), format_version="3")
    elif fault == "no version":
        restamp(model / contract.ENCODER_FILE, format_version=None)
    elif fault == "mixed pair":
        shutil.copy(other / contract.DECODER_FILE, model)
    elif fault == "mixed greedy":
        shutil.copy(other / contract.GREEDY_FILE, model)
    elif fault == "damaged":
        flip_bit(model / contract.DECODER_FILE, (model / contract.DECODER_FILE).stat().st_size // 2)
    elif fault == "missing":
        (model / contract.DECODER_FILE).unlink()
    elif fault == "two hash entries":
        extra = onnx.ModelProto()
        extra.metadata_props.add(key=contract.CONTENT_HASH_KEY, value="f" * 64)
        path = model / contract.ENCODER_FILE
        path.write_bytes(path.read_bytes() + extra.SerializeToString())  # protobuf appends the repeated field
    else:
        path = model / contract.ENCODER_FILE
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    assert message in refused(consumer(model, "2 3 4 5"))


def test_consumer_example_reads_a_format_1_export_without_greedy_onnx(exported, tmp_path, capsys):
    """An older export: format_version 1 (one vocab_size, no text keys), no greedy.onnx, no CONTRACT.md."""
    model = tmp_path / "model"
    shutil.copytree(exported("copy_trained").model_dir, model)
    for name in (contract.GREEDY_FILE, contract.CONTRACT_FILE):
        (model / name).unlink()
    for name in (contract.ENCODER_FILE, contract.DECODER_FILE):
        meta = OnnxSeq2Seq.load(exported("copy_trained").model_dir).meta
        assert meta["source_vocab_size"] == meta["target_vocab_size"]
        old = dict.fromkeys(["source_vocab_size", "target_vocab_size", *contract.TEXT_KEYS])
        restamp(model / name, format_version="1", vocab_size=meta["source_vocab_size"], **old)
    lines = sample_lines(exported("copy_trained").model_dir, capsys)
    expected = decode_output(exported("copy_trained").model_dir, lines, capsys)
    assert decode_output(model, lines, capsys) == expected  # the runtime reads it too
    result = consumer(model, stdin=lines)
    assert result.returncode == 0 and result.stdout.splitlines() == expected


# Text models: copy_trained (ids 2..5, trained on 1 to 3 tokens) given the text keys of two vocabularies.
CHARS = TextSpec(
    Tokenizer("char", lowercase=True),
    Tokenizer("char"),
    Vocab(("<pad>", "</s>", "a", "b", "c", "é")),
    Vocab(("<pad>", "</s>", "A", "B", "C", "É")),
)
WORDS = TextSpec(
    Tokenizer("space", lowercase=True),
    Tokenizer("space"),
    Vocab(("<pad>", "</s>", "<unk>", "ka", "ni", "ō"), has_unk=True),
    Vocab(("<pad>", "</s>", "KA", "NI", "YU", "Ō")),
)

STRICT = TextSpec(  # no unknown token: an unknown source token is an error
    Tokenizer("space"), Tokenizer("space"), Vocab(("<pad>", "</s>", "ka", "ni", "zz", "ō")), WORDS.target_vocab
)


def text_export(exported, folder, spec: TextSpec):
    shutil.copytree(exported("copy_trained").model_dir, folder)
    for name in FILES:
        restamp(folder / name, **spec.to_metadata())
    return folder


@pytest.mark.parametrize(
    "spec,lines",
    [
        (CHARS, ["abc", "É", "ca", "BAé", "e\u0301a"]),  # upper case, a precomposed and a decomposed é
        (CHARS, ["b"] * 3 + ["ab", "cab"]),
        (WORDS, ["ka ni ō", "KA", " ni\u3000ka ", "o\u0304 zz", "xx yy"]),  # whitespace runs, NFC, unknown -> <unk>
    ],
    ids=["char", "char repeated", "space with unk"],
)
def test_consumer_example_decodes_text_as_the_runtime_does(spec, lines, exported, tmp_path):
    model_dir = text_export(exported, tmp_path / "model", spec)
    model = OnnxSeq2Seq.load(model_dir)
    assert model.text == spec
    rows = [spec.encode(line) for line in lines]
    expected = [spec.decode(row) for row in model.greedy(pad_rows(rows))]
    # as decode prints them: adjacent SOURCE<TAB>REFERENCE lines of one source are one source, one line out
    grouped = [e for i, e in enumerate(expected) if i == 0 or lines[i] != lines[i - 1]]
    for flags in ([], ["--two-graph"]):
        result = consumer(model_dir, *flags, stdin="".join(f"{line}\tignored\n" for line in lines))
        assert result.returncode == 0 and result.stderr == "", result.stderr
        assert result.stdout.splitlines() == grouped
        result = consumer(model_dir, *flags, stdin="".join(f"{line}\n" for line in lines))  # no references
        assert result.stdout.splitlines() == expected
    assert unicodedata.normalize("NFC", "e\u0301a") == "éa"


@pytest.mark.parametrize(
    "spec,line,message",
    [
        (CHARS, "abx", "line 1: unknown token 'x' at position 3"),
        (CHARS, "abca", "line 1: 4 tokens; this model was trained on sources of 1 to 3 tokens"),
        (CHARS, "", "line 1: empty source"),
        (WORDS, "  ", "line 1: empty source"),
        (STRICT, "ka </s>", "line 1: unknown token '</s>' at position 2"),  # a reserved string is no token of a text
        (STRICT, "ni <pad>", "line 1: unknown token '<pad>' at position 2"),
        (STRICT, "ka " + "y" * 5000, f"line 1: unknown token '{'y' * 40}'... (5,000 characters) at position 2"),
    ],
    ids=["unknown token", "untrained length", "empty", "only whitespace", "end string", "pad string", "long token"],
)
def test_consumer_example_refuses_a_bad_text(spec, line, message, exported, tmp_path):
    model_dir = text_export(exported, tmp_path / "model", spec)
    assert message in refused(consumer(model_dir, stdin=f"{line}\n?\n"))  # (a last empty line would be dropped)
