"""lit-seq2seq: encoder-decoder RNNs in Lightning, exported to two ONNX graphs, decoded with onnxruntime alone.

Importing the package loads neither torch nor lightning: `lit_seq2seq.runtime` must work without them.
"""

__version__ = "0.1.0"


def install_hint(extra: str) -> str:
    """How to add an extra (train, report, ...): the README's two ways to install, as the package is not on PyPI
    (`pip install 'lit-seq2seq[train]'` finds nothing)."""
    return (
        f"pip install 'PATH/lit_seq2seq-{__version__}-py3-none-any.whl[{extra}]' from a wheel, "
        f"or pip install -e '.[{extra}]' in a checkout of the repository"
    )
