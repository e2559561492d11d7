"""Word and phoneme error rates of a text model on a pair file, PyTorch against its ONNX export, side by side.

The checkpoint's net (PyTorch greedy) and the export's graphs (greedy.onnx, and beam search over the step graphs)
decode the same sources of FILE (SOURCE<TAB>REFERENCE lines; adjacent lines of one source are its references, as in
`lit-seq2seq decode`). Printed: WER (1 - exact match against any reference) and token error rate (PER for G2P) of
each, and how many sources got identical tokens from PyTorch and ONNX greedy. Exits 1 if any differ.

    .venv/bin/python benchmarks/g2p_eval.py --ckpt_path CKPT --model_dir DIR --file data/cmudict/test.tsv
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time

import numpy as np
import torch

from lit_seq2seq.export import load_checkpoint
from lit_seq2seq.metrics import score
from lit_seq2seq.runtime import OnnxSeq2Seq
from lit_seq2seq.search import to_width

try:
    from benchmarks import harness
except ModuleNotFoundError:  # run as a script: its own folder, benchmarks/, is on sys.path
    import harness


def read_references(path: str) -> tuple[list[str], list[list[str]]]:
    """Sources in file order and the references of each (adjacent lines of one source)."""
    with open(path, encoding="utf-8") as f:
        pairs = [line.rstrip("\n").split("\t", 1) for line in f if line.strip()]
    grouped = [(s, [r for _, r in group]) for s, group in itertools.groupby(pairs, key=lambda p: p[0])]
    return [s for s, _ in grouped], [refs for _, refs in grouped]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt_path", required=True)
    parser.add_argument("--model_dir", required=True)
    parser.add_argument("--file", required=True, help="SOURCE<TAB>REFERENCE lines, e.g. data/cmudict/test.tsv")
    parser.add_argument("--beam_size", type=int, default=4)
    parser.add_argument("--batch_size", type=int, default=512)
    o = parser.parse_args()
    harness.pin_threads(1)
    net, _ = load_checkpoint(o.ckpt_path)
    net.eval()
    model = OnnxSeq2Seq.load(o.model_dir)
    if model.text is None:
        parser.error(f"--model_dir {o.model_dir}: an id model; this script scores text models")
    sources, references = read_references(o.file)
    refs = model.reference_ids(references)
    width = model.max_target_length
    results: dict[str, list[np.ndarray]] = {"PyTorch greedy": [], "ONNX greedy": [], f"ONNX beam {o.beam_size}": []}
    seconds = dict.fromkeys(results, 0.0)
    for start in range(0, len(sources), o.batch_size):
        ids = model.encode_texts(sources[start : start + o.batch_size], allow_untrained_lengths=True)
        for name, run in (
            ("PyTorch greedy", lambda x: net.greedy(torch.from_numpy(x)).numpy()),
            ("ONNX greedy", lambda x: model.greedy(x, allow_untrained_lengths=True)),
            (f"ONNX beam {o.beam_size}", lambda x: model.beam_search(x, o.beam_size, allow_untrained_lengths=True)[0]),
        ):
            begin = time.perf_counter()
            tokens = run(ids)
            seconds[name] += time.perf_counter() - begin
            results[name].append(to_width(tokens, width, model.pad_token))
    tokens = {name: np.concatenate(parts) for name, parts in results.items()}
    same = int((tokens["PyTorch greedy"] == tokens["ONNX greedy"]).all(1).sum())
    rows = []
    for name, predicted in tokens.items():
        s = score(predicted, refs, model.eos_token, model.pad_token)
        rows.append(
            [name, f"{100 * (1 - s.exact_match):.2f}%", f"{100 * s.token_error_rate:.2f}%", f"{seconds[name]:.1f}"]
        )
    print(f"{o.file}: {len(sources)} sources, {sum(map(len, references))} references; {o.model_dir}")
    harness.table("error rates", ["decoder", "WER", "token error rate (PER)", "seconds"], rows)
    print(f"PyTorch and ONNX greedy tokens identical on {same}/{len(sources)} sources")
    return 0 if same == len(sources) else 1


if __name__ == "__main__":
    sys.exit(main())
