"""Beam search against greedy decoding of an exported model: exact match and decode time per setting, side by side.

Draws N fresh sequences of the model's own task (built from the export's metadata, as `lit-seq2seq sample` does,
with a seed of its own, so none of them comes from the train/val/test streams) and decodes them with the torch-free
runtime, OnnxSeq2Seq: greedy, then beam_search for every beam size x length penalty (default beams 1, 2, 4, 8 and
penalties 0, 0.6, 1.0). For each setting it prints the exact match (the whole decoded row, end token and padding
included, equals the target, as test/exact_match counts it), how many rows differ from greedy and of those how
many beam search fixed (greedy wrong, beam right) or broke (greedy right, beam wrong), and the onnxruntime decode
time (one thread, batches of --batch_size): all settings run in --repeats interleaved rounds (benchmarks/harness.py,
the order rotating every round) and the table shows the median with its min-max spread.

With --ckpt_path it also decodes the same sources with the PyTorch net (`lit_seq2seq.export.load_checkpoint`,
then `net.greedy` / `net.beam_search`, untimed) and checks that the tokens are identical to the ONNX ones for every
setting; it exits 1 if they are not. Given only --ckpt_path, the checkpoint is exported to a temporary folder first
(and verified by the exporter).

    .venv/bin/python benchmarks/beam_vs_greedy.py --model_dir ONNX_DIR [--ckpt_path CKPT] [-n 1000] [--seed 7]
    .venv/bin/python benchmarks/beam_vs_greedy.py --ckpt_path CKPT [-n 1000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import functools
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from lit_seq2seq.runtime import OnnxSeq2Seq
from lit_seq2seq.search import to_width
from lit_seq2seq.tasks import task_from_metadata

try:
    from benchmarks import harness
except ModuleNotFoundError:  # run as a script: its own folder, benchmarks/, is on sys.path
    import harness

Decode = Callable[[np.ndarray], np.ndarray]


def onnx_decoder(model: OnnxSeq2Seq, beam: int | None, length_penalty: float) -> Decode:
    """source -> tokens with the ONNX runtime: greedy when `beam` is None, else beam search."""
    if beam is None:
        return model.greedy
    return lambda source: model.beam_search(source, beam, length_penalty)[0]


def torch_decoder(net, beam: int | None, length_penalty: float) -> Decode:
    """The same with the PyTorch net of the checkpoint (`net.greedy` / `net.beam_search`)."""
    import torch

    if beam is None:
        return lambda source: net.greedy(torch.from_numpy(source)).numpy()
    return lambda source: net.beam_search(torch.from_numpy(source), beam, length_penalty)[0].numpy()


def in_batches(decode: Decode, source: np.ndarray, batch_size: int, width: int, pad: int) -> np.ndarray:
    """Decode `source` in chunks of `batch_size`, each brought to the targets' `width`, and join them."""
    return np.concatenate(
        [to_width(decode(source[i : i + batch_size]), width, pad) for i in range(0, len(source), batch_size)]
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model_dir", help="export folder (encoder.onnx + decoder_step.onnx)")
    p.add_argument("--ckpt_path", help="checkpoint: enables the PyTorch check; alone, it is exported to a temp folder")
    p.add_argument("-n", "--num", type=int, default=1000, help="fresh task sequences (default 1000)")
    p.add_argument("--seed", type=int, default=7, help="seed of the fresh sequences (default 7)")
    p.add_argument("--beam_sizes", default="1,2,4,8", help="comma-separated beam sizes (default 1,2,4,8)")
    p.add_argument("--length_penalties", default="0,0.6,1.0", help="comma-separated penalties (default 0,0.6,1.0)")
    p.add_argument("--batch_size", type=int, default=256, help="sequences decoded together (default 256)")
    p.add_argument("--repeats", type=int, default=1, help="interleaved timing rounds; the median is shown (default 1)")
    o = p.parse_args()
    if not (o.model_dir or o.ckpt_path):
        p.error("give --model_dir, --ckpt_path or both")
    for flag in ("num", "batch_size", "repeats"):
        if getattr(o, flag) < 1:
            p.error(f"--{flag} must be >= 1, got {getattr(o, flag)}")
    beams = [int(b) for b in o.beam_sizes.split(",")]
    penalties = [float(x) for x in o.length_penalties.split(",")]
    with tempfile.TemporaryDirectory(prefix="beam_vs_greedy-") as tmp:
        ckpt, model_dir = harness.model_files(o.ckpt_path, o.model_dir, Path(tmp))
        return run(o, ckpt, model_dir, beams, penalties)


def run(o: argparse.Namespace, ckpt: Path | None, model_dir: Path, beams: list[int], penalties: list[float]) -> int:
    model = OnnxSeq2Seq.load(model_dir, intra_op_threads=1, inter_op_threads=1)
    source, target = task_from_metadata(model.meta).sample(o.num, np.random.default_rng(o.seed))
    width, pad = target.shape[1], model.pad_token
    net = None
    if ckpt is not None:
        from lit_seq2seq.export import load_checkpoint  # imports torch: only when a checkpoint is given

        harness.pin_threads(1)
        net, _ = load_checkpoint(ckpt)

    m = model.meta
    print(
        f"model {model_dir}: task {m['task']} (vocab {model.source_vocab_size}, source {m['min_source_length']}-"
        f"{m['source_length']} tokens, {m['max_target_length']} decoder steps), {m['cell']} x{m['num_layers']} "
        f"hidden {m['hidden_size']}, bidirectional {m['bidirectional']}, attention {m['attention']}\n"
        f"{o.num} fresh sequences (seed {o.seed}), batches of {o.batch_size}, 1 thread, median of {o.repeats} "
        f"interleaved round(s); {harness.versions()}"
    )
    before = harness.load_before()

    settings: dict[str, tuple[int | None, float]] = {"greedy": (None, 0.0)}
    settings.update({f"beam {k} lp {lp:g}": (k, lp) for k in beams for lp in penalties})
    contenders = {
        name: functools.partial(in_batches, onnx_decoder(model, k, lp), source, o.batch_size, width, pad)
        for name, (k, lp) in settings.items()
    }
    seconds, results = harness.interleaved(contenders, o.repeats)
    med = harness.medians(seconds)

    greedy_tokens = results["greedy"][-1]
    greedy_hit = (greedy_tokens == target).all(1)
    header = ["setting", "exact match", "!=greedy", "fixed", "broken", "decode s", "min-max", "x greedy"]
    rows, mismatches = [], 0
    for name, (k, lp) in settings.items():
        tokens = results[name][-1]
        hit = (tokens == target).all(1)
        row = [
            name,
            f"{hit.mean():.2%}",
            str(int((tokens != greedy_tokens).any(1).sum())),
            str(int((hit & ~greedy_hit).sum())),
            str(int((~hit & greedy_hit).sum())),
            f"{med[name]:.3f}",
            harness.spread(seconds[name], fmt=".3f"),
            f"{med[name] / med['greedy']:.1f}",
        ]
        if net is not None:
            expected = in_batches(torch_decoder(net, k, lp), source, o.batch_size, width, pad)
            differ = int((expected != tokens).any(1).sum())
            mismatches += differ > 0
            row.append("True" if not differ else f"NO ({differ} rows)")
        rows.append(row)
    harness.table("onnxruntime decoding, by setting", header + ["torch==onnx"] * (net is not None), rows)
    print()
    harness.load_after(before)
    if net is not None:
        verdict = "identical in every setting" if not mismatches else f"differ in {mismatches} settings"
        print(f"PyTorch vs ONNX tokens on these {o.num} sources: {verdict}")
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
