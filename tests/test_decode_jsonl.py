"""`lit-seq2seq decode --jsonl`: JSON Lines in ({"source": ..., "target": ...} per line, as training reads .jsonl pair
files), the output, scores and skip counts of the equivalent SOURCE<TAB>REFERENCE lines, and each bad line named in
one line with exit code 2 (the messages of training's reader, pairfiles.parse_jsonl_line). The Node consumer's
--jsonl is in test_node.py.

Models are the session's tiny exports (conftest.exported, conftest.text_exported).
"""

from __future__ import annotations

import json

import pytest
from conftest import BLOCK_IMPORTS, cli_output, run_python, text_pairs

JSONL_HINT = "; --jsonl reads one JSON object per line (SOURCE<TAB>REFERENCE lines: leave --jsonl out)"


def as_jsonl(rows: list[tuple[str, str | None]], ascii_only: bool = True) -> str:
    """The JSON Lines of (source, reference or None) rows: {"source": ...[, "target": ...]} each."""
    objects = [{"source": s} if t is None else {"source": s, "target": t} for s, t in rows]
    return "".join(json.dumps(o, ensure_ascii=ascii_only) + "\n" for o in objects)


def as_tsv(rows: list[tuple[str, str | None]]) -> str:
    return "".join((s if t is None else f"{s}\t{t}") + "\n" for s, t in rows)


def text_rows() -> list[tuple[str, str | None]]:
    """Several references of one source, adjacent and not, a wrong one, repeats, a source alone, spaces in one."""
    pairs = text_pairs(24, seed=7)
    rows: list[tuple[str, str | None]] = []
    for i, (word, target) in enumerate(pairs):
        if i % 4 == 0:
            rows.append((word, "AH AH"))  # a wrong reference first, the right one next: one source, two references
        rows.append((word, f"{target}  " if i % 3 == 0 else target))
        if i % 5 == 0:
            rows.append((word, None))  # a source alone: printed, not scored
    rows += [(pairs[0][0], pairs[0][1])] * 2 + [("abé", "AH BE É"), ("ж", None)]  # one seen before, not adjacent
    return rows


def decode(capsys, model_dir, stdin: str | None, *flags: str) -> tuple:
    return cli_output(["decode", "--model_dir", model_dir, *flags], capsys, stdin)


@pytest.mark.parametrize(
    "flags", [[], ["--batch_size", "2"], ["--beam_size", "3"]], ids=["greedy", "small batches", "beam"]
)
def test_jsonl_decodes_and_scores_as_the_equivalent_tsv_lines(flags, text_exported, capsys):
    model_dir = text_exported("trained").model_dir
    rows = text_rows()
    tsv = decode(capsys, model_dir, as_tsv(rows), *flags)
    assert tsv[0] == 0 and "exact match: " in tsv[2] and "token error rate: " in tsv[2], tsv
    assert 0 < len(tsv[1].splitlines()) < len(rows)  # adjacent lines of one source: one output
    for ascii_only in (True, False):  # "é" as \u00e9 or as itself
        assert decode(capsys, model_dir, as_jsonl(rows, ascii_only), "--jsonl", *flags) == tsv


def test_jsonl_of_an_id_model_holds_ids_as_strings(exported, capsys):
    """An id model's source and target are strings of space-separated ids, as in its TSV lines (the target cut at the
    end token)."""
    model_dir = exported("gru").model_dir
    rows = [("2 3", "3 2"), ("4 5 6", None), ("5 6", "6 5 1 0"), ("2 3 4", "2 3 4"), (" 7  6 ", "7 6")]
    tsv = decode(capsys, model_dir, as_tsv(rows))
    assert tsv[0] == 0 and tsv[2].startswith("exact match: ") and len(tsv[1].splitlines()) == len(rows), tsv
    assert decode(capsys, model_dir, as_jsonl(rows), "--jsonl") == tsv
    # a list of ids is not the string of them: refused by name (training reads strings too)
    code, out, err = decode(capsys, model_dir, '{"source": "2 3"}\n{"source": [2, 3]}\n', "--jsonl")
    assert (code, out) == (2, tsv[1].splitlines()[0] + "\n")
    assert err == (
        'lit-seq2seq decode: error: line 2: "source" must be a string, got [2, 3]; one string ("2 3", "AH BE"); '
        "several sources go on lines of their own\n"
    )


def test_jsonl_arguments_are_read_as_lines_and_other_keys_are_ignored(text_exported, capsys):
    """As training's reader: keys other than "source" and "target" (an id, a note) are ignored."""
    model_dir = text_exported("trained").model_dir
    rows = [("abé", "AH BE É"), ("ab", None), ("ж", "Ж")]
    tsv = decode(capsys, model_dir, None, *as_tsv(rows).splitlines())
    assert tsv[0] == 0 and tsv[2].startswith("exact match: 1/2 = 50.00%") and "1 argument without" in tsv[2], tsv
    lines = [
        json.dumps({"id": i, **json.loads(line), "note": [1, {}]})
        for i, line in enumerate(as_jsonl(rows).split("\n")[:-1])
    ]
    assert decode(capsys, model_dir, None, "--jsonl", *lines) == tsv
    from_stdin = decode(capsys, model_dir, "".join(f"{line}\n" for line in lines), "--jsonl")
    assert from_stdin == (0, tsv[1], tsv[2].replace("argument", "line"))


BAD_LINES = [
    ('{"source": "ab"', f"bad JSON (Expecting ',' delimiter at column 16){JSONL_HINT}"),
    ("ab\tAH BE", f"bad JSON (Expecting value at column 1){JSONL_HINT}"),  # a TSV line
    (" ", f"bad JSON (Expecting value at column 2){JSONL_HINT}"),
    (
        '["ab", "AH BE"]',
        'expected a JSON object {"source": ..., "target": ...}; JSON Lines: one object per line, not a JSON array',
    ),
    ('"ab"', 'expected a JSON object {"source": ..., "target": ...}'),
    ("[1,", "bad JSON (Expecting value at column 4); JSON Lines: one object per line, not a JSON array"),
    (
        '{"src": "ab", "tgt": "AH BE"}',
        'missing key "source" (it has "src", "tgt"; the keys read are "source", "target")',
    ),
    ("{}", 'missing key "source" (it has none; the keys read are "source", "target")'),
    ('{"source": 3}', '"source" must be a string, got 3'),
    ('{"source": "ab", "target": null}', '"target" must be a string, got null'),
    (
        '{"source": "ab", "target": ["AH", "BE"]}',
        '"target" must be a string, got ["AH", "BE"]; one string ("2 3", "AH BE"); several targets go on lines of '
        "their own",
    ),
    ('{"source": ""}', "empty source"),
    ('{"source": "ab", "target": ""}', "empty target"),
    ('{"source": "ab", "target": "  "}', "empty target (no tokens)"),
    ('{"source": "ab", "source": "b"}', 'the key "source" appears twice in one object'),
    ('{"source": "a\\nb"}', "the source holds a line break; a pair is one line of text"),
    ('{"source": "ab", "target": "AH\\tBE"}', "control character U+0009 in the target at character 3; texts must"),
    ('{"source": "a\\ud800"}', "lone surrogate U+D800 in the source at character 2; texts must be printable"),
    ('{"source": "ab", "score": NaN}', f"bad JSON (NaN is not a JSON value){JSONL_HINT}"),  # Python's json took it
    ('{"source": "ab", "score": -Infinity}', f"bad JSON (-Infinity is not a JSON value){JSONL_HINT}"),
    ("[" * 5000, "bad JSON (nested too deeply); JSON Lines: one object per line, not a JSON array"),  # a traceback
    ('{"source": ' + "1" * 5000 + "}", '"source" must be a string, got Infinity'),  # past int()'s 4,300 digits
    ("", f"empty line{JSONL_HINT}"),  # one before another line (empty lines at the end are dropped)
    ('{"source": "ax"}', "unknown token 'x' at position 2"),  # the model's own refusal, as for the TSV line
]
BAD_IDS = ["unclosed", "a TSV line", "blank", "array", "string", "array cut", "other keys", "no keys", "number",
           "null", "list", "empty source", "empty target", "blank target", "twice", "line break", "tab", "surrogate",
           "NaN", "-Infinity", "deep", "5000 digits", "empty line", "unknown token"]  # fmt: skip


@pytest.mark.parametrize("line,message", BAD_LINES, ids=BAD_IDS)
def test_a_bad_jsonl_line_is_named_in_one_line_or_skipped_and_counted(line, message, text_exported, capsys):
    model_dir = text_exported("trained").model_dir
    stdin = f'{{"source": "abé"}}\n{line}\n{{"source": "ab", "target": "AH BE"}}\n'
    code, out, err = decode(capsys, model_dir, stdin, "--jsonl")
    assert (code, out) == (2, "AH BE É\n")  # the line before it, nothing after it
    assert err == f"lit-seq2seq decode: error: line 2: {message}\n" or (
        message.endswith("must") and err.startswith(f"lit-seq2seq decode: error: line 2: {message}")
    ), err
    assert err.count("\n") == 1 and "usage:" not in err
    code, out, err = decode(capsys, model_dir, stdin, "--jsonl", "--skip_bad_lines")
    assert (code, out) == (0, "AH BE É\nAH BE\n")
    assert err.startswith("exact match: 1/1 = 100.00%")
    assert f"skipped 1 bad line(s) of 3; the first: line 2: {message}" in err
    if line.startswith("{"):  # an argument is read as a line is
        code, out, err = decode(capsys, model_dir, None, "--jsonl", '{"source": "abé"}', line)
        assert (code, out) == (2, "AH BE É\n") and err.startswith(f"lit-seq2seq decode: error: argument 2: {message}")


def test_every_jsonl_line_bad_is_an_error_not_an_empty_answer(text_exported, capsys):
    args = ["--jsonl", "--skip_bad_lines"]
    code, out, err = decode(capsys, text_exported("trained").model_dir, '{"src": "ab"}\n[]\n', *args)
    assert (code, out) == (2, "")
    assert err.startswith("lit-seq2seq decode: error: every line was bad (2 skipped), nothing decoded; the first: line")


def test_a_json_line_without_jsonl_names_the_flag(exported, text_exported, capsys):
    line = '{"source": "ab", "target": "AH BE"}\n'
    for model_dir in (text_exported("trained").model_dir, exported("gru").model_dir):
        code, _, err = decode(capsys, model_dir, line)
        assert code == 2 and err.endswith(
            "(decode reads SOURCE or SOURCE<TAB>REFERENCE lines; for JSON Lines add --jsonl)\n"
        )


def test_decode_jsonl_needs_no_torch(text_exported):
    """--jsonl reads lines with pairfiles' parser: numpy and the standard library, never torch or Lightning."""
    code = (
        BLOCK_IMPORTS
        + """
from lit_seq2seq.cli import main
try:
    main(sys.argv[2:])
finally:
    assert "lit_seq2seq.pairfiles" in sys.modules
    assert not any(m.split(".")[0] in _Blocked.names for m in sys.modules), sorted(sys.modules)
"""
    )
    model_dir = str(text_exported("trained").model_dir)
    stdin = '{"source": "abé", "target": "AH BE É"}\n{"source": "ж", "target": "Ж"}\n'
    result = run_python(code, "none", "decode", "--model_dir", model_dir, "--jsonl", stdin=stdin)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "AH BE É\nЖ Э\n"
    assert result.stderr == "exact match: 1/2 = 50.00% (WER 50.00%); token error rate: 1/4 = 25.00%\n"
