"""lit-seq2seq: encoder-decoder RNNs in Lightning, exported to two ONNX graphs, decoded with onnxruntime alone.

Importing the package loads neither torch nor lightning: `lit_seq2seq.runtime` must work without them. The names
below are each imported from its module when first used (`from lit_seq2seq import OnnxSeq2Seq` loads no torch).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# name -> the module it lives in; each also importable from there
_EXPORTS = {
    "OnnxSeq2Seq": "runtime",  # numpy + onnxruntime only
    "NetConfig": "model",
    "Seq2Seq": "model",
    "Seq2SeqModule": "module",
    "Seq2SeqDataModule": "data",
    "PairDataModule": "pairs",
    "EMAWeightAveraging": "callbacks",
    "export_checkpoint": "export",
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'lit_seq2seq' has no attribute {name!r}")
    try:
        module = importlib.import_module(f"lit_seq2seq.{_EXPORTS[name]}")
    except ImportError as error:  # a base install (numpy + onnxruntime) importing a training class
        raise ImportError(f"lit_seq2seq.{name} needs the training extra ({error}): {install_hint('train')}") from error
    return getattr(module, name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


def install_hint(extra: str) -> str:
    """How to add an extra (train, report, ...): the README's two ways to install, as the package is not on PyPI
    (`pip install 'lit-seq2seq[train]'` finds nothing)."""
    return (
        f"pip install 'PATH/lit_seq2seq-{__version__}-py3-none-any.whl[{extra}]' from a wheel, "
        f"or pip install -e '.[{extra}]' in a checkout of the repository"
    )
