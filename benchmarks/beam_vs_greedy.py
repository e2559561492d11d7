"""Beam search against greedy decoding of an exported model: exact match and decode time per setting, side by side.

Draws N fresh sequences of the model's own task (built from the export's metadata, as `lit-seq2seq sample` does,
with a seed of its own, so none of them comes from the train/val/test streams) and decodes them with the torch-free
runtime, OnnxSeq2Seq: greedy, then beam_search for every beam size x length penalty (default beams 1, 2, 4, 8 and
penalties 0, 0.6, 1.0). For each setting it prints the exact match (the whole decoded row, end token and padding
included, equals the target, as test/exact_match counts it), how many rows differ from greedy and of those how
many beam search fixed (greedy wrong, beam right) or broke (greedy right, beam wrong), and the decode time
(onnxruntime and torch on one thread each, batches of --batch_size, best of --repeats).

With --ckpt_path it also decodes the same sources with the PyTorch net (`lit_seq2seq.export.load_checkpoint`,
then `net.greedy` / `net.beam_search`) and checks that the tokens are identical to the ONNX ones for every setting.
Given only --ckpt_path, the checkpoint is exported to a temporary folder first (and verified by the exporter).

    .venv/bin/python benchmarks/beam_vs_greedy.py --model_dir ONNX_DIR [--ckpt_path CKPT] [-n 1000] [--seed 7]
    .venv/bin/python benchmarks/beam_vs_greedy.py --ckpt_path CKPT [-n 1000]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from lit_seq2seq.runtime import OnnxSeq2Seq
from lit_seq2seq.tasks import Task, task_from_metadata


def task_of(model: OnnxSeq2Seq) -> Task:
    """The model's task from its metadata (the same construction as `lit-seq2seq sample`)."""
    return task_from_metadata(model.meta)


def in_batches(decode: Callable[[np.ndarray], np.ndarray], source: np.ndarray, batch_size: int, pad: int) -> np.ndarray:
    """Decode `source` in chunks and join the chunks, right-padded to the widest one."""
    parts = [decode(source[i : i + batch_size]) for i in range(0, len(source), batch_size)]
    width = max(p.shape[1] for p in parts)
    return np.concatenate([np.pad(p, ((0, 0), (0, width - p.shape[1])), constant_values=pad) for p in parts])


def fit_width(tokens: np.ndarray, width: int, pad: int) -> np.ndarray:
    return np.pad(tokens, ((0, 0), (0, max(0, width - tokens.shape[1]))), constant_values=pad)[:, :width]


def onnx_decoder(model: OnnxSeq2Seq, beam: int | None, length_penalty: float) -> Callable[[np.ndarray], np.ndarray]:
    """source -> tokens with the ONNX runtime: greedy when `beam` is None, else beam search."""
    if beam is None:
        return model.greedy
    return lambda source: model.beam_search(source, beam, length_penalty)[0]


def torch_decoder(net, beam: int | None, length_penalty: float) -> Callable[[np.ndarray], np.ndarray]:
    """The same with the PyTorch net of the checkpoint (`net.greedy` / `net.beam_search`)."""
    import torch

    if beam is None:
        return lambda source: net.greedy(torch.from_numpy(source)).numpy()
    return lambda source: net.beam_search(torch.from_numpy(source), beam, length_penalty)[0].numpy()


def timed(fn: Callable[[], np.ndarray], repeats: int) -> tuple[np.ndarray, float]:
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return out, best


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model_dir", help="export folder (encoder.onnx + decoder_step.onnx)")
    p.add_argument("--ckpt_path", help="checkpoint: enables the PyTorch check; alone, it is exported to a temp folder")
    p.add_argument("-n", "--num", type=int, default=1000, help="fresh task sequences (default 1000)")
    p.add_argument("--seed", type=int, default=7, help="seed of the fresh sequences (default 7)")
    p.add_argument("--beam_sizes", default="1,2,4,8", help="comma-separated beam sizes (default 1,2,4,8)")
    p.add_argument("--length_penalties", default="0,0.6,1.0", help="comma-separated penalties (default 0,0.6,1.0)")
    p.add_argument("--batch_size", type=int, default=256, help="sequences decoded together (default 256)")
    p.add_argument("--repeats", type=int, default=1, help="timed runs per setting; the best is shown (default 1)")
    o = p.parse_args()
    if not (o.model_dir or o.ckpt_path):
        p.error("give --model_dir, --ckpt_path or both")
    beams = [int(b) for b in o.beam_sizes.split(",")]
    penalties = [float(x) for x in o.length_penalties.split(",")]

    tmp = None
    if o.model_dir is None:
        from lit_seq2seq.export import export_checkpoint

        tmp = tempfile.TemporaryDirectory(prefix="beam_vs_greedy-")
        o.model_dir = str(Path(tmp.name) / "onnx")
        print(export_checkpoint(o.ckpt_path, o.model_dir), flush=True)

    model = OnnxSeq2Seq.load(o.model_dir, intra_op_threads=1, inter_op_threads=1)
    task = task_of(model)
    source, target = task.sample(o.num, np.random.default_rng(o.seed))
    width, pad = target.shape[1], model.pad_token

    net = None
    if o.ckpt_path:
        import torch

        from lit_seq2seq.export import load_checkpoint  # imports torch: only when a checkpoint is given

        torch.set_num_threads(1)
        net, _ = load_checkpoint(o.ckpt_path)

    m = model.meta
    print(
        f"model {o.model_dir}: task {m['task']} (vocab {m['vocab_size']}, source {m['min_source_length']}-"
        f"{m['source_length']} tokens, {m['max_target_length']} decoder steps), {m['cell']} x{m['num_layers']} "
        f"hidden {m['hidden_size']}, bidirectional {m['bidirectional']}, attention {m['attention']}"
    )
    print(
        f"{o.num} fresh sequences (seed {o.seed}), batches of {o.batch_size}, 1 thread, best of {o.repeats}; "
        f"load average at start {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )

    settings: list[tuple[str, int | None, float]] = [("greedy", None, 0.0)]
    settings += [(f"beam {k} lp {lp:g}", k, lp) for k in beams for lp in penalties]
    header = f"{'setting':<16} {'exact match':>11} {'!=greedy':>8} {'fixed':>6} {'broken':>6}"
    header += f" {'decode s':>9} {'x greedy':>8}" + (f" {'torch==onnx':>11}" if net is not None else "")
    print(header)
    greedy_tokens = greedy_hit = greedy_seconds = None
    mismatches = 0
    for name, k, lp in settings:
        decode = onnx_decoder(model, k, lp)
        tokens, seconds = timed(lambda decode=decode: in_batches(decode, source, o.batch_size, pad), o.repeats)
        tokens = fit_width(tokens, width, pad)
        hit = (tokens == target).all(1)
        if greedy_tokens is None:
            greedy_tokens, greedy_hit, greedy_seconds = tokens, hit, seconds
        changed = (tokens != greedy_tokens).any(1)
        line = (
            f"{name:<16} {hit.mean():>11.2%} {int(changed.sum()):>8} {int((hit & ~greedy_hit).sum()):>6} "
            f"{int((~hit & greedy_hit).sum()):>6} {seconds:>9.3f} {seconds / greedy_seconds:>8.1f}"
        )
        if net is not None:
            expected = fit_width(in_batches(torch_decoder(net, k, lp), source, o.batch_size, pad), width, pad)
            differ = int((expected != tokens).any(1).sum())
            mismatches += differ > 0
            line += f" {'True' if not differ else f'NO ({differ} rows)':>11}"
        print(line, flush=True)
    print(f"load average at end {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if net is not None:
        verdict = "identical in every setting" if not mismatches else f"differ in {mismatches} settings"
        print(f"PyTorch vs ONNX tokens on these {o.num} sources: {verdict}")
    if tmp is not None:
        tmp.cleanup()
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
