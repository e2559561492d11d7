"""The two-graph ONNX contract shared by export, runtime and search: file names, I/O names, metadata keys, and the
content hash rule (stamped by export, checked by the runtime; plain hashlib, no torch or onnx)."""

import hashlib

ENCODER_FILE = "encoder.onnx"
DECODER_FILE = "decoder_step.onnx"
GREEDY_FILE = "greedy.onnx"  # encoder + a Loop over the step + argmax: one call decodes (optional for older exports)
GRAPH_FILES = (ENCODER_FILE, DECODER_FILE, GREEDY_FILE)
# The contract document (export/README.md), copied into every export folder; runtimes never need it (older exports
# lack it).
CONTRACT_FILE = "CONTRACT.md"

# Encoder: source -> initial decoder state. Names are the same as the decoder's state inputs so an app can
# feed the encoder's outputs straight into the first step.
SOURCE = "source"  # int64 (batch, source_len), right-padded with the pad token
TOKEN = "token"  # int64 (batch,)
LOGITS = "logits"  # float32 (batch, vocab)
H = "h"  # float32 (num_layers, batch, hidden)
C = "c"  # float32 (num_layers, batch, hidden); LSTM only
MEMORY = "memory"  # float32 (batch, source_len, memory_dim); attention only
MEMORY_MASK = "memory_mask"  # bool (batch, source_len), True at real tokens; attention only

# greedy.onnx: source -> tokens, the whole greedy decode in one call.
MAX_LEN = "max_len"  # int64 scalar or [1], optional (default max_target_length): decoder steps at most
TOKENS = "tokens"  # int64 (batch, steps), padded with the pad token after each row's end token

RECURRENT = (H, C)  # state the step graph updates; outputs are named with OUT_SUFFIX
OUT_SUFFIX = "_out"

# Axis of each state entry that runs over the batch, for selecting rows (beam search, finished rows).
BATCH_AXIS = {H: 1, C: 1, MEMORY: 0, MEMORY_MASK: 0}


def state_names(cell: str, attention: bool) -> list[str]:
    """Names of the decoder state, in graph order, for a cell ("lstm" or "gru") and attention flag."""
    names = [H, C] if cell == "lstm" else [H]
    return names + ([MEMORY, MEMORY_MASK] if attention else [])


def encoder_io(cell: str, attention: bool) -> tuple[list[str], list[str]]:
    """(input names, output names) of encoder.onnx."""
    return [SOURCE], state_names(cell, attention)


def decoder_io(cell: str, attention: bool) -> tuple[list[str], list[str]]:
    """(input names, output names) of decoder_step.onnx."""
    state = state_names(cell, attention)
    return [TOKEN, *state], [LOGITS] + [n + OUT_SUFFIX for n in state if n in RECURRENT]


def greedy_io() -> tuple[list[str], list[str]]:
    """(input names, output names) of greedy.onnx; max_len may be left out (its default is stored in the graph)."""
    return [SOURCE, MAX_LEN], [TOKENS]


# Format 2 keys of text models (lit_seq2seq/text.py writes and reads them); all "" in an id-only model.
TEXT_KEYS = (
    "source_tokens",  # JSON array of token strings, index = id
    "target_tokens",
    "source_tokenizer",  # char | space
    "target_tokenizer",
    "source_lowercase",  # 0 | 1
    "target_lowercase",
    "normalization",  # NFC
    "unk_token",  # source id unknown tokens map to, "" when they are an error
)

# metadata_props keys; every value is a string (ONNX metadata is str -> str).
META_KEYS = (
    "format_version",  # contract version, bumped on incompatible changes
    "producer_version",  # lit-seq2seq version that exported the graphs
    "task",  # task name, e.g. reverse_first
    "source_vocab_size",  # ids the encoder reads (format 1: one "vocab_size" for both sides)
    "target_vocab_size",  # ids the decoder reads and writes: the width of LOGITS
    "pad_token",
    "start_token",
    "eos_token",  # "" when the task has no end token (fixed-length targets)
    "min_token",  # smallest id a source token may take
    "source_length",  # longest source seen in training
    "min_source_length",
    "max_target_length",  # decoder steps to run at most
    "hidden_size",
    "num_layers",  # layers of the state h (and c): the RNN layers, one more with context_rnn
    "cell",  # lstm | gru
    "bidirectional",  # 0 | 1
    "attention",  # 0 | 1
    "context_rnn",  # 0 | 1 (absent before it existed): a second decoder RNN over attention's output
    "memory_dim",  # width of MEMORY, 0 without attention
    "inputs",  # comma-separated input names of this graph
    "outputs",  # comma-separated output names of this graph
    "export_id",  # random id shared by the two graphs of one export: a mixed pair is refused
    "content_sha256",  # see CONTENT_HASH_KEY
    *TEXT_KEYS,
)
FORMAT_VERSION = "2"
READABLE_VERSIONS = ("1", "2")  # 2 = 1 with two vocabulary sizes and the text keys
OPTIONAL_KEYS = ("context_rnn",)  # absent in exports made before it (then 0)


def required_keys(format_version: str) -> tuple[str, ...]:
    """The metadata keys every graph file of a readable `format_version` holds; a file without one is refused."""
    if format_version == "1":
        sizes = ("source_vocab_size", "target_vocab_size")
        keys = [key for key in META_KEYS if key not in TEXT_KEYS and key not in sizes] + ["vocab_size"]
    else:
        keys = list(META_KEYS)
    return tuple(key for key in keys if key not in OPTIONAL_KEYS)


def vocab_keys(meta: dict[str, str]) -> tuple[str, str]:
    """The metadata keys of (source_vocab_size, target_vocab_size), of either readable format."""
    return ("vocab_size",) * 2 if meta.get("format_version") == "1" else ("source_vocab_size", "target_vocab_size")


def vocab_sizes(meta: dict[str, str]) -> tuple[int, int]:
    """(source_vocab_size, target_vocab_size) of a graph's metadata, of either readable format."""
    source, target = vocab_keys(meta)
    return int(meta[source]), int(meta[target])


# "content_sha256" holds the sha256 (lowercase hex) of the file's bytes as written with that value replaced by this
# placeholder, so any app can check a file with a hash function alone. "export_id" is shared by the files of one export.
CONTENT_HASH_KEY = "content_sha256"
HASH_PLACEHOLDER = "0" * 64
# The marker in the serialized file: the key string, then protobuf field 2 (value), wire type 2, length 64. A file
# must hold it exactly once: with two, which one is the hash would depend on the reader.
_HASH_ENTRY = CONTENT_HASH_KEY.encode() + b"\x12\x40"


class ModelFileError(ValueError):
    """An exported graph is missing, damaged, altered or does not belong with its partner."""


def stamp_content_hash(data: bytes) -> bytes:
    """A serialized graph whose content_sha256 holds HASH_PLACEHOLDER -> the same bytes with the real hash."""
    entry = _HASH_ENTRY + HASH_PLACEHOLDER.encode()
    if data.count(_HASH_ENTRY) != 1 or entry not in data:
        raise ValueError(f"the serialized graph must hold exactly one {CONTENT_HASH_KEY} placeholder entry")
    return data.replace(entry, _HASH_ENTRY + hashlib.sha256(data).hexdigest().encode())


def check_content_hash(data: bytes, name: str) -> None:
    """Raise ModelFileError unless `data` carries exactly one content_sha256 entry and it matches its bytes."""
    at = data.find(_HASH_ENTRY)
    start = at + len(_HASH_ENTRY)
    if at >= 0 and data.find(_HASH_ENTRY, start) >= 0:  # the rest of the file only: one pass over the bytes
        raise ModelFileError(f"{name}: {CONTENT_HASH_KEY} occurs more than once (altered, or not from lit-seq2seq)")
    stored = data[start : start + 64] if at >= 0 else b""
    if len(stored) != 64:
        raise ModelFileError(f"{name}: no {CONTENT_HASH_KEY} metadata (truncated, or not exported by lit-seq2seq)")
    # The placeholder goes back exactly where the value stands, not wherever those 64 bytes occur first.
    actual = hashlib.sha256(data[:start] + HASH_PLACEHOLDER.encode() + data[start + 64 :]).hexdigest()
    if actual.encode() != stored:
        raise ModelFileError(f"{name}: content hash mismatch, the file was altered or damaged; export it again")
