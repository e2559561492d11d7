"""Greedy decoding speed of OnnxSeq2Seq (onnxruntime) vs PyTorch eager, a tight torch loop and an onnxruntime floor.

One process, one thread everywhere (torch.set_num_threads(1), onnxruntime intra/inter op threads 1), seed model
(reverse_first: 6 source tokens, 3 decoder steps, 128-unit LSTM, one-hot inputs). Contenders run in interleaved
rounds (benchmarks/harness.py: the order rotates every round) and the tables report medians over the rounds, with
their min-max spread:

  * greedy.onnx (one call) against the two-graph loop over decoder_step.onnx, both through OnnxSeq2Seq (validation
    included; `greedy` picks greedy.onnx when the export has it) and both bare (InferenceSession.run alone), at batch
    1 (latency, the ratio greedy.onnx / two-graph time) and at batch 1024 (throughput).
  * the limit at batch 1024: the bare matrix products the decode needs (every RNN's input and recurrent projections
    for each source token and each decoder step, and the decoder's output layer per step; shapes read from the
    graphs) through numpy alone, timed the same way; our throughput as a fraction of that.
  * batch 1, latency per sequence: OnnxSeq2Seq.greedy; the torch net's eager `net.greedy` under
    torch.inference_mode; a hand-written torch loop (encode + 3 x step + argmax, no numpy); the same number of
    InferenceSession.run calls (1 encoder + 3 steps) on the real graphs with no validation or search around them;
    and the floor: 1 + 3 InferenceSession.run calls on trivial Identity/Add graphs with the same inputs/outputs.
  * batch 1024, throughput: OnnxSeq2Seq.greedy against eager `net.greedy` (and the tight torch loop).
  * a fresh subprocess that imports lit_seq2seq.runtime, loads the model and decodes one sequence, against one that
    imports torch, loads the checkpoint (`Seq2Seq.from_checkpoint`) and decodes one: import time, wall time and peak
    RSS (ru_maxrss).

    .venv/bin/python benchmarks/decode_speed.py --ckpt_path CKPT --model_dir ONNX_DIR [--repeats 30] [--clock cpu]
    .venv/bin/python benchmarks/decode_speed.py --train [--repeats 30]      # fit + export the seed model first
    .venv/bin/python benchmarks/decode_speed.py --ckpt_path CKPT --model_dir ONNX_DIR --repeats 3 --process_repeats 1

Run it with OMP_NUM_THREADS=1 so numpy's BLAS (the limit) computes in one thread too, as everything else here does.

On a shared machine prefer --clock cpu (the calling thread's CPU time; every engine here computes in that thread):
wall time then mostly measures the other jobs.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper

from lit_seq2seq import contract
from lit_seq2seq.export import load_checkpoint
from lit_seq2seq.runtime import OnnxSeq2Seq

try:
    from benchmarks import harness
except ModuleNotFoundError:  # run as a script: its own folder, benchmarks/, is on sys.path
    import harness

KERAS_MS_PER_SEQUENCE = 265.0  # the Keras tutorial on these machines; a reference constant, not measured here
GOALS = {"torch_b1": 5.0, "floor_b1": 3.0, "torch_b1024": 1.2}


def floor_sessions(vocab: int, layers: int, hidden: int) -> tuple[ort.InferenceSession, ort.InferenceSession]:
    """Trivial graphs with the seed graphs' inputs and outputs: encoder source (+ h0, c0) -> h, c by Identity;
    step token, h, c (+ x) -> logits, h_out, c_out by Identity/Add. One node per output, nothing computed."""

    def value(name: str, dtype: int, shape: list) -> object:
        return helper.make_tensor_value_info(name, dtype, shape)

    f, i64, state = TensorProto.FLOAT, TensorProto.INT64, [layers, "batch", hidden]
    encoder = helper.make_graph(
        [helper.make_node("Identity", ["h0"], ["h"]), helper.make_node("Identity", ["c0"], ["c"])],
        "encoder_floor",
        [value("source", i64, ["batch", "source_len"]), value("h0", f, state), value("c0", f, state)],
        [value("h", f, state), value("c", f, state)],
    )
    step = helper.make_graph(
        [
            helper.make_node("Identity", ["x"], ["logits"]),
            helper.make_node("Add", ["h", "h"], ["h_out"]),
            helper.make_node("Add", ["c", "c"], ["c_out"]),
        ],
        "step_floor",
        [value("token", i64, ["batch"]), value("h", f, state), value("c", f, state), value("x", f, ["batch", vocab])],
        [value("logits", f, ["batch", vocab]), value("h_out", f, state), value("c_out", f, state)],
    )
    models = [helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8) for g in (encoder, step)]
    options, cpu = harness.ort_options(1), ["CPUExecutionProvider"]
    encoder_session, step_session = (ort.InferenceSession(m.SerializeToString(), options, cpu) for m in models)
    return encoder_session, step_session


def gemm_shapes(model_dir: Path, source_len: int, steps: int) -> list[tuple[int, int, int]]:
    """(times per decode, K, N) of each matrix product a greedy decode needs, read from the graphs: per RNN node
    (LSTM/GRU) and direction, its input (K = input size) and recurrent (K = hidden) projections, once per time step
    (source_len in the encoder, `steps` in the decoder); per decoder MatMul with a weight (the output layer), once per
    step. At batch B each is a (B, K) x (K, N) product."""
    shapes = []
    for name, repeat in ((contract.ENCODER_FILE, source_len), (contract.DECODER_FILE, steps)):
        graph = onnx.load(str(model_dir / name)).graph
        weights = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
        for node in graph.node:
            if node.op_type in ("LSTM", "GRU"):
                w, r = weights[node.input[1]], weights[node.input[2]]  # (dirs, gates * H, K)
                shapes += [(repeat, w.shape[2], w.shape[1])] * w.shape[0]
                shapes += [(repeat, r.shape[2], r.shape[1])] * r.shape[0]
            elif node.op_type == "MatMul" and node.input[1] in weights and name == contract.DECODER_FILE:
                k, n = weights[node.input[1]].shape
                shapes.append((repeat, k, n))
    return shapes


def gemm_limit(shapes: list[tuple[int, int, int]], batch: int) -> Callable[[], object]:
    """The products of `gemm_shapes` at `batch` rows through numpy alone (float32, preallocated, no other work)."""
    rng = np.random.default_rng(0)
    work = [(rng.random((batch, k), np.float32), rng.random((k, n), np.float32), np.empty((batch, n), np.float32), r)
            for r, k, n in shapes]  # fmt: skip

    def run() -> object:
        for a, b, out, repeat in work:
            for _ in range(repeat):
                np.matmul(a, b, out=out)
        return out

    return run


def contenders(
    model: OnnxSeq2Seq, net: torch.nn.Module, source: np.ndarray, with_floor: bool, limit: Callable | None = None
) -> dict[str, Callable]:
    """Zero-argument callables that each decode `source` greedily (max_target_length steps)."""
    steps, batch = model.max_target_length, len(source)
    tsource = torch.from_numpy(source)
    graph = model.greedy_graph
    feed = {contract.SOURCE: source}

    def onnx_greedy() -> object:
        return model.greedy(source)

    def two_graph() -> object:  # what greedy does for exports without greedy.onnx, validation included
        return model._greedy_steps(model.check_source(source)[0], model.max_target_length)

    def greedy_raw() -> object:  # greedy.onnx, a bare InferenceSession.run: what a raw client calls
        return graph.run(None, feed)[0]

    def torch_greedy() -> object:
        with torch.inference_mode():
            return net.greedy(tsource)

    def torch_tight() -> object:
        with torch.inference_mode():
            state = net.encode(tsource)
            token = torch.full((batch,), net.config.start_token, dtype=torch.long)
            out = []
            for _ in range(steps):
                logits, state = net.step(token, state)
                token = logits.argmax(-1)
                out.append(token)
            return torch.stack(out, 1)

    out = {"onnx_greedy": onnx_greedy, "two_graph": two_graph, "greedy_raw": greedy_raw}
    out.update(torch_greedy=torch_greedy, torch_tight=torch_tight)
    if limit is not None:
        out["gemm_limit"] = limit
    if not with_floor:
        return out

    names = model.state_names
    step_outputs = [o.name for o in model.decoder.get_outputs()]
    start = np.full(batch, model.start_token, dtype=np.int64)

    def onnx_raw() -> object:
        # The real graphs, plain InferenceSession.run, no validation, no search loop: 1 encoder + `steps` steps.
        state = dict(zip(names, model.encoder.run(names, {"source": source})))
        token = start
        for _ in range(steps):
            logits, *new = model.decoder.run(step_outputs, {"token": token, **state})
            state.update(zip(names, new))
            token = logits.argmax(-1)
        return token

    encoder, step = floor_sessions(model.target_vocab_size, model.num_layers, model.hidden_size)
    zeros = np.zeros((model.num_layers, batch, model.hidden_size), np.float32)
    x = np.zeros((batch, model.target_vocab_size), np.float32)

    def floor() -> object:
        h, c = encoder.run(["h", "c"], {"source": source, "h0": zeros, "c0": zeros})
        for _ in range(steps):
            logits, h, c = step.run(["logits", "h_out", "c_out"], {"token": start, "h": h, "c": c, "x": x})
        return logits

    out.update(onnx_raw=onnx_raw, floor=floor)
    return out


CHILD_ONNX = """
import json, resource, sys, time
t0 = time.perf_counter()
import numpy as np
from lit_seq2seq.runtime import OnnxSeq2Seq
t1 = time.perf_counter()
model = OnnxSeq2Seq.load(sys.argv[1], intra_op_threads=1, inter_op_threads=1)
t2 = time.perf_counter()
tokens = model.greedy(np.array([5, 9, 12, 40, 3, 7]))
t3 = time.perf_counter()
print(json.dumps(dict(import_s=t1 - t0, load_s=t2 - t1, decode_s=t3 - t2, tokens=tokens.tolist(),
    torch_loaded="torch" in sys.modules, maxrss_kb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    vmhwm_kb=int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1]))))
"""

CHILD_TORCH = """
import json, resource, sys, time
t0 = time.perf_counter()
import torch
import lit_seq2seq.checkpoint  # what from_checkpoint reads with (it imports lightning): counted as import time
from lit_seq2seq.model import Seq2Seq
t1 = time.perf_counter()
torch.set_num_threads(1)
net = Seq2Seq.from_checkpoint(sys.argv[1])
t2 = time.perf_counter()
with torch.inference_mode():
    tokens = net.greedy(torch.tensor([[5, 9, 12, 40, 3, 7]]))[0]
t3 = time.perf_counter()
print(json.dumps(dict(import_s=t1 - t0, load_s=t2 - t1, decode_s=t3 - t2, tokens=tokens.tolist(),
    torch_loaded=True, maxrss_kb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    vmhwm_kb=int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1]))))
"""


def fresh_process(code: str, arg: str) -> dict:
    """Run `code` in a new interpreter. It is started by a shell that forks it (not exec'd by us): Linux carries
    ru_maxrss across fork + exec, so a child exec'd straight from this big process would report our own size."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    command = ["/bin/sh", "-c", '"$@"; exit $?', "sh", sys.executable, "-c", code, arg]
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def report_batch1(seconds: dict[str, list[float]], args: argparse.Namespace, steps: int) -> None:
    us = {k: v * 1e6 for k, v in harness.medians(seconds).items()}
    onnx = us["onnx_greedy"]
    speedup, over = us["torch_greedy"] / onnx, onnx / us["floor"]
    keras = KERAS_MS_PER_SEQUENCE * 1e3

    def row(label: str, name: str, comparison: str, goal: str = "") -> tuple[str, ...]:
        return label, f"{us[name]:.1f}", harness.spread(seconds[name], 1e6, ".1f"), comparison, goal

    fused = onnx / us["two_graph"]
    rows = [
        row("OnnxSeq2Seq.greedy (greedy.onnx, one call)", "onnx_greedy", ""),
        row("OnnxSeq2Seq two-graph loop (encoder + steps, IOBinding)", "two_graph",
            f"greedy.onnx = {fused:.2f}x this time"),
        row("greedy.onnx, bare InferenceSession.run (1 call)", "greedy_raw",
            f"= {us['greedy_raw'] / us['onnx_raw']:.2f}x bare two-graph time"),
        row("PyTorch eager net.greedy (inference_mode)", "torch_greedy", f"onnx {speedup:.2f}x faster",
            harness.goal(speedup >= GOALS["torch_b1"], f">= {GOALS['torch_b1']:g}x")),
        row("PyTorch tight loop (encode + steps + argmax, no numpy)", "torch_tight",
            f"onnx {us['torch_tight'] / onnx:.2f}x faster"),
        row("two graphs, bare InferenceSession.run (1 + 3 calls + argmax)", "onnx_raw",
            f"{us['onnx_raw'] - onnx:+.1f} us vs onnx"),
        row("floor: 1 + 3 InferenceSession.run on trivial graphs", "floor", f"onnx = {over:.2f}x floor",
            harness.goal(over <= GOALS["floor_b1"], f"OnnxSeq2Seq <= {GOALS['floor_b1']:g}x floor")),
        ("Keras tutorial (reference constant, NOT measured here)", f"{keras:.0f}", "",
         f"onnx {keras / onnx:.0f}x faster", ""),
    ]  # fmt: skip
    title = f"batch 1, {steps} decode steps: median {args.clock} time per sequence ({args.repeats}x{args.calls} calls)"
    harness.table(title, ("", "us/sequence", "min-max", "comparison", "goal"), rows, "<>><<")
    print(f"  greedy.onnx / two-graph loop at batch 1: {fused:.2f}x the time (a prototype of the issue measured 0.78x)")


def report_batch(
    seconds: dict[str, list[float]], args: argparse.Namespace, calls: int, shapes: list[tuple[int, int, int]]
) -> None:
    rate = {k: args.batch / v for k, v in harness.medians(seconds).items()}
    gain = rate["onnx_greedy"] / rate["torch_greedy"]

    def row(label: str, name: str, comparison: str, goal: str = "") -> tuple[str, ...]:
        lo, hi = args.batch / max(seconds[name]), args.batch / min(seconds[name])
        return label, f"{rate[name]:,.0f}", f"{lo:,.0f}-{hi:,.0f}", comparison, goal

    fraction = rate["onnx_greedy"] / rate["gemm_limit"]
    rows = [
        row("OnnxSeq2Seq.greedy (greedy.onnx, one call)", "onnx_greedy", ""),
        row("OnnxSeq2Seq two-graph loop", "two_graph",
            f"greedy.onnx {rate['onnx_greedy'] / rate['two_graph']:.2f}x this throughput"),
        row("greedy.onnx, bare InferenceSession.run", "greedy_raw", ""),
        row("PyTorch eager net.greedy (inference_mode)", "torch_greedy", f"onnx {gain:.2f}x faster",
            harness.goal(gain >= GOALS["torch_b1024"], f">= {GOALS['torch_b1024']:g}x")),
        row("PyTorch tight loop", "torch_tight", f"onnx {rate['onnx_greedy'] / rate['torch_tight']:.2f}x faster"),
        row("the limit: the decode's bare matrix products, numpy", "gemm_limit",
            f"greedy.onnx at {fraction:.0%} of it"),
    ]  # fmt: skip
    title = f"batch {args.batch}: median throughput ({args.clock} time), {args.repeats} rounds of {calls} call(s)"
    harness.table(title, ("", "sequences/s", "min-max", "comparison", "goal"), rows, "<>><<")
    print(
        f"  the limit: {len(shapes)} product shapes (rows x K x N, times per decode): "
        + ", ".join(f"{args.batch}x{k}x{n} x{r}" for r, k, n in shapes)
    )
    print(f"  greedy.onnx throughput = {fraction:.1%} of the limit ({rate['gemm_limit']:,.0f} sequences/s)")


def report_processes(procs: dict[str, list[dict]], repeats: int) -> None:
    keys = ("import_s", "load_s", "decode_s", "wall_s", "maxrss_kb", "vmhwm_kb")
    med = harness.medians({f"{side} {k}": [r[k] for r in runs] for side, runs in procs.items() for k in keys})
    rows = []
    for side, label in (("onnx", "lit_seq2seq.runtime"), ("torch", "torch + checkpoint")):
        m = {k: med[f"{side} {k}"] for k in keys}
        rows.append((label, f"{m['import_s']:.3f}", f"{m['load_s']:.3f}", f"{m['decode_s'] * 1e3:.2f}",
                     f"{m['wall_s']:.3f}", f"{m['maxrss_kb'] / 1024:.0f}", f"{m['vmhwm_kb'] / 1024:.0f}",
                     str(procs[side][0]["torch_loaded"])))  # fmt: skip
    columns = ("", "import s", "load s", "decode ms", "wall s", "ru_maxrss MiB", "VmHWM MiB", "torch loaded")
    harness.table(f"fresh process, decode one sequence: medians of {repeats} runs per side", columns, rows)
    ratio = {k: med[f"torch {k}"] / med[f"onnx {k}"] for k in keys}
    same = procs["onnx"][0]["tokens"] == procs["torch"][0]["tokens"]
    print(f"  torch side / runtime side: import {ratio['import_s']:.1f}x, wall {ratio['wall_s']:.1f}x, "
          f"peak RSS {ratio['maxrss_kb']:.1f}x; same tokens: {same}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt_path", help="a `lit-seq2seq fit` checkpoint of the seed model")
    parser.add_argument("--model_dir", help="its `lit-seq2seq export` folder (encoder.onnx, decoder_step.onnx)")
    parser.add_argument("--train", action="store_true", help="fit and export the seed model in a temp dir first")
    parser.add_argument("--repeats", type=int, default=30, help="interleaved rounds per measurement (default 30)")
    parser.add_argument("--calls", type=int, default=200, help="batch-1 calls timed together per round (200)")
    parser.add_argument("--batch", type=int, default=1024, help="batch size of the throughput test (1024)")
    parser.add_argument("--process_repeats", type=int, default=5, help="fresh subprocesses per side (5)")
    parser.add_argument(
        "--clock", choices=tuple(harness.CLOCKS), default="wall",
        help="wall: time.perf_counter (default); cpu: time.thread_time, this thread's CPU time, which leaves out "
        "time spent descheduled on a busy machine (every engine here computes in the calling thread)",
    )  # fmt: skip
    args = parser.parse_args()
    given = bool(args.ckpt_path) + bool(args.model_dir)
    if (args.train and given) or (not args.train and given != 2):
        parser.error("pass either --train, or both --ckpt_path and --model_dir")
    for flag in ("repeats", "calls", "batch", "process_repeats"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag} must be >= 1, got {getattr(args, flag)}")

    harness.pin_threads(1)
    with tempfile.TemporaryDirectory(prefix="decode_speed_") as tmp:
        ckpt, model_dir = harness.model_files(args.ckpt_path, args.model_dir, Path(tmp), train=args.train)
        run(args, ckpt, model_dir)


def run(args: argparse.Namespace, ckpt: Path, model_dir: Path) -> None:
    model = OnnxSeq2Seq.load(model_dir, intra_op_threads=1, inter_op_threads=1)
    net, task = load_checkpoint(ckpt)
    big, _ = task.sample(args.batch, np.random.default_rng(0))
    big = np.ascontiguousarray(big, dtype=np.int64)
    one = big[:1].copy()
    with torch.inference_mode():
        expected = net.greedy(torch.from_numpy(big)).numpy()
        same = np.array_equal(model.greedy(big), expected)
        same &= np.array_equal(model._greedy_steps(big, model.max_target_length), expected)
    print(
        f"{harness.versions()}; threads: torch {torch.get_num_threads()}, onnxruntime 1/1\nmodel {model_dir}: "
        f"{model.cell} {model.hidden_size}, vocab {model.target_vocab_size}, source {one.shape[1]} tokens, "
        f"{model.max_target_length} decoder steps; onnx greedy == torch greedy on {args.batch} sources: {same}",
        flush=True,
    )
    before = harness.load_before()

    if model.greedy_graph is None:
        raise SystemExit(f"{model_dir} has no {contract.GREEDY_FILE}: export the checkpoint again")
    shapes = gemm_shapes(model_dir, one.shape[1], model.max_target_length)

    def timed(source: np.ndarray, with_floor: bool, calls: int, limit: Callable | None = None) -> dict:
        funcs = contenders(model, net, source, with_floor, limit)
        clock = harness.CLOCKS[args.clock]  # warm-up: first-run allocations, lazy inits
        return harness.interleaved(funcs, args.repeats, calls=calls, warmup=max(3, calls // 10), clock=clock)[0]

    big_calls = max(1, args.calls // 100)
    b1 = timed(one, True, args.calls)
    bb = timed(big, False, big_calls, gemm_limit(shapes, args.batch))
    children = {
        "onnx": functools.partial(fresh_process, CHILD_ONNX, str(model_dir)),
        "torch": functools.partial(fresh_process, CHILD_TORCH, str(ckpt)),
    }
    walls, procs = harness.interleaved(children, args.process_repeats)  # wall clock: these are separate processes
    for side, runs in procs.items():
        for result, wall in zip(runs, walls[side]):
            result["wall_s"] = wall

    report_batch1(b1, args, model.max_target_length)
    report_batch(bb, args, big_calls, shapes)
    report_processes(procs, args.process_repeats)
    print()
    harness.load_after(before)


if __name__ == "__main__":
    main()
