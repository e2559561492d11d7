"""A foreign app's greedy decoder for a lit-seq2seq export: encoder.onnx + decoder_step.onnx, onnxruntime + numpy only.

Usage: python export/consumer_example.py MODEL_DIR [SEQ ...]
Each SEQ (or each stdin line when none is given) is space-separated integer token ids; text after a tab is
ignored, so `lit-seq2seq sample` output can be piped in. One decoded sequence is printed per input.
Everything the loop needs comes from the graphs' metadata_props; nothing here imports lit_seq2seq.
"""

import hashlib
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort

HASH_KEY, HASH_PLACEHOLDER = "content_sha256", "0" * 64


def load(path: Path) -> tuple[ort.InferenceSession, dict[str, str]]:
    """A session for one graph and its metadata, after checking the content hash stored in that metadata."""
    data = path.read_bytes()
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    meta = dict(session.get_modelmeta().custom_metadata_map)
    stored = meta.get(HASH_KEY, "")
    # The stored value is the sha256 of the file with that value replaced by 64 zeros, in place: in the raw bytes
    # it follows the key and the two bytes 0x12 0x40 (protobuf: field 2, length 64).
    at = data.find(HASH_KEY.encode() + b"\x12\x40") + len(HASH_KEY) + 2
    actual = hashlib.sha256(data[:at] + HASH_PLACEHOLDER.encode() + data[at + 64 :]).hexdigest()
    if len(stored) != 64 or data[at : at + 64] != stored.encode() or actual != stored:
        sys.exit(f"{path}: content hash mismatch (damaged or altered file)")
    return session, meta


def greedy(encoder, decoder, enc_meta: dict[str, str], meta: dict[str, str], source: np.ndarray) -> np.ndarray:
    """(batch, source_len) int64 -> (batch, steps) int64; rows that emitted the end token continue with pad."""
    state_names = meta["inputs"].split(",")[1:]  # decoder inputs: token, then the state in contract order
    step_outputs = meta["outputs"].split(",")  # logits, then h_out [, c_out]
    pad, eos = int(meta["pad_token"]), int(meta["eos_token"]) if meta["eos_token"] else None
    enc_out = enc_meta["outputs"].split(",")  # the initial state, named as the decoder's state inputs
    state = dict(zip(enc_out, encoder.run(enc_out, {enc_meta["inputs"]: source})))
    token = np.full(len(source), int(meta["start_token"]), dtype=np.int64)
    done = np.zeros(len(source), dtype=bool)
    out = []
    for _ in range(int(meta["max_target_length"])):
        logits, *new = decoder.run(step_outputs, {"token": token, **{n: state[n] for n in state_names}})
        for name, value in zip(step_outputs[1:], new):
            state[name.removesuffix("_out")] = value  # h_out -> h, c_out -> c; memory and mask pass through
        token = np.where(done, pad, logits.argmax(-1)).astype(np.int64)
        out.append(token)
        if eos is not None:
            done |= token == eos
            if done.all():
                break
    return np.stack(out, axis=1)


def main(argv: list[str]) -> int:
    if not argv:
        sys.exit(__doc__)
    root = Path(argv[0])
    encoder, enc_meta = load(root / "encoder.onnx")
    decoder, meta = load(root / "decoder_step.onnx")
    if enc_meta["export_id"] != meta["export_id"]:
        sys.exit(f"{root}: encoder.onnx and decoder_step.onnx come from different exports")
    lines = argv[1:] or sys.stdin.read().splitlines()
    rows = [[int(t) for t in line.partition("\t")[0].split()] for line in lines]
    if not rows:
        return 0
    pad, vocab = int(meta["pad_token"]), int(meta.get("source_vocab_size") or meta["vocab_size"])
    for number, row in enumerate(rows, 1):
        if not row or not all(int(meta["min_token"]) <= t < vocab for t in row):
            sys.exit(f"line {number}: tokens must be in [{meta['min_token']}, {vocab - 1}], got {row}")
    source = np.full((len(rows), max(map(len, rows))), pad, dtype=np.int64)  # right-padded batch
    for i, row in enumerate(rows):
        source[i, : len(row)] = row
    eos = int(meta["eos_token"]) if meta["eos_token"] else None
    for tokens in greedy(encoder, decoder, enc_meta, meta, source).tolist():
        if eos is not None:  # print up to the end token (or a stray pad), as `lit-seq2seq decode` does
            ends = [i for i, t in enumerate(tokens) if t in (eos, pad)]
            tokens = tokens[: ends[0]] if ends else tokens
        print(" ".join(map(str, tokens)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
