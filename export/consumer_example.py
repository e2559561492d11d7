"""A foreign app's greedy decoder for a lit-seq2seq export, written from CONTRACT.md alone: onnxruntime + numpy.

Usage: python consumer_example.py MODEL_DIR [--two-graph] [--allow-untrained-lengths] [SOURCE ...]

Each SOURCE (or each stdin line when none is given) is one source: space-separated token ids, or for a text model
(non-empty `source_tokens`) the text itself. Text after a tab is ignored, so `lit-seq2seq sample` output and TSV pair
files can be piped in. One line is printed per source, as `lit-seq2seq decode` prints it: the ids before the end
token, or the decoded text (for a text model, adjacent SOURCE<TAB>REFERENCE lines of one source are one source).
Decodes with greedy.onnx when the folder has one (else, or with --two-graph, with the loop over encoder.onnx and
decoder_step.onnx). A bad file or a bad source stops it before anything is decoded: one
line on stderr, exit code 2. Nothing here imports lit_seq2seq; the metadata is read with no protobuf library.
"""

import argparse
import hashlib
import json
import os
import re
import sys
import unicodedata
from pathlib import Path

import numpy as np
import onnxruntime as ort

ENCODER, DECODER, GREEDY = "encoder.onnx", "decoder_step.onnx", "greedy.onnx"
VERSIONS = ("1", "2")  # the contract versions this reader knows
HASH_KEY = "content_sha256"
MARKER = HASH_KEY.encode() + b"\x12\x40"  # the key's bytes, then the value's tag (field 2, wire type 2) and length 64
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")  # C0, DEL, C1 and lone surrogates: refused in texts
# metadata this reader turns into numbers (eos_token may also be "": no end token)
INT_KEYS = ("pad_token", "start_token", "min_token", "source_length", "min_source_length", "max_target_length")
BATCH = 256  # sources per call (any batching: logits within ~1e-7 of decode's chunks, as the contract says)
# the metadata keys every file holds (CONTRACT.md, "Metadata keys"; context_rnn may be absent): a file without one is
# refused, above all without export_id, which tells a mixed folder from one export
COMMON = (
    "format_version producer_version task pad_token start_token eos_token min_token source_length min_source_length "
    "max_target_length hidden_size num_layers cell bidirectional attention memory_dim inputs outputs export_id "
    "content_sha256"
).split()
TEXT = "source_tokens target_tokens source_tokenizer target_tokenizer source_lowercase target_lowercase".split()
REQUIRED = {
    "1": (*COMMON, "vocab_size"),
    "2": (*COMMON, "source_vocab_size", "target_vocab_size", *TEXT, "normalization", "unk_token"),
}


class Refused(Exception):
    """A bad model file or a bad source: reported in one line, exit code 2."""


# ------------------------------------------------------------------------------------------- the files


def varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if at >= len(data):
            raise Refused("truncated protobuf")
        byte = data[at]
        value, shift, at = value | (byte & 0x7F) << shift, shift + 7, at + 1
        if byte < 0x80:
            return value, at


def fields(data: bytes):
    """(field number, value) of each field of one protobuf message; length-delimited values as bytes."""
    at = 0
    while at < len(data):
        tag, at = varint(data, at)
        wire = tag & 7
        if wire == 0:
            value, at = varint(data, at)
        elif wire in (1, 5):
            value, at = None, at + (8 if wire == 1 else 4)
        elif wire == 2:
            size, at = varint(data, at)
            value, at = data[at : at + size], at + size
        else:
            raise Refused(f"protobuf wire type {wire} where ONNX uses none")
        if at > len(data):
            raise Refused("truncated protobuf")
        yield tag >> 3, value


def metadata_props(data: bytes) -> dict[str, str]:
    """ModelProto field 14 (metadata_props): StringStringEntryProto, key = field 1, value = field 2, UTF-8."""
    meta = {}
    for number, value in fields(data):
        if number == 14:
            entry = dict(fields(value))
            try:
                key, text = entry.get(1, b"").decode(), entry.get(2, b"").decode()  # an absent field reads as ""
            except UnicodeDecodeError:
                raise Refused("metadata that is not UTF-8") from None
            if key in meta:
                raise Refused(f"metadata key {key!r} occurs twice")
            meta[key] = text
    return meta


def check_hash(data: bytes) -> None:
    """The integrity rule: the marker exactly once, its 64 bytes the lowercase hex sha256 of the file with them
    replaced by 64 ASCII zeros."""
    count = data.count(MARKER)
    if count != 1:
        raise Refused(f"{HASH_KEY} occurs {count} times, not once (truncated, altered or not from lit-seq2seq)")
    start = data.find(MARKER) + len(MARKER)
    stored = data[start : start + 64]
    actual = hashlib.sha256(data[:start] + b"0" * 64 + data[start + 64 :]).hexdigest().encode()
    if actual != stored:
        raise Refused("content hash mismatch (damaged or altered file)")


def load(path: Path) -> tuple[ort.InferenceSession, dict[str, str]]:
    """A session for one graph and its metadata, once its hash and format_version check out."""
    try:
        data = path.read_bytes()
        check_hash(data)
        meta = metadata_props(data)
        if meta.get("format_version") not in VERSIONS:
            raise Refused(f"contract format_version {meta.get('format_version')!r}; this reader knows 1 and 2")
        missing = [key for key in REQUIRED[meta["format_version"]] if key not in meta]
        if missing:
            raise Refused(f"no metadata {', '.join(missing)} (damaged, or not written by lit-seq2seq)")
        vocab = ("vocab_size",) if meta["format_version"] == "1" else ("source_vocab_size", "target_vocab_size")
        for key in (*vocab, *INT_KEYS, "eos_token"):
            if not re.fullmatch(r"-?[0-9]+", meta.get(key, "")) and not (key == "eos_token" and meta.get(key) == ""):
                raise Refused(f"metadata {key} is {meta.get(key)!r}, an integer expected")
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: its notes on the optional max_len input are not for a user
        return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"]), meta
    except (OSError, Refused) as error:
        raise Refused(f"{path}: {error.strerror if isinstance(error, OSError) else error}") from None
    except Exception as error:  # noqa: BLE001 - onnxruntime raises several types for a model it cannot load
        raise Refused(f"{path}: onnxruntime cannot load it: {error}") from None


# ----------------------------------------------------------------------------------------- the sources


def text_to_ids(text: str, meta: dict[str, str], ids: dict[str, int], where: str) -> list[int]:
    """Refuse control characters; normalise (NFC), lowercase if set, split (code points or whitespace runs), look each
    token up in `ids`."""
    bad = CONTROL.search(text)
    if bad:
        kind = "lone surrogate" if 0xD800 <= ord(bad.group()) <= 0xDFFF else "control character"
        raise Refused(f"{where}: {kind} U+{ord(bad.group()):04X} at character {bad.start() + 1}")
    text = unicodedata.normalize("NFC", text)
    text = text.lower() if meta["source_lowercase"] == "1" else text
    tokens = list(text) if meta["source_tokenizer"] == "char" else text.split()
    unk = int(meta["unk_token"]) if meta["unk_token"] else None
    out = []
    for position, token in enumerate(tokens, 1):
        if token not in ids and unk is None:
            # a line without spaces is one token: shown cut
            shown = repr(token) if len(token) <= 40 else f"{token[:40]!r}... ({len(token):,} characters)"
            raise Refused(f"{where}: unknown token {shown} at position {position}")
        out.append(ids.get(token, unk))
    return out


def source_ids(meta: dict[str, str]) -> dict[str, int] | None:
    """A text model's source token -> id (the reserved ids below min_token never match), None for an id model."""
    if not meta.get("source_tokens"):
        return None
    if meta["normalization"] != "NFC":
        raise Refused(f"{DECODER}: normalization {meta['normalization']!r}; this reader knows NFC")
    tokens = json.loads(meta["source_tokens"])
    return {token: i for i, token in enumerate(tokens) if i >= int(meta["min_token"])}


def stdin_lines() -> list[str]:
    """stdin's lines as `lit-seq2seq decode` reads them: each ends at "\n" (a "\r" before it dropped); a byte order
    mark at the start and empty lines at the end are dropped."""
    sys.stdin.reconfigure(newline="\n", errors="strict")  # no universal newlines: a lone "\r" stays in its line
    lines = [line.removesuffix("\r") for line in sys.stdin.read().removeprefix("\ufeff").split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def parse(line: str, number: int, meta: dict[str, str], ids: dict | None, allow_untrained: bool) -> list[int]:
    """One source line -> its token ids, checked as the contract says a client must before calling a graph."""
    where, source = f"line {number}", line.partition("\t")[0]
    if ids is not None:
        row = text_to_ids(source, meta, ids, where)
    else:
        parts = source.split()  # ASCII digits: int() would also take "1_3" and "١٣"
        if not all(re.fullmatch(r"[+-]?[0-9]+", t) for t in parts):
            raise Refused(f"{where}: {source.strip()!r} is not a list of space-separated integer token ids")
        row = [int(t) for t in parts]
        while row and row[-1] == int(meta["pad_token"]):  # trailing padding is padding
            row.pop()
    if not row:
        raise Refused(f"{where}: empty source")
    vocab = meta["vocab_size"] if meta["format_version"] == "1" else meta["source_vocab_size"]
    low, high = int(meta["min_token"]), int(vocab) - 1
    bad = [t for t in row if not low <= t <= high]
    if bad:
        raise Refused(f"{where}: token {bad[0]} is out of range; tokens must be in [{low}, {high}]")
    shortest, longest = int(meta["min_source_length"]), int(meta["source_length"])
    if not allow_untrained and not shortest <= len(row) <= longest:
        trained = f"exactly {shortest}" if shortest == longest else f"{shortest} to {longest}"
        raise Refused(
            f"{where}: {len(row)} tokens; this model was trained on sources of {trained} tokens "
            "(pass --allow-untrained-lengths to decode anyway)"
        )
    return row


# ----------------------------------------------------------------------------------------- decoding


def greedy_steps(encoder, decoder, enc_meta: dict[str, str], meta: dict[str, str], source: np.ndarray) -> np.ndarray:
    """The greedy loop over the two step graphs: (batch, source_len) int64 -> (batch, steps) int64."""
    state_names = meta["inputs"].split(",")[1:]  # decoder inputs: token, then the state, named as the encoder's outputs
    step_outputs = meta["outputs"].split(",")  # logits, then one NAME_out per state input it replaces
    pad, eos = int(meta["pad_token"]), int(meta["eos_token"]) if meta["eos_token"] else None
    enc_out = enc_meta["outputs"].split(",")
    state = dict(zip(enc_out, encoder.run(enc_out, {enc_meta["inputs"]: source})))
    token = np.full(len(source), int(meta["start_token"]), dtype=np.int64)
    done = np.zeros(len(source), dtype=bool)
    out = []
    for _ in range(int(meta["max_target_length"])):
        logits, *new = decoder.run(step_outputs, {"token": token, **{n: state[n] for n in state_names}})
        if np.isnan(logits).any():
            raise Refused(f"{DECODER}: NaN logits (a damaged model); no token can be chosen")
        for name, value in zip(step_outputs[1:], new):
            state[name.removesuffix("_out")] = value  # X_out replaces X; memory and memory_mask pass through
        token = np.where(done, pad, logits.argmax(-1)).astype(np.int64)  # argmax: the first maximum
        out.append(token)
        if eos is not None:
            done |= token == eos
            if done.all():
                break
    return np.stack(out, axis=1)


def answer(row: list[int], meta: dict[str, str]) -> str:
    """A decoded row as printed: the ids before the end token (or a pad after it), or their text."""
    pad, eos = int(meta["pad_token"]), int(meta["eos_token"]) if meta["eos_token"] else None
    kept = []
    for token in row:
        if eos is not None and token in (eos, pad):
            break
        kept.append(token)
    if not meta.get("target_tokens"):
        return " ".join(map(str, kept))
    tokens = json.loads(meta["target_tokens"])
    return ("" if meta["target_tokenizer"] == "char" else " ").join(tokens[t] for t in kept)


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="consumer_example.py", description=__doc__.split("\n")[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("sources", nargs="*", help="sources; none: read stdin, one per line")
    parser.add_argument("--two-graph", action="store_true", help="decode with the two step graphs, not greedy.onnx")
    parser.add_argument("--allow-untrained-lengths", action="store_true", help="decode sources of untrained lengths")
    args = parser.parse_intermixed_args(argv)
    root = args.model_dir
    encoder, enc_meta = load(root / ENCODER)
    decoder, meta = load(root / DECODER)
    fused = load(root / GREEDY) if (root / GREEDY).exists() and not args.two_graph else None
    for name, other in ((DECODER, meta), (GREEDY, fused and fused[1])):
        if other is not None and other["export_id"] != enc_meta["export_id"]:
            raise Refused(f"{root}: {ENCODER} and {name} come from different exports")
    try:
        lines = args.sources or stdin_lines()
    except UnicodeDecodeError as error:
        raise Refused(f"stdin: not {sys.stdin.encoding} text ({error})") from None
    ids = source_ids(meta)
    rows, previous = [], None
    for n, line in enumerate(lines, 1):
        text, tab, _ = line.partition("\t")
        if ids is not None and tab and text == previous:
            continue  # one more reference of the source just read: decode prints one line per source
        previous = text if tab else None
        rows.append(parse(line, n, meta, ids, args.allow_untrained_lengths))
    for first in range(0, len(rows), BATCH):  # no rows, no call: a graph must never see a batch of 0
        batch = rows[first : first + BATCH]
        source = np.full((len(batch), max(map(len, batch))), int(meta["pad_token"]), dtype=np.int64)
        for i, row in enumerate(batch):
            source[i, : len(row)] = row  # right-padded
        if fused is not None:
            tokens = fused[0].run(["tokens"], {"source": source})[0]  # max_len left out: max_target_length
        else:
            tokens = greedy_steps(encoder, decoder, enc_meta, meta, source)
        sys.stdout.write("".join(answer(row, meta) + "\n" for row in tokens.tolist()))
    return 0


def main() -> int:
    try:
        code = run(sys.argv[1:])
        sys.stdout.flush()  # here, where a closed pipe is caught, not at exit
        return code
    except Refused as error:
        print(f"consumer_example.py: {error}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `... | head`: the reader left, not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # else Python's flush at exit fails again
        return 0


if __name__ == "__main__":
    sys.exit(main())
