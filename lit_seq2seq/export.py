"""Export a checkpoint's nets to encoder.onnx, decoder_step.onnx, greedy.onnx and CONTRACT.md, verified against PyTorch.

Exporter: the TorchScript-based `torch.onnx.export(..., dynamo=False)`, chosen deliberately. It maps
`pack_padded_sequence` onto the ONNX LSTM/GRU `sequence_lens` input (padding-exact encoders), keeps every axis
named in `dynamic_axes` dynamic even where the example has size 1, writes one self-contained .onnx file (no
`.onnx.data`) and needs no onnxscript. The dynamo exporter does none of the first three here.

The output folder changes as a whole: the export is written and verified in a hidden sibling folder, which then
takes the output folder's place in one rename (`_swap_in`); leftovers of killed exports are cleaned up by the next.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import platform
import re
import secrets
import shutil
import stat
import sys
import tempfile
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import Tensor, nn

from lit_seq2seq import __version__, bundled, contract
from lit_seq2seq.atomic import pid_alive
from lit_seq2seq.checkpoint import read_checkpoint
from lit_seq2seq.metrics import score
from lit_seq2seq.model import Seq2Seq
from lit_seq2seq.runtime import OnnxSeq2Seq
from lit_seq2seq.search import plain
from lit_seq2seq.tasks import Task, task_from_hparams
from lit_seq2seq.text import EOS_ID, ID_ONLY_METADATA, TEXT_KEY, TextSpec, read_text_entry

try:
    import fcntl
except ImportError:  # Windows: no flock, so leftovers of killed exports are kept (see _abandoned)
    fcntl = None

PARITY_TOL = 1e-4
MAX_VERIFY_SAMPLES = 100_000  # sources decoded by PyTorch and onnxruntime each (the seed model: 20 s, 5 GB peak)
_PACKED_SHAPE_NOTE = re.compile(r"shape inference of prim::(PackPadded|PadPacked) type is missing")
_UNUSED = "unused_memory"  # traced-only encoder output, removed before saving


class ExportVerificationError(RuntimeError):
    """The exported graphs disagree with PyTorch or fail the ONNX checker; nothing was written."""


class EncoderGraph(nn.Module):
    """encoder.onnx: `source` int64 (batch, source_len) -> `h` [, `c`] float32 (state_layers, batch, hidden)
    [, `memory` float32 (batch, source_len, memory_dim), `memory_mask` bool (batch, source_len)].
    """

    def __init__(self, net: Seq2Seq) -> None:
        super().__init__()
        self.net = net
        self.names = contract.state_names(net.config.cell, net.config.attention)

    def forward(self, source: Tensor) -> tuple[Tensor, ...]:
        # The tracer fails on a packed RNN whose sequence output is unused, so memory is always an output
        # here; `_prune_and_stamp` removes it from the graph outputs of models without attention.
        state = self.net.encoder(source, pack=True, memory=True)
        unused = () if self.net.config.attention else (state[contract.MEMORY],)
        return tuple(state[n] for n in self.names) + unused


class DecoderStepGraph(nn.Module):
    """decoder_step.onnx: `token` int64 (batch,) and the state named as the encoder's outputs ->
    `logits` float32 (batch, vocab), `h_out` [, `c_out`] float32 (state_layers, batch, hidden).
    """

    def __init__(self, net: Seq2Seq) -> None:
        super().__init__()
        self.net = net
        self.names = contract.state_names(net.config.cell, net.config.attention)

    def forward(self, token: Tensor, *state: Tensor) -> tuple[Tensor, ...]:
        logits, new = self.net.step(token, dict(zip(self.names, state)))
        return (logits, *(new[n] for n in self.names if n in contract.RECURRENT))


def _dynamic_axes(names: list[str]) -> dict[str, dict[int, str]]:
    axes = {
        contract.SOURCE: {0: "batch", 1: "source_len"},
        contract.TOKEN: {0: "batch"},
        contract.LOGITS: {0: "batch"},
        contract.MEMORY: {0: "batch", 1: "source_len"},
        contract.MEMORY_MASK: {0: "batch", 1: "source_len"},
        _UNUSED: {0: "batch", 1: "source_len"},
    }
    for n in contract.RECURRENT:
        axes[n] = axes[n + contract.OUT_SUFFIX] = {1: "batch"}
    return {n: axes[n] for n in names}


@contextlib.contextmanager
def _without_packed_shape_warnings() -> Iterator[None]:
    """Hold back the exporter's C++ notes that shape inference cannot see through prim::PackPadded / PadPacked
    (written straight to file descriptor 2, past Python's warning filters): the graphs are verified against PyTorch
    after export, so they tell a user nothing. Every other line written to stderr meanwhile is passed on."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            for line in held.read().decode(errors="replace").splitlines(keepends=True):
                if not _PACKED_SHAPE_NOTE.search(line):
                    sys.stderr.write(line)


def _export(module: nn.Module, args: tuple[Tensor, ...], path: Path, inputs: list[str], outputs: list[str], opset: int):
    # The exporter traces in eval mode, then puts the module back in the mode it found it in, recursively: a wrapper
    # left in training mode (nn.Module's default) would hand the net back with dropout on.
    module.eval()
    with warnings.catch_warnings(), _without_packed_shape_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice and tracer chatter
        torch.onnx.export(
            module,
            args,
            str(path),
            dynamo=False,
            input_names=inputs,
            output_names=outputs,
            dynamic_axes=_dynamic_axes(inputs + outputs),
            opset_version=opset,
            do_constant_folding=True,
        )


def _example_source(net: Seq2Seq, task: Task) -> Tensor:
    """(3, 5) source with one padded row, so the traced graph contains the packed (padding-exact) path."""
    gen = torch.Generator().manual_seed(0)
    source = torch.randint(task.min_token, net.config.source_vocab_size, (3, 5), generator=gen)
    source[1, 3:] = net.config.pad_token
    return source


def export_encoder(net: Seq2Seq, path: Path, task: Task, opset: int = 17) -> None:
    """Write encoder.onnx; I/O as in `EncoderGraph` (names from `contract.encoder_io`)."""
    inputs, outputs = contract.encoder_io(net.config.cell, net.config.attention)
    traced = outputs + ([] if net.config.attention else [_UNUSED])
    _export(EncoderGraph(net), (_example_source(net, task),), path, inputs, traced, opset)


def export_decoder_step(net: Seq2Seq, path: Path, task: Task, opset: int = 17) -> None:
    """Write decoder_step.onnx; I/O as in `DecoderStepGraph` (names from `contract.decoder_io`)."""
    inputs, outputs = contract.decoder_io(net.config.cell, net.config.attention)
    state = net.encode(_example_source(net, task), pack=True)
    token = torch.tensor([net.config.start_token, 2 % net.config.target_vocab_size, 1], dtype=torch.int64)
    _export(DecoderStepGraph(net), (token, *(state[n] for n in inputs[1:])), path, inputs, outputs, opset)


def metadata(
    net: Seq2Seq, task: Task, inputs: list[str], outputs: list[str], export_id: str, text: TextSpec | None = None
) -> dict[str, str]:
    """metadata_props of one graph: everything a runtime needs, as strings (keys in `contract.META_KEYS`)."""
    values: dict[str, Any] = {
        "format_version": contract.FORMAT_VERSION,
        "producer_version": __version__,
        "export_id": export_id,
        "task": task.name,
        "source_vocab_size": net.config.source_vocab_size,
        "target_vocab_size": net.config.target_vocab_size,
        "pad_token": net.config.pad_token,
        "start_token": net.config.start_token,
        "eos_token": "" if net.config.eos_token is None else net.config.eos_token,
        "min_token": task.min_token,
        "source_length": task.source_length,
        "min_source_length": task.min_source_length,
        "max_target_length": net.config.max_target_length,
        "hidden_size": net.config.hidden_size,
        "num_layers": net.config.state_layers,  # what a client sizes the state by
        "cell": net.config.cell,
        "bidirectional": int(net.config.bidirectional),
        "attention": int(net.config.attention),
        "context_rnn": int(net.config.context_rnn),
        "memory_dim": net.config.memory_dim,
        "inputs": ",".join(inputs),
        "outputs": ",".join(outputs),
        contract.CONTENT_HASH_KEY: contract.HASH_PLACEHOLDER,
        **(text.to_metadata() if text is not None else ID_ONLY_METADATA),
    }
    return {k: str(v) for k, v in values.items()}


def _prune(graph: onnx.GraphProto) -> None:
    """Drop nodes and initializers that no graph output depends on (the traced-only memory branch)."""
    needed = {o.name for o in graph.output}
    keep = []
    for node in reversed(graph.node):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(i for i in node.input if i)
    del graph.node[:]
    graph.node.extend(reversed(keep))
    for init in [i for i in graph.initializer if i.name not in needed]:
        graph.initializer.remove(init)


def _prune_and_stamp(path: Path, meta: dict[str, str]) -> None:
    """Drop the traced-only output, add the metadata, then fill in the content hash (contract.stamp_content_hash)."""
    model = onnx.load(str(path))
    for output in [o for o in model.graph.output if o.name == _UNUSED]:
        model.graph.output.remove(output)
    _prune(model.graph)
    _stamp(model, path, meta)


def _stamp(model: onnx.ModelProto, path: Path, meta: dict[str, str]) -> None:
    """Write `model` to `path` with the metadata `meta` and its content hash (contract.stamp_content_hash)."""
    del model.metadata_props[:]
    for k, v in meta.items():
        model.metadata_props.add(key=k, value=v)
    model.producer_name, model.producer_version = "lit-seq2seq", __version__
    path.write_bytes(contract.stamp_content_hash(model.SerializeToString()))


# ------------------------------------------------------------------------------ greedy.onnx: one call decodes


def _renamed(graph: onnx.GraphProto, prefix: str, keep: dict[str, str]) -> tuple[list, list]:
    """Copies of `graph`'s nodes and initializers with every value name prefixed, except those in `keep` (mapped to
    the name given there): two graphs inlined into one must not share a name by accident."""

    def name(value: str) -> str:
        return keep.get(value, prefix + value) if value else value  # "" marks an omitted optional input

    nodes = []
    for node in graph.node:
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
            raise ExportVerificationError(f"cannot inline {graph.name}: node {node.name} holds a subgraph")
        new = onnx.NodeProto()
        new.CopyFrom(node)
        new.name = prefix + node.name
        new.input[:] = [name(i) for i in node.input]
        new.output[:] = [name(o) for o in node.output]
        nodes.append(new)
    initializers = []
    for init in graph.initializer:
        new = onnx.TensorProto()
        new.CopyFrom(init)
        new.name = name(init.name)
        initializers.append(new)
    return nodes, initializers


def _unsorted(graph: onnx.GraphProto) -> onnx.GraphProto:
    """The traced encoder without pack_padded_sequence's sort by length, for greedy.onnx: ONNX RNNs take per-row
    lengths in any order, so the rows need not be sorted (TopK) and put back (Gather by the inverse permutation). With
    the permutation the identity, every Gather by it (or by its inverse, ScatterElements of a Range) is its data input.
    About a third of the encoder's nodes at batch 1. Returns `graph` itself when the pattern is not the one expected
    (the result is verified against PyTorch either way)."""
    topk = [n for n in graph.node if n.op_type == "TopK"]
    if len(topk) != 1:
        return graph
    made, no = {o: n for n in graph.node for o in n.output}, onnx.NodeProto()
    alias, perm = {topk[0].output[0]: topk[0].input[0]}, {topk[0].output[1]}
    for node in graph.node:  # in graph order: a node's inputs are made before it
        if node.op_type == "Cast" and node.input[0] in perm:
            perm.add(node.output[0])
        elif node.op_type == "ScatterElements" and node.input[1] in perm:
            if made.get(node.input[2], no).op_type == "Range":  # the inverse: a Range scattered to the permuted places
                perm.add(node.output[0])
        elif node.op_type == "Gather" and node.input[1] in perm:
            alias[node.output[0]] = node.input[0]

    def resolve(name: str) -> str:
        while name in alias:
            name = alias[name]
        return name

    out = onnx.GraphProto()
    out.CopyFrom(graph)
    del out.node[:]
    outputs = {o.name for o in graph.output}
    for node in graph.node:
        if node is topk[0] or (node.op_type == "Gather" and node.output[0] in alias):
            for name in (o for o in node.output if o in outputs):
                out.node.append(onnx.helper.make_node("Identity", [resolve(name)], [name], name=f"unsorted/{name}"))
            continue
        new = out.node.add()
        new.CopyFrom(node)
        new.input[:] = [resolve(i) if i else i for i in node.input]
    _prune(out)
    known = {i.name for i in out.input} | {i.name for i in out.initializer}
    for node in out.node:  # every input made by an earlier node: else the permutation is used some other way
        if any(i and i not in known for i in node.input):
            return graph
        known.update(node.output)
    return out


def greedy_model(encoder: onnx.ModelProto, decoder: onnx.ModelProto, net: Seq2Seq) -> onnx.ModelProto:
    """greedy.onnx from the two exported graphs: the encoder, then a Loop whose body is the decoder step and an ArgMax
    (first maximum on ties), feeding each token back. With an end token, finished rows emit padding and the loop stops
    once every row has finished. I/O in `contract.greedy_io`; no metadata yet.

    The encoder's and decoder's nodes are inlined with prefixed names; the decoder's weights sit in the outer graph and
    the body reads them (and the attention memory) from there. Loop-carried values are declared without shapes, so
    every dimension stays dynamic."""
    h, tp = onnx.helper, onnx.TensorProto
    config = net.config
    state = contract.state_names(config.cell, config.attention)
    recurrent = [n for n in state if n in contract.RECURRENT]
    fixed = [n for n in state if n not in contract.RECURRENT]
    eos = config.eos_token
    enc_nodes, enc_inits = _renamed(_unsorted(encoder.graph), "encoder/", {contract.SOURCE: contract.SOURCE})
    keep = {contract.TOKEN: "loop/token", **{n: f"loop/{n}" for n in recurrent}, **{n: f"encoder/{n}" for n in fixed}}
    dec_nodes, dec_inits = _renamed(decoder.graph, "decoder/", keep)

    def scalar(name: str, value: int, dtype: int = tp.INT64) -> onnx.NodeProto:
        return h.make_node("Constant", [], [name], value=h.make_tensor(name, dtype, [], [value]))

    body = [*dec_nodes, h.make_node("ArgMax", ["decoder/logits"], ["loop/argmax"], axis=-1, keepdims=0)]
    value = h.make_tensor_value_info
    body_in = [value("loop/iteration", tp.INT64, []), value("loop/go", tp.BOOL, [])]
    body_in += [value("loop/token", tp.INT64, None)]
    if eos is None:  # no row ever finishes: max_len steps
        body += [h.make_node("Identity", ["loop/argmax"], ["loop/token_next"])]
        body += [h.make_node("Identity", ["loop/go"], ["loop/go_next"])]
    else:
        body_in.append(value("loop/done", tp.BOOL, None))
        body += [
            scalar("loop/pad", config.pad_token),
            scalar("loop/eos", eos),
            h.make_node("Where", ["loop/done", "loop/pad", "loop/argmax"], ["loop/token_next"]),
            h.make_node("Equal", ["loop/token_next", "loop/eos"], ["loop/ended"]),
            h.make_node("Or", ["loop/done", "loop/ended"], ["loop/done_next"]),
            h.make_node("Not", ["loop/done_next"], ["loop/open"]),
            h.make_node("Cast", ["loop/open"], ["loop/open_int"], to=tp.INT64),
            h.make_node("ReduceSum", ["loop/open_int"], ["loop/open_rows"], keepdims=0),
            scalar("loop/zero", 0),
            h.make_node("Greater", ["loop/open_rows", "loop/zero"], ["loop/go_next"]),
        ]
    body_in += [h.make_tensor_value_info(f"loop/{n}", tp.FLOAT, None) for n in recurrent]
    body += [h.make_node("Identity", ["loop/token_next"], ["loop/emitted"])]  # the scan output: one column per step
    body_out = [h.make_tensor_value_info("loop/go_next", tp.BOOL, [])]
    body_out += [h.make_tensor_value_info("loop/token_next", tp.INT64, None)]
    body_out += [h.make_tensor_value_info("loop/done_next", tp.BOOL, None)] if eos is not None else []
    body_out += [h.make_tensor_value_info(f"decoder/{n}{contract.OUT_SUFFIX}", tp.FLOAT, None) for n in recurrent]
    body_out += [h.make_tensor_value_info("loop/emitted", tp.INT64, None)]
    loop_body = h.make_graph(body, "greedy_step", body_in, body_out)

    done = ["greedy/not_done"] if eos is not None else []
    carried_in = ["greedy/start", *done, *(f"encoder/{n}" for n in recurrent)]
    finals = [f"greedy/final_{i}" for i in range(len(carried_in))]
    nodes = [
        *enc_nodes,
        h.make_node("Shape", [contract.SOURCE], ["greedy/source_shape"]),
        h.make_node("Constant", [], ["greedy/first"], value=h.make_tensor("greedy/first", tp.INT64, [1], [0])),
        h.make_node("Gather", ["greedy/source_shape", "greedy/first"], ["greedy/batch"], axis=0),  # [batch]
        h.make_node("ConstantOfShape", ["greedy/batch"], ["greedy/start"],
                    value=h.make_tensor("start", tp.INT64, [1], [config.start_token])),
        h.make_node("ConstantOfShape", ["greedy/batch"], ["greedy/not_done"],
                    value=h.make_tensor("not_done", tp.BOOL, [1], [False])),  # unused without an end token
        h.make_node("Constant", [], ["greedy/scalar"], value=h.make_tensor("greedy/scalar", tp.INT64, [0], [])),
        h.make_node("Reshape", [contract.MAX_LEN, "greedy/scalar"], ["greedy/max_len"]),  # [] or [1] -> []
        scalar("greedy/zero", 0),
        h.make_node("Max", ["greedy/max_len", "greedy/zero"], ["greedy/trips"]),
        scalar("greedy/go", 1, tp.BOOL),
        h.make_node("Loop", ["greedy/trips", "greedy/go", *carried_in], [*finals, "greedy/emitted"], body=loop_body),
        # (steps, batch) -> (batch, steps). After zero trips the scan output may come back as [0]: the reshape to
        # [steps, batch] keeps the batch dimension there.
        h.make_node("Shape", ["greedy/emitted"], ["greedy/emitted_shape"]),
        h.make_node("Gather", ["greedy/emitted_shape", "greedy/first"], ["greedy/steps"], axis=0),
        h.make_node("Concat", ["greedy/steps", "greedy/batch"], ["greedy/columns_shape"], axis=0),
        h.make_node("Reshape", ["greedy/emitted", "greedy/columns_shape"], ["greedy/columns"]),
        h.make_node("Transpose", ["greedy/columns"], [contract.TOKENS], perm=[1, 0]),
    ]  # fmt: skip
    if eos is None:
        nodes = [n for n in nodes if n.output[0] != "greedy/not_done"]
    default = h.make_tensor(contract.MAX_LEN, tp.INT64, [], [config.max_target_length])
    graph = h.make_graph(
        nodes,
        "greedy",
        [
            h.make_tensor_value_info(contract.SOURCE, tp.INT64, ["batch", "source_len"]),
            # Declared a scalar (onnxruntime takes a [1] tensor too); its initializer is the default, so a caller
            # may leave it out. A graph input of unknown rank fails the checker.
            h.make_tensor_value_info(contract.MAX_LEN, tp.INT64, []),
        ],
        [h.make_tensor_value_info(contract.TOKENS, tp.INT64, ["batch", "steps"])],
        initializer=[*enc_inits, *dec_inits, default],
    )
    model = h.make_model(graph, opset_imports=list(encoder.opset_import), ir_version=encoder.ir_version)
    return model


def _write_greedy(net: Seq2Seq, task: Task, folder: Path, export_id: str, text: TextSpec | None) -> None:
    """greedy.onnx from the two graphs already in `folder`, with their metadata (its own I/O names) and hash."""
    encoder, decoder = (onnx.load(str(folder / n)) for n in (contract.ENCODER_FILE, contract.DECODER_FILE))
    model = greedy_model(encoder, decoder, net)  # not pruned: the loop body reads outer values _prune cannot see
    _stamp(model, folder / contract.GREEDY_FILE, metadata(net, task, *contract.greedy_io(), export_id, text))


@dataclass(frozen=True)
class TextTask(Task):
    """What a text model was trained on, for the metadata: its TextSpec and trained source lengths (from the
    checkpoint's `text` entry). File data has no generator: `sample` refuses, and export verifies on random sources."""

    text: TextSpec | None = None

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        raise ValueError(f"task {self.name!r}: a model trained on pair files has no generator of fresh sources")


TEXT_TASK = "pairs"  # the metadata's `task` of a text model


def text_task(entry: Any, net: Seq2Seq, where: str) -> TextTask:
    """The TextTask of a checkpoint's `text` entry (TextSpec.to_dict() | {source_length, min_source_length}), checked
    against the net it came with; ValueError naming `where` when it is damaged or does not fit."""
    spec, longest, shortest = read_text_entry(entry, where)
    config = net.config
    for side, vocab, size in (
        ("source", spec.source_vocab, config.source_vocab_size),
        ("target", spec.target_vocab, config.target_vocab_size),
    ):
        if len(vocab) != size:
            raise ValueError(f"{where}: {len(vocab)} {side} tokens in its text entry, the net {size} {side} ids")
    if config.eos_token != EOS_ID:
        raise ValueError(f"{where}: a text model ends targets with id {EOS_ID}, the net with {config.eos_token}")
    if not 1 <= shortest <= longest:
        raise ValueError(f"{where}: trained source lengths {shortest} to {longest} in its text entry are not a range")
    min_token = spec.source_vocab.min_token
    return TextTask(TEXT_TASK, config.source_vocab_size, longest, shortest, config.max_target_length, EOS_ID, min_token,
                    spec)  # fmt: skip


def load_checkpoint(ckpt_path: str | os.PathLike) -> tuple[Seq2Seq, Task]:
    """The pure net and task of a `lit-seq2seq fit` checkpoint, read once with the checks of `read_checkpoint`. For a
    text model (one with a `text` entry) the task is a TextTask: `task.text` holds its TextSpec."""
    ckpt = read_checkpoint(ckpt_path)
    try:
        net = Seq2Seq.from_checkpoint(ckpt)
    except ValueError as error:
        raise ValueError(f"--ckpt_path {ckpt_path}: {error}") from None
    if ckpt.get(TEXT_KEY) is not None:
        return net, text_task(ckpt[TEXT_KEY], net, f"--ckpt_path {ckpt_path}")
    data = ckpt.get("datamodule_hyper_parameters") or {}
    if not isinstance(data.get("task"), str):  # a fit without our data modules: the defaults would be another task
        raise ValueError(
            f"--ckpt_path {ckpt_path}: no task to describe the export with: the checkpoint has neither the "
            "vocabularies of a PairDataModule nor the task of a Seq2SeqDataModule (fit with one of them as the "
            "Trainer's datamodule)"
        )
    return net, task_from_hparams(data)


@dataclass
class ExportReport:
    output_dir: Path
    encoder_max_diff: float
    decoder_max_diff: float
    greedy_rows: int  # sources whose greedy tokens equal PyTorch's (verify raises otherwise)
    beam_rows: int  # sources whose beam-search tokens equal PyTorch's
    exact_match: float | None  # None for a text model: no generator of fresh pairs, so no accuracy here
    text: TextSpec | None = None

    def __str__(self) -> str:
        sources = "fresh task sources" if self.text is None else "random sources of the trained lengths"
        lines = [
            f"exported to {self.output_dir}/{{{','.join(EXPORT_FILES)}}}",
            f"  parity vs PyTorch (max abs diff / max(1, max |output|), tol {PARITY_TOL:g}): "
            f"encoder {self.encoder_max_diff:.2e}, decoder step {self.decoder_max_diff:.2e}",
            f"  greedy tokens identical to PyTorch on {self.greedy_rows} {sources} (the two-graph loop and "
            f"{contract.GREEDY_FILE})",
            f"  beam search (beam 3) tokens identical on {self.beam_rows} sources",
        ]
        if self.text is None:
            lines.append(f"  exact match of the exported model on those sources: {self.exact_match:.2%}")
        else:
            spec = self.text
            lines.append(
                f"  text model: {len(spec.source_vocab)} source tokens ({spec.source.kind} tokenizer), "
                f"{len(spec.target_vocab)} target tokens ({spec.target.kind} tokenizer), carried in the metadata"
            )
            lines.append(
                "  exact match: not measured (pair-file data has no generator of fresh pairs; the sources above are "
                "random ids): measure it with `lit-seq2seq decode` on SOURCE<TAB>REFERENCE lines"
            )
        return "\n".join(lines)


def _max_diff(expected: list[np.ndarray], got: list[np.ndarray]) -> float:
    """Largest |expected - got| of each output over that output's scale, max(1, max |expected|): float32 rounding
    grows with the magnitude (a trained net's logits reach tens), so a bound on the absolute difference would trip
    on larger nets. States and outputs within [-1, 1] are held to the absolute difference."""
    diffs = []
    for e, g in zip(expected, got):
        e64 = e.astype(np.float64)
        scale = max(1.0, float(np.abs(e64).max(initial=0.0)))
        diffs.append(float(np.abs(e64 - g.astype(np.float64)).max(initial=0.0)) / scale)
    return max(diffs)


def verify(net: Seq2Seq, task: Task, model_dir: Path, samples: int) -> ExportReport:
    """Compare the graphs in `model_dir` with PyTorch: per-graph outputs, then greedy tokens (the two-graph loop and
    greedy.onnx) and beam tokens."""
    for name in contract.GRAPH_FILES:
        try:
            onnx.checker.check_model(str(model_dir / name), full_check=True)
        except Exception as error:  # noqa: BLE001
            raise ExportVerificationError(f"onnx.checker rejected {name}: {error}") from None
    runtime = OnnxSeq2Seq.load(model_dir)
    rng = np.random.default_rng(0)
    enc_diff = dec_diff = 0.0
    for batch in (1, 2, 7):
        for length in sorted({1, max(1, task.source_length // 2), task.source_length, task.source_length + 3}):
            source = rng.integers(task.min_token, net.config.source_vocab_size, size=(batch, length))
            for row in range(1, batch, 2):  # every other row padded at a random length >= 1
                source[row, rng.integers(1, length + 1) :] = net.config.pad_token
            with torch.no_grad():
                state = net.encode(torch.from_numpy(source), pack=True)
            names = contract.state_names(net.config.cell, net.config.attention)
            got = runtime.encode(source, allow_untrained_lengths=True)  # lengths 1 and S + 3 on purpose: dynamic axes
            enc_diff = max(enc_diff, _max_diff([state[n].numpy() for n in names], [got[n] for n in names]))
            token = rng.integers(0, net.config.target_vocab_size, size=batch)
            with torch.no_grad():
                logits, new = net.step(torch.from_numpy(token), state)
            got_logits, got_new = runtime.step(token, got)
            recurrent = [n for n in names if n in contract.RECURRENT]
            dec_diff = max(
                dec_diff,
                _max_diff(
                    [logits.numpy(), *(new[n].numpy() for n in recurrent)],
                    [got_logits, *(got_new[n] for n in recurrent)],
                ),
            )
    if not (enc_diff <= PARITY_TOL and dec_diff <= PARITY_TOL):
        raise ExportVerificationError(
            f"ONNX outputs differ from PyTorch: encoder max abs diff {enc_diff:.3e}, decoder step {dec_diff:.3e} "
            f"(relative to max(1, max |output|); tolerance {PARITY_TOL:g})"
        )

    source, target = _verify_sources(net, task, samples, np.random.default_rng(20261128))
    expected = net.greedy(torch.from_numpy(source)).numpy()
    checked, _ = runtime.check_source(source)
    if runtime.greedy_graph is None:
        raise ExportVerificationError(f"{contract.GREEDY_FILE} was not loaded")
    for what, got in (
        ("the two-graph loop", runtime._greedy_steps(checked, runtime.max_target_length)),
        (contract.GREEDY_FILE, runtime._greedy_graph(checked, runtime.max_target_length)),
    ):
        if not (expected.shape == got.shape and bool((expected == got).all())):
            rows = int((expected != got).any(1).sum()) if expected.shape == got.shape else samples
            raise ExportVerificationError(
                f"greedy tokens differ between onnxruntime ({what}) and PyTorch on {rows} of {samples} sources"
            )
    beam_rows = min(samples, 64)
    expected_beam = net.beam_search(torch.from_numpy(source[:beam_rows]), beam_size=3)[0].numpy()
    got_beam = runtime.beam_search(source[:beam_rows], beam_size=3)[0]
    if not (expected_beam.shape == got_beam.shape and bool((expected_beam == got_beam).all())):
        raise ExportVerificationError(f"beam-search tokens differ between onnxruntime and PyTorch ({beam_rows} rows)")
    text = getattr(task, "text", None)
    exact = None
    if target is not None:  # scored as test and decode score: each answer up to its end (metrics.score)
        exact = score(got, target[:, None], net.config.eos_token, net.config.pad_token).exact_match
    return ExportReport(model_dir, enc_diff, dec_diff, samples, beam_rows, exact, text)


def _verify_sources(net: Seq2Seq, task: Task, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None]:
    """(sources, targets) the tokens are compared on: fresh task samples, or for a text model (no generator of pair
    data, so no targets) random ids of its source vocabulary (the unknown id included) at every trained length,
    right-padded."""
    if not isinstance(task, TextTask):
        return task.sample(n, rng)
    span = task.source_length - task.min_source_length + 1
    lengths = task.min_source_length + np.arange(n) % span  # every trained length, the first `span` rows one each
    tokens = rng.integers(task.min_token, net.config.source_vocab_size, size=(n, task.source_length))
    return np.where(np.arange(task.source_length) < lengths[:, None], tokens, net.config.pad_token), None


# ------------------------------------------------------------------------------- the output folder, swapped whole

# Every file an export writes. The folder is replaced as a whole, so one holding anything else is refused.
EXPORT_FILES = (*contract.GRAPH_FILES, contract.CONTRACT_FILE)
# Hidden siblings of an output folder NAME: .NAME.export-PID-HEX (an export being written) and .NAME.old-PID-HEX (the
# previous export moved aside by the two-rename fallback); lit-seq2seq 0.1 named the first .NAME.export-XXXXXXXX.
_SIBLING = r"\.{name}\.(export|old)-(?:(\d+)-[0-9a-f]{{8}}|[a-z0-9_]{{8}})"
_AT_FDCWD, _RENAME_EXCHANGE = -100, 2
_RENAMEAT2_SYSCALL = {"x86_64": 316, "aarch64": 276}  # for a C library without the renameat2 wrapper (glibc < 2.28)


class ExportWriteError(OSError):
    """The export could not be written (full disk, read-only or unwritable location); the output folder is as it was."""


def _rename_exchange(a: Path, b: Path) -> bool:
    """Swap the paths `a` and `b` in one atomic step (Linux renameat2 with RENAME_EXCHANGE). False where the OS, its
    C library or the filesystem cannot; any other failure raises OSError."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    fd = ctypes.c_int(_AT_FDCWD)
    args = (fd, os.fsencode(a), fd, os.fsencode(b), ctypes.c_uint(_RENAME_EXCHANGE))
    if hasattr(libc, "renameat2"):
        result = libc.renameat2(*args)
    elif platform.machine() in _RENAMEAT2_SYSCALL:
        result = libc.syscall(ctypes.c_long(_RENAMEAT2_SYSCALL[platform.machine()]), *args)
    else:
        return False
    if result == 0:
        return True
    code = ctypes.get_errno()
    # EINVAL: a filesystem without the flag; ENOSYS: an old kernel; EPERM: a seccomp filter refusing the call (a
    # genuine permission problem fails the plain renames of the fallback as well, and is reported there).
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EPERM):
        return False
    raise OSError(code, os.strerror(code), str(b))


@contextlib.contextmanager
def _held(folder: Path) -> Iterator[None]:
    """Hold an exclusive flock on `folder`. The lock follows the folder through renames and ends with the process
    however it ends, so another export can tell a running export's folders from a killed one's."""
    if fcntl is None:
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _abandoned(folder: Path, pid: str | None) -> bool:
    """Whether `folder` was left by an export that no longer runs: nobody holds its lock and its process is gone. (A
    live pid with a free lock is an export between creating and locking its folder, or the pid was reused: kept.)"""
    if fcntl is None:
        return False  # no way to tell a running export from a dead one: leave it
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return pid is None or not pid_alive(int(pid))


def clean_leftovers(output_dir: str | os.PathLike) -> str | None:
    """Finish what killed exports of `output_dir` left beside it: when the folder is missing, restore the previous
    export a killed swap had moved aside; remove every other abandoned staging or moved-aside folder. Folders of
    exports still running are kept. Returns one line saying what was done, or None when there was nothing."""
    target = Path(os.path.realpath(output_dir))
    pattern = re.compile(_SIBLING.format(name=re.escape(target.name)))
    try:
        entries = sorted(target.parent.iterdir())
    except OSError:
        return None
    restored, removed = None, []
    for entry in entries:
        match = pattern.fullmatch(entry.name)
        if not match or entry.is_symlink() or not entry.is_dir() or not _abandoned(entry, match.group(2)):
            continue
        try:
            if match.group(1) == "old" and restored is None and not os.path.lexists(target):
                os.rename(entry, target)
                restored = entry.name
            else:
                shutil.rmtree(entry)
                removed.append(entry.name)
        except OSError:
            continue  # e.g. a read-only parent: left for a later run
    done = ([f"restored {output_dir} from {restored}"] if restored else []) + (
        [f"removed {', '.join(removed)}"] if removed else []
    )
    return f"cleaned up after an interrupted export of {output_dir}: {'; '.join(done)}" if done else None


def _refuse_foreign(target: Path, shown: Path, ours: set[str]) -> None:
    foreign = sorted(set(os.listdir(target)) - ours) if target.is_dir() else []
    if foreign:
        more = f" and {len(foreign) - 5} more" if len(foreign) > 5 else ""
        raise ValueError(
            f"--output_dir {shown} holds {', '.join(foreign[:5])}{more}, not written by an export: an export replaces "
            "the whole folder, so move them out or choose another --output_dir"
        )


@contextlib.contextmanager
def _staging(target: Path) -> Iterator[Path]:
    """A new locked folder beside `target` for the export; removed on the way out, whatever happened (after a swap it
    holds the previous export)."""
    stage = target.parent / f".{target.name}.export-{os.getpid()}-{secrets.token_hex(4)}"
    os.mkdir(stage)  # mode 0o777 & ~umask, as a plain mkdir of the output folder gets
    try:
        with _held(stage):
            yield stage
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _swap_in(stage: Path, target: Path, shown: Path, overwrite: bool) -> None:
    """Put the folder `stage` at `target` in one step; a previous folder at `target` ends up at `stage`'s name. Without
    `overwrite`, an export another process wrote there meanwhile (none was there at the start) is kept: ValueError.

    Where RENAME_EXCHANGE is missing: two renames, the previous folder first moved aside (locked) to .NAME.old-PID-HEX.
    A process killed between the two leaves it there, and the next export restores it (`clean_leftovers`)."""
    if not os.path.lexists(target):
        try:
            os.rename(stage, target)
            return
        except OSError as error:  # made meanwhile
            if error.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
    if not overwrite and any((target / name).exists() for name in EXPORT_FILES):
        raise ValueError(
            f"--output_dir {shown}: another export wrote it while this one ran; pass --overwrite to replace it"
        )
    os.chmod(stage, stat.S_IMODE(target.stat().st_mode))  # the folder keeps its permissions
    if _rename_exchange(stage, target):
        return
    aside = target.parent / f".{target.name}.old-{os.getpid()}-{secrets.token_hex(4)}"
    with _held(target):
        os.rename(target, aside)
        try:
            os.rename(stage, target)
        except OSError:
            os.rename(aside, target)  # put the previous export back
            raise
    shutil.rmtree(aside, ignore_errors=True)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_error(shown: Path, target: Path, error: OSError, previous: bool) -> ExportWriteError:
    """One line naming the folder, the cause and what to do."""
    name = os.fsdecode(error.filename) if error.filename else ""
    made = name and Path(name).parent == target.parent  # the error was making the staging folder (or the folder)
    if not name or name.startswith(str(target.parent / f".{target.name}.")) or Path(name) == bundled.contract_path():
        name = str(target.parent)  # inside the staging folder (a path the user never sees), or the contract's source
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        what = f"no space left on the device of {name}: free some space or choose another --output_dir"
    elif error.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        what = (
            f"cannot write in {name} ({error.strerror}); an export is written beside its folder and then swapped in, "
            "so choose a --output_dir in a writable folder"
        )
    elif error.errno == errno.ENOENT and made and Path(name).is_dir():  # it exists, yet no folder can be made in it
        what = f"cannot make a folder in {name} ({error.strerror})"
    else:
        what = f"{error.strerror or error} ({name})"
    kept = "the previous export there is unchanged" if previous else "nothing was written"
    return ExportWriteError(f"--output_dir {shown}: {what}; {kept}")


def _write_graphs(net: Seq2Seq, task: Task, folder: Path, opset: int, text: TextSpec | None = None) -> None:
    """The two step graphs, then greedy.onnx built from them, into `folder`, stamped with metadata and one export id."""
    export_id = uuid.uuid4().hex
    cell, attention = net.config.cell, net.config.attention
    for name, write, io in (
        (contract.ENCODER_FILE, export_encoder, contract.encoder_io(cell, attention)),
        (contract.DECODER_FILE, export_decoder_step, contract.decoder_io(cell, attention)),
    ):
        write(net, folder / name, task, opset)
        _prune_and_stamp(folder / name, metadata(net, task, *io, export_id, text))
    _write_greedy(net, task, folder, export_id, text)


def export_checkpoint(
    ckpt_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    opset: int = 17,
    verify_samples: int = 256,
    overwrite: bool = False,
) -> ExportReport:
    """Export and verify into a hidden folder beside `output_dir`, then swap it in whole (`_swap_in`): at every moment,
    even after a kill, `output_dir` holds the complete previous export or the complete new one. Failures raise
    ValueError (bad settings, refused folder), ExportVerificationError or ExportWriteError, with the folder unchanged.
    Leftovers of killed exports to the same folder are cleaned up first (one line on stderr)."""
    for flag, path in (("--ckpt_path", ckpt_path), ("--output_dir", output_dir)):
        if not isinstance(path, (str, os.PathLike)):  # None failed inside pathlib
            raise TypeError(f"{flag} must be a path, got {path!r}")
    verify_samples, opset = plain("--verify_samples", verify_samples, "int"), plain("--opset", opset, "int")
    if not 1 <= verify_samples <= MAX_VERIFY_SAMPLES:  # 1e9 asked for 45 GiB after half a minute of work
        raise ValueError(f"--verify_samples must be in [1, {MAX_VERIFY_SAMPLES:,}], got {verify_samples}")
    if not 14 <= opset <= 20:
        raise ValueError(f"--opset must be in [14, 20], got {opset}")
    if not os.fspath(output_dir):  # Path("") is ".": the working folder, refused below for what it holds
        raise ValueError("--output_dir is empty: name the folder to write the export into")
    out = Path(output_dir)
    target = Path(os.path.realpath(out))  # a symlinked folder is replaced where it lies; the link stays
    if target.exists() and not target.is_dir():
        raise ValueError(f"--output_dir {out} exists and is not a folder")
    above = next((p for p in out.parents if p.exists()), None)  # mkdir said only "File exists" for a file above it
    if above is not None and not above.is_dir():
        raise ValueError(f"--output_dir {out}: {above} is a file, not a folder")
    if os.path.ismount(target):
        raise ValueError(f"--output_dir {out} is a mount point, which cannot be replaced: use a folder inside it")
    note = clean_leftovers(out)
    if note:
        print(f"lit-seq2seq export: {note}", file=sys.stderr)
    existing = [n for n in EXPORT_FILES if (target / n).exists()]
    if existing and not overwrite:
        raise ValueError(f"--output_dir {out} already holds {', '.join(existing)}; pass --overwrite to replace them")
    _refuse_foreign(target, out, set(EXPORT_FILES))
    net, task = load_checkpoint(ckpt_path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with _staging(target) as stage:
            _write_graphs(net, task, stage, opset, getattr(task, "text", None))
            report = verify(net, task, stage, verify_samples)
            shutil.copyfile(bundled.contract_path(), stage / contract.CONTRACT_FILE)  # the document, for other apps
            for path in stage.iterdir():  # on disk before the swap: a power cut cannot surface empty files
                _fsync(path)
            _refuse_foreign(target, out, set(EXPORT_FILES) | set(os.listdir(stage)))  # anything added meanwhile
            _swap_in(stage, target, out, overwrite)
        with contextlib.suppress(OSError):  # the rename on disk too; some systems cannot open or fsync a folder
            _fsync(target.parent)
    except OSError as error:
        raise _write_error(out, target, error, bool(existing)) from error
    report.output_dir = out
    return report
