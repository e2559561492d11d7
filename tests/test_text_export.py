"""Text models end to end: export carries the checkpoint's TextSpec, OnnxSeq2Seq.translate matches PyTorch token for
token, every bad text is refused with its index and position, and `decode` reads, prints and scores text."""

from __future__ import annotations

import itertools
import json
import re
import shutil
import subprocess

import numpy as np
import onnx
import pytest
import torch
from conftest import (
    BLOCK_IMPORTS,
    PYTHON,
    REPO,
    TEXT_LENGTHS,
    TEXT_VARIANTS,
    cli_exit,
    cli_output,
    pad_rows,
    restamp,
    run_python,
    text_checkpoint,
    text_pairs,
    text_spec,
)

from lit_seq2seq import contract
from lit_seq2seq.export import TEXT_TASK, export_checkpoint, load_checkpoint
from lit_seq2seq.runtime import ModelFileError, OnnxSeq2Seq
from lit_seq2seq.text import TEXT_KEY, TextSpec

pytestmark = [pytest.mark.filterwarnings("ignore:.*LeafSpec"), pytest.mark.filterwarnings("ignore::UserWarning")]

FILES = (contract.ENCODER_FILE, contract.DECODER_FILE, contract.GREEDY_FILE)


@pytest.fixture(scope="module")
def text_model(text_exported):
    """name -> (OnnxSeq2Seq, PyTorch net, TextSpec of the checkpoint)."""
    cache = {}

    def get(name: str):
        if name not in cache:
            built = text_exported(name)
            net, task = load_checkpoint(built.ckpt)
            cache[name] = OnnxSeq2Seq.load(built.model_dir), net, task.text
        return cache[name]

    return get


def words(spec: TextSpec, n: int = 40, seed: int = 5) -> list[str]:
    """n random texts of the trained lengths, written as the source tokenizer reads them, some in capitals."""
    texts = [w for w, _ in text_pairs(n, seed)]
    texts = [t.upper() if i % 3 == 0 else t for i, t in enumerate(texts)]
    return [" ".join(t) for t in texts] if spec.source.kind == "space" else texts


def torch_translate(net, spec: TextSpec, texts: list[str], beam_size: int | None = None) -> list[str]:
    source = torch.from_numpy(pad_rows([spec.encode(t) for t in texts]))
    with torch.no_grad():
        tokens = net.greedy(source) if beam_size is None else net.beam_search(source, beam_size=beam_size)[0]
    return [spec.decode(row) for row in tokens.numpy().tolist()]


# --------------------------------------------------------------------------------------------------- export


@pytest.mark.parametrize("name", list(TEXT_VARIANTS))
def test_every_graph_carries_the_checkpoints_text_spec(name, text_exported):
    ckpt = torch.load(text_exported(name).ckpt, weights_only=True)
    spec = TextSpec.from_dict(ckpt[TEXT_KEY])
    metas = [{p.key: p.value for p in onnx.load(str(text_exported(name).model_dir / f)).metadata_props} for f in FILES]
    for meta in metas:
        assert TextSpec.from_metadata(meta) == spec
        assert meta["format_version"] == "2" and meta["task"] == TEXT_TASK
        assert (meta["eos_token"], meta["min_token"]) == ("1", "2")
        assert (meta["min_source_length"], meta["source_length"]) == tuple(map(str, TEXT_LENGTHS))
        assert int(meta["source_vocab_size"]) == len(spec.source_vocab)
        assert int(meta["target_vocab_size"]) == len(spec.target_vocab)
        assert json.loads(meta["target_tokens"]) == list(spec.target_vocab.tokens)  # non-ASCII kept as written
    own = {"inputs", "outputs", contract.CONTENT_HASH_KEY}
    assert all({k: v for k, v in m.items() if k not in own} == {k: v for k, v in metas[0].items() if k not in own}
               for m in metas)  # fmt: skip


@pytest.mark.parametrize("side", ["source", "target"])
def test_a_vocabulary_size_that_differs_from_its_tokens_is_refused(side, text_exported, tmp_path):
    """Ids without a token (or tokens without an id) would turn text into wrong ids or ids into wrong text."""
    model_dir = tmp_path / "model"
    shutil.copytree(text_exported("trained").model_dir, model_dir)
    size = OnnxSeq2Seq.load(model_dir).meta[f"{side}_vocab_size"]
    for name in FILES:
        restamp(model_dir / name, **{f"{side}_vocab_size": str(int(size) - 1)})
    message = f"its text metadata is damaged ({side}_tokens holds {size} tokens, {side}_vocab_size is {int(size) - 1})"
    with pytest.raises(ModelFileError, match=re.escape(message)):
        OnnxSeq2Seq.load(model_dir)


def test_different_source_and_target_vocabularies(text_model):
    model, net, spec = text_model("trained")
    assert (model.source_vocab_size, model.target_vocab_size) == (6, 7)
    assert (net.config.source_vocab_size, net.config.target_vocab_size) == (6, 7)
    assert model.text.source_vocab.tokens == ("<pad>", "</s>", "a", "b", "é", "ж")
    assert model.text.target_vocab.tokens == ("<pad>", "</s>", "AH", "BE", "É", "Ж", "Э")


def test_export_report_of_a_text_model_claims_no_accuracy(tmp_path):
    ckpt = text_checkpoint(tmp_path / "m.ckpt", text_spec(unk=True), hidden_size=8)
    report = export_checkpoint(ckpt, tmp_path / "export", verify_samples=16)
    assert report.exact_match is None and (report.greedy_rows, report.beam_rows) == (16, 16)
    text = str(report)
    assert "greedy tokens identical to PyTorch on 16 random sources of the trained lengths (the two-graph" in text
    assert "exact match: not measured" in text and "7 source tokens (char tokenizer)" in text


def test_load_checkpoint_refuses_a_text_entry_that_does_not_fit_its_net(tmp_path):
    good = text_checkpoint(tmp_path / "m.ckpt", text_spec(), hidden_size=8)
    ckpt = torch.load(good, weights_only=True)
    ckpt[TEXT_KEY]["target_tokens"] = ckpt[TEXT_KEY]["target_tokens"][:-1]  # 6 target tokens, the net has 7
    torch.save(ckpt, tmp_path / "short.ckpt")
    with pytest.raises(ValueError, match=r"short.ckpt: 6 target tokens in its text entry, the net 7 target ids"):
        load_checkpoint(tmp_path / "short.ckpt")
    del ckpt[TEXT_KEY]["source_length"]
    torch.save(ckpt, tmp_path / "damaged.ckpt")
    with pytest.raises(ValueError, match=r"damaged.ckpt: its text entry is damaged \(KeyError: 'source_length'\)"):
        load_checkpoint(tmp_path / "damaged.ckpt")


# ---------------------------------------------------------------------------------------------- translate


@pytest.mark.parametrize("name", list(TEXT_VARIANTS))
def test_translate_is_pytorch_greedy_token_for_token(name, text_model):
    model, net, spec = text_model(name)
    texts = words(spec)
    expected = torch_translate(net, spec, texts)
    assert model.translate(texts) == expected
    assert model.greedy_graph is not None  # that was greedy.onnx; the two-graph loop answers the same
    steps = model._greedy_steps(model.encode_texts(texts), model.max_target_length)
    assert model.decode_ids(steps) == expected


@pytest.mark.parametrize("name", list(TEXT_VARIANTS))
def test_translate_with_beam_search_is_pytorch_beam_search(name, text_model):
    model, net, spec = text_model(name)
    texts = words(spec, 16, seed=6)
    assert model.translate(texts, beam_size=3) == torch_translate(net, spec, texts, beam_size=3)


def test_a_trained_text_model_translates_non_ascii_text(text_model):
    model, _, _ = text_model("trained")
    # lowercased source ("ABЖ"), NFC ("e" + combining acute is "é"), Cyrillic in and out
    assert model.translate(["abé", "ABЖ", "e\u0301a", "жж"]) == ["AH BE É", "AH BE Ж Э", "É AH", "Ж Э Ж Э"]
    assert model.translate(["abé", "ABЖ"], beam_size=4) == ["AH BE É", "AH BE Ж Э"]


def test_encode_texts_and_decode_ids(text_model):
    model, _, spec = text_model("trained")
    assert model.encode_texts(["ab", "Жé", "a"]).tolist() == [[2, 3], [5, 4], [2, 0]]
    assert model.encode_texts(["ab"]).dtype == np.int64
    assert model.decode_ids([[2, 5, 6, 1, 3], [4, 0, 0, 0, 0]]) == ["AH Ж Э", "É"]
    for bad in ([[2, 7]], [[-1, 2]]):  # past the target vocabulary, and a negative id that would index from the end
        with pytest.raises(ValueError, match=r"decode_ids: rows\[0, \d\] is -?\d, not an id of the target vocab"):
            model.decode_ids(bad)


@pytest.mark.parametrize(
    "name,texts,message",
    [
        ("trained", ["ab", "axb"], r"texts\[1\]: unknown token 'x' at position 2"),
        # a char model's space: said to be whitespace (the bare message read as a typo)
        ("trained", ["A b"], r"texts\[0\]: unknown token ' ' \(whitespace: no training source held it\) at position 2"),
        ("trained", ["a\u3000"], r"texts\[0\]: unknown token '\\u3000' \(whitespace: no training source held it\) at "),
        ("trained", ["ab", "a", ""], r"texts\[2\]: empty text"),
        ("space_source", ["a b", "   "], r"texts\[1\]: no tokens \(only whitespace; the space tokenizer splits on"),
        ("trained", ["a\tb"], r"texts\[0\]: control character U\+0009 at character 2"),
        ("trained", ["ab", "a\nb"], r"texts\[1\]: control character U\+000A at character 2"),
        ("trained", ["\x00"], r"texts\[0\]: control character U\+0000 at character 1"),
        ("trained", ["ab\x7f"], r"texts\[0\]: control character U\+007F at character 3"),
        ("trained", ["a\x85"], r"texts\[0\]: control character U\+0085 at character 2"),  # C1: NEL
        ("trained", ["é\x9f"], r"texts\[0\]: control character U\+009F at character 2"),
        ("trained", ["a\ud800"], r"texts\[0\]: lone surrogate U\+D800 at character 2"),
        ("trained", ["ab", "aaaaaa"], r"texts\[1\]: 6 characters; this model was trained on sources of 1 to 5 "
                                      r"characters "
                                      r"\(pass allow_untrained_lengths=True / --allow_untrained_lengths"),
        ("space_source", ["a a a a a a"], r"texts\[0\]: 6 tokens; this model was trained on sources of 1 to 5 tokens"),
        # the model lowercases: a message counts in the text it reads, and shows it
        ("trained", ["AXB"], r"texts\[0\]: unknown token 'x' at position 2 of 'axb', the text as the model reads it "
                             r"\(lowercased\)$"),
        ("trained", ["ABE\u0301ABA"], r"texts\[0\]: 6 characters of 'abéaba', the text as the model reads it \(NFC and "
                                     r"lowercased\); this model was trained on sources of 1 to 5"),
        ("space_source", ["a " + "∆" * 5000], rf"texts\[0\]: unknown token '{'∆' * 40}'\.\.\. \(5,000 characters\)"),
        # the text as read, cut too: a million-character text made a million-character message
        ("trained", ["AX" + "b" * 999_998], r"texts\[0\]: unknown token 'x' at position 2 of 'axbbbbbbbbbbbbbbbbbbbbbb"
                                           r"bbbbbbbbbbbbbbbb'\.\.\. \(1,000,000 characters\), the text as the model "
                                           r"reads it \(lowercased\)$"),
    ],
)  # fmt: skip
def test_bad_texts_are_refused_naming_the_text_and_position(name, texts, message, text_model):
    model, _, _ = text_model(name)
    with pytest.raises(ValueError, match=message):
        model.translate(texts)
    with pytest.raises(ValueError, match=message):
        model.encode_texts(texts)


def test_no_texts_translate_to_no_texts(text_model):
    model, _, _ = text_model("trained")
    assert model.translate([]) == [] and model.translate((), beam_size=3) == []
    with pytest.raises(ValueError, match="texts: empty batch"):  # ids for the graphs: a batch of 0 rows never runs
        model.encode_texts([])


def test_unknown_characters_map_to_unk_where_the_vocabulary_has_it(text_model):
    model, net, spec = text_model("unk_char")
    assert model.encode_texts(["axb", "Q"]).tolist() == [[3, 2, 4], [2, 0, 0]]  # <unk> is id 2
    assert model.translate(["axb"]) == torch_translate(net, spec, ["axb"])


def test_untrained_lengths_decode_only_when_asked(text_model):
    model, net, spec = text_model("trained")
    assert model.translate(["aaaaaa"], allow_untrained_lengths=True) == torch_translate(net, spec, ["aaaaaa"])


def test_wrong_types_are_refused(text_model):
    model, _, _ = text_model("trained")
    with pytest.raises(TypeError, match="texts must be a list of str, got one str: wrap it in a list"):
        model.translate("ab")
    with pytest.raises(TypeError, match=r"texts\[1\]: texts must be str, got int"):
        model.translate(["ab", 3])
    with pytest.raises(TypeError, match="allow_untrained_lengths must be True or False, got 'no'"):
        model.translate(["ab"], allow_untrained_lengths="no")
    with pytest.raises(ValueError, match="--beam_size|beam_size"):
        model.translate(["ab"], beam_size=0)


@pytest.mark.parametrize("chunk", [3, 256])
def test_large_batches_decode_in_length_sorted_chunks_with_the_tokens_of_one_batch(chunk, text_model, monkeypatch):
    """Past CHUNK_ROWS rows, greedy and beam search run over chunks of rows of similar lengths (onnxruntime's LSTM
    holds every step's input projection for the whole batch at its longest row: 100,000 G2P words in one call
    aborted the process at 16.7 GB): the answers are PyTorch's, in the caller's order."""
    import lit_seq2seq.runtime as runtime

    monkeypatch.setattr(runtime, "CHUNK_ROWS", chunk)
    model, net, spec = text_model("trained")
    texts = words(spec, 20 if chunk == 3 else 600, seed=8)
    assert len({len(t) for t in texts}) == 5  # every trained length, mixed: chunks reorder and cut the padding
    assert model.translate(texts) == torch_translate(net, spec, texts)
    assert model.translate(texts[:40], beam_size=3) == torch_translate(net, spec, texts[:40], beam_size=3)
    source = model.encode_texts(texts[:40])
    tokens, scores = model.beam_search(source, beam_size=3)
    ranked, ranked_scores = model.beam_search(source, beam_size=3, n_best=3)  # chunked as the best alone
    monkeypatch.setattr(runtime, "CHUNK_ROWS", 10_000)
    whole_tokens, whole_scores = model.beam_search(source, beam_size=3)
    assert tokens.tolist() == whole_tokens.tolist()
    np.testing.assert_allclose(scores, whole_scores, rtol=1e-5)
    whole_ranked, whole_ranked_scores = model.beam_search(source, beam_size=3, n_best=3)
    assert ranked.shape[:2] == (len(source), 3) and ranked.tolist() == whole_ranked.tolist()
    np.testing.assert_allclose(ranked_scores, whole_ranked_scores, rtol=1e-5)
    assert ranked[:, 0, : tokens.shape[1]].tolist() == tokens.tolist() and (ranked[:, 0, tokens.shape[1] :] == 0).all()


def test_translate_n_best_gives_the_ranked_beams_distinct_answers_as_texts_the_first_the_best(text_model):
    model, _, spec = text_model("trained")
    texts = ["abé", "ABЖ", "жж"]
    ranked = model.translate(texts, beam_size=4, n_best=3)
    assert [r[0] for r in ranked] == model.translate(texts, beam_size=4) == ["AH BE É", "AH BE Ж Э", "Ж Э Ж Э"]
    tokens, scores = model.beam_search(model.encode_texts(texts), beam_size=4, n_best=3)
    assert np.isfinite(scores).all() and (np.diff(scores, axis=1) <= 0).all()
    assert ranked == [list(dict.fromkeys(model.decode_ids(row))) for row in tokens]  # each answer once, in rank order
    assert model.translate(texts[:1], n_best=1) == [["AH BE É"]]  # greedy: its one answer, as a list
    for kwargs, message in (
        (dict(n_best=2), r"^n_best applies to beam search only: pass beam_size=K \(K >= 2\)$"),  # as decode says it
        (dict(beam_size=2, n_best=3), r"n_best must be an int in \[1, beam_size \(2\)\], got 3"),
        (dict(n_best=0), r"^n_best must be an int in \[1, beam_size \(1\)\], got 0$"),  # not "pass beam_size" for it
        (dict(n_best=1.5), r"^n_best must be an int in \[1, beam_size \(1\)\], got 1.5$"),
    ):
        with pytest.raises(ValueError, match=message):
            model.translate(texts, **kwargs)


def test_translate_refuses_what_beam_search_refuses(text_model):
    """beam_size=True decoded greedily, and a length_penalty without beam search was ignored; None and a set
    (no order to match the answers to) failed inside."""
    model, _, _ = text_model("trained")
    with pytest.raises(ValueError, match="^beam_size must be a positive int, got True$"):
        model.translate(["ab"], beam_size=True)
    with pytest.raises(ValueError, match="^beam_size must be a positive int, got 2.0$"):
        model.translate(["ab"], beam_size=2.0)
    with pytest.raises(ValueError, match="^length_penalty applies to beam search only: pass beam_size > 1$"):
        model.translate(["ab"], length_penalty=0.5)
    with pytest.raises(TypeError, match="^length_penalty must be a finite number, got 'x'$"):
        model.translate(["ab"], beam_size=2, length_penalty="x")
    for texts, kind in ((None, "NoneType"), ({"ab"}, "set"), ({"ab": 1}, "dict")):
        with pytest.raises(TypeError, match=f"^texts must be a list of str, got {kind}$"):
            model.translate(texts)
    assert model.translate(np.array(["ab", "b"])) == model.translate(("ab", "b"))
    assert model.decode_ids(model.greedy(model.encode_texts(["ab"])[0])) == model.translate(["ab"])[0]


def test_an_id_model_says_it_reads_ids(runtime_model):
    model = runtime_model("lstm")
    for call in (lambda: model.translate(["ab"]), lambda: model.encode_texts(["ab"]), lambda: model.decode_ids([[2]])):
        with pytest.raises(
            ValueError, match=r"this export is an id model \(task 'reverse_first'\): it reads and writes"
        ):
            call()


def test_text_runtime_needs_no_torch(text_exported):
    code = (
        BLOCK_IMPORTS
        + """
from lit_seq2seq.runtime import OnnxSeq2Seq
model = OnnxSeq2Seq.load(sys.argv[2])
print(model.translate(["abé", "ж"]), model.translate(["ab"], beam_size=2))
assert not any(m.split(".")[0] in _Blocked.names for m in sys.modules), sorted(sys.modules)
"""
    )
    result = run_python(code, "none", str(text_exported("trained").model_dir))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['AH BE É', 'Ж Э'] ['AH BE']"


# ------------------------------------------------------------------------------------------------- the CLI


def test_decode_prints_text(text_exported, capsys):
    model_dir = text_exported("trained").model_dir
    code, out, err = cli_output(["decode", "--model_dir", model_dir, "abé", "ABЖ"], capsys)
    assert (code, out, err) == (0, "AH BE É\nAH BE Ж Э\n", "")
    code, out, _ = cli_output(["decode", "--model_dir", model_dir, "--beam_size", "3"], capsys, "жж\nb\n")
    assert (code, out) == (0, "Ж Э Ж Э\nBE\n")
    # a byte order mark and an editor's trailing empty lines, as pair files may have them: read alike
    code, out, _ = cli_output(["decode", "--model_dir", model_dir, "--beam_size", "3"], capsys, "\ufeffжж\r\nb\n\n\n")
    assert (code, out) == (0, "Ж Э Ж Э\nBE\n")
    # sources given as arguments are named as such; one that was not UTF-8 (Python passes its bytes on as lone
    # surrogates) is named so, not as a surrogate
    for bad, message in (
        ("a\x07b", "control character U+0007 at character 2"),
        ("a\udcffb", "invalid UTF-8 (byte 0xff"),
    ):
        code, out, err = cli_output(["decode", "--model_dir", model_dir, "abé", bad], capsys)
        assert (code, out) == (2, "AH BE É\n") and err.startswith(f"lit-seq2seq decode: error: argument 2: {message}")
    code, _, err = cli_output(["decode", "--model_dir", model_dir], capsys, '{"source": "ab", "target": "AH BE"}\n')
    assert code == 2 and "(decode reads SOURCE or SOURCE<TAB>REFERENCE lines; for JSON Lines add --jsonl)" in err
    # an argument is read as a line is: SOURCE<TAB>REFERENCE is scored
    code, out, err = cli_output(["decode", "--model_dir", model_dir, "ab\tAH BE"], capsys)
    assert (code, out) == (0, "AH BE\n") and err.startswith("exact match: 1/1 = 100.00%")


def test_decode_scores_references_grouped_by_source(text_exported, capsys):
    # Worked by hand. abé -> "AH BE É": exact, 0 errors over 3 tokens. ab -> "AH BE", references "AH" and
    # "BE BE BE": the closest is "AH" (1 insertion against 2 substitutions): 1 error over 1 token, not exact.
    # ж -> "Ж Э": exact, 0 over 2. a -> "AH" against "AH Q" (Q is in no vocabulary): 1 error over 2 tokens.
    # Exact match 2/4 = 50% (WER 50%); token error rate (0 + 1 + 0 + 1) / (3 + 1 + 2 + 2) = 2/8 = 25%.
    lines = "abé\tAH BE É\nab\tAH\nab\tBE BE BE\nж\tЖ Э\na\tAH Q\n"
    code, out, err = cli_output(["decode", "--model_dir", text_exported("trained").model_dir], capsys, lines)
    assert code == 0
    assert out == "AH BE É\nAH BE\nЖ Э\nAH\n"  # one line per source
    assert err == "exact match: 2/4 = 50.00% (WER 50.00%); token error rate: 2/8 = 25.00%\n"


def test_decode_with_source_names_each_decodings_source_as_read(text_exported, capsys):
    """--with_source: SOURCE<TAB>DECODING per output line, the source as the line gave it (before NFC and lowercasing),
    so the output pairs with the input whatever was skipped or merged; read back by decode, it scores every line."""
    lines = "abé\tAH BE É\nab\tAH\nab\tBE BE BE\nx\nЖ\tЖ Э\nb\u0065\u0301\n"  # x: unknown; "bé" decomposed
    args = ["decode", "--model_dir", text_exported("trained").model_dir, "--skip_bad_lines", "--with_source"]
    code, out, err = cli_output(args, capsys, lines)
    assert code == 0 and "skipped 1 bad line(s) of 6; the first: line 4: " in err
    plain = cli_output(args[:4], capsys, lines)[1].splitlines()  # the decodings without their sources
    assert out.splitlines() == [f"{s}\t{d}" for s, d in zip(["abé", "ab", "Ж", "b\u0065\u0301"], plain, strict=True)]
    code, again, err = cli_output(args[:3], capsys, out)  # a pair file: each source against its own decoding
    assert (code, again.splitlines()) == (0, plain) and err.startswith("exact match: 4/4 = 100.00%")
    # --jsonl: the "source" string; as arguments; beam search
    jsonl = '{"source": "ab", "target": "AH"}\n{"id": 7, "source": "жж"}\n'
    code, out, _ = cli_output([*args, "--jsonl", "--beam_size", "3"], capsys, jsonl)
    assert (code, out) == (0, "ab\tAH BE\nжж\tЖ Э Ж Э\n")
    assert cli_output([*args, "abé", "b"], capsys) == (0, "abé\tAH BE É\nb\tBE\n", "")


def test_decode_n_best_prints_each_sources_ranked_beams_and_scores_the_best(text_exported, capsys):
    model_dir = text_exported("trained").model_dir
    lines = "abé\tAH BE É\nab\tAH\nab\tBE BE BE\nж\tЖ Э\na\tAH Q\n"  # figures worked by hand above
    best = cli_output(["decode", "--model_dir", model_dir, "--beam_size", "4"], capsys, lines)
    args = ["decode", "--model_dir", model_dir, "--beam_size", "4", "--n_best", "3", "--with_source"]
    code, out, err = cli_output(args, capsys, lines)
    rows = [line.split("\t") for line in out.splitlines()]
    assert code == 0 and err == best[2]  # the best beams alone are scored
    by_source = {source: [d for s, d in rows if s == source] for source in ("abé", "ab", "ж", "a")}
    assert [s for s, _ in rows] == [s for s, answers in by_source.items() for _ in answers]  # in input order
    assert [answers[0] for answers in by_source.values()] == best[1].splitlines()  # the best first
    assert all(1 <= len(a) == len(set(a)) <= 3 for a in by_source.values()) and len(by_source["abé"]) == 3
    code, out, _ = cli_output([*args[:-1], "abé"], capsys)  # without the sources: its answers alone
    assert (code, out.splitlines()) == (0, by_source["abé"])
    for flags, message in (
        (["--n_best", "2"], "--n_best applies to beam search only: add --beam_size K (K >= N)"),
        (["--beam_size", "2", "--n_best", "3"], "--n_best must be in [1, --beam_size (2)], got 3"),
        (["--beam_size", "2000", "--n_best", "3000"], "--beam_size must be <= 1024, got 2000"),
    ):
        code, _, err = cli_output(["decode", "--model_dir", model_dir, *flags, "ab"], capsys)
        assert (code, err) == (2, f"lit-seq2seq decode: error: {message}\n")


def test_decode_holds_a_repeated_reference_once(text_exported, capsys):
    """A common word given thousands of times over (a word list, a corpus's pairs): the same lines out and the same
    figures as with its reference given once; held once (its arrays grew with the square of the repeats)."""
    from lit_seq2seq.cli import _Scores

    lines = "abé\tAH BE É\nab\tAH\nab\tBE BE BE\nж\tЖ Э\na\tAH Q\n"
    repeated = lines + "ab\tAH\n" * 20_000 + "ж\tЖ Э\n" + "ab\tAH\n" * 3
    args = ["decode", "--model_dir", text_exported("trained").model_dir]
    once, again = cli_output(args, capsys, lines), cli_output(args, capsys, repeated)
    assert again[0] == 0 and again[2] == once[2]  # exact match 2/4, token error rate 2/8 (worked above)
    assert again[1] == once[1] + "AH BE\nЖ Э\nAH BE\n"  # a line per run of adjacent lines of one source
    scores = _Scores(None)
    scores.add([2, 3], [4], ["AH"] * 20_000 + ["BE", "AH"])
    assert scores.references == [{"AH": None, "BE": None}]
    # the reference arrays are built for slices of the sources: sources x their most references stay bounded
    for i in range(9_000):
        scores.add([i + 5], [4], [str(j) for j in range(300 if i == 7_000 else 1)])
    parts = list(scores._chunks())
    assert [(p.start, p.stop) for p in parts][:3] == [(0, 4096), (4096, 7001), (7001, 7219)]  # 218 x 300 refs
    assert parts[-1].stop == 9_001 and all(p.stop == q.start for p, q in zip(parts, parts[1:]))


def test_decode_says_how_many_lines_had_no_reference(text_exported, capsys):
    model_dir = text_exported("trained").model_dir
    code, out, err = cli_output(["decode", "--model_dir", model_dir], capsys, "abé\tAH BE É\nж\nab\n")
    assert (code, out) == (0, "AH BE É\nЖ Э\nAH BE\n")
    assert err == (
        "exact match: 1/1 = 100.00% (WER 0.00%); token error rate: 0/3 = 0.00%; 2 lines without a reference not "
        "scored\n"
    )
    code, out, err = cli_output(["decode", "--model_dir", model_dir, "ж", "abé\tAH BE É"], capsys)
    assert (code, out) == (0, "Ж Э\nAH BE É\n")
    assert err.endswith("; token error rate: 0/3 = 0.00%; 1 argument without a reference not scored\n")
    # an empty reference among the references of one source is a bad line too
    code, out, err = cli_output(["decode", "--model_dir", model_dir], capsys, "abé\tAH BE É\nabé\t\n")
    assert (code, out, err) == (2, "AH BE É\n", "lit-seq2seq decode: error: line 2: empty reference after the tab\n")


def test_decode_scores_across_batches_as_test_does(text_exported, text_model, capsys):
    model, _, _ = text_model("trained")
    pairs = text_pairs(40, seed=11)  # short words: some come twice in a row, and those lines are one source
    pairs += [(w, "AH") for w, _ in pairs[:12:3]]  # more references of 4 words, far from their first lines
    lines = "".join(f"{w}\t{p}\n" for w, p in pairs)
    args = ["decode", "--model_dir", text_exported("trained").model_dir, "--batch_size", "4"]
    code, out, err = cli_output(args, capsys, lines)
    printed = [w for w, _ in itertools.groupby(w for w, _ in pairs)]  # one output per run of adjacent lines
    assert len(printed) < len(pairs)
    assert code == 0 and out.splitlines() == model.translate(printed)
    # scored as `test` scores the file: each distinct word once, against the references of all its lines
    references = {}
    for w, p in pairs:
        references.setdefault(w, []).append(p)
    hits = sum(prediction in references[w] for w, prediction in zip(references, model.translate(list(references))))
    assert len(references) < len(printed) and f"exact match: {hits}/{len(references)} = " in err


@pytest.mark.parametrize(
    "stdin,message",
    [
        ("abé\nax\nab\n", "line 2: unknown token 'x' at position 2"),
        ("abé\n\nab\n", "line 2: empty text"),
        ("abé\na\x07b\nab\n", "line 2: control character U+0007 at character 2"),
        ("abé\naaaaaa\nab\n", "line 2: 6 characters; this model was trained on sources of 1 to 5 characters"),
        ("abé\nab\tAH\x1bBE\nab\n", "line 2 (reference): control character U+001B at character 3"),
        ("abé\nab\t\nab\n", "line 2: empty reference after the tab"),  # fit refuses it: "empty target"
        ("abé\nab\t \t\nab\n", "line 2: empty reference after the tab"),
    ],
)
def test_decode_stops_at_a_bad_text_line(stdin, message, text_exported, capsys):
    model_dir = text_exported("trained").model_dir
    code, out, err = cli_output(["decode", "--model_dir", model_dir], capsys, stdin)
    assert (code, out) == (2, "AH BE É\n")  # the line before it, nothing after it
    assert err.startswith(f"lit-seq2seq decode: error: {message}") and err.count("\n") == 1  # one line
    code, out, err = cli_output(["decode", "--model_dir", model_dir, "--skip_bad_lines"], capsys, stdin)
    assert (code, out) == (0, "AH BE É\nAH BE\n")
    assert err.startswith(f"skipped 1 bad line(s) of 3; the first: {message}")


def test_decode_untrained_lengths_only_when_asked(text_exported, text_model, capsys):
    model, _, _ = text_model("trained")
    args = ["decode", "--model_dir", text_exported("trained").model_dir, "--allow_untrained_lengths", "aaaaaa"]
    code, out, _ = cli_output(args, capsys)
    assert (code, out.splitlines()) == (0, model.translate(["aaaaaa"], allow_untrained_lengths=True))


def test_sample_refuses_a_text_model(text_exported, capsys):
    model_dir = text_exported("trained").model_dir
    code, err = cli_exit(["sample", "--model_dir", model_dir], capsys)
    assert code == 2
    assert err == (
        f"lit-seq2seq sample: error: --model_dir {model_dir} holds a text model (trained on pair files): sample draws "
        "fresh sources of a generated task, and file data has none; decode texts with `lit-seq2seq decode`\n"
    )


def test_decode_of_text_needs_no_torch(text_exported):
    code = BLOCK_IMPORTS + "\nfrom lit_seq2seq.cli import main\nraise SystemExit(main(sys.argv[2:]))\n"
    model_dir = str(text_exported("trained").model_dir)
    result = run_python(code, "none", "decode", "--model_dir", model_dir, stdin="abé\tAH BE É\nж\tЖ\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "AH BE É\nЖ Э\n"
    assert result.stderr == "exact match: 1/2 = 50.00% (WER 50.00%); token error rate: 1/4 = 25.00%\n"


def test_decode_names_the_first_stdin_line_that_is_not_utf8_after_printing_those_before(text_exported):
    """Lines are split on the byte 0x0A, then decoded one by one (as export/node/decode.mjs does): the line is exact,
    however far into a buffered chunk the bad byte lies."""
    model_dir = str(text_exported("trained").model_dir)
    stdin = b"ab\tAH BE\nb\tBE\n" * 150 + b"a\xffb\n" + b"ab\n"  # adjacent lines of one source would be one
    command = [PYTHON, "-m", "lit_seq2seq", "decode", "--model_dir", model_dir]
    result = subprocess.run(command, input=stdin, capture_output=True, cwd=REPO, timeout=120)
    assert result.returncode == 2
    assert result.stdout.decode() == "AH BE\nBE\n" * 150
    assert (
        result.stderr.decode()
        == "lit-seq2seq decode: error: stdin line 301: not UTF-8 text (invalid start byte); save it as UTF-8\n"
    )
    utf16 = subprocess.run(command, input="ab\n".encode("utf-16"), capture_output=True, cwd=REPO, timeout=120)
    assert utf16.returncode == 2 and utf16.stderr.decode() == (
        "lit-seq2seq decode: error: stdin line 1: not UTF-8 text (a UTF-16 byte order mark); save it as UTF-8\n"
    )


def test_distinct_keeps_each_answer_once_best_first_and_no_filler_beams(text_model):
    """Beams "3 3 <end>" and "3 3 <pad>" answer alike (a pad before the end ends an answer too); a -inf beam is a
    filler of a search with fewer candidates than beams. Both are left out of the answers offered; the best stays."""
    model, _, _ = text_model("trained")
    eos, pad = model.eos_token, model.pad_token
    beams = np.array([[3, 3, eos], [3, 3, pad], [3, eos, pad], [4, 4, 4]])
    assert model.distinct(beams, np.array([-1.0, -2.0, -3.0, -np.inf])) == [[3, 3], [3]]
    assert model.distinct(beams[3:], np.array([-np.inf])) == [[4, 4, 4]]  # the best, whatever its score
    assert model.answer_texts([[[3, 3], [3]], [[]]]) == [model.decode_ids([[3, 3, eos], [3, eos, pad]]), [""]]


@pytest.mark.parametrize("with_source", [False, True])
def test_decode_notes_the_sources_that_decoded_to_an_empty_answer(
    with_source, text_exported, exported, capsys, monkeypatch
):
    """An empty answer (the end token first) printed silently made `decode --with_source` lines that are no pair file
    (`zero<TAB>`, refused when read back); it is counted on stderr, naming the first, for text and id models."""
    from lit_seq2seq.runtime import OnnxSeq2Seq

    greedy = OnnxSeq2Seq.greedy

    def first_ends_at_once(self, source, *args, **kwargs):
        tokens = greedy(self, source, *args, **kwargs)
        tokens[-1] = self.eos_token  # the batch's last source answers nothing
        return tokens

    monkeypatch.setattr(OnnxSeq2Seq, "greedy", first_ends_at_once)
    flags = ["--with_source"] if with_source else []
    printed = "nothing after the tab" if with_source else "an empty line"
    cases = [  # (model, stdin, the last line printed: its source's, when printed)
        (text_exported("trained").model_dir, "жж\nab\tAH BE\nab\tAH\n", "ab"),
        (exported("gru").model_dir, "2 3\n4 5 6\n", "4 5 6"),
    ]
    for model_dir, stdin, source in cases:
        code, out, err = cli_output(["decode", "--model_dir", model_dir, *flags], capsys, stdin)
        assert code in (0, None) and len(out.splitlines()) == 2
        assert out.splitlines()[-1] == (f"{source}\t" if with_source else "")
        assert err.endswith(f"1 source(s) had an empty answer, printed as {printed} (the first: line 2)\n")


def test_decode_scores_a_batch_whose_every_prediction_is_empty(text_exported):
    """A model that ends every text at once (untrained, say) is scored, not a crash on a zero-wide batch."""
    from lit_seq2seq.cli import _Scores
    from lit_seq2seq.runtime import OnnxSeq2Seq

    scores = _Scores(OnnxSeq2Seq.load(text_exported("trained").model_dir))
    scores.add([3, 4], [], ["AH BE"])
    scores.add([4], [], ["BE", "AH"])
    assert scores.summary() == "exact match: 0/2 = 0.00% (WER 100.00%); token error rate: 3/3 = 100.00%"


def test_reserved_strings_in_text_are_unknown_tokens_not_padding_or_an_end():
    """A space-tokenized "<pad>" or "</s>" typed by a user must not become padding (silently dropped) or the end."""
    from lit_seq2seq.text import TextSpec, Tokenizer, Vocab

    spec = TextSpec(Tokenizer("space"), Tokenizer("space"), Vocab.build(["ka", "to"]), Vocab.build(["A"]))
    for text in ("ka <pad>", "ka </s>"):
        with pytest.raises(ValueError, match=r"unknown token '<(pad|/s)>' at position 2"):
            spec.encode(text)
    with_unk = TextSpec(Tokenizer("space"), Tokenizer("space"), Vocab.build(["ka"], unk=True), Vocab.build(["A"]))
    assert with_unk.encode("ka <pad> </s> <unk>") == [3, 2, 2, 2]


def test_a_text_past_the_longest_decoded_is_refused_even_when_untrained_lengths_are_allowed(text_model):
    model, _, _ = text_model("trained")
    with pytest.raises(ValueError, match=r"^texts\[0\]: 100,001 characters; at most 100,000 are decoded$"):
        model.translate(["a" * 100_001], allow_untrained_lengths=True)


def test_decode_says_how_many_sources_it_read_in_part_as_unk_and_when_an_argument_names_a_file(
    text_exported, tmp_path, monkeypatch, capsys
):
    """A model trained with --data.unknown_source unk decoded texts of unknown letters, and a file name given as an
    argument (`decode --model_dir M words.tsv`), without a word: an answer for the name, not the file's lines."""
    model_dir = text_exported("unk_char").model_dir
    code, out, err = cli_output(["decode", "--model_dir", model_dir], capsys, "ab\nxb\tAB\nzz\nab\tAB\n")
    assert code == 0 and out.count("\n") == 4
    assert (
        err.splitlines()[-1]
        == "2 source(s) held tokens the model does not know, each read as <unk> (the first: line 2)"
    )
    code, out, err = cli_output(["decode", "--model_dir", model_dir, "ab", "ba"], capsys)
    assert code == 0 and "held tokens" not in err and "note:" not in err  # known letters: nothing said of them
    monkeypatch.chdir(tmp_path)
    (tmp_path / "w.tsv").write_text("ab\tAB\n")  # a name of 5 characters: a length the model was trained on
    code, out, err = cli_output(["decode", "--model_dir", model_dir, "ab", "w.tsv"], capsys)
    assert code == 0 and out.count("\n") == 2
    assert err.splitlines() == [
        "note: argument 2 is the name of a file, 'w.tsv', decoded as a text; decode reads a file's lines from "
        f"stdin: lit-seq2seq decode --model_dir {model_dir} < w.tsv",  # the command to run, as given
        "1 source(s) held tokens the model does not know, each read as <unk> (the first: argument 2)",
    ]
