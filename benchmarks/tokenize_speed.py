"""Tokenizing a large pair file: lit_seq2seq.pairfiles (vectorised, cold and cached) against the plain Python way.

Generates a G2P-like TSV (default 5,000,000 lines: a word of 2-15 letters, TAB, one of 40 phoneme symbols per letter,
space-separated) in a temporary folder, then tokenizes it into id arrays three ways, each in a fresh subprocess so
that its peak memory is its own:

  * ours, cold: `pairfiles.read_pairs` (sha256, UTF-8 decode, whole-file NFC, numpy over code points; source `char`,
    target `space`) writing its cache beside the file, then the vocabularies (`Vocab.build`) and the ids
    (`to_vocab_ids`);
  * ours, cached: the same call once the cache exists (sha256 + loading the arrays) and the same id mapping;
  * plain: a per-line loop, `line.split("\\t")`, NFC per field, `list(source)` / `target.split()` and a dict lookup
    per token (ids by first appearance) into lists of lists.

Time is wall-clock inside the worker (process start and imports excluded); memory is the worker's peak RSS
(ru_maxrss) minus its RSS after the imports, i.e. what the work itself added at its peak. Run:

    .venv/bin/python benchmarks/tokenize_speed.py                 # 5,000,000 lines
    .venv/bin/python benchmarks/tokenize_speed.py --lines 200000  # a quick look
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import unicodedata
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from lit_seq2seq.pairfiles import cache_dir, read_pairs, to_vocab_ids  # noqa: E402
from lit_seq2seq.text import Tokenizer, Vocab  # noqa: E402

PHONEMES = [f"P{i}" for i in range(40)]


def generate(path: Path, lines: int, seed: int = 0) -> None:
    """`lines` pairs, written in chunks (numpy draws the letters and symbols)."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    with open(path, "w", encoding="utf-8") as out:
        for start in range(0, lines, 100_000):
            n = min(100_000, lines - start)
            lengths = rng.integers(2, 16, n)
            chars = letters[rng.integers(0, 26, int(lengths.sum()))]
            symbols = np.array(PHONEMES)[rng.integers(0, 40, int(lengths.sum()))]
            ends = np.cumsum(lengths)
            out.writelines(
                f"{''.join(chars[e - k : e])}\t{' '.join(symbols[e - k : e])}\n"
                for e, k in zip(ends.tolist(), lengths.tolist(), strict=True)
            )


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def ours(path: Path) -> dict[str, int]:
    source, target = Tokenizer("char"), Tokenizer("space")
    pairs = read_pairs(path, source, target, flag="--data.train_file")
    vocabs = [Vocab.build(str(t) for t in side.table) for side in (pairs.source, pairs.target)]
    ids = [to_vocab_ids(side, v, str) for side, v in zip((pairs.source, pairs.target), vocabs, strict=True)]
    return {"rows": len(pairs), "source_tokens": len(ids[0]), "target_tokens": len(ids[1])}


def plain(path: Path) -> dict[str, int]:
    source_vocab: dict[str, int] = {}
    target_vocab: dict[str, int] = {}
    sources: list[list[int]] = []
    targets: list[list[int]] = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            src, tgt = line.rstrip("\n").split("\t")
            src = unicodedata.normalize("NFC", src)
            tgt = unicodedata.normalize("NFC", tgt)
            sources.append([source_vocab.setdefault(c, len(source_vocab) + 2) for c in src])
            targets.append([target_vocab.setdefault(t, len(target_vocab) + 2) for t in tgt.split()])
    return {"rows": len(sources), "source_tokens": sum(map(len, sources)), "target_tokens": sum(map(len, targets))}


def worker(name: str, path: Path) -> None:
    base = _rss_mb()
    start = time.perf_counter()
    counts = (plain if name == "plain" else ours)(path)
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "peak_mb": _rss_mb() - base, "base_mb": base, **counts}))


def run_worker(name: str, path: Path) -> dict:
    done = subprocess.run(
        [sys.executable, __file__, "--worker", name, "--file", str(path)], capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=5_000_000)
    parser.add_argument("--worker", choices=["ours", "plain"], help=argparse.SUPPRESS)
    parser.add_argument("--file", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.file)
        return
    folder = Path(tempfile.mkdtemp(prefix="tokenize_speed_"))
    try:
        path = folder / "pairs.tsv"
        start = time.perf_counter()
        generate(path, args.lines)
        size = path.stat().st_size / 1e6
        print(f"{args.lines:,} lines, {size:.0f} MB, generated in {time.perf_counter() - start:.1f} s: {path}")
        results = {"ours, cold (tokenize + write cache)": run_worker("ours", path)}
        cached = sum(p.stat().st_size for p in cache_dir(path).glob("*.npz")) / 1e6
        results["ours, cached"] = run_worker("ours", path)
        results["plain Python loop"] = run_worker("plain", path)
        counts = {(r["rows"], r["source_tokens"], r["target_tokens"]) for r in results.values()}
        assert len(counts) == 1, f"the contenders disagree on what they tokenized: {counts}"
        plain_s, plain_mb = results["plain Python loop"]["seconds"], results["plain Python loop"]["peak_mb"]
        print(f"{'':38} {'seconds':>8} {'peak MB':>8} {'time vs plain':>14} {'memory vs plain':>16}")
        for name, r in results.items():
            ratio = f"{r['seconds'] / plain_s:.3f}x"
            memory = f"{r['peak_mb'] / plain_mb:.2f}x"
            print(f"{name:38} {r['seconds']:8.2f} {r['peak_mb']:8.0f} {ratio:>14} {memory:>16}")
        rows, src, tgt = counts.pop()
        print(f"{rows:,} rows, {src:,} source and {tgt:,} target tokens; cache {cached:.0f} MB beside the file")
        print(
            f"plain / ours: {plain_s / results['ours, cold (tokenize + write cache)']['seconds']:.1f}x cold, "
            f"{plain_s / results['ours, cached']['seconds']:.1f}x cached"
        )
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
