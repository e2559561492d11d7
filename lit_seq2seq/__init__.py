"""lit-seq2seq: encoder-decoder RNNs in Lightning, exported to two ONNX graphs, decoded with onnxruntime alone.

Importing the package loads neither torch nor lightning: `lit_seq2seq.runtime` must work without them.
"""

__version__ = "0.1.0"
