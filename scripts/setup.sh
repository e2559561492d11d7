#!/usr/bin/env bash
# Create .venv and install lit-seq2seq with its dev extras (train + report + test tools), pinned to the CPU build of
# torch (constraints.txt). The base install (`pip install lit-seq2seq`) is the runtime alone: numpy + onnxruntime.
set -euo pipefail
cd "$(dirname "$0")/.."
# Python 3.11 first: the CPU torch wheel that constraints.txt pins is a cp311 one on these machines
python=${PYTHON:-$(command -v python3.11 || command -v python3)}
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
    echo "setup.sh: lit-seq2seq needs Python >= 3.10; $python is $("$python" -V 2>&1) (set PYTHON=/path/to/python3.11)" >&2
    exit 1
fi
# An existing .venv is reused only if it runs and is of this Python (after a Python upgrade or removal its
# interpreter link is dead, and `python -m venv` would leave it so)
version='import sys; print(sys.version_info[:2])'
if [ -e .venv ] && [ "$(.venv/bin/python -c "$version" 2>/dev/null)" != "$("$python" -c "$version")" ]; then
    echo "setup.sh: .venv does not run $("$python" -V 2>&1) (a removed or other Python); making it again" >&2
    rm -rf .venv
fi
"$python" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt -e ".[dev]"
.venv/bin/python -c "import torch, lightning, onnxruntime; print('torch', torch.__version__, '| lightning', lightning.__version__, '| onnxruntime', onnxruntime.__version__)"
