"""Pair files (TSV `source<TAB>target` or JSON Lines) -> tokenized id arrays, vectorised, cached beside the file.

numpy only (no torch): a file is read once, checked line by line (errors name the flag, file and line), tokenized per
side with text.Tokenizer semantics (NFC, optional lowercasing, code points or whitespace-separated tokens), and stored
as a per-file token table plus flat indices into it. That form does not depend on any vocabulary, so it is cached
beside the file (keyed by the file's sha256 and the tokenizer settings) and mapped onto a vocabulary later.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import stat
import sys
import unicodedata
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from lit_seq2seq.atomic import replacing
from lit_seq2seq.cmudict import SPLITS
from lit_seq2seq.text import CONTROL, CONTROL_RANGES, NORMALIZATION, UTF16_BOMS, Tokenizer, Vocab, describe_control

TSV_SUFFIXES = (".tsv", ".txt")
JSONL_SUFFIXES = (".jsonl", ".json")
# bump when the cached arrays change meaning or a file's checks change (2: control characters, 3: JSON
# keys, 4: byte order marks and a char side's whitespace edges)
CACHE_FORMAT = 4
SIDES = ("source", "target")
T = TypeVar("T")
_NEWLINE, _TAB, _CR, _BOM = 10, 9, 13, 0xFEFF
_warned_uncached: set[str] = set()  # folders already reported as uncacheable (once per process)
_whitespace: np.ndarray | None = None  # str.isspace by code point, up to _LAST_SPACE + 1
_LAST_SPACE = 0x3000  # IDEOGRAPHIC SPACE: no code point above it is whitespace (tests check every one)


@dataclass(frozen=True)
class Side:
    """One side of a file, tokenized: `table` the distinct tokens (sorted), `ids` flat indices into it, row i's tokens
    `ids[offsets[i]:offsets[i + 1]]`."""

    table: np.ndarray  # str, sorted (code point order, as Vocab.build sorts)
    ids: np.ndarray  # int32
    offsets: np.ndarray  # int64, len rows + 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def tokens(self, row: int) -> list[str]:
        return [str(t) for t in self.table[self.ids[self.offsets[row] : self.offsets[row + 1]]]]

    def select(self, rows: np.ndarray) -> Side:
        """The side of the given rows (in that order), same table."""
        lengths = self.lengths[rows]
        offsets = np.zeros(len(rows) + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        flat = _ranges(self.offsets[rows], lengths)
        return Side(self.table, self.ids[flat], offsets)


@dataclass(frozen=True)
class PairFile:
    """A tokenized pair file: its rows' 1-based line numbers, sources and targets, and its sha256."""

    path: Path
    flag: str
    lines: np.ndarray  # int64
    source: Side
    target: Side
    sha256: str

    def __len__(self) -> int:
        return len(self.lines)

    def where(self, row: int) -> str:
        return f"{self.flag} {self.path}:{int(self.lines[row])}"


def file_format(path: str | os.PathLike) -> str:
    """The format of a pair file by its suffix: "tsv" or "jsonl"; any other is refused (CSV read as TSV is garbage)."""
    suffix = Path(path).suffix.lower()
    if suffix in TSV_SUFFIXES:
        return "tsv"
    if suffix in JSONL_SUFFIXES:
        return "jsonl"
    raise ValueError(
        f"unknown pair file type {suffix or '(no suffix)'!r}: use {'/'.join(TSV_SUFFIXES)} for source<TAB>target lines "
        f"or {'/'.join(JSONL_SUFFIXES)} for JSON Lines"
    )


# A first line of two of these is a header, not a pair (read as one it trains "source" -> "target")
HEADER_SOURCES = ("source", "src", "input", "in", "from", "x", "text", "word", "words", "grapheme", "graphemes")
HEADER_TARGETS = ("target", "tgt", "output", "out", "to", "y", "label", "pronunciation", "phonemes", "translation")


def first_line(path: str | os.PathLike) -> str:
    """Line 1 of a file as shown in a message: its first 1,024 bytes at most, a BOM and CR dropped."""
    with open(path, "rb") as f:
        return f.read(1024).split(b"\n", 1)[0].decode("utf-8", "replace").removeprefix("\ufeff").rstrip("\r")


def header_line(path: str | os.PathLike, first: str | None = None) -> str | None:
    """The first line of a TSV pair file (`first`, when read already) when it reads as a header (source<TAB>target
    and the like), else None."""
    if file_format(path) != "tsv":
        return None
    first = first_line(path) if first is None else first
    fields = first.lower().strip().split("\t")
    if len(fields) == 2 and fields[0].strip() in HEADER_SOURCES and fields[1].strip() in HEADER_TARGETS:
        return first
    return None


def read_pairs(
    path: str | os.PathLike,
    source: Tokenizer,
    target: Tokenizer,
    flag: str = "--data.file",
    cache: bool = True,
    sources_alone: bool = False,
    header: bool = False,
) -> PairFile:
    """Read, check and tokenize one pair file (from its cache when the file and settings are unchanged).

    Every problem is a ValueError naming `flag`, the file and, for a bad line, its number: a missing or empty file,
    a line without a tab (or with more than one), an empty side, invalid UTF-8, bad JSON, a missing key. Lines that
    are empty (blank lines, a trailing newline) are skipped; `\\r\\n` line ends and a leading BOM are accepted.
    With `sources_alone` (files to predict), a line may also be a source alone: no tab, or no "target" key; its
    target has no tokens (a target that is given must still have some). With `header`, line 1 is skipped (the
    others keep their numbers).
    """
    path = Path(path)
    where = f"{flag} {path}"
    try:
        kind = file_format(path)
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None
    sha = _read(path, where, file_sha256)
    key = _cache_key(sha, source, target, sources_alone, header)
    cached = _load_cache(path, key) if cache else None
    if cached is not None:
        lines, src, tgt = cached
        return PairFile(path, flag, lines, src, tgt, sha)
    raw = _read(path, where, lambda p: p.read_bytes())
    sha = hashlib.sha256(raw).hexdigest()  # of what is tokenized, should the file have changed meanwhile
    key = _cache_key(sha, source, target, sources_alone, header)
    text = _decode(raw, where, kind)
    del raw
    if header:  # line 1 made blank, which is skipped: the other lines keep their numbers
        text = text[text.index("\n") :] if "\n" in text else ""
        if text.isspace() or not text:
            raise ValueError(f"{where}: a header line alone (--data.header true skips line 1): no pairs")
    if kind == "tsv":
        cps = _code_points(unicodedata.normalize(NORMALIZATION, text))
        del text  # a large file is held once, as code points
        lines, source_cps, target_cps, alone = _tsv_sides(cps, where, sources_alone)
    else:
        lines, source_cps, target_cps, alone = _jsonl_sides(text, where, sources_alone)
        del text
    for side, cps, tokenizer in (("source", source_cps, source), ("target", target_cps, target)):
        _check_printable(cps, lines, where, side)
        _check_invisible(cps, lines, where, side, tokenizer)
    src = _tokenize_side(source_cps, source, len(lines), lines, where, "source")
    del source_cps
    tgt = _tokenize_side(target_cps, target, len(lines), lines, where, "target", alone)
    del target_cps
    if cache:
        _write_cache(path, key, sha, lines, src, tgt)
    return PairFile(path, flag, lines, src, tgt, sha)


def _read(path: Path, where: str, how: Callable[[Path], T]) -> T:
    """how(path), with a missing file, a folder, a pipe or device, or an unreadable file as a ValueError naming
    `where`."""
    try:
        if not stat.S_ISREG(mode := path.stat().st_mode) and not stat.S_ISDIR(mode):
            # a named pipe would be read once for the hash and then wait forever for a second writer
            raise ValueError(f"{where}: not a regular file (a pipe or a device); save the pairs to a file")
        return how(path)
    except FileNotFoundError:
        raise ValueError(f"{where}: no such file{_cmudict_hint(path)}") from None
    except IsADirectoryError:
        raise ValueError(f"{where}: is a folder, not a file") from None
    except OSError as error:
        raise ValueError(f"{where}: cannot read it ({error.strerror})") from None


def _cmudict_hint(path: Path) -> str:
    """How to make a missing split of the G2P configs' data (data/cmudict/train.tsv, ...), or nothing."""
    if path.parent.name != "cmudict" or path.name not in {f"{name}.tsv" for name in SPLITS}:
        return ""
    return f"; write the CMUdict splits with `python -m lit_seq2seq.cmudict --output_dir {path.parent}` (the g2p extra)"


def file_sha256(path: Path) -> str:
    """The file's sha256, read in chunks (a cache hit never holds the whole file)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _decode(raw: bytes, where: str, kind: str) -> str:
    """UTF-8 text without a leading BOM; invalid UTF-8 is a ValueError naming its line, as is a blank file."""
    try:
        text = raw.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as error:
        line = raw.count(b"\n", 0, error.start) + 1
        byte = raw[error.start]
        utf16 = " (a UTF-16 byte order mark)" if raw[:2] in UTF16_BOMS else ""
        raise ValueError(f"{where}:{line}: invalid UTF-8 (byte {byte:#04x}){utf16}; save the file as UTF-8") from None
    if not text or text.isspace():  # isspace stops at the first other character; strip() would copy the text
        raise ValueError(f"{where}: the file is empty (expected {_expected(kind)} lines)")
    return text


def _index_dtype(size: int) -> type:
    """The smallest unsigned dtype that indexes `size` entries (ids of a large file: 1 byte a token, not 8)."""
    return np.uint8 if size <= 1 << 8 else np.uint16 if size <= 1 << 16 else np.int32


def _expected(kind: str) -> str:
    return "source<TAB>target" if kind == "tsv" else '{"source": ..., "target": ...}'


def _tsv_sides(
    cps: np.ndarray, where: str, sources_alone: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Line numbers, the two sides' code points (each field followed by one '\\n') and which lines are a source alone
    (`sources_alone`: no tab), from NFC text's code points; all in numpy. NFC of the whole text equals NFC per field:
    tab and newline are starters that compose with nothing.
    """
    if cps[-1] != _NEWLINE:
        cps = np.append(cps, np.array(_NEWLINE, cps.dtype))
    ends = np.flatnonzero(cps == _NEWLINE)
    starts = np.empty_like(ends)
    starts[0], starts[1:] = 0, ends[:-1] + 1
    line_numbers = np.arange(1, len(ends) + 1, dtype=np.int64)
    stops = ends.copy()  # a line's end without its '\r'
    crlf = (stops > starts) & (cps[np.maximum(stops - 1, 0)] == _CR)
    stops[crlf] -= 1
    keep = stops > starts  # blank lines are skipped
    starts, stops, line_numbers = starts[keep], stops[keep], line_numbers[keep]
    tabs = np.flatnonzero(cps == _TAB)
    first = np.searchsorted(tabs, starts)
    count = np.searchsorted(tabs, stops) - first
    alone = (count == 0) if sources_alone else np.zeros(len(count), bool)
    bad = np.flatnonzero((count != 1) & ~alone)
    if len(bad):
        i = bad[0]
        what = "no tab" if count[i] == 0 else f"{count[i]} tabs"
        fix = "each line must be source<TAB>target"
        if (cps[starts[i] : stops[i]] == _CR).any():  # old Mac files: one line, its pairs split by CRs
            fix = "its lines end with a lone carriage return (CR): save the file with LF or CRLF line ends"
        raise ValueError(f"{where}:{line_numbers[i]}: {what}; {fix}")
    # The tab ends a source, the line end ('\n' or '\r') a target: each becomes that field's '\n'. A source alone
    # ends at the line end, and its (empty) target is that one character.
    tab = stops.copy()
    tab[~alone] = tabs[first[~alone]]
    target_starts = np.where(alone, stops, tab + 1)
    for side, empty in (("source", tab == starts), ("target", (target_starts == stops) & ~alone)):
        if empty.any():
            raise ValueError(f"{where}:{line_numbers[np.argmax(empty)]}: empty {side}")
    return line_numbers, _fields(cps, starts, tab), _fields(cps, target_starts, stops), alone


def _check_printable(cps: np.ndarray, lines: np.ndarray, where: str, side: str) -> None:
    """ValueError naming the line, side and position of the first control character of the fields (code points, each
    field ended by '\n'): the runtime refuses such texts, so a model must not learn them as tokens."""
    bad = np.zeros(len(cps), bool)
    for low, high in CONTROL_RANGES:
        bad |= (cps >= low) & (cps <= high)
    bad &= cps != _NEWLINE  # the fields' separator
    if not bad.any():
        return
    at = int(np.argmax(bad))
    newlines = np.flatnonzero(cps[:at] == _NEWLINE)
    row, start = len(newlines), (int(newlines[-1]) + 1 if len(newlines) else 0)
    raise ValueError(
        f"{where}:{lines[row]}: {describe_control(chr(cps[at]))} in the {side} at character {at - start + 1}; "
        "texts must be printable"
    )


def _check_invisible(cps: np.ndarray, lines: np.ndarray, where: str, side: str, tokenizer: Tokenizer) -> None:
    """ValueError naming the line of the first field (code points, each ended by '\n') holding a byte order mark
    (files joined with `cat` keep each one's), or, for the char tokenizer, starting or ending with whitespace (a
    spreadsheet's stray space): either would be learned as a token no one types at decode time."""
    rows = np.flatnonzero(cps == _NEWLINE)
    bom = np.flatnonzero(cps == _BOM)
    if len(bom):
        row = int(np.searchsorted(rows, bom[0]))
        start = int(rows[row - 1]) + 1 if row else 0
        raise ValueError(
            f"{where}:{lines[row]}: a byte order mark (U+FEFF) in the {side} at character {bom[0] - start + 1} (files "
            "joined with cat keep each one's); remove it"
        )
    if tokenizer.kind != "char":  # split() drops whitespace at the edges
        return
    starts = np.concatenate(([0], rows[:-1] + 1))
    filled = np.flatnonzero(starts < rows)  # a source alone's absent target is an empty field
    first, last = _is_space(cps[starts[filled]]), _is_space(cps[rows[filled] - 1])
    edge = first | last
    if edge.any():
        bad = filled[edge]  # the fields with an edge, in file order
        row, at_start = int(bad[0]), bool(first[edge][0])
        at, char = ("start", cps[starts[row]]) if at_start else ("end", cps[rows[row] - 1])
        # all of them at once: a spreadsheet's export can hold hundreds, and fixing one a run is no way to find out
        count, shown = len(bad), ", ".join(map(str, lines[bad[:5]]))
        more = f" (lines {shown}{', ...' if count > 5 else ''}: {count:,} in all)" if count > 1 else ""
        raise ValueError(
            f"{where}:{lines[row]}: whitespace (U+{int(char):04X}) at the {at} of the {side}{more}; the char tokenizer "
            "would learn it as a token of the text: remove it from the file (spaces inside a text are kept)"
        )


def _fields(cps: np.ndarray, starts: np.ndarray, stops: np.ndarray) -> np.ndarray:
    """cps[starts[i]:stops[i]] + '\\n' for every i, concatenated (stops[i] < starts[i + 1]): one boolean mask, made by
    repeating False/True over the gaps and the fields, selects them."""
    bounds = np.empty(2 * len(starts) + 2, np.int64)
    bounds[0], bounds[1:-1:2], bounds[2:-1:2], bounds[-1] = 0, starts, stops + 1, len(cps)
    flags = np.zeros(len(bounds) - 1, bool)
    flags[1::2] = True
    out = cps[np.repeat(flags, np.diff(bounds))]
    out[np.cumsum(stops - starts + 1) - 1] = _NEWLINE
    return out


def _code_points(text: str) -> np.ndarray:
    """The code points of `text`: one byte each for Latin-1 text (most pair files), else four."""
    try:
        return np.frombuffer(text.encode("latin-1"), np.uint8)
    except UnicodeEncodeError:
        return np.frombuffer(text.encode("utf-32-le"), np.uint32)


def _text(cps: np.ndarray) -> str:
    return cps.tobytes().decode("latin-1" if cps.dtype == np.uint8 else "utf-32-le")


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenation of arange(s, s + n) for each (s, n), vectorised."""
    lengths = np.asarray(lengths, np.int64)
    heads = np.cumsum(lengths) - lengths
    return np.arange(int(lengths.sum()), dtype=np.int64) + np.repeat(np.asarray(starts, np.int64) - heads, lengths)


class _DuplicateKey(Exception):
    pass


class _NotJson(Exception):
    pass


def _no_constant(name: str) -> None:  # Python's json reads NaN and Infinity, which are not JSON (JSON.parse refuses)
    raise _NotJson(name)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    row = dict(pairs)
    if len(row) < len(pairs):  # the first key, in order, that appears twice (a count per key: 50,000 keys took 23 s)
        counts = collections.Counter(key for key, _ in pairs)
        raise _DuplicateKey(next(key for key, _ in pairs if counts[key] > 1))
    return row


def _json_int(text: str) -> int | float:
    # past Python's 4,300-digit limit int() raises a ValueError naming no line; as JSON.parse, read it as a float
    return int(text) if len(text) <= 4300 else float(text)


ARRAY_HINT = "; JSON Lines: one object per line, not a JSON array"  # a line holding a JSON array, or its start
# a bad JSON line of a pair file: what the file's suffix made it (decode --jsonl gives its own hint)
FILE_JSON_HINT = "; .jsonl and .json files are read as JSON Lines (source<TAB>target lines: .tsv or .txt)"


def parse_jsonl_line(
    line: str, where: str, sources_alone: bool = False, hint: str = FILE_JSON_HINT
) -> tuple[str, str | None]:
    """One line of JSON Lines pairs, checked: (source, target), target None for a source alone (`sources_alone`: an
    object without "target"). Anything else is a ValueError starting with `where` (e.g. "--data.file F:3", or decode's
    "line 3"): bad JSON (with `hint`, or a JSON array's; NaN, Infinity and deep nesting too), a key given twice, not
    an object, a missing key, a value that is not a string, empty, or holds a line break or a control character.
    Other keys are ignored. The texts are as given (not NFC). What training reads of a .jsonl line and `lit-seq2seq
    decode --jsonl` of each line."""
    if line.lstrip().startswith("["):
        hint = ARRAY_HINT
    try:
        row = json.loads(line, object_pairs_hook=_unique_keys, parse_constant=_no_constant, parse_int=_json_int)
    except _NotJson as error:
        raise ValueError(f"{where}: bad JSON ({error} is not a JSON value){hint}") from None
    except RecursionError:  # a line of 100,000 "[" ended in a traceback
        raise ValueError(f"{where}: bad JSON (nested too deeply){hint}") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{where}: bad JSON ({error.msg} at column {error.colno}){hint}") from None
    except _DuplicateKey as error:  # json keeps the last of them silently: which one was meant?
        raise ValueError(f'{where}: the key "{error}" appears twice in one object') from None
    if not isinstance(row, dict):
        array = ARRAY_HINT if isinstance(row, list) else ""
        raise ValueError(f'{where}: expected a JSON object {{"source": ..., "target": ...}}{array}')
    alone = sources_alone and "target" not in row
    for key in ("source",) if alone else SIDES:
        if key not in row:  # the keys it has: "src"/"tgt" and the like are the usual cause
            has = ", ".join(json.dumps(k) for k in list(row)[:6]) or "none"
            keys = '"source", "target"'
            raise ValueError(f'{where}: missing key "{key}" (it has {has}; the keys read are {keys})')
        value = row[key]
        if not isinstance(value, str):
            listed = (
                f'; one string ("2 3", "AH BE"); several {key}s go on lines of their own'
                if isinstance(value, list)
                else ""
            )
            raise ValueError(f'{where}: "{key}" must be a string, got {json.dumps(value)[:40]}{listed}')
        if not value:
            raise ValueError(f"{where}: empty {key}")
        if "\n" in value or "\r" in value:
            raise ValueError(f"{where}: the {key} holds a line break; a pair is one line of text")
        bad = CONTROL.search(value)  # a lone surrogate too: a JSON escape can write one
        if bad:
            raise ValueError(
                f"{where}: {describe_control(bad.group())} in the {key} at character {bad.start() + 1}; "
                "texts must be printable"
            )
    return row["source"], None if alone else row["target"]


def _jsonl_sides(
    text: str, where: str, sources_alone: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Line numbers, the two sides' NFC texts of JSON Lines (a Python loop: parse_jsonl_line per line) and which lines
    are a source alone (`sources_alone`: no "target" key)."""
    lines, sources, targets, alone = [], [], [], []
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        source, target = parse_jsonl_line(line, f"{where}:{number}", sources_alone)
        lines.append(number)
        sources.append(source)
        targets.append("" if target is None else target)
        alone.append(target is None)
    if not lines:
        raise ValueError(f"{where}: the file holds no pairs")
    source = unicodedata.normalize(NORMALIZATION, "\n".join(sources) + "\n")
    target = unicodedata.normalize(NORMALIZATION, "\n".join(targets) + "\n")
    return np.asarray(lines, np.int64), _code_points(source), _code_points(target), np.asarray(alone, bool)


def _is_space(cps: np.ndarray) -> np.ndarray:
    """str.isspace of each code point (what str.split() splits on): all such code points lie below U+3001."""
    global _whitespace
    if _whitespace is None:
        _whitespace = np.array([chr(c).isspace() for c in range(_LAST_SPACE + 2)])  # the last entry: False
    return _whitespace[cps] if cps.dtype == np.uint8 else _whitespace[np.minimum(cps, _LAST_SPACE + 1)]


def _tokenize_side(
    cps: np.ndarray,
    tokenizer: Tokenizer,
    rows: int,
    lines: np.ndarray,
    where: str,
    side: str,
    absent: np.ndarray | None = None,
) -> Side:
    """Tokenize NFC fields (code points, each field ended by '\\n') the way `tokenizer.split` does each field; a
    field without tokens is an error unless `absent` marks its row (a source alone)."""
    if tokenizer.lowercase:
        # context rules (final sigma) stop at the newline that separates the fields
        cps = _code_points(_text(cps).lower())
    newlines = np.flatnonzero(cps == _NEWLINE)  # one per row
    if tokenizer.kind == "char":
        counts = np.diff(newlines, prepend=-1) - 1
        tokens = cps[cps != _NEWLINE]
        codes = np.flatnonzero(_chunked_bincount(tokens))
        lut = np.zeros(int(codes[-1]) + 1 if len(codes) else 1, _index_dtype(len(codes)))
        lut[codes] = np.arange(len(codes))
        ids = _gather(lut, tokens)
        table = np.array([chr(c) for c in codes.tolist()], dtype=str) if len(codes) else np.zeros(0, "<U1")
    else:
        ids, table, counts = _word_ids(cps, newlines)
    empty = np.flatnonzero((counts == 0) if absent is None else (counts == 0) & ~absent)
    if len(empty):
        raise ValueError(f"{where}:{lines[empty[0]]}: empty {side} (no tokens)")
    offsets = np.zeros(rows + 1, np.int64)
    np.cumsum(counts, out=offsets[1:])
    return Side(table, ids, offsets)


def _word_ids(
    cps: np.ndarray, newlines: np.ndarray, rows_per_chunk: int = 20_000
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Whitespace-separated words of `cps` as indices into their sorted table, and the words of each row. A chunk of
    rows at a time (str.split() splits, numpy counts): the words of a large file as Python strings (~50 bytes each),
    or one position per word, would take gigabytes at once."""
    index: dict[str, int] = {}  # word -> index by first appearance
    parts, counts = [], []
    bounds = [0, *(newlines[rows_per_chunk - 1 :: rows_per_chunk] + 1).tolist()]
    for lo, hi in zip(bounds, [*bounds[1:], len(cps)], strict=True):
        chunk = cps[lo:hi]
        space = _is_space(chunk)
        begins = np.flatnonzero(~space & np.r_[True, space[:-1]])  # a non-space after a space (or the start)
        ends = np.flatnonzero(chunk == _NEWLINE)
        counts.append(np.bincount(np.searchsorted(ends, begins), minlength=len(ends)))
        words = _text(chunk).split()
        for word in dict.fromkeys(words):
            if word not in index:
                index[word] = len(index)
        parts.append(np.fromiter(map(index.__getitem__, words), np.int32, count=len(words)))
    distinct = list(index)
    order = sorted(range(len(distinct)), key=distinct.__getitem__)
    rank = np.empty(len(distinct), _index_dtype(len(distinct)))
    rank[order] = np.arange(len(distinct))
    ids = _gather(rank, np.concatenate(parts)) if parts else np.zeros(0, np.int32)
    table = np.array([distinct[i] for i in order], dtype=str) if distinct else np.zeros(0, "<U1")
    return ids, table, np.concatenate(counts)


def _lookup(side: Side, vocab: Vocab) -> np.ndarray:
    """The id in `vocab` of each token of `side`'s table, -1 for one it lacks (and has no <unk> for)."""
    return np.array([-1 if vocab.id(str(t)) is None else vocab.id(str(t)) for t in side.table], np.int64)


def rows_with_unknown(side: Side, vocab: Vocab) -> np.ndarray:
    """(rows,) bool: whether a row holds a token `vocab` lacks (and has no <unk> for)."""
    unknown = np.zeros(len(side.lengths), bool)
    at = np.flatnonzero(_gather(_lookup(side, vocab) < 0, side.ids)) if len(side.table) else []
    unknown[np.searchsorted(side.offsets, at, side="right") - 1] = True
    return unknown


def to_vocab_ids(side: Side, vocab: Vocab, describe: Callable[[int, int, str], str]) -> np.ndarray:
    """`side`'s flat token indices as ids of `vocab` (the smallest unsigned dtype that holds them). An unknown token
    (no <unk> in `vocab`) is a ValueError whose message is describe(row, position (1-based), token) of the first."""
    lut = _lookup(side, vocab)
    unknown = np.flatnonzero(lut < 0)
    if len(unknown):
        known = np.ones(len(lut), bool)
        known[unknown] = False
        used = np.flatnonzero(~_gather(known, side.ids))
        if len(used):
            at = int(used[0])
            row = int(np.searchsorted(side.offsets, at, side="right")) - 1
            raise ValueError(describe(row, at - int(side.offsets[row]) + 1, str(side.table[side.ids[at]])))
        lut[unknown] = 0
    return _gather(lut.astype(_index_dtype(len(vocab))), side.ids) if len(lut) else np.zeros(0, np.uint8)


_CHUNK = 1 << 22  # elements per step where numpy would otherwise make an 8-byte copy of a whole id array


def _gather(table: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """table[indices] a chunk at a time: numpy turns small-dtype indices into int64 first, 8 bytes a token."""
    out = np.empty(len(indices), table.dtype)
    for at in range(0, len(indices), _CHUNK):
        out[at : at + _CHUNK] = table[indices[at : at + _CHUNK]]
    return out


def _chunked_bincount(values: np.ndarray) -> np.ndarray:
    """np.bincount(values) a chunk at a time (it too copies its input to int64)."""
    total = np.zeros(int(values.max()) + 1 if len(values) else 0, np.int64)
    for at in range(0, len(values), _CHUNK):
        part = np.bincount(values[at : at + _CHUNK])
        total[: len(part)] += part
    return total


def pad_rows(side: Side, ids: np.ndarray, width: int, end_token: int | None, dtype: type = np.int64) -> np.ndarray:
    """(rows, width) array: each row's ids, then `end_token` if given, right-padded with 0 (rows must fit)."""
    lengths = side.lengths
    out = np.zeros((len(lengths), width), dtype)
    rows = np.repeat(np.arange(len(lengths)), lengths)
    cols = np.arange(len(ids)) - np.repeat(side.offsets[:-1], lengths)
    out[rows, cols] = ids
    if end_token is not None:
        out[np.arange(len(lengths)), lengths] = end_token
    return out


# --- the cache -------------------------------------------------------------------------------------------------------


def cache_dir(path: Path) -> Path:
    return path.parent / f".{path.name}.lit-seq2seq-cache"


def _cache_key(sha: str, source: Tokenizer, target: Tokenizer, sources_alone: bool, header: bool = False) -> str:
    settings = f"{CACHE_FORMAT}|{NORMALIZATION}|{source.kind}|{source.lowercase}|{target.kind}|{target.lowercase}"
    if sources_alone:  # read otherwise: a line that is a source alone is an error (keys of other files unchanged)
        settings += "|sources alone"
    if header:  # as sources_alone: other files' keys unchanged
        settings += "|header"
    return f"{sha[:32]}-{hashlib.sha256(settings.encode()).hexdigest()[:16]}"


def _load_cache(path: Path, key: str) -> tuple[np.ndarray, Side, Side] | None:
    file = cache_dir(path) / f"{key}.npz"
    try:
        with np.load(file, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
        sides = [Side(arrays[f"{s}_table"], arrays[f"{s}_ids"], arrays[f"{s}_offsets"]) for s in SIDES]
        return arrays["lines"], sides[0], sides[1]
    except (OSError, KeyError, ValueError, zipfile.BadZipFile, EOFError):
        return None  # no cache yet, or a damaged one: tokenize again (and rewrite it)


def _write_cache(path: Path, key: str, sha: str, lines: np.ndarray, source: Side, target: Side) -> None:
    """Write the arrays atomically (a temporary file renamed into place); drop caches of older contents of the file.
    An unwritable folder skips caching, said once per folder and process."""
    folder = cache_dir(path)
    arrays = {"lines": lines}
    for name, side in zip(SIDES, (source, target), strict=True):
        arrays |= {f"{name}_table": side.table, f"{name}_ids": side.ids, f"{name}_offsets": side.offsets}
    try:
        folder.mkdir(exist_ok=True)
        # one temporary per process: DDP ranks may write at once. Not fsynced: a lost cache is rebuilt.
        with replacing(folder / f"{key}.npz", fsync=False) as (tmp,), open(tmp, "wb") as out:
            np.savez(out, **arrays)
        for old in folder.glob("*.npz"):  # the same file's earlier contents: never read again
            if not old.name.startswith(sha[:32]):
                old.unlink(missing_ok=True)
    except OSError as error:
        if str(folder) not in _warned_uncached:
            _warned_uncached.add(str(folder))
            why = error.strerror or str(error)
            print(
                f"lit-seq2seq: not caching the tokenized {path} in {folder} ({why}); tokenizing on each run",
                file=sys.stderr,
            )
