"""The browser page (export/web) in headless Chromium: its decodings equal OnnxSeq2Seq.greedy, bad input and bad files
are refused on the page with a message naming them."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, flip_bit, pad_rows, restamp, strip_all
from test_node import TEXT_MODELS, as_text_model, sources

from lit_seq2seq import contract
from lit_seq2seq.runtime import OnnxSeq2Seq

_spec = importlib.util.spec_from_file_location("lit_seq2seq_web_serve", REPO / "export" / "web" / "serve.py")
serve = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(serve)


@pytest.fixture(scope="module")
def browser() -> Any:
    """One headless Chromium (and local server) for all page runs here: it starts once. None when a tool is missing;
    each test then fails through need_browser(), naming it."""
    if serve.missing_tools():
        yield None
        return
    with serve.Headless() as headless:
        yield headless


def need_browser() -> None:
    """Chromium, onnxruntime-web and the shared module must be there: their absence fails the test (a skipped browser
    test would pass CI without ever running the page), naming the command that installs what is missing."""
    if problem := serve.missing_tools():
        pytest.fail(problem, pytrace=False)


def bad_lines(model: Any) -> dict[str, str]:
    """Lines the page must refuse -> the words its message must hold."""
    vocab = int(model.meta.get("source_vocab_size") or model.meta["vocab_size"])
    length, token = model.source_length, model.min_token

    def line(*ids: Any) -> str:
        return " ".join(map(str, ids))

    return {
        "": "empty source",
        line(*[token] * (length - 1), vocab): f"token {vocab} is out of range",  # one past the vocabulary
        line("x", *[token] * (length - 1)): '"x" is not an integer token id',
        line(*[token] * (length + 1)): f"{length + 1} tokens; this model was trained on sources of",
        line(0, *[token] * (length - 1)): "empty sequence (starts with padding)",
    }


@pytest.mark.parametrize(
    ("name", "path"),
    [
        ("copy_trained", "auto"),
        ("copy_trained", "steps"),
        ("gru_bi_attention", "auto"),
        ("lstm_2layer", "steps"),
        ("lstm_bi_context", "beam"),
    ],
    ids=[
        "copy_trained-greedy.onnx",
        "copy_trained-loop",
        "gru_bi_attention-greedy.onnx",
        "lstm_2layer-loop",
        "lstm_bi_context-beam",
    ],
)
def test_page_decodes_as_the_runtime_and_refuses_bad_lines(browser, name, path, exported, runtime_model):
    need_browser()
    model = runtime_model(name)
    rows = sources(model, 24)
    bad = bad_lines(model)
    lines = [" ".join(map(str, row)) for row in rows]
    lines[0] = f"+{lines[0]}"  # an explicit sign, as lit-seq2seq decode reads it (the page refused it)
    at = [3, 9, 10, 17, 20]  # bad lines in between good ones: they must not shift or spoil their neighbours
    for where, line in zip(at, bad):
        lines.insert(where, line)
    report = browser.run(exported(name).model_dir, lines, path=path)
    assert report["error"] is None
    assert report["path"] == {"auto": "greedy"}.get(path, path)
    results = report["results"]
    assert [r["input"] for r in results] == lines
    decoded = [" ".join(map(str, r["tokens"])) for r in results if r["error"] is None]
    expected = model.beam_search(pad_rows(rows), beam_size=4)[0] if path == "beam" else model.greedy(pad_rows(rows))
    assert decoded == strip_all(model, expected)  # one batch, as the page decodes the good lines
    refused = {r["input"]: r["error"] for r in results if r["error"] is not None}
    assert list(refused) == list(bad)
    for line, words in bad.items():
        assert refused[line].startswith(f"line {lines.index(line) + 1}: ") and words in refused[line], refused[line]
        if line:  # the Python runtime refuses the same lines
            ids = [int(t) if t.lstrip("-").isdigit() else t for t in line.split()]
            with pytest.raises((ValueError, TypeError)):
                model.check_source([ids])


def test_page_decodes_untrained_lengths_when_ticked(browser, exported, runtime_model):
    need_browser()
    model = runtime_model("lstm")  # trained on exactly 4 tokens; refused by default (the test above)
    rows = [[2, 3, 4, 5, 6, 7], [3, 4]]
    report = browser.run(exported("lstm").model_dir, [" ".join(map(str, r)) for r in rows], untrained=True)
    assert report["error"] is None
    expected = strip_all(model, model.greedy(pad_rows(rows), allow_untrained_lengths=True))
    assert [" ".join(map(str, r["tokens"])) for r in report["results"]] == expected


def _mixed(model_dir: Path, other: Path) -> None:
    shutil.copy(other / contract.DECODER_FILE, model_dir / contract.DECODER_FILE)


DAMAGE = {
    "flipped byte in the decoder": (
        lambda d, o: flip_bit(d / contract.DECODER_FILE, (d / contract.DECODER_FILE).stat().st_size // 2),
        ("decoder_step.onnx: content hash mismatch",),
    ),
    "missing encoder": (lambda d, o: (d / contract.ENCODER_FILE).unlink(), ("encoder.onnx: missing",)),
    "decoder of another export": (_mixed, ("encoder.onnx and", "decoder_step.onnx come from different exports")),
    "unknown format_version": (
        lambda d, o: restamp(d / contract.GREEDY_FILE, format_version="99"),
        ("greedy.onnx: contract format_version", "99"),
    ),
}


@pytest.mark.parametrize("how", list(DAMAGE))
def test_page_shows_a_clear_error_for_a_bad_export(browser, how, exported, tmp_path):
    need_browser()
    model_dir = tmp_path / "model"
    shutil.copytree(exported("copy_trained").model_dir, model_dir)
    damage, words = DAMAGE[how]
    damage(model_dir, exported("gru").model_dir)
    report = browser.run(model_dir, ["2 3 4"])
    assert all(w in report["error"] for w in words), report["error"]
    assert report["results"] == []  # nothing decoded from a bad export


def test_page_decodes_picked_files_and_names_a_missing_one(browser, exported, runtime_model, tmp_path):
    """A user's way in: the export's files given to the page's file picker (no served model)."""
    need_browser()
    model, model_dir = runtime_model("copy_trained"), exported("copy_trained").model_dir
    rows = sources(model, 6)
    lines = [" ".join(map(str, r)) for r in rows]
    report = browser.run(tmp_path, lines, pick=sorted(model_dir.glob("*.onnx")))
    assert report["error"] is None
    expected = strip_all(model, model.greedy(pad_rows(rows)))
    assert [" ".join(map(str, r["tokens"])) for r in report["results"]] == expected
    report = browser.run(tmp_path, lines, pick=[model_dir / contract.ENCODER_FILE, model_dir / contract.GREEDY_FILE])
    assert report["error"].startswith("decoder_step.onnx: not among the files given"), report["error"]


@pytest.mark.parametrize("kind", list(TEXT_MODELS))
def test_page_reads_text_models(browser, kind, exported, runtime_model, tmp_path):
    """format_version 2 text keys (the gru export re-stamped as test_node does): text in, ids and text out."""
    need_browser()
    spec = TEXT_MODELS[kind]
    model_dir = as_text_model(exported("gru").model_dir, spec, tmp_path / "v2")
    model = runtime_model("gru")
    tokens = [model.strip(r) for r in model.greedy(pad_rows(spec["ids"]))]
    joiner = "" if spec["target_tokenizer"] == "char" else " "
    unknown, message = spec["unknown"]
    report = browser.run(model_dir, [*spec["lines"], unknown])
    assert report["error"] is None
    *good, bad = report["results"]
    assert [r["tokens"] for r in good] == tokens
    assert [r["text"] for r in good] == [joiner.join(spec["target_tokens"][t] for t in row) for row in tokens]
    assert bad["error"] == message.replace("line 1:", f"line {len(good) + 1}:")


def test_screenshot_is_written(browser, exported, tmp_path):
    need_browser()
    png = tmp_path / "page.png"
    report = browser.run(exported("copy_trained").model_dir, ["2 3 4", "5 4"], screenshot=png)
    assert report["error"] is None and len(report["results"]) == 2
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_page_translates_a_real_text_export_as_the_python_runtime(browser, text_exported):
    """A text model written by `lit-seq2seq export` (format 2, own vocabularies): the page's text is translate's."""
    from conftest import text_pairs

    need_browser()
    model_dir = text_exported("trained").model_dir
    words = [word for word, _ in text_pairs(20, seed=5)] + ["ÉA", "e\u0301a"]  # upper case, decomposed é
    report = browser.run(model_dir, words)
    assert report["error"] is None
    assert [r["text"] for r in report["results"]] == OnnxSeq2Seq.load(model_dir).translate(words)


def test_serve_refuses_bad_flags_in_one_line(exported, tmp_path, capsys):
    """No browser needed: each mistake is one line and exit code 2, before anything is served."""
    import socket

    model_dir = str(exported("gru").model_dir)
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    cases = [
        (["--model_dir", str(tmp_path / "nope")], "no such folder"),
        (["--model_dir", str(tmp_path)], "no encoder.onnx there"),
        (["--model_dir", model_dir, "--port", "99999"], "--port must be in [0, 65535], got 99999"),
        (["--model_dir", model_dir, "--path", "steps"], "--path goes with --check"),
        (["--model_dir", model_dir, "--screenshot", str(tmp_path / "no" / "x.png")], "no folder"),
        (["--model_dir", model_dir, "--port", str(taken.getsockname()[1])], "Address already in use"),
    ]
    try:
        for args, message in cases:
            with pytest.raises(SystemExit) as exit_:
                serve.main(args)
            err = capsys.readouterr().err
            assert exit_.value.code == 2 and message in err and "Traceback" not in err, (args, err)
    finally:
        taken.close()
