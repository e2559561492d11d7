"""Pure nn.Module encoder-decoder nets (LSTM/GRU, optional bidirectional encoder and Luong attention), and
`NetConfig`, the one place their hyperparameters are declared and checked.

The decoder has one code path, `Decoder.forward(tokens (B, T), state)`: teacher forcing runs it over the whole
target, a single step runs it with T = 1, and the exported step graph is traced from that same call.
State travels as a dict keyed by the ONNX contract names (h, c, memory, memory_mask).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from lit_seq2seq import contract, tasks
from lit_seq2seq.search import beam_search, greedy_search, plain

CELLS = {"lstm": nn.LSTM, "gru": nn.GRU}
State = dict[str, Tensor]


@dataclass(frozen=True)
class NetConfig:
    """Sizes and architecture of a Seq2Seq net. The sizes the data decides (vocabularies, target length, end
    token) are linked from ``--data.*`` by the CLI; the rest are ``--model.net.*`` flags.

    Args:
        source_vocab_size: Number of source token ids, the reserved ones included (linked from the data).
        target_vocab_size: Number of target token ids, the reserved ones included (linked from the data).
        max_target_length: Decoder steps to run at most, the end token included (linked from the data).
        eos_token: End-of-sequence token, or null for fixed-length targets (linked from the data).
        hidden_size: Units of every RNN layer.
        num_layers: Stacked RNN layers in the encoder and in the decoder.
        cell: ``lstm`` or ``gru``.
        bidirectional: Bidirectional encoder; its final states are bridged to the decoder by a linear layer.
        attention: Luong (general) attention of the decoder over the encoder outputs.
        context_rnn: A second decoder RNN (one layer, the same cell) over attention's output, added to it before the
            output layer: its recurrence sees the attention context, which the first one's does not. Needs attention;
            its state is one more layer of the decoder state (h and c carry num_layers + 1 layers).
        embedding_dim: Learned embedding width; null feeds one-hot vectors as in the Keras tutorial.
        dropout: Dropout between RNN layers, on the encoder outputs that attention reads, and before the output
            layer.
        embedding_dropout: Dropout on the token vectors entering the encoder and the decoder.
        variational_dropout: One dropout mask per sequence, shared by all its time steps (variational dropout, Gal &
            Ghahramani 2016), for dropout and embedding_dropout, instead of one per element: a recurrent net's
            regulariser, and ~9x fewer random numbers (torch's CPU generator took ~15% of a G2P step). The dropout
            inside a stacked RNN (num_layers > 1) stays per element. Training only: the exported graphs are the same.
        pad_token: Padding id in sources and targets.
        start_token: First decoder input.
    """

    source_vocab_size: int = 51
    target_vocab_size: int = 51
    max_target_length: int = 3
    eos_token: int | None = None
    hidden_size: int = 128
    num_layers: int = 1
    cell: str = "lstm"
    bidirectional: bool = False
    attention: bool = False
    context_rnn: bool = False
    embedding_dim: int | None = None
    dropout: float = 0.0
    embedding_dropout: float = 0.0
    variational_dropout: bool = False
    pad_token: int = 0
    start_token: int = 0

    FLAG = "--model.net."  # prefix of the flags that set these fields, for error messages

    def __post_init__(self) -> None:
        flag = self.FLAG
        self._check_types()
        if self.cell not in CELLS:
            raise ValueError(f"{flag}cell: unknown cell {self.cell!r}; choose one of {', '.join(CELLS)}")
        for name in ("source_vocab_size", "target_vocab_size", "hidden_size", "num_layers", "max_target_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"{flag}{name} must be >= 1, got {getattr(self, name)}")
        if self.embedding_dim is not None and self.embedding_dim < 1:
            raise ValueError(f"{flag}embedding_dim must be >= 1 or null (one-hot), got {self.embedding_dim}")
        for name in ("dropout", "embedding_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{flag}{name} must be in [0, 1), got {getattr(self, name)}")
        if self.context_rnn and not self.attention:
            raise ValueError(f"{flag}context_rnn reads attention's output: it needs {flag}attention true")
        if self.variational_dropout and not (self.dropout or self.embedding_dropout):
            raise ValueError(
                f"{flag}variational_dropout shapes dropout masks: it needs {flag}dropout or {flag}embedding_dropout > 0"
            )
        vocab = self.target_vocab_size
        if self.eos_token is not None and not 0 <= self.eos_token < vocab:
            raise ValueError(f"{flag}eos_token must be in [0, target_vocab_size={vocab}), got {self.eos_token}")
        for name in ("pad_token", "start_token"):
            if not 0 <= getattr(self, name) < min(self.source_vocab_size, vocab):
                raise ValueError(f"{flag}{name} must be a token id of both vocabularies, got {getattr(self, name)}")
        self._check_memory()

    def _check_types(self) -> None:
        """TypeError naming the field: a string or a float size failed later, inside a comparison or torch. Numpy
        numbers become Python's (torch's RNNs refuse np.int64 sizes; the checkpoint would not load)."""
        for field in dataclasses.fields(self):
            kind, optional = field.type.replace(" | None", ""), "None" in field.type
            value = plain(f"{self.FLAG}{field.name}", getattr(self, field.name), kind, optional)
            object.__setattr__(self, field.name, value)  # frozen

    def _check_memory(self) -> None:
        """Refuse sizes whose tensors cannot fit in this machine's memory, before any is allocated (torch.eye of a
        1e9 vocabulary would ask for 4e18 bytes). Counted: the float32 one-hot tables and weights; a fit needs about
        4x the weights (gradients, Adam's two moments) and activations on top."""
        source, target = self.source_vocab_size, self.target_vocab_size
        # No flag named: the sizes come from --data.vocab_size (generated tasks) or from the pair files' vocabularies
        vocab = f"vocabulary sizes {source} (source), {target} (target)"
        if source == target:
            vocab = f"vocabulary size {source}"
        one_hot = 0 if self.embedding_dim is not None else 4 * (source**2 + target**2)
        if one_hot:
            tasks.check_memory(
                one_hot,
                f"{vocab} with one-hot inputs: the input tables alone (vocab^2 x 4 bytes, encoder and decoder) need",
                f"pass {self.FLAG}embedding_dim (a learned embedding: vocab x dim) or a smaller vocabulary",
            )
        params = self.parameter_count()
        flags = [vocab] + [f"{self.FLAG}{k} {getattr(self, k)}" for k in ("hidden_size", "num_layers")]
        if self.embedding_dim is not None:
            flags.append(f"{self.FLAG}embedding_dim {self.embedding_dim}")
        tables = ", and the one-hot tables" if one_hot else ""
        tasks.check_memory(
            one_hot + 4 * params,
            f"{', '.join(flags)}: the net's {tasks.format_count(params)} weights (x 4 bytes{tables}) need",
            "lower these sizes (a fit needs about 4x the weights: gradients and Adam's moments)",
        )

    def activation_bytes(self, batch: int, source_length: int) -> int:
        """Bytes one training step keeps for its backward pass, float32, for `batch` rows of `source_length` tokens
        and max_target_length decoder steps: per source token each encoder layer's gates and states, per decoder step
        the decoder's, the attention over the source and the logits. Fitted to the peak RSS of such steps
        (benchmarks/fit_memory.py): 0.84x to 1.29x of it over LSTM/GRU, 1-2 layers, 0.2-1.6 GiB."""
        hidden, layers = self.hidden_size, self.num_layers
        per_layer = (13 if self.cell == "lstm" else 12) * hidden  # floats a token: gates, states, their workspace
        source_width = self.embedding_dim or self.source_vocab_size  # the token vectors (one-hot: vocabulary wide)
        target_width = self.embedding_dim or self.target_vocab_size
        encoder = source_length * ((2 if self.bidirectional else 1) * layers * per_layer + 2 * source_width)
        attention = 5 * self.memory_dim + 2 * source_length if self.attention else 0
        step = self.state_layers * per_layer + 2 * target_width + 3 * hidden + attention + 4 * self.target_vocab_size
        return 4 * batch * (encoder + self.max_target_length * step)

    def parameter_count(self) -> int:
        """Parameters of the Seq2Seq net this config builds (checked against the built net in the tests)."""
        hidden, gates = self.hidden_size, 4 if self.cell == "lstm" else 3

        def rnn(input_dim: int, dirs: int) -> int:  # weight_ih, weight_hh and two biases per layer and direction
            widths = [input_dim] + [hidden * dirs] * (self.num_layers - 1)
            return sum(dirs * gates * hidden * (width + hidden + 2) for width in widths)

        def token_input(vocab: int) -> tuple[int, int]:  # (parameters, width of the vectors)
            return (0, vocab) if self.embedding_dim is None else (vocab * self.embedding_dim, self.embedding_dim)

        count = 0
        for vocab, dirs in ((self.source_vocab_size, 2 if self.bidirectional else 1), (self.target_vocab_size, 1)):
            params, width = token_input(vocab)
            count += params + rnn(width, dirs)
        if self.bidirectional:  # the bridge: one Linear(2H, H) per state (h, and c for an LSTM)
            count += len(contract.state_names(self.cell, False)) * (2 * hidden * hidden + hidden)
        if self.attention:  # query Linear(H, M, no bias) and combine Linear(H + M, H)
            memory = self.memory_dim
            count += hidden * memory + (hidden + memory) * hidden + hidden
        if self.context_rnn:  # one layer, H -> H
            count += gates * hidden * (2 * hidden + 2)
        return count + hidden * self.target_vocab_size + self.target_vocab_size  # the output layer

    @property
    def state_layers(self) -> int:
        """Layers of the decoder state h (and c): the decoder RNN's, and the context RNN's one."""
        return self.num_layers + int(self.context_rnn)

    @property
    def memory_dim(self) -> int:
        """Width of the attention memory (the encoder's outputs); 0 without attention."""
        return self.hidden_size * (2 if self.bidirectional else 1) if self.attention else 0

    def to_dict(self) -> dict[str, Any]:
        """The fields as primitives: what checkpoints store, so torch.load(weights_only=True) reads them."""
        return dataclasses.asdict(self)

    @classmethod
    def from_hparams(cls, hparams: Mapping[str, Any]) -> NetConfig:
        """The config stored in a checkpoint's hyper_parameters (under "net")."""
        net = upgrade_hparams(hparams)["net"]
        return cls(**(net.to_dict() if isinstance(net, NetConfig) else net))


def upgrade_hparams(hparams: Mapping[str, Any]) -> dict[str, Any]:
    """A checkpoint's hyper_parameters in today's layout: {"net": NetConfig fields, "teacher_forcing_ratio": ...}.

    lit-seq2seq 0.1 stored the net's fields flat beside teacher_forcing_ratio, with one `vocab_size`.
    """
    if "net" in hparams:
        return dict(hparams)
    if "vocab_size" not in hparams:
        raise ValueError("no net configuration in the checkpoint's hyper_parameters (not a lit-seq2seq model?)")
    fields = {f.name for f in dataclasses.fields(NetConfig)}
    flat = dict(hparams)
    vocab = flat.pop("vocab_size")
    net = {k: flat.pop(k) for k in list(flat) if k in fields} | {"source_vocab_size": vocab, "target_vocab_size": vocab}
    return {"net": net, **flat}


class Dropout(nn.Dropout):
    """nn.Dropout; with `variational`, over (B, T, D) one mask (B, 1, D) per sequence, shared by its T steps."""

    def __init__(self, p: float, variational: bool) -> None:
        super().__init__(p)
        self.variational = variational

    def forward(self, x: Tensor) -> Tensor:
        if not (self.variational and self.training and self.p > 0):
            return super().forward(x)
        keep = 1.0 - self.p
        mask = x.new_empty(x.shape[0], 1, x.shape[-1]).bernoulli_(keep)  # (B, 1, D)
        return x * mask.div_(keep)


class TokenInput(nn.Module):
    """Token ids (...,) -> vectors (..., D): one-hot as in the tutorial (D = vocab), or a learned embedding."""

    def __init__(self, vocab_size: int, embedding_dim: int | None) -> None:
        super().__init__()
        if embedding_dim is None:
            # One-hot as a fixed lookup table: same numbers as F.one_hot(...).float(), one Gather in ONNX.
            self.register_buffer("table", torch.eye(vocab_size), persistent=False)
            self.dim = vocab_size
        else:
            self.table = nn.Parameter(torch.randn(vocab_size, embedding_dim) * embedding_dim**-0.5)
            self.dim = embedding_dim

    def forward(self, tokens: Tensor) -> Tensor:
        return F.embedding(tokens, self.table)


def cpu_native_bf16() -> bool:
    """Whether this CPU does bfloat16 math in hardware (AVX512-BF16 or AMX); others emulate it, slower than float32."""
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


@functools.cache
def _cpu_bf16_lstm() -> bool:
    """Whether this CPU's oneDNN runs LSTMs in bfloat16 (AVX512 CPUs and later; not AVX2 ones)."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def run_rnn(rnn: nn.RNNBase, x: Tensor | PackedSequence, state: Any = None) -> tuple[Any, Any]:
    """rnn(x, state), except for an LSTM over a tensor under CPU bf16 autocast on a CPU without bf16 LSTMs: there
    it runs in float32, outside autocast, as autocast already runs GRUs and packed sequences. (On AVX2 CPUs torch
    sends that LSTM to oneDNN, which fails: "could not create a primitive descriptor for the LSTM forward".)"""
    if (
        isinstance(rnn, nn.LSTM)
        and isinstance(x, Tensor)
        and x.device.type == "cpu"
        and torch.is_autocast_enabled("cpu")
        and torch.get_autocast_dtype("cpu") == torch.bfloat16
        and not _cpu_bf16_lstm()
    ):
        with torch.autocast("cpu", enabled=False):
            return rnn(x.float(), None if state is None else tuple(s.float() for s in state))
    return rnn(x, state)


def _rnn(config: NetConfig, input_dim: int, bidirectional: bool) -> nn.RNNBase:
    return CELLS[config.cell](
        input_dim,
        config.hidden_size,
        num_layers=config.num_layers,
        batch_first=True,
        bidirectional=bidirectional,
        dropout=config.dropout if config.num_layers > 1 else 0.0,
    )


class Encoder(nn.Module):
    """source (B, S) int64, right-padded with `pad_token` -> decoder state dict, keyed by
    `contract.state_names` (memory and memory_mask only for attention, or when asked for).

    Padding never leaks: padded batches run packed, so each row's final state is the one after its last token.
    """

    def __init__(self, config: NetConfig) -> None:
        super().__init__()
        self.config = config
        self.input = TokenInput(config.source_vocab_size, config.embedding_dim)
        self.input_dropout = Dropout(config.embedding_dropout, config.variational_dropout)
        self.rnn = _rnn(config, self.input.dim, config.bidirectional)
        self.dropout = Dropout(config.dropout, config.variational_dropout)
        if config.bidirectional:
            # Bridge: both directions' final states of a layer -> that layer's decoder initial state.
            hidden = config.hidden_size
            self.bridge = nn.ModuleDict(
                {name: nn.Linear(2 * hidden, hidden) for name in contract.state_names(config.cell, False)}
            )

    def forward(self, source: Tensor, pack: bool | None = None, memory: bool | None = None) -> State:
        """`memory` (default: the decoder has attention) adds memory and memory_mask to the state."""
        config = self.config
        memory = config.attention if memory is None else memory
        mask = source != config.pad_token  # (B, S)
        lengths = mask.sum(1)
        if pack is None:  # eager: pack only when some row is padded; export passes pack=True
            pack = bool((lengths < source.shape[1]).any())
        x = self.input_dropout(self.input(source))  # (B, S, D)
        if pack:
            packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
            out, finals = run_rnn(self.rnn, packed)
            if memory:  # unpacking is skipped when nobody reads the outputs
                out = pad_packed_sequence(out, batch_first=True, total_length=source.shape[1])[0]
        else:
            out, finals = run_rnn(self.rnn, x)  # (B, S, H * directions)
        finals = finals if isinstance(finals, tuple) else (finals,)
        state = {}
        for name, final in zip(contract.state_names(config.cell, False), finals):
            if config.bidirectional:  # (L * 2, B, H) -> (L, B, 2H) -> (L, B, H)
                final = final.view(config.num_layers, 2, *final.shape[1:])
                final = self.bridge[name](torch.cat([final[:, 0], final[:, 1]], dim=-1))
                final = torch.tanh(final) if name == contract.H else final
            if config.context_rnn:  # the context RNN's layer starts from zeros: (L + 1, B, H)
                final = torch.cat([final, torch.zeros_like(final[-1:])])
            state[name] = final
        if memory:
            state[contract.MEMORY], state[contract.MEMORY_MASK] = self.dropout(out), mask
        return state


class Decoder(nn.Module):
    """tokens (B, T) and state -> logits (B, T, V) and the state after T steps.

    Attention is Luong's "general" score applied to the RNN output (no input feeding): the recurrence does
    not depend on attention, so teacher forcing stays one parallel RNN call over T, and the step graph is a
    plain RNN step plus one attention read. With `context_rnn` a second RNN runs over attention's output (again
    one parallel call over T): a recurrence that sees the context, at the cost of input feeding's sequential loop.
    """

    def __init__(self, config: NetConfig) -> None:
        super().__init__()
        self.config = config
        self.input = TokenInput(config.target_vocab_size, config.embedding_dim)
        self.input_dropout = Dropout(config.embedding_dropout, config.variational_dropout)
        self.rnn = _rnn(config, self.input.dim, bidirectional=False)
        if config.attention:
            self.query = nn.Linear(config.hidden_size, config.memory_dim, bias=False)
            self.combine = nn.Linear(config.hidden_size + config.memory_dim, config.hidden_size)
        if config.context_rnn:
            self.context = CELLS[config.cell](config.hidden_size, config.hidden_size, batch_first=True)
        self.dropout = Dropout(config.dropout, config.variational_dropout)
        self.output = nn.Linear(config.hidden_size, config.target_vocab_size)

    def forward(self, tokens: Tensor, state: State) -> tuple[Tensor, State]:
        config = self.config
        names = contract.state_names(config.cell, False)
        hidden = tuple(state[n] for n in names)  # (L, B, H) each; with context_rnn (L + 1, B, H), its layer last
        if config.context_rnn:
            hidden = tuple(h[: config.num_layers] for h in hidden)
        x = self.input_dropout(self.input(tokens))  # (B, T, D)
        out, finals = run_rnn(self.rnn, x, _cell_state(config.cell, hidden))  # (B, T, H)
        finals = finals if isinstance(finals, tuple) else (finals,)
        if config.attention:
            memory, mask = state[contract.MEMORY], state[contract.MEMORY_MASK]  # (B, S, M), (B, S)
            scores = self.query(out) @ memory.transpose(1, 2)  # (B, T, S)
            scores = scores.masked_fill(~mask[:, None, :], torch.finfo(scores.dtype).min)
            context = scores.softmax(-1) @ memory  # (B, T, M)
            out = torch.tanh(self.combine(torch.cat([out, context], dim=-1)))
        if config.context_rnn:
            previous = tuple(state[n][config.num_layers :] for n in names)  # (1, B, H) each
            more, last = run_rnn(self.context, self.dropout(out), _cell_state(config.cell, previous))
            last = last if isinstance(last, tuple) else (last,)
            finals = tuple(torch.cat([f, m]) for f, m in zip(finals, last))
            out = out + more  # residual: attention's output reaches the output layer as before
        new_state = dict(state)
        new_state.update(zip(names, finals))
        return self.output(self.dropout(out)), new_state


def _cell_state(cell: str, state: tuple[Tensor, ...]) -> Tensor | tuple[Tensor, ...]:
    """(h, c) for an LSTM, h alone for a GRU: what nn.LSTM / nn.GRU take as their initial state."""
    return state if cell == "lstm" else state[0]


class Seq2Seq(nn.Module):
    """Encoder-decoder built from a `NetConfig`, which also carries the decoding settings a runtime needs
    (start/end tokens, max target length)."""

    def __init__(self, config: NetConfig | None = None) -> None:
        super().__init__()
        self.config = config = NetConfig() if config is None else config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.apply(_keras_init)

    @classmethod
    def from_checkpoint(cls, checkpoint: str | os.PathLike | Mapping[str, Any]) -> Seq2Seq:
        """The net of a `lit-seq2seq fit` checkpoint (a path, read safely, or a checkpoint already read), in eval
        mode: the one way to rebuild a trained net."""
        from lit_seq2seq.checkpoint import read_checkpoint

        ckpt = read_checkpoint(checkpoint) if isinstance(checkpoint, (str, os.PathLike)) else checkpoint
        net = cls(NetConfig.from_hparams(ckpt["hyper_parameters"]))
        prefix = "net."
        try:
            net.load_state_dict({k[len(prefix) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)})
        except RuntimeError as error:  # the weights hash covers the weights, not the hyperparameters beside them
            first = str(error).strip().splitlines()[-1].strip()  # torch lists every mismatch: one names it
            raise ValueError(
                f"its weights do not fit the net its hyper_parameters describe (edited?): {first}"
            ) from None
        return net.eval()

    def encode(self, source: Tensor, pack: bool | None = None) -> State:
        """source (B, S) -> the decoder's initial state, keyed by `contract.state_names`."""
        return self.encoder(source, pack)

    def forward(self, source: Tensor, decoder_input: Tensor) -> Tensor:
        """Teacher forcing: source (B, S), decoder_input (B, T) -> logits (B, T, V)."""
        return self.decoder(decoder_input, self.encode(source))[0]

    def step(self, token: Tensor, state: State) -> tuple[Tensor, State]:
        """One decoder step: token (B,) -> logits (B, V) and the new state."""
        logits, state = self.decoder(token[:, None], state)
        return logits[:, 0], state

    def _numpy_step(self, device: torch.device):
        def step(tokens: np.ndarray, state: State) -> tuple[np.ndarray, State]:
            logits, state = self.step(torch.from_numpy(tokens).to(device), state)
            return logits.float().cpu().numpy(), state

        return step

    def _tokens(self) -> dict[str, Any]:
        config = self.config
        return {"start_token": config.start_token, "eos_token": config.eos_token, "pad_token": config.pad_token}

    def check_source(self, source: Any) -> None:
        """ValueError/TypeError naming what is wrong with a source batch for `greedy`/`beam_search`: what torch would
        otherwise report from inside the embedding or the packing (an index error, a dtype or size mismatch), or decode
        silently wrong (padding before a token: the packed length would read the row from the wrong positions). The
        runtime's check_source also refuses ids the data never holds and untrained lengths, which the export knows
        from the data (min_token, source lengths) and the net does not."""
        config = self.config
        if not isinstance(source, Tensor):
            kind = type(source).__name__
            raise TypeError(f"source must be a torch tensor of token ids (batch, source_len), got {kind}")
        if source.is_floating_point() or source.is_complex() or source.dtype == torch.bool:
            raise TypeError(f"source must hold integer token ids, got {source.dtype}")
        if source.ndim != 2 or 0 in source.shape:
            raise ValueError(f"source must have shape (batch, source_len), neither 0, got {tuple(source.shape)}")
        lo, hi = int(source.min()), int(source.max())
        if lo < 0 or hi >= config.source_vocab_size:
            raise ValueError(
                f"source: token {lo if lo < 0 else hi} is out of range; ids must be in [0, "
                f"{config.source_vocab_size - 1}] (the net's source_vocab_size is {config.source_vocab_size})"
            )
        pad = source == config.pad_token
        if bool(pad[:, 0].any()):
            raise ValueError(f"source: a row starts with the pad token {config.pad_token} (an empty sequence)")
        gap = pad[:, :-1] & ~pad[:, 1:]
        if bool(gap.any()):
            row, col = (int(i) for i in gap.nonzero()[0])
            raise ValueError(f"source[{row}, {col + 1}]: token after padding; pad only at the end")

    @torch.no_grad()
    def greedy(self, source: Tensor, max_len: int | None = None) -> Tensor:
        """Greedy decoding: source (B, S) -> tokens (B, T), padded after the end token."""
        self.check_source(source)
        out = greedy_search(
            self._numpy_step(source.device),
            self.encode(source),
            batch_size=len(source),
            max_len=self.config.max_target_length if max_len is None else max_len,
            **self._tokens(),
        )
        return torch.from_numpy(out).to(source.device)

    @torch.no_grad()
    def beam_search(
        self, source: Tensor, beam_size: int = 4, length_penalty: float = 1.0, max_len: int | None = None
    ) -> tuple[Tensor, Tensor]:
        """Beam search: source (B, S) -> best tokens (B, T) and their normalised log-probability (B,)."""
        self.check_source(source)
        tokens, scores = beam_search(
            self._numpy_step(source.device),
            self.encode(source),
            batch_size=len(source),
            max_len=self.config.max_target_length if max_len is None else max_len,
            beam_size=beam_size,
            length_penalty=length_penalty,
            **self._tokens(),
        )
        return torch.from_numpy(tokens).to(source.device), torch.from_numpy(scores)


def _keras_init(module: nn.Module) -> None:
    """Keras' defaults, as in the tutorial: Glorot-uniform input and dense weights, orthogonal recurrent weights
    per gate, zero biases and LSTM forget-gate bias 1. Measured on the seed task (1 epoch, seeds 1-3): 99.4-99.7%
    exact match against 99.1-99.6% with torch's uniform default (test split, 1,000 sequences).
    """
    if isinstance(module, nn.RNNBase):
        gates = 4 if isinstance(module, nn.LSTM) else 3
        for name, param in module.named_parameters():
            if name.startswith("weight_ih"):
                for w in param.data.chunk(gates):
                    nn.init.xavier_uniform_(w)
            elif name.startswith("weight_hh"):
                for w in param.data.chunk(gates):
                    nn.init.orthogonal_(w)
            else:
                nn.init.zeros_(param)
                if gates == 4 and name.startswith("bias_ih"):
                    param.data[module.hidden_size : 2 * module.hidden_size] = 1.0  # gates are i, f, g, o
    elif isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def shift_right(target: Tensor, start_token: int) -> Tensor:
    """Decoder input for teacher forcing: [start] + target[:-1] along dim 1."""
    start = torch.full_like(target[:, :1], start_token)
    return torch.cat([start, target[:, :-1]], dim=1)
