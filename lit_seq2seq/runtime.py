"""OnnxSeq2Seq: decode with encoder.onnx + decoder_step.onnx (and greedy.onnx when the export has it) using numpy and
onnxruntime only (no torch).

Every input is validated before onnxruntime sees it: onnxruntime wraps negative token ids around silently,
returns NaN logits (argmax 0) for non-finite state, and fails deep inside its kernels on mismatched shapes. Sources
longer or shorter than any the model was trained on are refused too (unless allow_untrained_lengths=True): the graphs
run on them, but answer with confident garbage.
"""

from __future__ import annotations

import math
import os
import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import onnxruntime as ort

from lit_seq2seq import contract
from lit_seq2seq.contract import ModelFileError, check_content_hash
from lit_seq2seq.metrics import answer_tokens
from lit_seq2seq.search import (
    MAX_STEPS,
    beam_search,
    check_beam_settings,
    check_max_len,
    check_n_best,
    greedy_search,
    is_integer,
)
from lit_seq2seq.text import EOS_ID, PAD_ID, TextSpec, check_printable

__all__ = ["ModelFileError", "OnnxSeq2Seq", "pad_batch"]

State = dict[str, np.ndarray]
_PY_RANGE_CHECK_MAX = 64  # sources up to this many tokens are range-checked in Python, larger ones with numpy
_BOUND_MAX_BATCH = 16  # greedy batches up to this size decode through pre-bound buffers (_BoundGreedy), one per
# batch size and thread; larger batches are compute-bound and take session.run
# Larger batches run in length-sorted chunks of this many rows, each cut to its longest row. onnxruntime's LSTM
# computes every step's input projection up front, (source_len, batch, 4 x hidden) floats per direction, and a batch
# pads to its longest row: 6,247 G2P words in one call took 1.7 GB and 6.0 s, 100,000 aborted the process at 16.7 GB;
# in chunks of 256 sorted by length, 155 MB and 2.0 s, the same tokens (benchmarks/translate_batch.py; chunks of 64
# to 2,048 rows: 2.1-2.9 s).
# Longest source decoded, allow_untrained_lengths or not (and the longest an export may declare trained): onnxruntime's
# LSTM holds every step's input projection, ~3 KB a token for a small test model (a 20,000,000-character line: 22 GB)
MAX_SOURCE_TOKENS = 100_000
CHUNK_ROWS = 256
# Beam search holds K rows of state per source row (the attention memory is repeated per beam): its chunks hold at most
# this many source rows x beams, so CHUNK_ROWS sources at beam size 4 and one at 1,024 (32 G2P words at beam 1,024 in
# one call: 2,971 MB and 37.8 s; so, 200 MB and 15.5 s: benchmarks/translate_batch.py --beam_size 1024 --words 32).
BEAM_CHUNK_ROWS = 1024


def _session(path: Path, options: ort.SessionOptions, providers: Sequence[str], verify: bool):
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        link = " (a link to a missing file)" if path.is_symlink() else ""
        raise ModelFileError(
            f"{path}: missing{link}; a model folder holds {contract.ENCODER_FILE} and {contract.DECODER_FILE} "
            "written by `lit-seq2seq export`"
        ) from None
    except IsADirectoryError:
        raise ModelFileError(f"{path}: a folder, not a graph file; export the model again") from None
    if verify:
        check_content_hash(data, str(path))
    try:
        session = ort.InferenceSession(data, options, providers=list(providers))
    except Exception as error:  # noqa: BLE001 - onnxruntime raises several types for unreadable models
        raise ModelFileError(f"{path}: onnxruntime cannot load it (damaged?): {error}") from None
    return session, dict(session.get_modelmeta().custom_metadata_map)


RAGGED = (
    "source: rows have different lengths; right-pad them with the pad token "
    "(lit_seq2seq.runtime.pad_batch(rows, model.pad_token))"
)


def _check_texts(texts: Any) -> None:
    """A list (or other ordered sequence) of texts: one str, None or a set is refused by name."""
    if isinstance(texts, str):
        raise TypeError("texts must be a list of str, got one str: wrap it in a list")
    if not isinstance(texts, (Sequence, np.ndarray)):  # a set or a dict has no order to match the answers to
        raise TypeError(f"texts must be a list of str, got {type(texts).__name__}")


def pad_batch(rows: Sequence[Sequence[int]], pad_token: int) -> np.ndarray:
    """Rows of ids of any lengths -> (batch, longest) int64, right-padded with `pad_token`."""
    if len(rows) == 0:
        raise ValueError("pad_batch: no rows")
    out = np.full((len(rows), max(map(len, rows))), pad_token, dtype=np.int64)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return out


def _finite(logits: np.ndarray) -> np.ndarray:
    """`logits`, unless they hold NaN or infinity: then no token is right (argmax would pick one at random)."""
    if not np.isfinite(logits).all():
        raise ModelFileError(
            "decoder_step.onnx produced non-finite logits (NaN or infinity): its weights are damaged or out of range; "
            "nothing was decoded"
        )
    return logits


class _BoundGreedy:
    """Greedy decoding of one batch size through IOBinding, for small batches, where session.run's per-call work
    (wrapping every input, allocating every output) is a large part of the time.

    The recurrent state lives in two buffer sets owned here: the encoder writes set 0, and the two step bindings
    ping-pong between the sets, so a decoder step is a token copy and one `run_with_iobinding`. The source, and the
    attention memory whose shape follows it, are bound per call. Not thread-safe: each thread keeps its own plans.
    """

    def __init__(self, model: OnnxSeq2Seq, batch: int) -> None:
        # The model's sessions and settings, not the model: it holds the plans (no reference cycle).
        self.run_encoder, self.run_step = model.encoder.run_with_iobinding, model.decoder.run_with_iobinding
        self.tokens = model.tokens
        self.token = np.zeros(batch, np.int64)
        self.logits = np.zeros((batch, model.target_vocab_size), np.float32)
        self.arrays = [self.token, self.logits]  # every buffer an OrtValue wraps, kept alive with the plan
        value = ort.OrtValue.ortvalue_from_numpy
        shape = (model.num_layers, batch, model.hidden_size)
        self.recurrent = {name: [value(self._keep(np.zeros(shape, np.float32))) for _ in (0, 1)]
                          for name in model.recurrent}  # fmt: skip
        self.fixed = [n for n in model.state_names if n not in contract.RECURRENT]  # memory, mask: shape follows source
        self.encoder = model.encoder.io_binding()
        for name, sets in self.recurrent.items():
            self.encoder.bind_ortvalue_output(name, sets[0])
        for name in self.fixed:  # rebound each call; a name bound again keeps its place in get_outputs()
            self.encoder.bind_output(name, "cpu")
        token, logits = value(self.token), value(self.logits)
        self.steps = []  # binding p reads buffer set p and writes set 1 - p
        for p in (0, 1):
            binding = model.decoder.io_binding()
            binding.bind_ortvalue_input(contract.TOKEN, token)
            binding.bind_ortvalue_output(contract.LOGITS, logits)
            for name, sets in self.recurrent.items():
                binding.bind_ortvalue_input(name, sets[p])
                binding.bind_ortvalue_output(name + contract.OUT_SUFFIX, sets[1 - p])
            self.steps.append(binding)

    def _keep(self, array: np.ndarray) -> np.ndarray:
        self.arrays.append(array)
        return array

    def greedy(self, source: np.ndarray, max_len: int) -> np.ndarray:
        source = np.ascontiguousarray(source)  # the binding reads this memory: keep it referenced until we return
        self.encoder.bind_cpu_input(contract.SOURCE, source)
        for name in self.fixed:  # unallocated again: after a run the binding holds the last output, shape and all
            self.encoder.bind_output(name, "cpu")
        self.run_encoder(self.encoder)
        if self.fixed:
            outputs = self.encoder.get_outputs()[len(self.recurrent) :]
            for name, value in zip(self.fixed, outputs):
                for binding in self.steps:
                    binding.bind_ortvalue_input(name, value)
        run, steps, token, logits = self.run_step, self.steps, self.token, self.logits

        def step(tokens: np.ndarray, parity: int) -> tuple[np.ndarray, int]:
            # The search's state is which buffer set holds the current state (the bindings ping-pong).
            # `logits` is overwritten by the next step: greedy_search reads it before asking for another.
            token[...] = tokens
            run(steps[parity])
            return _finite(logits), 1 - parity

        return greedy_search(step, 0, batch_size=len(source), max_len=max_len, **self.tokens)


def _meta_value(meta: Mapping[str, str], key: str, where: str, choices: Sequence[str] = ()) -> Any:
    """The metadata value the runtime needs, an int (or one of `choices`), or a ModelFileError naming the file and key
    when it is missing or malformed (an app that wrote or edited the graphs itself): not a KeyError or int() error."""
    value = meta.get(key)
    if choices:
        if value not in choices:
            raise ModelFileError(f"{where}: metadata {key} is {value!r}, one of {', '.join(choices)} expected")
        return value
    if value is None or not re.fullmatch(r"-?[0-9]+", value):
        raise ModelFileError(f"{where}: metadata {key} is {value!r}, an integer expected")
    return int(value)


def _cells(rows: Sequence[Any]) -> Iterator[Any]:
    """The cells of a source given as rows (lists, tuples or arrays), or as one row of cells."""
    for row in rows:
        row = row.tolist() if isinstance(row, np.ndarray) else row
        yield from row if isinstance(row, (list, tuple)) else [row]


class OnnxSeq2Seq:
    """A loaded two-graph export. One instance may serve many threads at once: no result depends on earlier calls
    (small-batch greedy reuses per-thread buffers, see _BoundGreedy, but never carries anything over)."""

    def __init__(
        self,
        encoder: ort.InferenceSession,
        decoder: ort.InferenceSession,
        meta: Mapping[str, str],
        greedy_graph: ort.InferenceSession | None = None,
        where: str = contract.DECODER_FILE,
    ) -> None:
        self.encoder, self.decoder, self.meta = encoder, decoder, dict(meta)
        self.greedy_graph = greedy_graph  # greedy.onnx, None for exports older than it
        meta = self.meta

        def value(key: str, choices: Sequence[str] = ()) -> Any:
            return _meta_value(meta, key, where, choices)

        self.source_vocab_size, self.target_vocab_size = map(value, contract.vocab_keys(meta))
        try:
            self.text = TextSpec.from_metadata(meta)  # None for a model that reads and writes ids
        except (KeyError, TypeError, ValueError) as error:
            raise ModelFileError(f"{where}: its text metadata is damaged ({type(error).__name__}: {error})") from None
        if self.text is not None and meta.get("format_version") == "1":  # format 1 is ids only
            raise ModelFileError(f"{where}: metadata format_version is '1', 2 for a text model (source_tokens is set)")
        if self.text is not None:
            for side, vocab, size in (
                ("source", self.text.source_vocab, self.source_vocab_size),
                ("target", self.text.target_vocab, self.target_vocab_size),
            ):
                if len(vocab) != size:  # ids without a token, or tokens without an id: text in or out would be wrong
                    raise ModelFileError(
                        f"{where}: its text metadata is damaged ({side}_tokens holds {len(vocab)} tokens, "
                        f"{side}_vocab_size is {size})"
                    )
        self.pad_token, self.start_token = value("pad_token"), value("start_token")
        self.eos_token = None if meta.get("eos_token") == "" else value("eos_token")  # "": fixed-length targets
        self.min_token = value("min_token")
        self.max_target_length = value("max_target_length")
        self.min_source_length, self.source_length = value("min_source_length"), value("source_length")
        self.num_layers, self.hidden_size = value("num_layers"), value("hidden_size")
        self.memory_dim = value("memory_dim")
        self.cell, self.attention = value("cell", ("lstm", "gru")), value("attention", ("0", "1")) == "1"
        self.tokens = {"start_token": self.start_token, "eos_token": self.eos_token, "pad_token": self.pad_token}
        self.state_names = contract.state_names(self.cell, self.attention)
        self.recurrent = [n for n in self.state_names if n in contract.RECURRENT]
        self._step_outputs = contract.decoder_io(self.cell, self.attention)[1]
        self._check_metadata(where)
        self._local = threading.local()  # per-thread _BoundGreedy cache
        self._bindable = all(
            s.get_providers() == ["CPUExecutionProvider"] for s in (encoder, decoder)
        )  # pre-bound CPU buffers would add copies on other providers

    def _check_metadata(self, where: str) -> None:
        """ModelFileError naming the key whose value an export cannot hold (metadata written or edited by hand, the
        content hash stamped again): each was used unchecked, to loop a billion steps (max_target_length), decode with
        an end token greedy.onnx does not know, or fail inside onnxruntime at the first call."""

        def refuse(key: str, value: Any, expected: str) -> NoReturn:
            raise ModelFileError(f"{where}: metadata {key} is {value!r}, {expected}")

        for key in ("source_vocab_size", "target_vocab_size", "num_layers", "hidden_size", "min_source_length"):
            if getattr(self, key) < 1:
                refuse(key, getattr(self, key), "at least 1 expected")
        if not 1 <= self.max_target_length <= MAX_STEPS:
            refuse("max_target_length", self.max_target_length, f"1 to {MAX_STEPS} expected")
        if not self.min_source_length <= self.source_length <= MAX_SOURCE_TOKENS:
            refuse("source_length", self.source_length, f"min_source_length to {MAX_SOURCE_TOKENS:,} expected")
        if (self.memory_dim > 0) != self.attention or self.memory_dim < 0:
            refuse("memory_dim", self.memory_dim, "above 0 with attention, else 0, expected")
        ids = {"pad_token": self.pad_token, "start_token": self.start_token, "eos_token": self.eos_token}
        for key, token in ids.items():
            if token is not None and not 0 <= token < self.target_vocab_size:
                refuse(key, token, f"a target id (0 to {self.target_vocab_size - 1}) expected")
        if not 0 <= self.min_token < self.source_vocab_size or self.min_token <= self.pad_token:
            refuse("min_token", self.min_token, "above pad_token and below source_vocab_size expected")
        if self.text is not None and (self.pad_token, self.eos_token) != (PAD_ID, EOS_ID):  # what the text code reads
            refuse("pad_token, eos_token", (self.pad_token, self.eos_token), f"{PAD_ID}, {EOS_ID} for a text model")
        # The sizes the graphs declare (what metadata copied from another export would contradict): h's width, the
        # memory's, the logits'
        declared = {
            ("hidden_size", self.hidden_size): [(self.decoder, contract.H, 2), (self.encoder, contract.H, 2)],
            ("target_vocab_size", self.target_vocab_size): [(self.decoder, contract.LOGITS, 1)],
        }
        if self.attention:
            declared[("memory_dim", self.memory_dim)] = [
                (self.decoder, contract.MEMORY, 2),
                (self.encoder, contract.MEMORY, 2),
            ]
        shapes = {
            s: {io.name: io.shape for io in (*s.get_inputs(), *s.get_outputs())} for s in (self.encoder, self.decoder)
        }
        for (key, size), places in declared.items():
            for session, name, axis in places:
                dim = (shapes[session].get(name) or [None] * (axis + 1))[axis]
                if isinstance(dim, int) and dim != size:
                    refuse(key, size, f"but the graphs' {name} has {dim} on axis {axis}")

    @classmethod
    def load(
        cls,
        model_dir: str | os.PathLike,
        providers: Sequence[str] = ("CPUExecutionProvider",),
        intra_op_threads: int = 1,
        inter_op_threads: int = 1,
        verify_hash: bool = True,
    ) -> OnnxSeq2Seq:
        """Load `model_dir`/{encoder,decoder_step}.onnx, and greedy.onnx where the export has one (older exports do
        not); settings come from their metadata alone."""
        if not isinstance(model_dir, (str, os.PathLike)):  # None failed inside pathlib
            raise TypeError(f"model_dir must be a folder path, got {model_dir!r}")
        root = Path(model_dir)
        if root.is_file():
            raise ModelFileError(
                f"model_dir {root}: a file, not an export folder; `lit-seq2seq export --ckpt_path CKPT --output_dir "
                "DIR` writes one from a checkpoint"
            )
        if not str(model_dir):  # Path("") is the current folder
            raise ValueError("model_dir is empty: pass the folder `lit-seq2seq export` wrote")
        if not root.is_dir():
            raise ModelFileError(f"model_dir {root}: no such folder")
        # names, or (name, options) pairs as onnxruntime takes them
        names = (
            []
            if isinstance(providers, str)
            else [p[0] if isinstance(p, tuple) and len(p) == 2 else p for p in providers]
        )
        if not names or not all(isinstance(n, str) for n in names):
            raise TypeError(f"providers must be a non-empty list of provider names, got {providers!r}")
        available = ort.get_available_providers()
        unknown = [n for n in names if n not in available]
        if unknown:  # onnxruntime would print a banner and fall back to the CPU
            raise ValueError(f"providers: {unknown[0]} is not in this onnxruntime; it has {', '.join(available)}")
        for name, threads in (("intra_op_threads", intra_op_threads), ("inter_op_threads", inter_op_threads)):
            if not is_integer(threads) or threads < 0:
                raise ValueError(f"{name} must be an integer >= 0 (0: onnxruntime's default), got {threads!r}")
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = int(intra_op_threads), int(inter_op_threads)
        options.log_severity_level = 4  # fatal only: an app's stderr is its own; failures are raised, not printed
        encoder, enc_meta = _session(root / contract.ENCODER_FILE, options, providers, verify_hash)
        decoder, dec_meta = _session(root / contract.DECODER_FILE, options, providers, verify_hash)
        metas = [(contract.ENCODER_FILE, enc_meta), (contract.DECODER_FILE, dec_meta)]
        fused = None
        if os.path.lexists(root / contract.GREEDY_FILE):  # a dangling link is a damaged export, not an older one
            fused, fused_meta = _session(root / contract.GREEDY_FILE, options, providers, verify_hash)
            metas.append((contract.GREEDY_FILE, fused_meta))
        for name, meta in metas:
            if meta.get("format_version") not in contract.READABLE_VERSIONS:
                raise ModelFileError(
                    f"{root / name}: contract format_version {meta.get('format_version')!r}; this runtime reads "
                    f"{' and '.join(map(repr, contract.READABLE_VERSIONS))}"
                )
            missing = [key for key in contract.required_keys(meta["format_version"]) if key not in meta]
            if missing:  # export_id above all: without it in each file, a mixed export would pass as one
                raise ModelFileError(
                    f"{root / name}: no metadata {', '.join(missing)} (damaged, or not written by lit-seq2seq); "
                    "export it again"
                )
        for name, meta in metas[1:]:
            if meta.get("export_id") != enc_meta.get("export_id"):
                raise ModelFileError(f"{root}: {contract.ENCODER_FILE} and {name} come from different exports")
        model = cls(encoder, decoder, dec_meta, fused, where=str(root / contract.DECODER_FILE))
        for session, io, name in (
            (encoder, contract.encoder_io(model.cell, model.attention), contract.ENCODER_FILE),
            (decoder, contract.decoder_io(model.cell, model.attention), contract.DECODER_FILE),
        ):
            actual = ([i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()])
            if actual != io:
                raise ModelFileError(f"{root / name}: I/O names {actual} do not match the contract {io}")
        if fused is not None:
            # onnxruntime lists max_len, an input with a default, among the overridable initializers
            inputs = [i.name for i in fused.get_inputs()] + [i.name for i in fused.get_overridable_initializers()]
            actual, io = (inputs, [o.name for o in fused.get_outputs()]), contract.greedy_io()
            if actual != io:
                name = root / contract.GREEDY_FILE
                raise ModelFileError(f"{name}: I/O names {actual} do not match the contract {io}")
        return model

    # ---- validation -------------------------------------------------------------------------------------------
    def check_source(self, source: Any, *, allow_untrained_lengths: bool = False) -> tuple[np.ndarray, bool]:
        """source as a (batch, source_len) int64 array, and whether it was a single (source_len,) sequence.

        Each row's length (its tokens before the padding) must lie in the trained range, min_source_length to
        source_length, unless `allow_untrained_lengths`.
        """
        if not isinstance(allow_untrained_lengths, (bool, np.bool_)):  # "no" would be truthy: an opt-in is meant
            raise TypeError(f"allow_untrained_lengths must be True or False, got {allow_untrained_lengths!r}")
        if isinstance(source, (list, tuple)):
            odd = [t for t in _cells(source) if not is_integer(t) and not isinstance(t, (list, tuple))]
            if odd:  # numpy would read True as 1, and None as a ragged row
                raise TypeError(f"source must hold integer token ids, got {odd[0]!r} ({type(odd[0]).__name__})")
            try:
                source = np.asarray(source)
            except ValueError:
                raise ValueError(RAGGED) from None
            if source.size == 0:  # numpy makes [] and [[]] float64: name the real problem
                raise ValueError(f"source: empty {'batch' if source.ndim == 1 else 'sequence'} (shape {source.shape})")
        if not isinstance(source, np.ndarray):
            raise TypeError(f"source must be a numpy array or a list of token ids, got {type(source).__name__}")
        if source.dtype == object:  # ragged rows, an integer beyond int64, or integers in an object array (pandas)
            huge = [t for t in _cells(source.tolist()) if isinstance(t, int) and not -(2**63) <= t < 2**63]
            if huge:
                raise ValueError(f"source: token {huge[0]} is out of range (beyond int64)")
            cells = source.ravel().tolist()
            if any(isinstance(t, (list, tuple, np.ndarray)) for t in cells):
                raise ValueError(RAGGED)
            odd = [t for t in cells if not is_integer(t)]
            if odd:
                raise TypeError(f"source must hold integer token ids, got {odd[0]!r} ({type(odd[0]).__name__})")
            source = source.astype(np.int64)
        if source.dtype.kind not in "iu":
            raise TypeError(f"source must hold integer token ids, got dtype {source.dtype}")
        single = source.ndim == 1
        if source.ndim not in (1, 2):
            raise ValueError(f"source must have shape [batch, source_len] or [source_len], got {source.shape}")
        source = source[None] if single else source
        if source.shape[0] == 0:
            raise ValueError("source: empty batch")
        if source.shape[1] == 0:
            raise ValueError("source: empty sequence (source_len is 0)")
        if source.shape[1] > MAX_SOURCE_TOKENS:  # allow_untrained_lengths or not: the memory it would take
            raise ValueError(
                f"source: {source.shape[1]:,} tokens wide; at most {MAX_SOURCE_TOKENS:,} are decoded (onnxruntime's "
                "RNN holds every step's input projection)"
            )
        # Fast accept, the common case: every token in range and no padding anywhere. Then none of the checks
        # below can fail; anything else takes them to find (and name) the first bad position.
        if source.size <= _PY_RANGE_CHECK_MAX:  # a Python min/max over a short list beats two numpy reductions
            flat = source.ravel().tolist()
            lo, hi = min(flat), max(flat)
        else:
            lo, hi = int(source.min()), int(source.max())
        trained = allow_untrained_lengths or self.min_source_length <= source.shape[1] <= self.source_length
        if self.min_token <= lo and hi < self.source_vocab_size and not lo <= self.pad_token <= hi and trained:
            return source.astype(np.int64, copy=False), single
        pad = source == self.pad_token

        def where(row: int, col: int | None = None) -> str:  # numpy's indices (0-based), as the caller holds them
            index = ([] if single else [row]) + ([] if col is None else [col])
            return f"source[{', '.join(map(str, index))}]" if index else "source"

        bad = ~pad & ((source < self.min_token) | (source >= self.source_vocab_size))
        if bad.any():
            row, col = map(int, np.argwhere(bad)[0])
            raise ValueError(
                f"{where(row, col)}: token {source[row, col]} is out of range; tokens must be in "
                f"[{self.min_token}, {self.source_vocab_size - 1}], or {self.pad_token} (padding) at the end"
            )
        if pad[:, 0].any():
            raise ValueError(f"{where(int(np.argmax(pad[:, 0])))}: empty sequence (starts with padding)")
        gap = pad[:, :-1] & ~pad[:, 1:]
        if gap.any():
            row, col = map(int, np.argwhere(gap)[0])
            raise ValueError(f"{where(row, col + 1)}: token after padding; pad only at the end")
        if not allow_untrained_lengths:
            lengths = source.shape[1] - pad.sum(1)  # padding only at the end, checked above
            outside = (lengths < self.min_source_length) | (lengths > self.source_length)
            if outside.any():
                row = int(np.argmax(outside))
                raise ValueError(self._untrained_length(where(row), int(lengths[row]), "token"))
        return source.astype(np.int64, copy=False), single

    def _untrained_length(self, where: str, length: int, unit: str, read: str = "") -> str:
        low, high = self.min_source_length, self.source_length
        trained_on = f"exactly {low}" if low == high else f"{low} to {high}"
        return (
            f"{where}: {length} {unit}{'s' * (length != 1)}{read}; this model was trained on sources of {trained_on} "
            f"{unit}{'s' * (high != 1)} (pass allow_untrained_lengths=True / --allow_untrained_lengths to decode "
            "anyway)"
        )

    def _check_token(self, token: Any) -> np.ndarray:
        if not isinstance(token, np.ndarray) or token.dtype.kind not in "iu":
            raise TypeError(f"token must be a numpy integer array, got {getattr(token, 'dtype', type(token).__name__)}")
        if token.ndim != 1 or len(token) == 0:
            raise ValueError(f"token must have shape [batch] with batch >= 1, got {token.shape}")
        bad = (token < 0) | (token >= self.target_vocab_size)
        if bad.any():
            raise ValueError(f"token ids must be in [0, {self.target_vocab_size - 1}], got {token[bad][:5].tolist()}")
        return token.astype(np.int64, copy=False)

    def check_state(self, state: Any, batch: int) -> State:
        """Validate a decoder state for `batch` rows: names, dtypes, shapes, finiteness, masks."""
        if not isinstance(state, Mapping) or set(state) != set(self.state_names):
            got = sorted(state) if isinstance(state, Mapping) else type(state).__name__
            raise ValueError(f"state must be a dict with exactly {self.state_names}, got {got}")
        out = {}
        for name in self.state_names:
            value = state[name]
            want = np.bool_ if name == contract.MEMORY_MASK else np.float32
            if not isinstance(value, np.ndarray) or value.dtype != want:
                got = getattr(value, "dtype", type(value).__name__)
                raise TypeError(f"state[{name!r}] must be a numpy {np.dtype(want)} array, got {got}")
            out[name] = value
        expected = {n: (self.num_layers, batch, self.hidden_size) for n in self.recurrent}
        if self.attention:
            source_len = out[contract.MEMORY].shape[1] if out[contract.MEMORY].ndim == 3 else -1
            expected[contract.MEMORY] = (batch, source_len, self.memory_dim)
            expected[contract.MEMORY_MASK] = (batch, source_len)
        for name, shape in expected.items():
            if out[name].shape != shape or min(shape) < 1:
                raise ValueError(
                    f"state[{name!r}] must have shape {shape} for token batch {batch}, got {out[name].shape}"
                )
            if name != contract.MEMORY_MASK and not np.isfinite(out[name]).all():
                raise ValueError(f"state[{name!r}] holds NaN or infinite values")
        if self.attention and not out[contract.MEMORY_MASK].any(1).all():
            raise ValueError("state['memory_mask'] has a row with no True entry (an empty source)")
        return out

    # ---- graphs -----------------------------------------------------------------------------------------------
    def encode(self, source: Any, *, allow_untrained_lengths: bool = False) -> State:
        """source (batch, source_len) or (source_len,) -> the decoder's initial state (names as in the contract).

        Rows of a length outside the trained range are refused unless `allow_untrained_lengths` (see check_source).
        """
        source, _ = self.check_source(source, allow_untrained_lengths=allow_untrained_lengths)
        return self._encode(source)

    def _encode(self, source: np.ndarray) -> State:
        return dict(zip(self.state_names, self.encoder.run(self.state_names, {contract.SOURCE: source})))

    def step(self, token: Any, state: Any) -> tuple[np.ndarray, State]:
        """One decoder step: token (batch,) int and state -> logits (batch, vocab) float32 and the new state."""
        token = self._check_token(token)
        return self._step(token, self.check_state(state, len(token)))

    def _step(self, token: np.ndarray, state: State) -> tuple[np.ndarray, State]:
        logits, *recurrent = self.decoder.run(self._step_outputs, {contract.TOKEN: token, **state})
        _finite(logits)
        new = dict(state)
        new.update(zip(self.recurrent, recurrent))
        return logits, new

    # ---- search -----------------------------------------------------------------------------------------------
    def _max_len(self, max_len: int | None, allow_untrained_lengths: bool) -> int:
        if max_len is None:
            return self.max_target_length
        max_len = check_max_len(max_len)
        if self.eos_token is None and max_len > self.max_target_length and not allow_untrained_lengths:
            # without an end token every answer runs max_len steps: the ones past the trained length are noise
            raise ValueError(
                f"max_len {max_len}: this model has no end token and was trained to answer with exactly "
                f"{self.max_target_length} tokens, so the steps past them are untrained (pass "
                "allow_untrained_lengths=True to decode them anyway)"
            )
        return max_len

    def greedy(
        self, source: Any, max_len: int | None = None, *, allow_untrained_lengths: bool = False, two_graph: bool = False
    ) -> np.ndarray:
        """Greedy decoding, batched: (batch, source_len) -> (batch, steps) int64, padded after the end token.

        A single (source_len,) sequence gives a (steps,) array. Rows of a length outside the trained range, and on a
        model without an end token a max_len past its answer length, are refused unless `allow_untrained_lengths`
        (see check_source). Runs greedy.onnx where the export has one (as fast
        or faster at every batch size measured: 0.90x the two-graph loop's time at batch 1, 1.01x its throughput at
        1024, benchmarks/decode_speed.py), else (or with `two_graph`) the two-graph loop: the same tokens.
        """
        if not isinstance(two_graph, (bool, np.bool_)):
            raise TypeError(f"two_graph must be True or False, got {two_graph!r}")
        source, single = self.check_source(source, allow_untrained_lengths=allow_untrained_lengths)
        max_len = self._max_len(max_len, allow_untrained_lengths)
        run = self._greedy_graph if self.greedy_graph is not None and not two_graph else self._greedy_steps
        (tokens,) = self._in_chunks(source, lambda rows: (run(rows, max_len),))
        return tokens[0] if single else tokens

    def _in_chunks(self, source: np.ndarray, run: Any, size: int | None = None) -> tuple[np.ndarray, ...]:
        """`run(rows)` -> (tokens (n, ..., steps), ...further (n, ...) arrays) over a validated source: in one call
        up to `size` (default CHUNK_ROWS) rows, else over length-sorted chunks, each cut to its longest row, with the
        results put back in the caller's order and the tokens padded to the longest chunk's steps. Rows decode
        independently, so the tokens are those of one call."""
        size = size or CHUNK_ROWS
        if len(source) <= size:
            return run(source)
        lengths = (source != self.pad_token).sum(1)  # rows are right-padded (check_source)
        order = np.argsort(lengths, kind="stable")
        chunks = [order[i : i + size] for i in range(0, len(order), size)]
        parts = [run(source[rows, : lengths[rows].max()]) for rows in chunks]
        steps = max(p[0].shape[-1] for p in parts)
        tokens = np.full((len(source), *parts[0][0].shape[1:-1], steps), self.pad_token, dtype=np.int64)
        rest = [np.empty((len(source), *a.shape[1:]), dtype=a.dtype) for a in parts[0][1:]]
        for rows, (part, *more) in zip(chunks, parts):
            tokens[rows, ..., : part.shape[-1]] = part
            for out, values in zip(rest, more):
                out[rows] = values
        return (tokens, *rest)

    def _greedy_graph(self, source: np.ndarray, max_len: int) -> np.ndarray:
        """greedy.onnx, one call. The source was validated (batch and length >= 1: onnxruntime's LSTM aborts the
        process on an empty batch) and max_len checked."""
        feed = {contract.SOURCE: source, contract.MAX_LEN: np.array(max_len, np.int64)}
        return self.greedy_graph.run([contract.TOKENS], feed)[0]

    def _greedy_steps(self, source: np.ndarray, max_len: int) -> np.ndarray:
        """The two-graph loop (greedy_search over decoder_step.onnx); the source was validated and max_len checked."""
        if self._bindable and len(source) <= _BOUND_MAX_BATCH:
            bound = self._local.__dict__.setdefault("bound", {})  # this thread's, by batch size
            plan = bound.get(len(source))
            if plan is None:
                plan = bound[len(source)] = _BoundGreedy(self, len(source))
            return plan.greedy(source, max_len)
        return greedy_search(self._step, self._encode(source), batch_size=len(source), max_len=max_len, **self.tokens)

    def beam_search(
        self,
        source: Any,
        beam_size: int = 4,
        length_penalty: float = 1.0,
        max_len: int | None = None,
        *,
        allow_untrained_lengths: bool = False,
        n_best: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Beam search: best tokens (batch, steps) and their score, log-probability / length ** length_penalty; with
        `n_best` N (1 <= N <= beam_size), the N best final beams of each row, best first: (batch, N, steps) and
        (batch, N) (for one source: (N, steps) and (N,)).

        Rows of a length outside the trained range, and on a model without an end token a max_len past its answer
        length, are refused unless `allow_untrained_lengths` (see check_source).
        """
        source, single = self.check_source(source, allow_untrained_lengths=allow_untrained_lengths)
        beam_size, length_penalty = check_beam_settings(beam_size, length_penalty)  # before the encoder runs
        if n_best is not None:
            n_best = check_n_best(n_best, beam_size)
        max_len = self._max_len(max_len, allow_untrained_lengths)

        def run(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            return beam_search(
                self._step,
                self._encode(rows),
                batch_size=len(rows),
                max_len=max_len,
                beam_size=beam_size,
                length_penalty=length_penalty,
                n_best=n_best,
                **self.tokens,
            )

        tokens, scores = self._in_chunks(source, run, max(1, min(CHUNK_ROWS, BEAM_CHUNK_ROWS // beam_size)))
        return (tokens[0], scores[0]) if single else (tokens, scores)

    # ---- text ---------------------------------------------------------------------------------------------------
    def _require_text(self, what: str) -> TextSpec:
        if self.text is None:
            raise ValueError(
                f"{what}: this export is an id model (task {self.meta.get('task', '?')!r}): it reads and writes token "
                "ids, not text; use greedy() / beam_search() with token ids"
            )
        return self.text

    def encode_text(self, text: Any, *, where: str = "text", allow_untrained_lengths: bool = False) -> list[int]:
        """One text -> its source ids (not padded), by the export's TextSpec. ValueError naming `where` for an empty
        text, one without tokens, a control character, an unknown token (unless the vocabulary has `<unk>`: then it
        maps to that id) or a token count outside the trained source lengths (unless `allow_untrained_lengths`)."""
        spec = self._require_text(where)
        if not isinstance(allow_untrained_lengths, (bool, np.bool_)):  # "no" would be truthy: an opt-in is meant
            raise TypeError(f"allow_untrained_lengths must be True or False, got {allow_untrained_lengths!r}")
        if not isinstance(text, str):
            raise TypeError(f"{where}: texts must be str, got {type(text).__name__}")
        if not text:
            raise ValueError(f"{where}: empty text")
        check_printable(text, where)
        ids = spec.encode(text, where)  # normalises, lowercases, splits; names an unknown token and its position
        if not ids:
            raise ValueError(f"{where}: no tokens (only whitespace; the {spec.source.kind} tokenizer splits on it)")
        unit = "character" if spec.source.kind == "char" else "token"
        if len(ids) > MAX_SOURCE_TOKENS:  # allow_untrained_lengths or not (a 20,000,000-character line took 22 GB)
            raise ValueError(f"{where}: {len(ids):,} {unit}s; at most {MAX_SOURCE_TOKENS:,} are decoded")
        if not allow_untrained_lengths and not self.min_source_length <= len(ids) <= self.source_length:
            raise ValueError(self._untrained_length(where, len(ids), unit, spec.as_read(text)))
        return ids

    def encode_texts(self, texts: Sequence[str], *, allow_untrained_lengths: bool = False) -> np.ndarray:
        """Texts -> source ids (batch, longest) int64, right-padded; errors name the text's index (see encode_text)."""
        _check_texts(texts)
        self._require_text("encode_texts")
        rows = [
            self.encode_text(t, where=f"texts[{i}]", allow_untrained_lengths=allow_untrained_lengths)
            for i, t in enumerate(texts)
        ]
        if not rows:
            raise ValueError("texts: empty batch (no texts)")
        return pad_batch(rows, self.pad_token)

    def reference_ids(self, references: Sequence[Sequence[str]]) -> np.ndarray:
        """Reference texts, several per source -> (batch, refs, steps) int64 target ids as `metrics.score` takes them:
        tokens, the end token, padding; -1 in absent slots. A token the target vocabulary lacks becomes an id no
        prediction can hold (target_vocab_size), so it always counts as an error."""
        spec = self._require_text("reference_ids")
        if isinstance(references, str) or not isinstance(references, Sequence):
            raise TypeError(f"references must be a list of lists of str, got {type(references).__name__}")
        for i, refs in enumerate(references):
            if isinstance(refs, str) or not isinstance(refs, Sequence):  # "hello" would be 5 references of a letter
                raise TypeError(f"references[{i}] must be a list of str (a source's references), got {refs!r}")
            if odd := [r for r in refs if not isinstance(r, str)]:
                raise TypeError(f"references[{i}]: references must be str, got {odd[0]!r}")

        def ids(reference: str) -> list[int]:
            found = (spec.target_vocab.id(t) for t in spec.target.split(reference))
            return [self.target_vocab_size if i is None else i for i in found]

        rows = [[ids(r) for r in refs] for refs in references]
        width = max((len(r) for refs in rows for r in refs), default=0) + 1  # no references: an empty batch
        out = np.full((len(rows), max(map(len, rows), default=0), width), -1, dtype=np.int64)
        for i, refs in enumerate(rows):
            for j, r in enumerate(refs):
                out[i, j] = self.pad_token
                out[i, j, : len(r) + 1] = [*r, self.eos_token]
        return out

    def decode_ids(self, rows: Any) -> list[str] | str:
        """Target ids (batch, steps), as greedy() / beam_search() return them -> one text per row (each up to its end
        token); one row (steps,), as they return for a single source -> its text. Ids outside the target vocabulary
        are a ValueError, never a wrong token."""
        spec = self._require_text("decode_ids")
        rows = np.asarray(rows)
        if rows.ndim == 1 and rows.size and rows.dtype.kind in "iu":
            return self.decode_ids(rows[None])[0]
        if rows.ndim != 2 or rows.dtype.kind not in "iu":
            raise ValueError(f"decode_ids takes integer ids of shape [batch, steps], got {rows.dtype} {rows.shape}")
        bad = (rows < 0) | (rows >= len(spec.target_vocab))
        if bad.any():
            row, col = map(int, np.argwhere(bad)[0])
            raise ValueError(
                f"decode_ids: rows[{row}, {col}] is {rows[row, col]}, not an id of the target vocabulary "
                f"[0, {len(spec.target_vocab) - 1}]"
            )
        return [spec.decode(row) for row in rows.tolist()]

    def translate(
        self,
        texts: Sequence[str],
        beam_size: int | None = None,
        length_penalty: float | None = None,
        max_len: int | None = None,
        *,
        allow_untrained_lengths: bool = False,
        n_best: int | None = None,
    ) -> list[str] | list[list[str]]:
        """Texts in, texts out, batched: greedy (beam_size None or 1; greedy.onnx when the export has it) or beam
        search (length_penalty: beam search only; None is 1.0). Every text and setting is checked before anything
        is decoded (see encode_text); no texts, no answers. With `n_best` N (N <= beam_size): a list of up to N
        distinct texts per input, best first (`distinct`; the beams and scores: beam_search with n_best)."""
        _check_texts(texts)
        self._require_text("translate")
        if beam_size is not None:
            beam_size, _ = check_beam_settings(beam_size, 1.0)
        if length_penalty is not None and (beam_size or 1) == 1:  # greedy ranks nothing: it would change nothing
            raise ValueError("length_penalty applies to beam search only: pass beam_size > 1")
        if n_best is not None:
            if (beam_size or 1) == 1 and is_integer(n_best) and n_best > 1:  # greedy has one answer
                raise ValueError(f"n_best applies to beam search only: pass beam_size=K (K >= {n_best})")
            n_best = check_n_best(n_best, beam_size or 1)
        if len(texts) == 0:
            return []
        source = self.encode_texts(texts, allow_untrained_lengths=allow_untrained_lengths)
        if beam_size is None or beam_size == 1:
            tokens = self.greedy(source, max_len, allow_untrained_lengths=True)  # lengths were checked as text
            return self.decode_ids(tokens) if n_best is None else [[t] for t in self.decode_ids(tokens)]
        penalty = 1.0 if length_penalty is None else length_penalty
        tokens, scores = self.beam_search(
            source, beam_size, penalty, max_len, allow_untrained_lengths=True, n_best=n_best
        )
        if n_best is None:
            return self.decode_ids(tokens)
        return self.answer_texts([self.distinct(t, s) for t, s in zip(tokens, scores)])

    def distinct(self, beams: np.ndarray, scores: np.ndarray) -> list[list[int]]:
        """One source's ranked beams (N, steps) and scores (N,), as beam_search(n_best=N) gives them -> its distinct
        answers (strip), best first: a beam answering what a better one answers is left out (one ended by padding,
        another by the end token), and so is a beam of score -inf (a filler of a search with fewer candidates than
        beams). Up to N answers; the best is always there."""
        out: list[list[int]] = []
        for beam, score in zip(np.asarray(beams).tolist(), np.asarray(scores).tolist()):
            answer = self.strip(beam)
            if (math.isfinite(score) or not out) and answer not in out:
                out.append(answer)
        return out

    def answer_texts(self, answers: list[list[list[int]]]) -> list[list[str]]:
        """Each source's answers (lists of target ids before the end token, as distinct gives them) as texts."""
        flat = [answer + [self.eos_token] for ranked in answers for answer in ranked]
        texts = iter(self.decode_ids(pad_batch(flat, self.pad_token)) if flat else [])
        return [[next(texts) for _ in ranked] for ranked in answers]

    def strip(self, tokens: np.ndarray | Sequence[int]) -> list[int]:
        """One decoded row as a plain list: the tokens before the end token (padding removed). ValueError for a
        batch: strip its rows one by one."""
        row = tokens.tolist() if isinstance(tokens, np.ndarray) else list(tokens)
        if any(isinstance(t, (list, tuple, np.ndarray)) for t in row):
            raise ValueError("strip takes one row of ids; for a batch: [model.strip(row) for row in tokens]")
        return answer_tokens(row, self.eos_token, self.pad_token)
