"""Word and phoneme error rates of a text model on a pair file, PyTorch against its ONNX export, side by side.

The checkpoint's net (PyTorch greedy) and the export's graphs (greedy.onnx, and beam search over the step graphs)
decode the same sources of FILE (SOURCE<TAB>REFERENCE lines; every line of one source gives it a reference, as in
`lit-seq2seq test` and `decode`). Printed: WER (1 - exact match against any reference) and token error rate (PER for
G2P) of each, and how many sources got identical tokens from PyTorch and ONNX greedy. Exits 1 if any differ, 2 for a
bad file, flag or folder, or a checkpoint and an export of different models.
`--ignore_stress` adds the same rates with ARPAbet stress digits stripped from predictions and references (AH0, AH1
and AH2 count as AH): the 39-phoneme scoring of the published CMUdict results. `--n_best N` adds the oracle rates of
beam search's N best beams (`decode --n_best N`): a source is right when any of them equals a reference, and its
token errors are its closest beam's (what a user picking among N offered pronunciations could reach).

    .venv/bin/python benchmarks/g2p_eval.py --ckpt_path CKPT --model_dir DIR --file data/cmudict/test.tsv
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

from lit_seq2seq.export import load_checkpoint
from lit_seq2seq.metrics import Scores, score
from lit_seq2seq.runtime import OnnxSeq2Seq, pad_batch
from lit_seq2seq.search import to_width
from lit_seq2seq.text import input_lines

try:
    from benchmarks import harness
except ModuleNotFoundError:  # run as a script: its own folder, benchmarks/, is on sys.path
    import harness


def read_references(path: str, flag: str = "--file") -> tuple[list[str], list[list[str]]]:
    """Sources in order of first appearance and the references of each from all its lines, as `lit-seq2seq test`
    and `decode` score a file (its lines as decode reads them). ValueError naming `flag`, the file and the line for
    a line that is not SOURCE<TAB>REFERENCE, and for bytes that are not UTF-8."""
    try:
        with open(path, "rb") as f:
            lines = list(input_lines(f))
    except ValueError as error:  # bytes that are not UTF-8
        raise ValueError(f"{flag} {path} {error}") from None
    groups: dict[str, list[str]] = {}
    for number, line in enumerate(lines, 1):
        source, tab, reference = line.partition("\t")
        if not tab or not reference.strip():
            raise ValueError(f"{flag} {path}:{number}: not SOURCE<TAB>REFERENCE")
        groups.setdefault(source, []).append(reference)
    if not groups:
        raise ValueError(f"{flag} {path}: no SOURCE<TAB>REFERENCE lines")
    return list(groups), list(groups.values())


def by_source_ids(
    model: OnnxSeq2Seq, sources: list[str], references: list[list[str]], path: str
) -> tuple[list[tuple[int, ...]], list[list[str]]]:
    """The sources' token ids and their references, regrouped by those ids as `test` and `decode` count them:
    "Hello" and "hello" are one source to a lowercasing model. ValueError naming the file and the source for one the
    model refuses (an unknown token, a length it was not trained on)."""
    groups: dict[tuple[int, ...], list[str]] = {}
    for number, (source, refs) in enumerate(zip(sources, references), 1):
        ids = tuple(model.encode_text(source, where=f"--file {path}: source {number} ({source!r})"))
        groups.setdefault(ids, []).extend(refs)
    return list(groups), list(groups.values())


def stress_merged(tokens: tuple[str, ...]) -> np.ndarray:
    """Target id -> the first id whose token is the same once trailing stress digits are stripped (AH1 -> AH0's id);
    one extra slot maps the id of tokens the vocabulary lacks (`reference_ids`) to itself."""
    first: dict[str, int] = {}
    table = [first.setdefault(t.rstrip("012"), i) for i, t in enumerate(tokens)]
    return np.array([*table, len(tokens)], dtype=np.int64)


def best_of(
    predicted: np.ndarray, refs: np.ndarray, mapped: np.ndarray | None, eos_token: int | None, pad_token: int
) -> Scores:
    """score() of predictions (S, width), or of each source's N beams (S, N, width) at once: right when any beam is,
    with the token errors (and reference length) of its closest beam. `mapped`: a target id table applied to both
    sides first (stress_merged); references keep -1 in their absent slots."""
    if mapped is not None:
        predicted, refs = mapped[predicted], np.where(refs < 0, refs, mapped[refs])
    if predicted.ndim == 2:
        return score(predicted, refs, eos_token, pad_token)
    beams = [score(predicted[:, j], refs, eos_token, pad_token) for j in range(predicted.shape[1])]
    errors = np.stack([b.errors for b in beams])  # (N, S)
    closest, rows = errors.argmin(axis=0), np.arange(errors.shape[1])  # the first beam of the fewest errors
    length = np.stack([b.length for b in beams])[closest, rows]
    return Scores(exact=np.any([b.exact for b in beams], axis=0), errors=errors[closest, rows], length=length)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt_path", required=True)
    parser.add_argument("--model_dir", required=True)
    parser.add_argument("--file", required=True, help="SOURCE<TAB>REFERENCE lines, e.g. data/cmudict/test.tsv")
    parser.add_argument("--beam_size", type=int, default=4)
    parser.add_argument("--batch_size", type=int, default=512)
    parser.add_argument("--ignore_stress", action="store_true", help="also score with stress digits stripped")
    parser.add_argument("--n_best", type=int, default=0, help="also the oracle rates of the N best beams (N <= beam)")
    o = parser.parse_args(argv)
    for flag, value in (("--beam_size", o.beam_size), ("--batch_size", o.batch_size)):
        if value < 1:
            parser.error(f"{flag} must be >= 1, got {value}")
    if not 0 <= o.n_best <= o.beam_size:
        parser.error(f"--n_best must be in [0, --beam_size ({o.beam_size})], got {o.n_best}")
    try:
        with harness.threads_pinned(1):
            return _evaluate(o)
    except (ValueError, OSError) as error:  # a bad file, folder or checkpoint: one line, as the CLI says it
        print(f"g2p_eval: error: {error}", file=sys.stderr)
        return 2


def _evaluate(o: argparse.Namespace) -> int:
    net, task = load_checkpoint(o.ckpt_path)
    net.eval()
    model = OnnxSeq2Seq.load(o.model_dir)
    if model.text is None:
        raise ValueError(f"--model_dir {o.model_dir}: an id model; this script scores text models")
    config = net.config  # the metadata's num_layers counts the state's layers (the context RNN's too)
    ours = [getattr(task, "text", None), config.hidden_size, config.state_layers, config.cell, config.context_rnn]
    theirs = [model.text, *(model.meta.get(k) for k in ("hidden_size", "num_layers", "cell", "context_rnn"))]
    ours[1:] = [str(int(v)) if isinstance(v, bool) else str(v) for v in ours[1:]]
    theirs[4] = theirs[4] or "0"  # exports made before the key
    if ours != theirs:  # scoring two different models side by side would report their disagreement as ONNX's
        raise ValueError(f"--ckpt_path {o.ckpt_path} and --model_dir {o.model_dir} hold different models (export it)")
    sources, references = by_source_ids(model, *read_references(o.file), o.file)  # each source as its ids
    refs = model.reference_ids(references)
    width = model.max_target_length
    beam = f"ONNX beam {o.beam_size}"
    results: dict[str, list[np.ndarray]] = {"PyTorch greedy": [], "ONNX greedy": [], beam: []}
    seconds = dict.fromkeys(results, 0.0)
    ranked: list[np.ndarray] = []  # (batch, N, width) parts: the N best beams of each source (--n_best)
    for start in range(0, len(sources), o.batch_size):
        ids = pad_batch(sources[start : start + o.batch_size], model.pad_token)
        for name, run in (
            ("PyTorch greedy", lambda x: net.greedy(torch.from_numpy(x)).numpy()),
            ("ONNX greedy", lambda x: model.greedy(x, allow_untrained_lengths=True)),
            (beam, lambda x: model.beam_search(x, o.beam_size, allow_untrained_lengths=True, n_best=max(o.n_best, 1))),
        ):
            begin = time.perf_counter()
            out = run(ids)
            seconds[name] += time.perf_counter() - begin
            if name == beam:  # (batch, N, steps) beams, best first, and their scores
                beams, scores = out
                beams = np.where(np.isfinite(scores)[..., None], beams, beams[:, :1])  # fillers (-inf) offer nothing
                flat = to_width(beams.reshape(-1, beams.shape[-1]), width, model.pad_token)
                ranked.append(flat.reshape(len(ids), -1, width))
                out = beams[:, 0]
            results[name].append(to_width(out, width, model.pad_token))
    tokens = {name: np.concatenate(parts) for name, parts in results.items()}
    if o.n_best:
        oracle = f"{beam}, {o.n_best}-best oracle"
        tokens[oracle] = np.concatenate(ranked)  # the beams of the beam search above: timed there
    same = int((tokens["PyTorch greedy"] == tokens["ONNX greedy"]).all(1).sum())
    print(f"{o.file}: {len(sources)} sources, {sum(map(len, references))} references; {o.model_dir}")
    merge = stress_merged(model.text.target_vocab.tokens)
    for title, mapped in (("error rates", None), ("error rates, stress ignored", merge))[: 1 + o.ignore_stress]:
        rows = []
        for name, predicted in tokens.items():
            s = best_of(predicted, refs, mapped, model.eos_token, model.pad_token)
            wer, per = f"{100 * (1 - s.exact_match):.2f}%", f"{100 * s.token_error_rate:.2f}%"
            rows.append([name, wer, per, f"{seconds[name]:.1f}" if name in seconds else ""])
        harness.table(title, ["decoder", "WER", "token error rate (PER)", "seconds"], rows)
    print(f"PyTorch and ONNX greedy tokens identical on {same}/{len(sources)} sources")
    return 0 if same == len(sources) else 1


if __name__ == "__main__":
    sys.exit(main())
