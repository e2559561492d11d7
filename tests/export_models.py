"""Tiny fitted checkpoints and their ONNX exports, shared by test_export.py and test_runtime.py.

Each variant is fitted (`lit-seq2seq fit`, in-process) and exported (`lit-seq2seq export`) at most once per test
session: the results are kept under pytest's session temp dir and reused by every module that asks for them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, run_cli

PYTHON = sys.executable
CLI = str(Path(PYTHON).parent / "lit-seq2seq")

# Fixed-length seed task (no end token) and two variable-length tasks with end token 1.
REVERSE_FIRST = ["--data.task", "reverse_first", "--data.vocab_size", "9", "--data.source_length", "4"]
REVERSE_FIRST += ["--data.target_length", "2"]
COPY = ["--data.task", "copy", "--data.vocab_size", "8", "--data.source_length", "5"]
REVERSE = ["--data.task", "reverse", "--data.vocab_size", "8", "--data.source_length", "5"]
# A few steps only: parity and plumbing do not need a model that learned anything.
TINY = ["--data.train_size", "512", "--data.val_size", "64", "--data.test_size", "64", "--model.net.hidden_size", "16"]
TINY += ["--trainer.max_epochs", "1"]

VARIANTS: dict[str, list[str]] = {
    "lstm": [*REVERSE_FIRST, *TINY],
    "gru": [*COPY, *TINY, "--model.net.cell", "gru"],
    "lstm_attention": [*REVERSE, *TINY, "--model.net.attention", "true"],
    "gru_bi_attention": [
        *[*COPY, *TINY, "--model.net.cell", "gru", "--model.net.bidirectional", "true"],
        *["--model.net.attention", "true"],
    ],
    "lstm_2layer": [*REVERSE_FIRST, *TINY, "--model.net.num_layers", "2"],
    # Learns copy in this one epoch (exact match 0.95-1.0 on fresh sources): it emits the end token where it should.
    "copy_trained": [
        *["--data.task", "copy", "--data.vocab_size", "6", "--data.source_length", "3", "--data.train_size", "2000"],
        *["--data.val_size", "64", "--data.test_size", "64", "--model.net.hidden_size", "32"],
        *["--model.net.attention", "true"],
        *["--trainer.max_epochs", "1", "--model.optimizer", "Adam", "--model.optimizer.lr", "0.01"],
    ],
}
# (cell, attention, bidirectional, num_layers, task) as exported
SPECS = {
    "lstm": ("lstm", False, False, 1, "reverse_first"),
    "gru": ("gru", False, False, 1, "copy"),
    "lstm_attention": ("lstm", True, False, 1, "reverse"),
    "gru_bi_attention": ("gru", True, True, 1, "copy"),
    "lstm_2layer": ("lstm", False, False, 2, "reverse_first"),
    "copy_trained": ("lstm", True, False, 1, "copy"),
}
CONTRACT_VARIANTS = ["lstm", "gru", "lstm_attention", "gru_bi_attention", "lstm_2layer"]


def build(factory: pytest.TempPathFactory, name: str) -> tuple[Path, Path]:
    """(checkpoint, export dir) of variant `name`, fitted and exported on first use in this session."""
    root = factory.getbasetemp() / "export_models" / name
    ckpt, out = root / "runs" / "version_0" / "checkpoints" / "last.ckpt", root / "export"
    if not (out / "decoder_step.onnx").exists():
        root.mkdir(parents=True, exist_ok=True)
        with pytest.MonkeyPatch.context() as mp:
            mp.chdir(root)
            flags = ["--trainer.default_root_dir", root / "runs", "--trainer.enable_model_summary", "false"]
            run_cli(["fit", *VARIANTS[name], *flags])
            run_cli(["export", "--ckpt_path", ckpt, "--output_dir", out, "--verify_samples", "32"])
    return ckpt, out


def run_python(code: str, *args: str, stdin: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """`python -c CODE ARGS` with the venv's interpreter, from the repo root."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [PYTHON, "-c", code, *args], input=stdin, capture_output=True, text=True, cwd=REPO, env=env, timeout=timeout
    )
