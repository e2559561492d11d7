"""Shared test helpers: repo paths, tiny-run flags, the in-process CLI, CSV metrics, small nets and sources, damaged
checkpoints, and the tiny fitted-and-exported models every ONNX test reads (built at most once per session)."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytest
import torch

from lit_seq2seq import __version__
from lit_seq2seq.model import NetConfig, Seq2Seq

# Tiny nets gain nothing from intra-op threads, and on a busy 2-core machine two OpenMP threads spinning against
# other processes make an LSTM backward ~100x slower (measured: 1 ms -> 250 ms per step). One thread keeps the
# suite fast and its timings stable.
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))
REVERSE_YAML = REPO / "configs" / "reverse.yaml"
PYTHON = sys.executable
CLI = str(Path(PYTHON).parent / "lit-seq2seq")  # the installed console script
# How the train/export commands of a base install say to add the `train` extra: the README's two ways to install
# (the package is not on PyPI).
TRAIN_EXTRA_HINT = (
    f"pip install 'PATH/lit_seq2seq-{__version__}-py3-none-any.whl[train]' from a wheel, "
    "or pip install -e '.[train]' in a checkout of the repository"
)

# ------------------------------------------------------------------------------------------- tiny-run flags

# reverse_first with 10 real tokens, 4 -> first 2 reversed: chance exact match is 1/100.
TINY_TASK = ["--data.task", "reverse_first", "--data.vocab_size", "11", "--data.source_length", "4"]
TINY_TASK += ["--data.target_length", "2"]


def tiny_run(train: int = 512, val: int = 64, test: int = 64, hidden: int = 16, epochs: int = 1) -> list[str]:
    """Split sizes, hidden units and epochs of a tiny fit; a test passes the sizes it relies on."""
    sizes = {"data.train_size": train, "data.val_size": val, "data.test_size": test}
    sizes |= {"model.net.hidden_size": hidden, "trainer.max_epochs": epochs}
    return [arg for flag, value in sizes.items() for arg in (f"--{flag}", str(value))]


# A few steps only: for parity and plumbing, not for a model that learned anything.
TINY = tiny_run()


def ema_flag(**init_args: Any) -> str:
    """The flag that adds lit_seq2seq's moving average of the weights to a fit, with these init_args."""
    spec = {"class_path": "lit_seq2seq.callbacks.EMAWeightAveraging", "init_args": init_args}
    return f"--trainer.callbacks+={json.dumps(spec)}"


def root_args(root: Path) -> list[str]:
    return ["--trainer.default_root_dir", str(root)]


# ----------------------------------------------------------------------------------------- in-process CLI


def run_cli(args: Sequence[Any], stdin: str | None = None) -> int:
    """`lit-seq2seq ARGS` in this process, `stdin` as its standard input if given; returns main's exit code."""
    from lit_seq2seq.cli import main

    saved = sys.argv, sys.stdin
    sys.argv = ["lit-seq2seq"]  # as from a shell; pytest's own arguments would trip LightningCLI's args warning
    if stdin is not None:
        sys.stdin = io.StringIO(stdin)
    try:
        return main([str(a) for a in args])
    finally:
        sys.argv, sys.stdin = saved


def cli_output(
    args: Sequence[Any], capsys: pytest.CaptureFixture[str], stdin: str | None = None
) -> tuple[int | str | None, str, str]:
    """run_cli, returning or exiting: (exit code, captured stdout, captured stderr)."""
    capsys.readouterr()  # drop whatever came before
    try:
        code = run_cli(args, stdin)
    except SystemExit as exit_:
        code = exit_.code
    out = capsys.readouterr()
    return code, out.out, out.err


def cli_exit(
    args: Sequence[Any], capsys: pytest.CaptureFixture[str], stdin: str | None = None
) -> tuple[int | str | None, str]:
    """run_cli expecting it to exit (SystemExit); returns (exit code, captured stderr)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        run_cli(args, stdin)
    return info.value.code, capsys.readouterr().err


def run_python(code: str, *args: str, stdin: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """`python -c CODE ARGS` with the venv's interpreter, from the repo root."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [PYTHON, "-c", code, *args], input=stdin, capture_output=True, text=True, cwd=REPO, env=env, timeout=timeout
    )


def into_closed_pipe(command: str, reader: str, cwd: Path) -> subprocess.CompletedProcess:
    """`COMMAND | READER` in bash (its exit code COMMAND's), READER one that leaves early (`true`, `head -1`), with
    stdout buffered as a user's is: this environment sets PYTHONUNBUFFERED, under which a BrokenPipeError at Python's
    flush at exit never shows."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    pipeline = ["bash", "-c", f"set -o pipefail; {command} | {reader}"]
    return subprocess.run(pipeline, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


# Prepended to run_python code: any import of these packages (and of sys.argv[1]) fails, as on a machine without
# them.
BLOCK_IMPORTS = """
import sys
class _Blocked:
    names = {"torch", "lightning", "pytorch_lightning", "lightning_fabric", "torchmetrics", *sys.argv[1:2]}
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in self.names:
            raise ImportError(f"{name} is not installed here")
sys.meta_path.insert(0, _Blocked())
"""


def restamp(path: Path, out: Path | None = None, **changes: str | None) -> None:
    """Rewrite a graph's metadata (None removes a key) and stamp its hash again, into `out` or in place: a valid file
    whose only difference is the change."""
    import onnx

    from lit_seq2seq import contract

    model = onnx.load(str(path))
    meta = {p.key: p.value for p in model.metadata_props} | changes
    meta[contract.CONTENT_HASH_KEY] = contract.HASH_PLACEHOLDER
    del model.metadata_props[:]
    for key, value in meta.items():
        if value is not None:
            model.metadata_props.add(key=key, value=value)
    data = contract.stamp_content_hash(model.SerializeToString())
    contract.check_content_hash(data, str(path))
    (out or path).write_bytes(data)


def fit_in(root: Path, *flags: Any) -> Path:
    """`lit-seq2seq fit FLAGS` run from `root` with `root` as its default_root_dir; returns `root`."""
    root.mkdir(parents=True, exist_ok=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)  # stray relative outputs land there
        run_cli(["fit", *flags, *root_args(root)])
    return root


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run the test inside tmp_path so stray relative outputs (runs/, lightning_logs/) land there."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


# -------------------------------------------------------------------------------------------- run folders


def read_metrics(version_dir: Path) -> list[dict[str, str]]:
    """Rows of <version_dir>/metrics.csv written by the CSVLogger the CLI configures."""
    with (Path(version_dir) / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


def last_metric(version_dir: Path, name: str) -> float:
    """The last logged value of metric `name` in a version directory."""
    values = [float(r[name]) for r in read_metrics(version_dir) if r.get(name)]
    assert values, f"{name} never logged in {version_dir}/metrics.csv"
    return values[-1]


def version_dirs(root: Path) -> list[Path]:
    """<root>/version_N directories, by N."""
    return sorted(Path(root).glob("version_*"), key=lambda p: int(p.name.split("_")[1]))


# -------------------------------------------------------------------------------------- nets and sources


def net_config(vocab_size: int = 9, **kwargs) -> NetConfig:
    """A NetConfig with one vocabulary for source and target, as every generated task has."""
    return NetConfig(source_vocab_size=vocab_size, target_vocab_size=vocab_size, **kwargs)


def padded_sources(lengths: list[int], width: int = 7, vocab: int = 9, seed: int = 0) -> torch.Tensor:
    """Right-padded sources with real tokens in 2..vocab-1, one row per length."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(2, vocab, (len(lengths), width), generator=g)
    mask = torch.arange(width) < torch.tensor(lengths)[:, None]
    return torch.where(mask, tokens, 0)


def manual_greedy(net: Seq2Seq, source: torch.Tensor, max_len: int) -> torch.Tensor:
    """Argmax loop with finished rows padded after their end token; (B, max_len)."""
    with torch.no_grad():
        state = net.encode(source)
        token = torch.full((len(source),), net.config.start_token)
        done = torch.zeros(len(source), dtype=torch.bool)
        out = []
        for _ in range(max_len):
            logits, state = net.step(token, state)
            token = torch.where(done, net.config.pad_token, logits.argmax(-1))
            out.append(token)
            if net.config.eos_token is not None:
                done |= token == net.config.eos_token
    return torch.stack(out, 1)


def pad_rows(rows: list[list[int]]) -> np.ndarray:
    """Token rows of different lengths as one right-padded (pad 0) int64 batch."""
    out = np.zeros((len(rows), max(map(len, rows))), dtype=np.int64)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return out


def strip_all(model: Any, tokens: np.ndarray) -> list[str]:
    """Decoded rows as `decode` prints them: the tokens before the end token, space-separated."""
    return [" ".join(map(str, model.strip(row))) for row in tokens]


def flip_bit(path: Path, offset: int) -> None:
    """Flip the lowest bit of byte `offset` of a file in place."""
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


# ------------------------------------------------------------------------------------ damaged checkpoints

CHECKPOINT_DAMAGE = [
    "truncated_half", "truncated_tail", "empty", "not_a_checkpoint", "flipped_tensor_byte", "flipped_pickle_byte",
    "damaged_zip_header", "foreign_dict", "foreign_state_dict", "altered_weights",
]  # fmt: skip


def _tensor_bytes_at(path: Path, tensor: torch.Tensor) -> tuple[int, int]:
    """(offset, size) of a tensor's raw bytes inside a torch.save zip file (stored uncompressed)."""
    raw = tensor.contiguous().numpy().tobytes()
    data = path.read_bytes()
    assert data.count(raw) == 1
    return data.find(raw), len(raw)


def damaged_checkpoint(good: Path, kind: str, folder: Path) -> Path:
    """A copy of checkpoint `good` at <folder>/<kind>.ckpt, damaged as `kind` says (CHECKPOINT_DAMAGE, or
    flipped_optimizer_byte: one bit inside Adam's exp_avg_sq, which lies in the middle of the file)."""
    path = folder / f"{kind}.ckpt"
    data = bytearray(good.read_bytes())
    if kind == "truncated_half":
        path.write_bytes(data[: len(data) // 2])
    elif kind == "truncated_tail":
        path.write_bytes(data[:-20])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "not_a_checkpoint":
        path.write_text("hello\n")
    elif kind in ("flipped_tensor_byte", "flipped_optimizer_byte"):
        checkpoint = torch.load(good, weights_only=True)
        if kind == "flipped_tensor_byte":
            tensor = checkpoint["state_dict"]["net.decoder.output.weight"]
        else:
            tensor = checkpoint["optimizer_states"][0]["state"][1]["exp_avg_sq"]
        offset, size = _tensor_bytes_at(good, tensor)
        data[offset + size // 2] ^= 0x01
        path.write_bytes(data)
    elif kind == "damaged_zip_header":  # the first header's fields after its signature: 'utf-8' codec can't decode
        data[4:40] = b"\xff" * 36
        path.write_bytes(data)
    elif kind == "flipped_pickle_byte":
        with zipfile.ZipFile(good) as z:
            info = next(i for i in z.infolist() if i.filename.endswith("data.pkl"))
        data[info.header_offset + 30 + len(info.filename) + 100] ^= 0x01
        path.write_bytes(data)
    elif kind == "foreign_dict":
        torch.save({"weights": torch.zeros(3), "note": "not from lit-seq2seq"}, path)
    elif kind == "foreign_state_dict":  # a plain model state_dict, as torch.save(model.state_dict()) writes it
        torch.save(torch.load(good, weights_only=True)["state_dict"], path)
    elif kind == "altered_weights":  # a valid file whose weights were changed after saving
        checkpoint = torch.load(good, weights_only=True)
        tensor = next(iter(checkpoint["state_dict"].values()))
        tensor.view(-1)[0] += 0.5
        torch.save(checkpoint, path)
    else:
        raise AssertionError(kind)
    return path


# ------------------------------------------------------------------------------------ exported tiny models

# Fixed-length seed task (no end token) and two variable-length tasks with end token 1.
REVERSE_FIRST = ["--data.task", "reverse_first", "--data.vocab_size", "9", "--data.source_length", "4"]
REVERSE_FIRST += ["--data.target_length", "2"]
COPY = ["--data.task", "copy", "--data.vocab_size", "8", "--data.source_length", "5"]
REVERSE = ["--data.task", "reverse", "--data.vocab_size", "8", "--data.source_length", "5"]

EXPORT_VARIANTS: dict[str, list[str]] = {
    "lstm": [*REVERSE_FIRST, *TINY],
    "gru": [*COPY, *TINY, "--model.net.cell", "gru"],
    "lstm_attention": [*REVERSE, *TINY, "--model.net.attention", "true"],
    "gru_bi_attention": [
        *[*COPY, *TINY, "--model.net.cell", "gru", "--model.net.bidirectional", "true"],
        *["--model.net.attention", "true"],
    ],
    "lstm_2layer": [*REVERSE_FIRST, *TINY, "--model.net.num_layers", "2"],
    "lstm_bi_context": [
        *[*REVERSE, *TINY, "--model.net.bidirectional", "true", "--model.net.attention", "true"],
        *["--model.net.context_rnn", "true"],
    ],
    # Learns copy in this one epoch (exact match 0.95-1.0 on fresh sources): it emits the end token where it should.
    "copy_trained": [
        *["--data.task", "copy", "--data.vocab_size", "6", "--data.source_length", "3"],
        *tiny_run(train=2000, hidden=32),
        *["--model.net.attention", "true", "--model.optimizer", "Adam", "--model.optimizer.lr", "0.01"],
    ],
}
# (cell, attention, bidirectional, num_layers, task) as exported
EXPORT_SPECS = {
    "lstm": ("lstm", False, False, 1, "reverse_first"),
    "gru": ("gru", False, False, 1, "copy"),
    "lstm_attention": ("lstm", True, False, 1, "reverse"),
    "gru_bi_attention": ("gru", True, True, 1, "copy"),
    "lstm_2layer": ("lstm", False, False, 2, "reverse_first"),
    "lstm_bi_context": ("lstm", True, True, 2, "reverse"),  # 2: the context RNN's state layer
    "copy_trained": ("lstm", True, False, 1, "copy"),
}
CONTRACT_VARIANTS = ["lstm", "gru", "lstm_attention", "gru_bi_attention", "lstm_2layer", "lstm_bi_context"]


class Export(NamedTuple):
    ckpt: Path  # the fit's last.ckpt
    model_dir: Path  # its encoder.onnx + decoder_step.onnx


@pytest.fixture(scope="session")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Export]:
    """name (an EXPORT_VARIANTS key) -> its Export; fitted (`lit-seq2seq fit`) and exported (`lit-seq2seq export`)
    in this process on first use, then shared by every test of the session."""

    def build(name: str) -> Export:
        root = tmp_path_factory.getbasetemp() / "exported" / name
        built = Export(root / "runs" / "version_0" / "checkpoints" / "last.ckpt", root / "export")
        if not (built.model_dir / "decoder_step.onnx").exists():
            fit_in(root / "runs", *EXPORT_VARIANTS[name], "--trainer.enable_model_summary", "false")
            export = ["export", "--ckpt_path", built.ckpt, "--output_dir", built.model_dir]
            assert run_cli([*export, "--verify_samples", "32"]) == 0
        return built

    return build


@pytest.fixture(scope="session")
def runtime_model(exported: Callable[[str], Export]) -> Callable[[str], Any]:
    """name -> OnnxSeq2Seq of that export, loaded once per session."""
    from lit_seq2seq.runtime import OnnxSeq2Seq

    cache: dict[str, OnnxSeq2Seq] = {}

    def get(name: str) -> OnnxSeq2Seq:
        if name not in cache:
            cache[name] = OnnxSeq2Seq.load(exported(name).model_dir)
        return cache[name]

    return get


def after_each_last_ckpt_write(trainer: Any, then: Callable[[dict[str, Any], Path], None]) -> None:
    """Wrap the trainer's checkpoint IO so that `then(checkpoint, path)` runs right after each last.ckpt is written
    (test callbacks that record writes or kill the fit at one)."""
    io = trainer.strategy.checkpoint_io
    save = io.save_checkpoint

    def save_then(checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        save(checkpoint, path, storage_options)
        if Path(path).name == "last.ckpt":
            then(checkpoint, Path(path))

    io.save_checkpoint = save_then


# i10-export ------------------------------------------------------------------------ text models, built without data

# A made-up "pronunciation": each source letter becomes target tokens, 'ж' two of them. Non-ASCII on both sides, the
# source lowercased (so "ABÉ" reads as "abé"), and vocabularies of different sizes (source 6, target 7).
TEXT_RULES = {"a": "AH", "b": "BE", "é": "É", "ж": "Ж Э"}
TEXT_LENGTHS = (1, 5)  # trained source lengths of text_checkpoint's models (characters)


def text_spec(unk: bool = False, source_kind: str = "char", target_kind: str = "space") -> Any:
    """The TextSpec of TEXT_RULES: source letters, target tokens; `unk` adds <unk> to the source vocabulary."""
    from lit_seq2seq.text import TextSpec, Tokenizer, Vocab

    targets = [t for v in TEXT_RULES.values() for t in v.split()]
    return TextSpec(
        Tokenizer(source_kind, lowercase=True),
        Tokenizer(target_kind),
        Vocab.build(TEXT_RULES, unk=unk),
        Vocab.build(targets if target_kind == "space" else "".join(targets)),
    )


def text_pairs(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """n random (word, pronunciation) pairs of TEXT_RULES at the trained lengths."""
    rng = np.random.default_rng(seed)
    letters = list(TEXT_RULES)
    words = ["".join(rng.choice(letters, rng.integers(TEXT_LENGTHS[0], TEXT_LENGTHS[1] + 1))) for _ in range(n)]
    return [(w, " ".join(TEXT_RULES[c] for c in w)) for w in words]


def text_checkpoint(path: Path, spec: Any, steps: int = 0, seed: int = 0, **net: Any) -> Path:
    """A text model's checkpoint at `path`, laid out as `fit` writes one (state_dict under "net.", hyper_parameters,
    the weights hash, and the `text` entry Seq2SeqModule.on_save_checkpoint adds), its net trained `steps` Adam steps
    on text_pairs with a plain loop (0: untrained, enough for parity). `net`: NetConfig fields (hidden_size, ...)."""
    import torch.nn.functional as F

    from lit_seq2seq.checkpoint import WEIGHTS_HASH_KEY, weights_sha256
    from lit_seq2seq.model import shift_right
    from lit_seq2seq.text import EOS_ID, TEXT_KEY

    longest = TEXT_LENGTHS[1] * max(len(v.split()) for v in TEXT_RULES.values()) + 1
    config = NetConfig(len(spec.source_vocab), len(spec.target_vocab), longest, EOS_ID, **{"hidden_size": 16, **net})
    torch.manual_seed(seed)
    model = Seq2Seq(config)
    if steps:
        pairs = text_pairs(64 * steps, seed)
        optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
        for i in range(steps):
            chunk = pairs[64 * i : 64 * (i + 1)]
            source = torch.from_numpy(pad_rows([spec.encode(s) for s, _ in chunk]))
            ids = [[*(spec.target_vocab.id(t) for t in spec.target.split(p)), EOS_ID] for _, p in chunk]
            target = torch.from_numpy(pad_rows(ids))
            logits = model(source, shift_right(target, config.start_token))
            loss = F.cross_entropy(logits.flatten(0, 1), target.flatten(), ignore_index=config.pad_token)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    state = {f"net.{k}": v.detach().clone() for k, v in model.state_dict().items()}
    checkpoint = {
        "state_dict": state,
        "hyper_parameters": {"net": config.to_dict(), "teacher_forcing_ratio": 1.0},
        WEIGHTS_HASH_KEY: weights_sha256(state),
        "datamodule_hyper_parameters": {"train": "made-up.tsv"},  # a pair data module's: not a generated task
        TEXT_KEY: spec.to_dict() | {"source_length": TEXT_LENGTHS[1], "min_source_length": TEXT_LENGTHS[0]},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, path)
    return path


# name -> (text_spec arguments, text_checkpoint arguments)
TEXT_VARIANTS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    # learns TEXT_RULES (a few seconds): translate answers what the rules say
    "trained": ({}, {"steps": 150, "hidden_size": 32, "embedding_dim": 16, "attention": True}),
    # untrained GRU with a bidirectional encoder, <unk> in the source vocabulary, char tokenizer on both sides
    "unk_char": ({"unk": True, "target_kind": "char"}, {"cell": "gru", "bidirectional": True}),
    # untrained, space-separated source tokens ("a b é")
    "space_source": ({"source_kind": "space"}, {"hidden_size": 8}),
}


@pytest.fixture(scope="session")
def text_exported(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Export]:
    """name (a TEXT_VARIANTS key) -> its Export: checkpoint written by text_checkpoint, exported by `lit-seq2seq
    export` in this process on first use, then shared by every test of the session."""

    def build(name: str) -> Export:
        root = tmp_path_factory.getbasetemp() / "text_exported" / name
        built = Export(root / "model.ckpt", root / "export")
        if not (built.model_dir / "decoder_step.onnx").exists():
            spec_args, ckpt_args = TEXT_VARIANTS[name]
            text_checkpoint(built.ckpt, text_spec(**spec_args), **ckpt_args)
            export = ["export", "--ckpt_path", built.ckpt, "--output_dir", built.model_dir]
            assert run_cli([*export, "--verify_samples", "64"]) == 0
        return built

    return build


# ----------------------------------------------------------------------------------------- pair-file configs


def use_config_data(settings: dict, workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """chdir to where a pair-file config's relative paths resolve: the repository root (files under tests/data), or
    `workdir` after writing CMUdict's splits there with the documented command (data/cmudict is made, not shipped)."""
    monkeypatch.chdir(REPO)
    if "data/cmudict/" in str(settings["data"].get("init_args", {})):
        from lit_seq2seq import cmudict

        assert cmudict.main(["--output_dir", str(workdir / "data" / "cmudict")]) == 0
        monkeypatch.chdir(workdir)
