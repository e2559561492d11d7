"""pairfiles: reading TSV / JSON Lines pair files, errors naming file:line, tokens equal to text.Tokenizer's per-line
semantics, and the tokenized-array cache beside the file (hit, miss on a changed file or setting, unwritable)."""

from __future__ import annotations

import errno
import json
import logging
import os
import random
import re
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest

from lit_seq2seq import pairfiles
from lit_seq2seq.pairfiles import cache_dir, pad_rows, read_pairs, to_vocab_ids
from lit_seq2seq.pairs import PairDataModule
from lit_seq2seq.text import Tokenizer, Vocab

CHAR, SPACE = Tokenizer("char"), Tokenizer("space")


def write(path: Path, text: str | bytes) -> Path:
    if isinstance(text, str):
        path.write_text(text, encoding="utf-8", newline="")
    else:
        path.write_bytes(text)
    return path


def rows(pairs: pairfiles.PairFile) -> list[tuple[list[str], list[str]]]:
    return [(pairs.source.tokens(i), pairs.target.tokens(i)) for i in range(len(pairs))]


# ----------------------------------------------------------------------------------------- tokenization


def test_tsv_char_and_space_tokens_line_numbers_crlf_bom_and_blank_lines(tmp_path):
    path = write(tmp_path / "a.tsv", "\ufeffHello\tHH AH0  L OW1\r\n\nwörld\tW ER1 L D\n\n")
    pairs = read_pairs(path, Tokenizer("char", lowercase=True), SPACE, cache=False)
    assert rows(pairs) == [(list("hello"), ["HH", "AH0", "L", "OW1"]), (list("wörld"), ["W", "ER1", "L", "D"])]
    assert pairs.lines.tolist() == [1, 3]  # the blank line 2 is skipped, the numbers stay the file's
    assert pairs.where(1) == f"--data.file {path}:3"


def test_nfc_composed_and_decomposed_input_give_the_same_tokens(tmp_path):
    composed, decomposed = "caf\u00e9\tk a f e\n", "cafe\u0301\tk a f e\n"
    a = read_pairs(write(tmp_path / "a.tsv", composed), CHAR, SPACE, cache=False)
    b = read_pairs(write(tmp_path / "b.tsv", decomposed), CHAR, SPACE, cache=False)
    assert rows(a) == rows(b) == [(["c", "a", "f", "\u00e9"], ["k", "a", "f", "e"])]


# Characters whose lowercasing or normalisation is context- or length-changing: final sigma, dotted capital I (two
# code points lowercased), sharp s, Hangul jamo composing, combining marks after a tab, unusual whitespace.
TRICKY = ["ΣΟΦΟΣ", "İstanbul", "STRAẞE", "\u1100\u1161", "\u0301x", "a\u00a0b", "x\u3000y z", "ǅ", "Ⅻ", "ﬁ", "𝔘"]


@pytest.mark.parametrize("source_kind", ["char", "space"])
@pytest.mark.parametrize("lowercase", [False, True])
def test_vectorised_tokens_equal_per_line_tokenizer_split(tmp_path, source_kind, lowercase):
    rng = random.Random(3)
    alphabet = "".join(TRICKY) + "abc ABC éÉ\u0301\u0327"
    lines = [rng.choice(TRICKY) + "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 8))) for _ in range(300)]
    lines = [line.strip() for line in lines if line.strip() and "\t" not in line]  # edges: refused for char sides
    text = "".join(f"{line}\t{line[::-1]}x\n" for line in lines)
    source, target = Tokenizer(source_kind, lowercase), Tokenizer("char", not lowercase)
    pairs = read_pairs(write(tmp_path / "t.tsv", text), source, target, cache=False)
    assert rows(pairs) == [(source.split(s), target.split(s[::-1] + "x")) for s in lines]


@pytest.mark.parametrize(
    "text,message",
    [
        ("cat\tK AE1 T\nowl \tAW1 L\n", ":2: whitespace (U+0020) at the end of the source; the char tokenizer would"),
        (
            "cat \tK AE1 T\nowl\tAW1 L\n" + "ox \tAA1 K S\n" * 6,
            ":1: whitespace (U+0020) at the end of the source (lines 1, 3, 4, 5, 6, ...: 7 in all); the",
        ),
        ("cat\tK AE1 T\n\u3000owl\tAW1 L\n", ":2: whitespace (U+3000) at the start of the source"),
        ('{"source": "owl", "target": "AW1 L\\u00a0"}\n', ":1: whitespace (U+00A0) at the end of the target"),
        # `cat a.tsv b.tsv` of two files saved with a BOM: the second one's is inside the text
        ("cat\tK AE1 T\n\ufeffowl\tAW1 L\n", ":2: a byte order mark (U+FEFF) in the source at character 1 (files"),
        ("cat\tK AE1 T\nowl\tAW1\ufeff L\n", ":2: a byte order mark (U+FEFF) in the target at character 4"),
    ],
    ids=[
        "trailing-space",
        "all-lines-named",
        "leading-ideographic-space",
        "jsonl-target-nbsp",
        "bom-source",
        "bom-target",
    ],
)
def test_invisible_characters_that_would_become_tokens_are_refused_naming_the_line(tmp_path, text, message):
    """A char side's stray edge space, or a BOM anywhere, was learned as a token that no one types at decode time."""
    target = CHAR if text.startswith("{") else SPACE  # the JSON case: a char target
    path = write(tmp_path / ("p.jsonl" if text.startswith("{") else "p.tsv"), text)
    with pytest.raises(ValueError, match=re.escape(f"--data.file {path}{message}")):
        read_pairs(path, CHAR, target, cache=False)


def test_spaces_inside_a_char_side_and_at_a_space_sides_edges_are_kept_as_before(tmp_path):
    path = write(tmp_path / "p.tsv", "new york\t N UW1  Y AO1 R K \n")
    assert rows(read_pairs(path, CHAR, SPACE, cache=False)) == [(list("new york"), "N UW1 Y AO1 R K".split())]


def test_files_to_predict_may_hold_sources_alone_and_other_files_may_not(tmp_path):
    path = write(tmp_path / "p.tsv", "cat\nhello\tHH AH0 L OW1\r\ndog\r\n")
    pairs = read_pairs(path, CHAR, SPACE, flag="--data.predict_file", sources_alone=True)
    assert rows(pairs) == [(list("cat"), []), (list("hello"), ["HH", "AH0", "L", "OW1"]), (list("dog"), [])]
    assert pairs.lines.tolist() == [1, 2, 3]
    with pytest.raises(ValueError, match=rf"--data.test_file {re.escape(str(path))}:1: no tab"):
        read_pairs(path, CHAR, SPACE, flag="--data.test_file")  # not from the cache the first read wrote
    assert rows(read_pairs(path, CHAR, SPACE, sources_alone=True)) == rows(pairs)  # from that cache
    jsonl = write(tmp_path / "p.jsonl", '{"source": "cat"}\n{"source": "dog", "target": "D AO1 G"}\n')
    assert rows(read_pairs(jsonl, CHAR, SPACE, sources_alone=True)) == [
        (list("cat"), []),
        (list("dog"), ["D", "AO1", "G"]),
    ]
    with pytest.raises(ValueError, match=r'p.jsonl:1: missing key "target"'):
        read_pairs(jsonl, CHAR, SPACE, cache=False)
    # a target that is given must still have tokens; more than one tab is still refused
    for text, error in (
        ("cat\t\n", "empty target"),
        ("cat\t  \n", r"empty target \(no tokens\)"),
        ("a\tb\tc\n", "2 tabs"),
    ):
        with pytest.raises(ValueError, match=rf"q.tsv:1: {error}"):
            read_pairs(write(tmp_path / "q.tsv", text), CHAR, SPACE, cache=False, sources_alone=True)


def test_jsonl_reads_the_same_pairs_as_tsv(tmp_path):
    data = [("héllo", "h e l l o"), ("a b", "x")]  # (a tab inside a JSON value is refused: tab.jsonl below)
    jsonl = "\n".join(json.dumps({"source": s, "target": t, "extra": 1}) for s, t in data) + "\n"
    pairs = read_pairs(write(tmp_path / "p.jsonl", jsonl), CHAR, SPACE, cache=False)
    assert rows(pairs) == [(CHAR.split(s), SPACE.split(t)) for s, t in data]


# ----------------------------------------------------------------------------------------- bad files


def bad_file_cases() -> list[tuple[str, bytes, str]]:
    """(file name, contents, expected message after "FLAG PATH")."""
    return [
        ("empty.tsv", b"", ": the file is empty"),
        ("blank.tsv", b"\n \n", ": the file is empty"),
        ("notab.tsv", b"a\tb\nab c\n", ":2: no tab; each line must be source<TAB>target"),
        ("twotabs.tsv", b"a\tb\tc\n", ":1: 2 tabs"),
        ("mac.tsv", b"a\tb\rc\td\re\tf\r", ":1: 3 tabs; its lines end with a lone carriage return (CR): save the file"),
        ("nosource.tsv", b"a\tb\n\tb\n", ":2: empty source"),
        ("notarget.tsv", b"a\tb\nc\t\r\n", ":2: empty target"),
        ("spacetarget.tsv", b"a\tb\nc\t  \n", ":2: empty target (no tokens)"),
        ("utf8.tsv", b"a\tb\nc\td\nd\xe9\tx\n", ":3: invalid UTF-8 (byte 0xe9)"),
        ("utf16.tsv", "a\tb\n".encode("utf-16"), ":1: invalid UTF-8 (byte 0xff) (a UTF-16 byte order mark); save the"),
        ("json.jsonl", b'{"source": "a", "target": "b"}\n{"source": "a",\n', ":2: bad JSON"),
        ("key.jsonl", b'{"source": "a"}\n', ':1: missing key "target"'),
        ("keys.jsonl", b'{"src": "a", "tgt": "b"}\n', ':1: missing key "source" (it has "src", "tgt"; the keys'),
        (
            "array.json",
            b'[\n  {"source": "a", "target": "b"}\n]\n',
            ":1: bad JSON (Expecting value at column 2); JSON Lines: one",
        ),
        (
            "tsv.json",
            b"a\tb\n",
            ":1: bad JSON (Expecting value at column 1); .jsonl and .json files are read as JSON Lines (source<TAB>",
        ),
        ("twice.jsonl", b'{"source": "a", "target": "b", "target": "c"}\n', ':1: the key "target" appears twice'),
        ("type.jsonl", b'{"source": 3, "target": "b"}\n', ':1: "source" must be a string, got 3'),
        ("null.jsonl", b'{"source": "a", "target": null}\n', ':1: "target" must be a string, got null'),
        ("bool.jsonl", b'{"source": true, "target": "b"}\n', ':1: "source" must be a string, got true'),
        ("list.jsonl", b'["a", "b"]\n', ":1: expected a JSON object"),
        ("emptyvalue.jsonl", b'{"source": "", "target": "b"}\n', ":1: empty source"),
        ("newline.jsonl", b'{"source": "a\\nb", "target": "b"}\n', ":1: the source holds a line break"),
        # control characters: the runtime refuses them in a text, so a model must not learn them
        ("bel.tsv", b"ab\tx\nc\x07d\tx\n", ":2: control character U+0007 in the source at character 2; texts must"),
        ("nul.tsv", b"ab\tx\ncd\txy\x00\n", ":2: control character U+0000 in the target at character 3"),
        ("cr.tsv", b"ab\tx\r\nc\rd\tx\r\n", ":2: control character U+000D in the source at character 2"),
        ("c1.tsv", "ab\tx\n\n\u00e9\u0085\tx\n".encode(), ":3: control character U+0085 in the source at character 2"),
        (
            "tab.jsonl",
            b'{"source": "a\\tb", "target": "b"}\n',
            ":1: control character U+0009 in the source at character 2",
        ),
        ("surrogate.jsonl", b'{"source": "a", "target": "\\ud800"}\n', ":1: lone surrogate U+D800 in the target at"),
        ("pairs.csv", b"a,b\n", ": unknown pair file type '.csv'"),
        ("missing.tsv", None, ": no such file"),
    ]


@pytest.mark.parametrize("name, contents, message", bad_file_cases(), ids=[c[0] for c in bad_file_cases()])
def test_bad_file_is_a_value_error_naming_flag_file_and_line(tmp_path, name, contents, message):
    path = tmp_path / name
    if contents is not None:
        path.write_bytes(contents)
    with pytest.raises(ValueError) as info:
        read_pairs(path, CHAR, SPACE, flag="--data.val_file")
    assert str(info.value).startswith(f"--data.val_file {path}{message}"), str(info.value)
    assert not cache_dir(path).exists()  # nothing cached for a bad file


def test_a_missing_cmudict_split_says_how_to_write_it(tmp_path):
    # The G2P configs read data/cmudict/*.tsv, which a fresh clone lacks; other missing files get no such hint.
    path = tmp_path / "cmudict" / "val.tsv"
    with pytest.raises(ValueError) as info:
        read_pairs(path, CHAR, SPACE, flag="--data.val_file")
    assert str(info.value) == (
        f"--data.val_file {path}: no such file; write the CMUdict splits with "
        f"`python -m lit_seq2seq.cmudict --output_dir {path.parent}` (the g2p extra)"
    )
    with pytest.raises(ValueError, match=r"other\.tsv: no such file$"):
        read_pairs(tmp_path / "cmudict" / "other.tsv", CHAR, SPACE)


def test_a_folder_is_not_a_pair_file(tmp_path):
    (tmp_path / "d.tsv").mkdir()
    with pytest.raises(ValueError, match=r"d\.tsv: is a folder"):
        read_pairs(tmp_path / "d.tsv", CHAR, CHAR)


def test_a_named_pipe_is_refused_not_waited_on(tmp_path):
    # A pair file is read twice (its hash, then its text): a FIFO named pairs.tsv hung on the second open, unsaid.
    path = tmp_path / "pipe.tsv"
    os.mkfifo(path)
    outcome = []

    def read() -> None:
        try:
            read_pairs(path, CHAR, CHAR, flag="--data.predict_file")
        except ValueError as error:
            outcome.append(str(error))

    reader = threading.Thread(target=read, daemon=True)  # a hang (no writer) must fail the test, not stop the suite
    reader.start()
    reader.join(timeout=30)
    assert outcome == [f"--data.predict_file {path}: not a regular file (a pipe or a device); save the pairs to a file"]
    assert not cache_dir(path).exists()


def test_unknown_token_error_names_row_position_and_token(tmp_path):
    pairs = read_pairs(write(tmp_path / "a.tsv", "ab\tx\nazb\tx\n"), CHAR, CHAR, cache=False)
    vocab = Vocab.build("ab")
    with pytest.raises(ValueError, match=r"^row 1 position 2 token 'z'$"):
        to_vocab_ids(pairs.source, vocab, lambda row, pos, token: f"row {row} position {pos} token {token!r}")
    ids = to_vocab_ids(pairs.source, Vocab.build("ab", unk=True), str)
    assert ids.tolist() == [3, 4, 3, 2, 4]
    padded = pad_rows(pairs.source, ids, 4, end_token=1)
    assert padded.tolist() == [[3, 4, 1, 0], [3, 2, 4, 1]]


# ----------------------------------------------------------------------------------------- the cache


def test_cache_hit_then_miss_on_a_changed_file_or_setting(tmp_path, monkeypatch):
    path = write(tmp_path / "a.tsv", "ab\tA B\nc\tC\n")
    first = read_pairs(path, CHAR, SPACE)
    cached = sorted(cache_dir(path).glob("*.npz"))
    assert len(cached) == 1
    assert cached[0].stat().st_mode & 0o777 == 0o666 & ~_umask()  # a plain file's: other users may read it too

    calls = []
    tsv_sides = pairfiles._tsv_sides
    monkeypatch.setattr(pairfiles, "_tsv_sides", lambda *a: calls.append(1) or tsv_sides(*a))
    again = read_pairs(path, CHAR, SPACE)
    assert calls == [] and rows(again) == rows(first)  # a hit: not tokenized again

    read_pairs(path, Tokenizer("char", lowercase=True), SPACE)  # another setting: tokenized, cached beside the first
    assert calls == [1] and len(list(cache_dir(path).glob("*.npz"))) == 2

    write(path, "ab\tA B\nd\tD\n")  # the file changed: tokenized again, the old contents' caches removed
    changed = read_pairs(path, CHAR, SPACE)
    assert calls == [1, 1] and rows(changed)[1] == (["d"], ["D"])
    assert [p.name for p in cache_dir(path).glob("*.npz")] == [
        pairfiles._cache_key(changed.sha256, CHAR, SPACE, False) + ".npz"
    ]


@pytest.mark.parametrize(
    "source, target",
    [
        (Tokenizer("space"), SPACE),  # each field of the key alone: dropping one from it left every test passing
        (Tokenizer("char", lowercase=True), SPACE),
        (CHAR, Tokenizer("char")),
        (CHAR, Tokenizer("space", lowercase=True)),
    ],
    ids=["source kind", "source lowercase", "target kind", "target lowercase"],
)
def test_every_tokenizer_setting_has_a_cache_of_its_own(source, target, tmp_path, monkeypatch):
    path = write(tmp_path / "a.tsv", "Ab Cd\tA b\n")
    read_pairs(path, CHAR, SPACE)  # cached with the defaults
    calls = []
    tsv_sides = pairfiles._tsv_sides
    monkeypatch.setattr(pairfiles, "_tsv_sides", lambda *a: calls.append(1) or tsv_sides(*a))
    got = read_pairs(path, source, target)
    assert calls == [1] and rows(got) == [(source.split("Ab Cd"), target.split("A b"))]


def test_a_damaged_cache_is_rebuilt(tmp_path):
    path = write(tmp_path / "a.tsv", "ab\tA B\n")
    read_pairs(path, CHAR, SPACE)
    (cached,) = cache_dir(path).glob("*.npz")
    cached.write_bytes(cached.read_bytes()[:50])
    assert rows(read_pairs(path, CHAR, SPACE)) == [(["a", "b"], ["A", "B"])]
    assert np.load(cached)["lines"].tolist() == [1]


def test_an_unwritable_cache_folder_skips_caching_and_says_so_once(tmp_path, monkeypatch, capsys):
    def refuse(path, *args, **kwargs):  # writes into the cache folder are refused, reads of the pair file are not
        if cache_dir(Path(tmp_path / "a.tsv")).name in str(path):
            raise PermissionError(errno.EACCES, "Permission denied")
        return open(path, *args, **kwargs)

    monkeypatch.setattr(pairfiles, "open", refuse, raising=False)  # the module's open, before the builtin
    monkeypatch.setattr(pairfiles, "_warned_uncached", set())
    path = write(tmp_path / "a.tsv", "ab\tA B\n")
    for _ in range(2):
        assert rows(read_pairs(path, CHAR, SPACE)) == [(["a", "b"], ["A", "B"])]
    err = capsys.readouterr().err
    assert err.count("not caching the tokenized") == 1 and "Permission denied" in err
    assert not list(cache_dir(path).glob("*.npz"))


def test_a_failed_cache_write_leaves_no_partial_file(tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pairfiles.os, "replace", full)
    monkeypatch.setattr(pairfiles, "_warned_uncached", set())
    path = write(tmp_path / "a.tsv", "ab\tA B\n")
    read_pairs(path, CHAR, SPACE)
    assert list(cache_dir(path).iterdir()) == []


def test_reading_pairs_needs_no_torch(tmp_path):
    path = write(tmp_path / "a.tsv", "ab\tA B\n")
    code = (
        "import sys\nfrom lit_seq2seq.pairfiles import read_pairs\nfrom lit_seq2seq.text import Tokenizer\n"
        f"read_pairs({str(path)!r}, Tokenizer(), Tokenizer('space'))\nassert 'torch' not in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_no_code_point_above_the_whitespace_table_is_whitespace():
    assert chr(pairfiles._LAST_SPACE).isspace()
    assert not any(chr(c).isspace() for c in range(pairfiles._LAST_SPACE + 1, sys.maxunicode + 1))


def test_words_are_indexed_alike_in_chunks_of_any_size():
    text = "b a\nc  a\u3000d\nb\n a\n"
    cps = pairfiles._code_points(text)
    newlines = np.flatnonzero(cps == 10)
    whole = pairfiles._word_ids(cps, newlines)
    assert whole[2].tolist() == [2, 3, 1, 1]  # words per row
    for rows in (1, 2, 3):
        ids, table, counts = pairfiles._word_ids(cps, newlines, rows_per_chunk=rows)
        assert ids.tolist() == whole[0].tolist() and table.tolist() == whole[1].tolist() == ["a", "b", "c", "d"]
        assert counts.tolist() == whole[2].tolist()


def _umask() -> int:
    mask = os.umask(0o22)
    os.umask(mask)
    return mask


@pytest.mark.parametrize(
    "first, warned",
    [("source\ttarget", True), ("Word\tPronunciation", True), ("\ufeffsrc\ttgt\r", True), ("ab\tA B", False)],
    ids=["source/target", "capitalised", "bom crlf", "a pair"],
)
def test_a_first_line_that_reads_as_a_header_is_named_in_a_warning(first, warned, tmp_path):
    """It was trained on as a pair ("source" -> "target" tokens), and decode only failed on "unknown token 's'"."""
    path = write(tmp_path / "p.tsv", f"{first}\nab\tA B\n".encode())
    dm = PairDataModule(train_file=str(path), target_tokenizer="space", cache=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dm.load()
    messages = [str(w.message) for w in caught if "header" in str(w.message)]
    expected = f"--data.train_file {path}:1: {first.lstrip(chr(0xFEFF)).rstrip(chr(13))!r} looks like a header line"
    assert [m.startswith(expected) for m in messages] == ([True] if warned else [])


@pytest.mark.parametrize("kind", ["tsv", "jsonl"])
def test_header_true_skips_line_1_of_every_file_keeping_the_line_numbers(kind, tmp_path, caplog):
    """A header the warning's word list does not know (question<TAB>answer) was trained on as a pair, silently; the
    line skipped is said (given to a file without a header, the flag dropped a pair unsaid)."""
    pair = '{"source": "%s", "target": "%s"}' if kind == "jsonl" else "%s\t%s"
    head = "question\tanswer" if kind == "tsv" else "word,pronunciation"
    path = write(tmp_path / f"p.{kind}", "\n".join([head, pair % ("ab", "A B"), pair % ("ba", "B A")]).encode())
    got = read_pairs(path, CHAR, SPACE, header=True)
    assert rows(got) == [(list("ab"), ["A", "B"]), (list("ba"), ["B", "A"])] and got.lines.tolist() == [2, 3]
    assert len(list(cache_dir(path).glob("*.npz"))) == 1
    if kind == "tsv":  # without it: line 1 is a pair (read from its own cache, not the header-less one)
        assert rows(read_pairs(path, CHAR, SPACE))[0] == (list("question"), ["answer"])
    dm = PairDataModule(train_file=str(path), target_tokenizer="space", header=True, cache=False)
    caplog.set_level(logging.INFO, logger="lightning.pytorch")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no header warning either
        dm.load()
    assert dm.text_spec.target_vocab.tokens[2:] == ("A", "B")
    assert f"--data.train_file {path}:1: {head!r} skipped as a header (--data.header true)" in caplog.text
    alone = write(tmp_path / f"h.{kind}", f"{head}\n".encode())
    with pytest.raises(ValueError, match="a header line alone"):
        read_pairs(alone, CHAR, SPACE, header=True)


def test_a_bad_tokenizer_in_a_script_names_its_side():
    with pytest.raises(ValueError, match=r"^--data.target_tokenizer must be one of char, space, got 'word'$"):
        PairDataModule(train_file="x.tsv", target_tokenizer="word")
