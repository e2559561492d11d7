"""What one unknown source token costs text models, side by side: exact match and token error rate on pair-file words
with one letter replaced by a letter no model saw (default `é`), beside the same words unchanged.

Made for `--data.unknown_source unk`: one export fitted with `--data.unk_rate 0.01` (the default: `<unk>` learned
in training), one with `--data.unk_rate 0` (its embedding as initialised). The words: the distinct sources of --file
with at least --min_length letters, the first --count of them after a seeded shuffle, each with one random
non-apostrophe position replaced (seeded: every model gets the same words). Scored against the word's references,
as `decode` scores a file. Untrained lengths are allowed (a replaced word keeps its length).

    .venv/bin/python benchmarks/unknown_letter.py --model_dir DIR_UNK DIR_NO_UNK --file data/cmudict/test.tsv
"""

from __future__ import annotations

import argparse
import random
import sys

try:
    from benchmarks import g2p_baselines, g2p_eval, harness
except ModuleNotFoundError:  # run as a script: its own folder, benchmarks/, is on sys.path
    import g2p_baselines
    import g2p_eval
    import harness

from lit_seq2seq.runtime import OnnxSeq2Seq


def replaced(sources: list[str], letter: str, count: int, min_length: int, seed: int) -> list[tuple[int, str]]:
    """(index into sources, the source with one letter replaced by `letter`) for `count` seeded picks."""
    rng = random.Random(seed)
    picks = [i for i, s in enumerate(sources) if len(s) >= min_length and s.replace("'", "")]
    rng.shuffle(picks)
    out = []
    for i in picks[:count]:
        positions = [k for k, c in enumerate(sources[i]) if c != "'"]
        k = rng.choice(positions)
        out.append((i, sources[i][:k] + letter + sources[i][k + 1 :]))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model_dir", nargs="+", required=True, help="exports of text models with <unk>")
    parser.add_argument("--file", required=True, help="SOURCE<TAB>REFERENCE lines, e.g. data/cmudict/test.tsv")
    parser.add_argument("--letter", default="é", help="the unknown letter (default é)")
    parser.add_argument("--count", type=int, default=2000, help="words (default 2000)")
    parser.add_argument("--min_length", type=int, default=4, help="shortest word used, in letters (default 4)")
    parser.add_argument("--seed", type=int, default=5)
    o = parser.parse_args(argv)
    if o.count < 1 or o.min_length < 1 or len(o.letter) != 1:
        parser.error("--count and --min_length must be >= 1, --letter one character")
    try:
        sources, references = g2p_eval.read_references(o.file)
        picks = replaced(sources, o.letter, o.count, o.min_length, o.seed)
        rows = []
        for model_dir in o.model_dir:
            model = OnnxSeq2Seq.load(model_dir)
            if model.text is None or not model.text.source_vocab.has_unk:
                raise ValueError(f"--model_dir {model_dir}: not a text model with <unk> (--data.unknown_source unk)")
            refs = [references[i] for i, _ in picks]
            for name, texts in (("replaced", [t for _, t in picks]), ("unchanged", [sources[i] for i, _ in picks])):
                s = g2p_baselines.score_texts(model.translate(texts, allow_untrained_lengths=True), refs)
                rows.append([model_dir, name, f"{100 * s.exact_match:.2f}%", f"{100 * s.token_error_rate:.2f}%"])
    except (ValueError, OSError) as error:
        print(f"unknown_letter: error: {error}", file=sys.stderr)
        return 2
    title = f"{len(picks)} words of {o.file}, one letter replaced by {o.letter!r} (seed {o.seed}), and unchanged"
    harness.table(title, ["model", "words", "exact match", "token error rate"], rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
