"""The runtime installs alone: the sdist and wheel built from this checkout, installed without extras into a fresh venv
(numpy + onnxruntime only, no torch), decode an exported model as the dev venv does; the train commands there name the
extra; the wheel carries the configs and the contract document.

Builds offline (setuptools of the dev venv, no build isolation); the fresh venv gets numpy and onnxruntime from pip's
configured index/wheel folder, as scripts/setup.sh does. Measured 14.5 s for the file here (2 busy cores), most of it
the venv and its pip install: in the default suite.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import PYTHON, REPO, TRAIN_EXTRA_HINT, pad_rows

from lit_seq2seq.runtime import OnnxSeq2Seq

# What the build reads: the package, the files it ships as package data, and the metadata.
SOURCES = ("lit_seq2seq", "configs", "export", "pyproject.toml", "README.md", "LICENSE")
JUNK = shutil.ignore_patterns("__pycache__", "*.pyc", "node_modules", "*.egg-info")


def run(*cmd: str | Path, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, cwd=cwd, env=env, timeout=600)


def ok(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """checkout -> sdist -> wheel, as a user building from the sdist gets it."""
    tmp = tmp_path_factory.mktemp("build")
    source = tmp / "source"
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name, ignore=JUNK)
        else:
            shutil.copy(REPO / name, source / name)
    code = "import sys; from setuptools import build_meta as b; print(b.build_sdist(sys.argv[1]))"
    sdist = tmp / "dist" / ok(run(PYTHON, "-c", code, tmp / "dist", cwd=source)).split()[-1]
    ok(run(PYTHON, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", tmp / "dist", sdist, cwd=tmp))
    (built,) = (tmp / "dist").glob("lit_seq2seq-*.whl")
    return built


@pytest.fixture(scope="module")
def runtime_venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the wheel installed without extras; returns its bin/ folder."""
    venv = tmp_path_factory.mktemp("runtime") / "venv"
    ok(run(sys._base_executable, "-m", "venv", venv, cwd=venv.parent))
    ok(
        run(
            venv / "bin" / "python",
            "-m",
            "pip",
            "install",
            "-q",
            "-c",
            REPO / "constraints.txt",
            wheel,
            cwd=venv.parent,
        )
    )
    return venv / "bin"


def in_venv(bin_dir: Path, *cmd: str | Path, stdin: str | None = None) -> subprocess.CompletedProcess:
    # Away from the checkout and without PYTHONPATH, so only the installed wheel can be imported.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PATH": f"{bin_dir}:{os.environ['PATH']}"}
    return subprocess.run(
        [str(c) for c in cmd], input=stdin, capture_output=True, text=True, cwd=bin_dir, env=env, timeout=300
    )


def test_wheel_ships_the_configs_and_the_contract(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = {p.relative_to(REPO).as_posix() for p in (REPO / "configs").rglob("*.yaml")}
    assert {f"lit_seq2seq/{c}" for c in configs} <= names and "lit_seq2seq/configs/trainer/gpu.yaml" in names
    assert zipfile.ZipFile(wheel).read("lit_seq2seq/contract_doc/README.md") == (REPO / "export/README.md").read_bytes()
    assert "lit_seq2seq/py.typed" in names and any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert not [n for n in names if "/contract_doc/" in n and not n.endswith(("README.md", "consumer_example.py"))]
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("METADATA"))).decode()
    requires = [line for line in metadata.split("\n") if line.startswith("Requires-Dist:") and "extra ==" not in line]
    assert requires == ["Requires-Dist: numpy>=1.24", "Requires-Dist: onnxruntime>=1.17"]


def test_runtime_venv_has_no_torch_and_decodes_as_the_dev_venv(runtime_venv: Path, exported) -> None:
    missing = "import importlib.util as u; print([m for m in ('torch', 'lightning', 'onnx') if u.find_spec(m) is None])"
    assert ok(in_venv(runtime_venv, "python", "-c", missing)).strip() == "['torch', 'lightning', 'onnx']"
    model_dir = exported("copy_trained").model_dir
    # sample (numpy-only tasks) and decode, as the installed command of the runtime venv.
    lines = ok(in_venv(runtime_venv, "lit-seq2seq", "sample", "--model_dir", model_dir, "-n", "40")).splitlines()
    sources = [line.split("\t")[0] for line in lines]
    assert len(sources) == 40
    reference = OnnxSeq2Seq.load(model_dir)
    tokens = reference.greedy(pad_rows([[int(t) for t in s.split()] for s in sources]))
    expected = [" ".join(map(str, reference.strip(row))) for row in tokens.tolist()]
    decoded = ok(in_venv(runtime_venv, "lit-seq2seq", "decode", "--model_dir", model_dir, stdin="\n".join(sources)))
    assert decoded.splitlines() == expected
    code = (
        "import sys, numpy as np; from lit_seq2seq.runtime import OnnxSeq2Seq\n"
        "m = OnnxSeq2Seq.load(sys.argv[1]); assert 'torch' not in sys.modules\n"
        "print(np.asarray(m.greedy(np.load(sys.argv[2]))).tolist())"
    )
    np.save(runtime_venv.parent / "sources.npy", pad_rows([[int(t) for t in s.split()] for s in sources]))
    done = in_venv(runtime_venv, "python", "-c", code, model_dir, runtime_venv.parent / "sources.npy")
    assert ok(done).strip() == str(tokens.tolist())


def test_runtime_venv_train_commands_name_the_extra(runtime_venv: Path) -> None:
    for command in ("fit", "export"):
        done = in_venv(runtime_venv, "lit-seq2seq", command, "--config", "reverse_fast")
        assert done.returncode == 2
        assert done.stderr == (
            f"lit-seq2seq {command}: needs the training extra (missing: torch, lightning, jsonargparse, torchmetrics, "
            f"onnx): {TRAIN_EXTRA_HINT}\n"
        )


def test_runtime_venv_finds_the_bundled_files(runtime_venv: Path) -> None:
    code = (
        "from lit_seq2seq import bundled\n"
        "print(bundled.resolve_config('trainer/gpu'), bundled.contract_path(), len(bundled.config_names()))"
    )
    gpu, contract, count = ok(in_venv(runtime_venv, "python", "-c", code)).split()
    assert (
        "site-packages/lit_seq2seq/configs/trainer/gpu.yaml" in gpu
        and Path(gpu).read_bytes() == (REPO / "configs/trainer/gpu.yaml").read_bytes()
    )
    assert Path(contract).read_bytes() == (REPO / "export/README.md").read_bytes()
    assert int(count) == len(list((REPO / "configs").rglob("*.yaml")))
