#!/usr/bin/env bash
# Create .venv and install lit-seq2seq with its dev extras (train + report + test tools), pinned to the CPU build of
# torch (constraints.txt). The base install (`pip install lit-seq2seq`) is the runtime alone: numpy + onnxruntime.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt -e ".[dev]"
.venv/bin/python -c "import torch, lightning, onnxruntime; print('torch', torch.__version__, '| lightning', lightning.__version__, '| onnxruntime', onnxruntime.__version__)"
