r"""The joint-sequence n-gram G2P baselines behind the published CMUdict figures, trained and scored on our split.

The issue's target figure (WER 24.5%, PER 5.9%) is Sequitur's (Bisani & Ney 2008) on another version and split of
CMUdict. This script trains that method, and Phonetisaurus (a WFST joint n-gram, the baseline of cmusphinx's
g2p-seq2seq), on TRAIN_FILE, decodes the sources of TEST_FILE, and scores them beside our exported model
(`--model_dir`, greedy and beam) with one scorer: WER (1 - exact match against any reference of the source) and PER,
with and without ARPAbet stress digits.

Neither tool is a dependency of lit-seq2seq; install what you compare (the script skips a tool it cannot find and
says so):
    pip install phonetisaurus        # in the dev extra: a linux x86_64 wheel with its binaries (OpenFst, MITLM)
    python3 -m venv /tmp/sequitur && /tmp/sequitur/bin/pip install numpy setuptools wheel "swig<4.1" && \
      PATH=/tmp/sequitur/bin:$PATH /tmp/sequitur/bin/pip install --no-build-isolation --no-binary :all: sequitur-g2p \
      && sed -i 's/num\.sometrue(/num.any(/' /tmp/sequitur/lib/python3*/site-packages/sequitur.py
        # then --sequitur /tmp/sequitur/bin/g2p.py. A venv of its own: it installs top-level modules named g2p, misc,
        # tool and symbols. From source, with SWIG 4.0: PyPI's wheel for Python 3.11 fails in training
        # ('SwigPyObject' object has no attribute 'thisown'), and SWIG 4.1+ cannot build it. The sed: sequitur-g2p
        # 1.0.1668.30 requires NumPy >= 2 but calls numpy.sometrue, which NumPy 2 removed, from its ramp-up to order 4.

    .venv/bin/python benchmarks/g2p_baselines.py --model_dir runs/g2p_cmudict/onnx runs/g2p_cmudict_15min/onnx \
      --sequitur /tmp/sequitur/bin/g2p.py

Training takes minutes for Phonetisaurus and hours for Sequitur's ramp-up to `--sequitur_order` (one core each);
trained models are kept in `--workdir`, in folders named by the training file's hash, and reused when the script runs
again on the same file. Sequitur holds out a random 5% of the pairs at each step (unseeded): its figures vary a little
from run to run.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from lit_seq2seq.metrics import Scores, score

try:
    from benchmarks import harness
    from benchmarks.g2p_eval import read_references
except ModuleNotFoundError:  # run as a script: its own folder, benchmarks/, is on sys.path
    import harness
    from g2p_eval import read_references

PAD, EOS = 0, 1


def score_texts(predictions: list[str], references: list[list[str]], ignore_stress: bool = False) -> Scores:
    """Score space-separated predictions against each source's references (one list per source), as `test` and
    `decode` do; with `ignore_stress`, trailing stress digits are stripped from every token first (AH1 -> AH)."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} sources")
    vocab: dict[str, int] = {}

    def ids(text: str) -> list[int]:
        tokens = [t.rstrip("012") for t in text.split()] if ignore_stress else text.split()
        return [vocab.setdefault(t, len(vocab) + 2) for t in tokens]  # 0 and 1 are PAD and EOS

    pred = [ids(p) for p in predictions]
    refs = [[ids(r) for r in rs] for rs in references]
    width = 1 + max([len(p) for p in pred] + [len(r) for rs in refs for r in rs])
    pred_ids = np.full((len(pred), width), PAD, dtype=np.int64)
    ref_ids = np.full((len(refs), max(map(len, refs)), width), -1, dtype=np.int64)  # -1: slots a source lacks
    for i, (p, rs) in enumerate(zip(pred, refs)):
        pred_ids[i, : len(p) + 1] = [*p, EOS]
        for j, r in enumerate(rs):
            ref_ids[i, j] = PAD
            ref_ids[i, j, : len(r) + 1] = [*r, EOS]
    return score(pred_ids, ref_ids, EOS, PAD)


def _read_predictions(text: str, words: list[str], tool: str) -> list[str]:
    """WORD<TAB>PHONEMES lines (the first for each word) -> one prediction per word; a word without one: ''."""
    first: dict[str, str] = {}
    for line in text.splitlines():
        word, _, phonemes = line.partition("\t")
        first.setdefault(word, phonemes)
    missing = [w for w in words if w not in first]
    if missing:
        print(f"{tool}: no pronunciation for {len(missing)} words (counted wrong), e.g. {missing[:3]}")
    return [first.get(w, "") for w in words]


def _word_list(folder: Path, words: list[str]) -> Path:
    """folder/words.txt, one word a line: what both tools decode."""
    path = folder / "words.txt"
    path.write_text("".join(f"{w}\n" for w in words), encoding="utf-8")
    return path


def _folder(workdir: Path, name: str, train_file: Path) -> Path:
    """Where a baseline trained on `train_file` lives: a changed file trains anew rather than reusing a stale model."""
    digest = hashlib.sha256(train_file.read_bytes()).hexdigest()[:12]
    folder = workdir / f"{name}_{digest}"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def phonetisaurus(train_file: Path, words: list[str], workdir: Path, order: int) -> tuple[list[str], float | None]:
    """Train (unless `workdir` holds the model) and apply Phonetisaurus: EM alignment with phoneme deletions allowed
    (its CMUdict recipe), a Kneser-Ney joint n-gram of `order` (MITLM), decoded as a WFST. -> (predictions,
    training seconds, None if reused)."""
    import phonetisaurus as ps  # the pip package ships the binaries; its environment puts them on PATH

    tools = ps.guess_environment()
    env = {**os.environ, "PATH": tools["PATH"], "LD_LIBRARY_PATH": tools["LD_LIBRARY_PATH"]}
    folder = _folder(workdir, f"phonetisaurus_o{order}", train_file)
    model = folder / "train" / "model.fst"  # phonetisaurus-train writes it last
    seconds = None
    if not model.exists():
        begin = time.perf_counter()
        command = ["phonetisaurus-train", "--lexicon", str(train_file.resolve()), "--seq2_del"]
        subprocess.run(
            [*command, "--ngram_order", str(order)], cwd=folder, env=env, check=True, capture_output=True, text=True
        )
        seconds = time.perf_counter() - begin
    word_list = _word_list(folder, words)
    command = ["phonetisaurus-apply", "--model", str(model), "--word_list", str(word_list)]
    out = subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout
    return _read_predictions(out, words, "phonetisaurus"), seconds


def sequitur(train_file: Path, words: list[str], workdir: Path, order: int, g2p: str) -> tuple[list[str], float | None]:
    """Train (unless `workdir` holds the models) and apply Sequitur: a unigram graphone model, then `order` - 1
    ramp-ups, each trained to convergence on the held-out 5% Sequitur sets aside (Bisani & Ney's recipe).
    -> (predictions, training seconds, None if all reused)."""
    path = shutil.which(g2p) or (g2p if Path(g2p).is_file() else None)
    if path is None:
        raise FileNotFoundError(f"--sequitur {g2p}: no such program")
    run = [path] if os.access(path, os.X_OK) else [sys.executable, path]  # executable: its own venv's python
    folder = _folder(workdir, "sequitur", train_file)
    seconds = None
    for n in range(1, order + 1):
        model = folder / f"model-{n}"
        if model.exists():
            continue
        ramp = [] if n == 1 else ["--model", str(folder / f"model-{n - 1}"), "--ramp-up"]
        begin = time.perf_counter()
        partial = folder / f"model-{n}.partial"  # a killed run leaves no model that looks finished
        command = [*run, *ramp, "--train", str(train_file), "--devel", "5%", "--write-model", str(partial)]
        log = folder / f"train-{n}.log"
        with open(log, "w") as out:
            if subprocess.run(command, stdout=out, stderr=subprocess.STDOUT).returncode:
                raise subprocess.CalledProcessError(1, command[:2], stderr=f"its output: {log}")
        partial.rename(model)
        seconds = (seconds or 0.0) + time.perf_counter() - begin
        print(f"sequitur: model-{n} trained in {time.perf_counter() - begin:.0f} s")
    word_list = _word_list(folder, words)
    command = [*run, "--model", str(folder / f"model-{order}"), "--apply", str(word_list), "--encoding", "utf-8"]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return _read_predictions(out, words, "sequitur"), seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train_file", type=Path, default=Path("data/cmudict/train.tsv"))
    parser.add_argument("--test_file", type=Path, default=Path("data/cmudict/test.tsv"))
    parser.add_argument("--model_dir", nargs="*", default=[], help="our exports (text models) to score beside them")
    parser.add_argument("--beam_size", type=int, default=4)
    parser.add_argument("--workdir", type=Path, default=Path("runs/g2p_baselines"), help="trained baselines")
    parser.add_argument("--phonetisaurus_order", type=int, default=8, help="n-gram order; 0 skips Phonetisaurus")
    parser.add_argument("--sequitur_order", type=int, default=6, help="graphone n-gram order; 0 skips Sequitur")
    parser.add_argument("--sequitur", default=shutil.which("g2p.py") or "g2p.py", help="Sequitur's g2p.py")
    o = parser.parse_args(argv)
    for flag, least in (("beam_size", 1), ("phonetisaurus_order", 0), ("sequitur_order", 0)):
        if getattr(o, flag) < least:
            parser.error(f"--{flag} must be >= {least}, got {getattr(o, flag)}")
    for flag in ("train_file", "test_file"):
        if not getattr(o, flag).is_file():
            parser.error(f"--{flag} {getattr(o, flag)}: no such file")
    try:
        words, references = read_references(str(o.test_file), "--test_file")
    except ValueError as error:
        parser.error(str(error))
    systems: dict[str, tuple[list[str], str]] = {}  # name -> (predictions, training time)
    for model_dir in o.model_dir:
        from lit_seq2seq.runtime import OnnxSeq2Seq

        with harness.threads_pinned(1):
            model = OnnxSeq2Seq.load(model_dir, intra_op_threads=1)
            if model.text is None:
                parser.error(f"--model_dir {model_dir}: an id model; this script scores text models")
            try:  # unknown characters, lengths it was not trained on: named, as decode names them
                systems[f"{model_dir}, greedy"] = (model.translate(words), "(its fit)")
                systems[f"{model_dir}, beam {o.beam_size}"] = (model.translate(words, o.beam_size), "(its fit)")
            except ValueError as error:
                parser.error(f"--test_file {o.test_file} with --model_dir {model_dir}: {error}")
    baselines = (
        (
            "phonetisaurus",
            o.phonetisaurus_order,
            lambda: phonetisaurus(o.train_file, words, o.workdir, o.phonetisaurus_order),
        ),
        ("sequitur", o.sequitur_order, lambda: sequitur(o.train_file, words, o.workdir, o.sequitur_order, o.sequitur)),
    )
    for name, order, run in baselines:
        if order == 0:
            continue
        try:
            predictions, seconds = run()
        except (ImportError, FileNotFoundError) as error:
            print(f"{name}: skipped, not installed ({error}); see this script's docstring")
            continue
        except subprocess.CalledProcessError as error:  # its own output says why; ours would be a traceback
            detail = (error.stderr or "").strip().splitlines()[-3:] if isinstance(error.stderr, str) else []
            parser.exit(1, f"g2p_baselines: error: {name} failed: {error}\n" + "".join(f"  {d}\n" for d in detail))
        trained = "reused" if seconds is None else f"{seconds / 60:.1f} min"
        systems[f"{name}, order {order}"] = (predictions, trained)
    if not systems:
        parser.error("nothing to score: pass --model_dir, or install a baseline (see the docstring)")
    rows = []
    for name, (predictions, trained) in systems.items():
        plain, merged = score_texts(predictions, references), score_texts(predictions, references, True)
        rates = [f"{100 * x:.2f}%" for s in (plain, merged) for x in (1 - s.exact_match, s.token_error_rate)]
        rows.append([name, trained, *rates])
    print(f"{o.test_file}: {len(words)} sources, {sum(map(len, references))} references; trained on {o.train_file}")
    harness.table("error rates", ["system", "training", "WER", "PER", "WER, no stress", "PER, no stress"], rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
