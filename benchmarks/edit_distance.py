"""Multi-reference scoring speed: metrics.score (vectorised numpy edit distance) against torchmetrics' edit distance.

A G2P-sized evaluation batch: 256 sources, references of 3-14 tokens (mean about 8) over 69 phoneme ids, 10% of the
sources with a second reference (about 1.1 a source), predictions a reference with about 10% of its tokens
substituted, dropped or doubled. Contenders, interleaved (benchmarks/harness.py), median time per batch:

  * metrics.score: the padded id arrays in, exact/errors/length per source out (what validation and decode run).
  * torchmetrics: the same result through `torchmetrics.functional.text.edit_distance` (its inputs are strings, so
    ids become characters first), one call over every present (prediction, reference) pair, then the closest per row.
  * torchmetrics distance only: that call on strings built beforehand (its floor).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/edit_distance.py [--batch 256] [--rounds 30] [--clock cpu]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness import CLOCKS, interleaved, load_after, load_before, medians, spread, table, versions  # noqa: E402
from lit_seq2seq.metrics import score  # noqa: E402

EOS, SYMBOLS, WIDTH = 1, 69, 16


def g2p_batch(batch: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(predictions (B, WIDTH + 2), references (B, 2, WIDTH)) laid out as the module's: tokens, end, 0; absent -1."""
    rng = np.random.default_rng(seed)
    references = np.full((batch, 2, WIDTH), -1, dtype=np.int64)
    predictions = np.zeros((batch, WIDTH + 2), dtype=np.int64)
    for b in range(batch):
        for r in range(1 + (rng.random() < 0.1)):
            tokens = rng.integers(2, 2 + SYMBOLS, rng.integers(3, 15))
            references[b, r] = np.pad(np.append(tokens, EOS), (0, WIDTH - len(tokens) - 1))
        out = []
        for t in references[b, 0, : list(references[b, 0]).index(EOS)]:
            u = rng.random()
            out += [] if u < 0.03 else [t, t] if u < 0.06 else [rng.integers(2, 2 + SYMBOLS)] if u < 0.1 else [t]
        out = out[: WIDTH + 1]
        predictions[b, : len(out) + 1] = [*out, EOS]
    return predictions, references


def as_text(tokens: np.ndarray) -> str:
    return "".join(chr(0x100 + int(t)) for t in tokens)


def torchmetrics_score(predictions: np.ndarray, references: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(errors, length) per row via torchmetrics, the closest reference (first on ties) as metrics.score picks it."""
    from torchmetrics.functional.text import edit_distance

    pairs, texts = [], []
    for b in range(len(predictions)):
        p = as_text(predictions[b, : list(predictions[b]).index(EOS)])
        for ref in references[b]:
            if ref[0] != -1:
                pairs.append(b)
                texts.append((p, as_text(ref[: list(ref).index(EOS)])))
    d = edit_distance([p for p, _ in texts], [r for _, r in texts], reduction="none").numpy()
    errors, length = np.full(len(predictions), 1 << 30), np.zeros(len(predictions), dtype=np.int64)
    for i, b in enumerate(pairs):
        if d[i] < errors[b]:
            errors[b], length[b] = d[i], len(texts[i][1])
    return errors, length


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--clock", choices=sorted(CLOCKS), default="wall")
    o = p.parse_args()
    import torch
    from torchmetrics.functional.text import edit_distance

    torch.set_num_threads(1)
    predictions, references = g2p_batch(o.batch)
    present = int((references[..., 0] != -1).sum())
    ours = score(predictions, references, EOS)
    errors, length = torchmetrics_score(predictions, references)
    assert (ours.errors == errors).all() and (ours.length == length).all(), "the two disagree"
    built = [(as_text(predictions[b, : list(predictions[b]).index(EOS)]), as_text(ref[: list(ref).index(EOS)]))
             for b in range(o.batch) for ref in references[b] if ref[0] != -1]  # fmt: skip
    contenders = {
        "metrics.score (numpy)": lambda: score(predictions, references, EOS),
        "torchmetrics (ids -> strings -> edit_distance)": lambda: torchmetrics_score(predictions, references),
        "torchmetrics edit_distance only": lambda: edit_distance(*zip(*built), reduction="none"),
    }
    before = load_before()
    seconds, _ = interleaved(contenders, o.rounds, warmup=2, clock=CLOCKS[o.clock])
    load_after(before)
    med = medians(seconds)
    base = med["metrics.score (numpy)"]
    print(
        f"{versions()}; batch {o.batch} sources, {present} references, mean reference length {length.mean():.1f}, "
        f"exact {ours.exact_match:.0%}, TER {ours.token_error_rate:.3f}; clock {o.clock}"
    )
    rows = [[name, f"{med[name] * 1e3:.2f}", spread(seconds[name], 1e3), f"{med[name] / base:.1f}x"] for name in med]
    table(f"time per batch, median of {o.rounds} rounds", ["contender", "ms", "min-max", "vs numpy"], rows)


if __name__ == "__main__":
    main()
