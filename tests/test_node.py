"""The Node consumer (export/node/decode.mjs on export/js/lit_seq2seq.mjs, onnxruntime-node): tokens identical to
OnnxSeq2Seq on every exported variant through both paths, and every bad input refused with one line and exit code 2.

Needs node and export/node/node_modules: a missing one FAILS these tests (`.ci/run` installs both).
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import unicodedata
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import EXPORT_VARIANTS, REPO, cli_output, pad_rows, restamp, strip_all
from test_runtime import DAMAGE, HOSTILE_METADATA, _damage, other_exports  # noqa: F401 - other_exports: a fixture

from lit_seq2seq import contract

NODE_DIR = REPO / "export" / "node"
DECODE = NODE_DIR / "decode.mjs"
MODULE = (REPO / "export" / "js" / "lit_seq2seq.mjs").as_uri()
INSTALL = "run `npm ci --ignore-scripts --prefix export/node` (node >= 18 needed; .ci/run does both)"


@pytest.fixture(scope="module", autouse=True)
def node_installed() -> None:
    """Fail, never skip: a consumer nobody ran is a defect."""
    if shutil.which("node") is None:
        pytest.fail(f"node is not installed: install nodejs, then {INSTALL}")
    if not (NODE_DIR / "node_modules" / "onnxruntime-node").is_dir():
        pytest.fail(f"export/node/node_modules/onnxruntime-node is missing: {INSTALL}")


def node_decode(model_dir: Path, stdin: str, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["node", str(DECODE), str(model_dir), *flags], input=stdin, capture_output=True, text=True, timeout=120
    )


# A script run as an ES module beside node_modules, with `ort`, the module as `lit`, and `load(dir)` -> its Seq2Seq.
PRELUDE = f"""
import ort from "onnxruntime-node";
import {{ readFileSync, existsSync }} from "node:fs";
import * as lit from "{MODULE}";
const read = (path) => new Uint8Array(readFileSync(path));
const load = (dir, options = {{}}) => lit.loadModel(ort, {{
  encoder: read(`${{dir}}/encoder.onnx`), decoder: read(`${{dir}}/decoder_step.onnx`),
  greedy: existsSync(`${{dir}}/greedy.onnx`) ? read(`${{dir}}/greedy.onnx`) : undefined }}, options);
const message = async (call) => {{
  try {{ await call(); return "no error"; }} catch (e) {{ return `${{e.name}}: ${{e.message}}`; }}
}};
"""


def node_script(code: str, *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run(
        ["node", "--input-type=module", "-e", PRELUDE + code, *args],
        cwd=NODE_DIR,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return result


def sources(model, count: int, seed: int = 0) -> list[list[int]]:
    """`count` random sources of every trained length, ids in range."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(model.min_source_length, model.source_length + 1, count)
    vocab = getattr(model, "source_vocab_size", None) or model.vocab_size  # v2 runtimes split the vocabulary
    return [rng.integers(model.min_token, vocab, n).tolist() for n in lengths]


def test_the_module_is_isomorphic():
    """export/js/lit_seq2seq.mjs also runs in a browser (onnxruntime-web): no Node-only names in it."""
    lines = (REPO / "export" / "js" / "lit_seq2seq.mjs").read_text().splitlines()
    code = "\n".join(line for line in lines if not line.lstrip().startswith(("//", "*", "/*")))
    assert not re.search(r"^import |\brequire\(|\bprocess\.|\bBuffer\b|node:", code, re.MULTILINE)


# ------------------------------------------------------------------------------------------ same tokens


@pytest.mark.parametrize("path", [[], ["--two-graph"]], ids=["greedy.onnx", "two-graph"])
@pytest.mark.parametrize("name", list(EXPORT_VARIANTS))
def test_node_decode_gives_the_tokens_of_onnxseq2seq(name, path, exported, runtime_model):
    model = runtime_model(name)
    rows = sources(model, 300)
    lines = [" ".join(map(str, row)) for row in rows]
    lines[::7] = [line + " 0 0" for line in lines[::7]]  # right-padded lines: padding is not a token
    result = node_decode(exported(name).model_dir, "".join(f"{line}\n" for line in lines), *path, "--batch-size", "64")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == strip_all(model, model.greedy(pad_rows(rows)))


def test_node_module_greedy_on_padded_batches_single_rows_and_max_len(exported, runtime_model):
    """The module API: a batch padded wider than source_length, one flat sequence, maxLen below and above the
    default (greedy.onnx's max_len is not feedable from onnxruntime-node: fewer steps cut its answer, more run the
    two graphs), both paths."""
    model = runtime_model("copy_trained")  # 1 to 3 tokens, end token 1
    rows = sources(model, 40, seed=3)
    wide = pad_rows([*rows, [2] * 3, [2]])
    wide = np.pad(wide, ((0, 0), (0, 4)))
    code = """
const m = await load(process.argv[1]);
const src = JSON.parse(process.argv[2]);
const out = {};
for (const twoGraph of [false, true]) {
  for (const maxLen of [undefined, 1, 2, 9]) {
    out[`${twoGraph} ${maxLen}`] = await m.greedy(ort, src, { twoGraph, maxLen });
  }
  out[`single ${twoGraph}`] = await m.greedy(ort, src[0], { twoGraph });
}
console.log(JSON.stringify(out));
"""
    out = json.loads(node_script(code, str(exported("copy_trained").model_dir), json.dumps(wide.tolist())).stdout)
    for two_graph in ("false", "true"):
        for max_len in (None, 1, 2, 9):
            expected = [model.strip(r) for r in model.greedy(wide, max_len)]
            assert out[f"{two_graph} {'undefined' if max_len is None else max_len}"] == expected
        assert out[f"single {two_graph}"] == model.strip(model.greedy(wide[0]))


def test_node_module_decodes_a_large_batch_in_chunks_with_the_rows_order(exported, runtime_model):
    """More than 256 rows of mixed lengths (CHUNK_ROWS, as in Python): length-sorted chunks, the answers in order."""
    model = runtime_model("copy_trained")  # 1 to 3 tokens
    batch = pad_rows(sources(model, 600, seed=5))
    code = """
const m = await load(process.argv[1]);
const src = JSON.parse(process.argv[2]);
console.log(JSON.stringify([await m.greedy(ort, src), await m.greedy(ort, src, { twoGraph: true })]));
"""
    fused, loop = json.loads(
        node_script(code, str(exported("copy_trained").model_dir), json.dumps(batch.tolist())).stdout
    )
    assert fused == loop == [model.strip(row) for row in model.greedy(batch)]
    assert len({len(row) for row in fused}) == 3  # answers of every length, so a reordering would show


BEAM_SETTINGS = [(1, 1.0), (3, 1.0), (3, 0.0), (3, -0.5), (8, 2.0)]  # K = 8 > the vocabulary of copy: -inf beams


@pytest.mark.parametrize("name", list(EXPORT_VARIANTS))
def test_node_module_beam_search_gives_the_tokens_and_scores_of_onnxseq2seq(name, exported, runtime_model):
    """The contract's beam search in JavaScript (two step graphs, rows repeated and reordered along each state's batch
    axis): per row the tokens of OnnxSeq2Seq.beam_search and its score to 1e-9, for beam sizes 1 to 8 and length
    penalties 1, 0, -0.5 and 2, on a padded batch and on one flat sequence."""
    model = runtime_model(name)
    batch = pad_rows(sources(model, 40, seed=11))
    code = """
const m = await load(process.argv[1]);
const src = JSON.parse(process.argv[2]);
const out = [];
for (const [beamSize, lengthPenalty] of JSON.parse(process.argv[3])) {
  out.push(await m.beamSearch(ort, src, { beamSize, lengthPenalty }));
}
out.push(await m.beamSearch(ort, src[0]));
console.log(JSON.stringify(out));
"""
    args = str(exported(name).model_dir), json.dumps(batch.tolist()), json.dumps(BEAM_SETTINGS)
    *out, single = json.loads(node_script(code, *args).stdout)
    for (k, penalty), got in zip(BEAM_SETTINGS, out, strict=True):
        tokens, scores = model.beam_search(batch, beam_size=k, length_penalty=penalty)
        assert got["tokens"] == [model.strip(row) for row in tokens], (k, penalty)
        np.testing.assert_allclose(got["scores"], scores, rtol=1e-9, atol=1e-12)
    tokens, score = model.beam_search(batch[0])  # the defaults: beam 4, length penalty 1
    assert single["tokens"] == model.strip(tokens)
    np.testing.assert_allclose(single["scores"], score, rtol=1e-9)
    if name == "copy_trained":  # a model that learned its task: beam 3 answers right where greedy does
        assert out[1]["tokens"] == [model.strip(row) for row in model.greedy(batch)]


def test_node_module_n_best_gives_the_ranked_beams_and_scores_of_onnxseq2seq(exported, runtime_model, text_exported):
    """beamSearch({nBest}): per row the N best final beams of OnnxSeq2Seq.beam_search(n_best=N), best first, with their
    scores, in one call and over chunks (600 rows); beamText's N best texts are translate's; a bad nBest is named."""
    model = runtime_model("copy_trained")
    batch = pad_rows(sources(model, 600, seed=3))
    code = """
const m = await load(process.argv[1]);
const src = JSON.parse(process.argv[2]);
const out = [await m.beamSearch(ort, src, { beamSize: 4, nBest: 3 }), await m.beamSearch(ort, src[0], { nBest: 2 })];
for (const nBest of [0, 5, 1.5]) {
  try { await m.beamSearch(ort, src[0], { nBest }); } catch (error) { out.push(error.message); }
}
console.log(JSON.stringify(out));
"""
    ranked, single, *errors = json.loads(
        node_script(code, str(exported("copy_trained").model_dir), json.dumps(batch.tolist())).stdout
    )
    tokens, scores = model.beam_search(batch, beam_size=4, n_best=3)
    assert ranked["tokens"] == [[model.strip(beam) for beam in row] for row in tokens]
    np.testing.assert_allclose(ranked["scores"], scores, rtol=1e-9, atol=1e-12)
    tokens, scores = model.beam_search(batch[0], n_best=2)
    assert single["tokens"] == [model.strip(beam) for beam in tokens]
    np.testing.assert_allclose(single["scores"], scores, rtol=1e-9)
    assert errors == [f"nBest must be an integer in [1, beamSize (4)], got {n}" for n in ("0", "5", "1.5")]
    text = text_exported("trained")
    code = """
const m = await load(process.argv[1]);
console.log(JSON.stringify(await m.beamText(ort, ["abé", "жж"], { beamSize: 4, nBest: 3 })));
"""
    from lit_seq2seq.runtime import OnnxSeq2Seq

    got = json.loads(node_script(code, str(text.model_dir)).stdout)
    assert got == OnnxSeq2Seq.load(text.model_dir).translate(["abé", "жж"], beam_size=4, n_best=3)


def test_node_distinct_answers_is_the_python_runtimes_distinct(exported, runtime_model):
    model = runtime_model("gru")
    eos, pad = model.eos_token, model.pad_token
    beams = [[3, 3, eos], [3, 3, pad], [3, eos, pad], [4, 4, 4], [5, eos, pad]]
    scores = [-1.0, -2.0, -3.0, None, -4.0]  # None: -Infinity (JSON has none)
    code = """
const [tokens, scores] = JSON.parse(process.argv[1]);
console.log(JSON.stringify(lit.distinctAnswers(tokens, scores.map((s) => s ?? -Infinity))));
"""
    stripped = [model.strip(b) for b in beams]
    got = json.loads(node_script(code, json.dumps([stripped, scores])).stdout)
    expected = model.distinct(np.array(beams), np.array([-np.inf if s is None else s for s in scores]))
    assert got == expected == [[3, 3], [3], [5]]


def test_node_decode_n_best_prints_as_pythons_decode(exported, text_exported, capsys):
    for model_dir, stdin, count in (
        (text_exported("trained").model_dir, "abé\tAH BE É\nab\tAH\nab\tBE\nжж\n", 3),
        (exported("copy_trained").model_dir, "2 3\t3 2\n4 5 3\n", 2),
    ):
        for flags in (["--beam-size", "4", "--n-best", "3"], ["--beam_size", "3", "--n_best", "2", "--with-source"]):
            node = node_decode(model_dir, stdin, *flags)
            code, out, err = cli_output(["decode", "--model_dir", model_dir, *flags], capsys, stdin=stdin)
            assert (node.returncode, node.stdout, node.stderr) == (code, out, err) and code == 0, (node.stderr, err)
            assert count < len(out.splitlines()) <= count * int(flags[3])
    for flags, message in (
        (["--n-best", "2"], "--n-best applies to beam search only: add --beam-size K (K >= N)"),
        (["--beam-size", "2", "--n-best", "3"], "--n-best must be in [1, --beam-size (2)], got 3"),
        (["--beam-size", "2", "--n-best", "x"], '--n-best must be an integer, got "x"'),
    ):
        assert_refused(node_decode(exported("gru").model_dir, "2 3\n", *flags), f"decode.mjs: {message}")


def test_node_decode_notes_empty_answers_as_pythons_decode(exported, runtime_model, capsys):
    """The gru model (barely trained) answers nothing for some sources at beam 3 without length normalisation: both
    decoders print the same lines and the same note, with and without --with-source."""
    model_dir = exported("gru").model_dir
    stdin = "2 3\n4 5 6\n7 2 2 6 5\n"
    for flags in (
        ["--beam-size", "3", "--length-penalty", "0"],
        ["--beam-size", "3", "--length-penalty", "0", "--with-source"],
    ):
        node = node_decode(model_dir, stdin, *flags)
        code, out, err = cli_output(["decode", "--model_dir", model_dir, *flags], capsys, stdin=stdin)
        assert (node.returncode, node.stdout, node.stderr) == (code, out, err) and code == 0, (node.stderr, err)
        assert "source(s) had an empty answer, printed as " in err


def test_node_beam_search_in_chunks_and_through_decode_mjs(exported, runtime_model):
    """600 rows (length-sorted chunks of 256 sources x K beams, the answers in order), and `decode.mjs --beam-size`
    printing the lines of `lit-seq2seq decode --beam_size` (its --length-penalty too)."""
    model = runtime_model("copy_trained")
    rows = sources(model, 600, seed=5)
    stdin = "".join(" ".join(map(str, row)) + "\n" for row in rows)
    model_dir = exported("copy_trained").model_dir
    for flags in (["--beam-size", "3"], ["--beam_size", "2", "--length_penalty", "0"]):
        result = node_decode(model_dir, stdin, *flags)
        assert result.returncode == 0, result.stderr
        penalty = 0.0 if "0" in flags else 1.0
        expected = model.beam_search(pad_rows(rows), beam_size=int(flags[1]), length_penalty=penalty)[0]
        assert result.stdout.splitlines() == strip_all(model, expected)
    assert len({len(line.split()) for line in result.stdout.splitlines()}) == 3  # a reordering would show


def test_node_beam_search_refuses_bad_settings_as_the_python_runtime(exported):
    model_dir = exported("copy_trained").model_dir
    for flags, message in [
        (["--beam-size", "0"], '--beam-size must be an integer in [1, 1024], got "0"'),
        (["--beam-size", "1025"], '--beam-size must be an integer in [1, 1024], got "1025"'),
        (["--beam-size", "2.5"], '--beam-size must be an integer in [1, 1024], got "2.5"'),
        (["--beam-size"], "--beam-size must be an integer in [1, 1024], got null"),
        (["--length-penalty", "2"], "--length-penalty applies to beam search only: add --beam-size K (K > 1)"),
        (["--beam-size", "2", "--length-penalty", "nan"], "--length-penalty must be a number in [-10, 10], got"),
        (["--beam-size", "2", "--length-penalty", "10.5"], "--length-penalty must be a number in [-10, 10], got"),
    ]:
        assert_refused(node_decode(model_dir, "2 3\n", *flags), message)
    code = """
const m = await load(process.argv[1]);
const out = [];
for (const options of [{ beamSize: 0 }, { beamSize: true }, { beamSize: 2.5 }, { beamSize: 1025 },
  { lengthPenalty: "1" }, { lengthPenalty: NaN }, { lengthPenalty: -11 }]) {
  out.push(await message(() => m.beamSearch(ort, [[2, 3]], options)));
}
out.push(await message(() => m.beamSearch(ort, [[2, 9]])));  // the source is checked as greedy checks it
console.log(JSON.stringify(out));
"""
    out = json.loads(node_script(code, str(model_dir)).stdout)
    assert out == [
        "InputError: beamSize must be a positive integer, got 0",
        "InputError: beamSize must be a positive integer, got true",
        "InputError: beamSize must be a positive integer, got 2.5",
        "InputError: beamSize must be <= 1024, got 1025",
        'InputError: lengthPenalty must be a finite number, got "1"',
        "InputError: lengthPenalty must be a finite number, got NaN",
        "InputError: lengthPenalty must be in [-10, 10] (scores are log-probability / length ** lengthPenalty), "
        "got -11",
        "InputError: source[0, 1]: token 9 is out of range; tokens must be in [2, 5], or 0 (padding) at the end",
    ]


def test_node_module_refuses_an_apps_mistakes_naming_them(exported):
    """What an app gets wrong calling the module: a Python-style or misspelt option name (it was ignored: the defaults
    ran), options that are not an object, a forgotten `ort`, file paths or other non-bytes for the files, odd values
    (NaN, a BigInt, a string maxLen, a non-boolean twoGraph). An ArrayBuffer, what fetch() gives, is taken."""
    model_dir = exported("copy_trained").model_dir
    code = """
const dir = process.argv[1];
const m = await load(dir);
const src = [[2, 3]];
const out = {};
const calls = {
  max_len: () => m.beamSearch(ort, src, { max_len: 2 }),
  beam_size: () => m.beamSearch(ort, src, { beam_size: 4 }),
  greedyBeam: () => m.greedy(ort, src, { beamSize: 4 }),
  textBeam: () => m.greedyText(ort, ["ab"], { lengthPenalty: 1 }),
  nullOptions: () => m.beamSearch(ort, src, null),
  numberOptions: () => m.greedy(ort, src, 4),
  noOrt: () => m.beamSearch(src, { beamSize: 4 }),
  noOrtLoad: () => lit.loadModel({}, {}),
  paths: () => lit.loadModel(ort, { encoder: `${dir}/encoder.onnx`, decoder: `${dir}/decoder_step.onnx` }),
  bigint: () => m.beamSearch(ort, src, { beamSize: 4n }),
  maxLenString: () => m.greedy(ort, src, { maxLen: "3" }),
  twoGraph: () => m.greedy(ort, src, { twoGraph: "yes" }),
  loadOption: () => load(dir, { verify: false }),
};
for (const [name, call] of Object.entries(calls)) out[name] = await message(call);
const buffer = (file) => read(`${dir}/${file}`).buffer; // read() copies into an ArrayBuffer of its own
const fromBuffers = await lit.loadModel(ort, { encoder: buffer("encoder.onnx"), decoder: buffer("decoder_step.onnx") });
out.arrayBuffer = JSON.stringify(await fromBuffers.greedy(ort, src)) === JSON.stringify(await m.greedy(ort, src));
console.log(JSON.stringify(out));
"""
    out = json.loads(node_script(code, str(model_dir)).stdout)
    beam_options = "the options are beamSize, lengthPenalty, allowUntrainedLengths, maxLen, nBest"
    assert out == {
        "max_len": f"InputError: beamSearch: unknown option max_len; {beam_options}",
        "beam_size": f"InputError: beamSearch: unknown option beam_size; {beam_options}",
        "greedyBeam": "InputError: greedy: unknown option beamSize; the options are twoGraph, allowUntrainedLengths, "
        "maxLen",
        "textBeam": "InputError: greedyText: unknown option lengthPenalty; the options are twoGraph, "
        "allowUntrainedLengths, maxLen",
        "nullOptions": "TypeError: beamSearch: options must be an object ({beamSize, lengthPenalty, "
        "allowUntrainedLengths, maxLen, nBest}), got null",
        "numberOptions": "TypeError: greedy: options must be an object ({twoGraph, allowUntrainedLengths, maxLen}), "
        "got 4",
        "noOrt": 'TypeError: ort: pass the onnxruntime module first (import ort from "onnxruntime-node", or '
        "onnxruntime-web's), got [[2,3]]",
        "noOrtLoad": 'TypeError: ort: pass the onnxruntime module first (import ort from "onnxruntime-node", or '
        "onnxruntime-web's), got {}",
        "paths": "TypeError: files.encoder (encoder.onnx): the file's bytes are expected (a Uint8Array, as "
        "readFileSync gives, or an ArrayBuffer), got a string: read the file first",
        "bigint": "InputError: beamSize must be a positive integer, got 4n",
        "maxLenString": 'InputError: maxLen must be an integer in [1, 4096], got "3"',
        "twoGraph": 'TypeError: twoGraph must be true or false, got "yes"',
        "loadOption": "InputError: loadModel: unknown option verify; the options are folder, sessionOptions, "
        "verifyHash",
        "arrayBuffer": True,
    }


def test_node_decode_without_greedy_onnx_uses_the_two_graphs(exported, runtime_model, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(exported("gru_bi_attention").model_dir, old)
    (old / contract.GREEDY_FILE).unlink()  # an export older than greedy.onnx
    model = runtime_model("gru_bi_attention")
    rows = sources(model, 50)
    result = node_decode(old, "".join(" ".join(map(str, r)) + "\n" for r in rows))
    assert result.returncode == 0 and result.stdout.splitlines() == strip_all(model, model.greedy(pad_rows(rows)))


# ------------------------------------------------------------------------------------------ bad input


def assert_refused(result: subprocess.CompletedProcess, message: str) -> None:
    """Exit code 2, one line on stderr holding `message`, no stack trace."""
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
    assert "    at " not in result.stderr


def test_node_module_requires_the_metadata_keys_the_python_runtime_requires():
    result = node_script("console.log(JSON.stringify(lit.REQUIRED_KEYS));")
    keys = {version: sorted(names) for version, names in json.loads(result.stdout).items()}
    assert keys == {version: sorted(contract.required_keys(version)) for version in contract.READABLE_VERSIONS}


def test_node_module_limits_are_the_python_runtimes():
    """Copied by hand into the JS module (no shared file between the two languages): this keeps them equal."""
    from lit_seq2seq import runtime, search

    names = ["MAX_STEPS", "MAX_SOURCE_TOKENS", "CHUNK_ROWS", "BEAM_CHUNK_ROWS", "MAX_BEAM_SIZE", "MAX_LENGTH_PENALTY"]
    result = node_script(f"console.log(JSON.stringify([{', '.join(f'lit.{n}' for n in [*names, 'BATCH_AXIS'])}]));")
    python = [search.MAX_STEPS, runtime.MAX_SOURCE_TOKENS, runtime.CHUNK_ROWS, runtime.BEAM_CHUNK_ROWS]
    python += [search.MAX_BEAM_SIZE]
    assert json.loads(result.stdout) == [*python, search.MAX_LENGTH_PENALTY, dict(contract.BATCH_AXIS)]


@pytest.mark.parametrize("how", list(DAMAGE))
def test_node_decode_refuses_damaged_model_files(how, exported, other_exports, tmp_path):  # noqa: F811
    model_dir = tmp_path / "model"
    shutil.copytree(exported("gru").model_dir, model_dir)
    _damage(how, model_dir, other_exports)
    assert_refused(node_decode(model_dir, "2 3\n"), DAMAGE[how])


@pytest.mark.parametrize(
    "stdin, flags, message",
    [
        ("2 3\n9 2\n", [], "line 2: source[0]: token 9 is out of range; tokens must be in [2, 7]"),
        ("2 3\n1 2\n", [], "line 2: source[0]: token 1 is out of range"),  # the end token is not a source
        ("2 3\n-2 3\n", [], "line 2: source[0]: token -2 is out of range"),
        ("2 3\n\n2\n", [], "line 2: source: empty sequence (source_len is 0)"),  # (at the end: dropped)
        ("2 3\n0 3\n", [], "line 2: source: empty sequence (starts with padding)"),
        ("2 3\n2 0 3\n", [], "line 2: source[2]: token after padding; pad only at the end"),
        ("2 3\n2 x\n", [], "line 2: '2 x' is not a list of space-separated integer token ids"),
        ("2 3\n2\ufeff3\n", [], "line 2: '2\\ufeff3' is not a list of space-separated integer token ids"),  # repr
        ("2 3\n1_3\n", [], "line 2: '1_3' is not a list of space-separated integer token ids"),
        ("2 3\n2 99999999999999999999\n", [], "line 2: token 99999999999999999999 is out of range"),
        ("2 3\n2 3 4 5 6 7\n", [], "line 2: source: 6 tokens; this model was trained on sources of 1 to 5 tokens"),
        ("2 3\n2 3\t \n", [], "line 2: empty reference after the tab"),  # as Python's decode
        ("2 3\n2 3\t2 3\t4\n", [], "line 2 (reference): control character U+0009 at character 4"),
        ("2 3\n", ["--batch-size", "0"], "--batch-size must be an integer >= 1"),
        ("2 3\n", ["--beam"], "unknown option --beam"),
    ],
    ids=[
        *["range", "end token", "negative", "empty", "leading pad", "gap", "not ids", "U+FEFF", "1_3", "huge"],
        *["length", "no ref", "two tabs"],
        *["flag", "opt"],
    ],
)
def test_node_decode_refuses_a_bad_line_after_printing_the_lines_before_it(
    stdin, flags, message, exported, runtime_model
):
    result = node_decode(exported("gru").model_dir, stdin, *flags)
    assert_refused(result, message)
    if flags == []:
        assert result.stdout.splitlines() == strip_all(runtime_model("gru"), runtime_model("gru").greedy([[2, 3]]))


def test_node_decode_says_how_many_lines_had_no_reference(exported, runtime_model):
    model = runtime_model("gru")
    answer = " ".join(map(str, model.strip(model.greedy([2, 3]))))
    result = node_decode(exported("gru").model_dir, f"2 3\t{answer}\n2 3\n2 3\n")
    assert result.returncode == 0, result.stderr
    assert result.stderr == "exact match: 1/1 = 100.00%; 2 lines without a reference not scored\n"


def test_node_decode_refuses_stdin_that_is_not_utf8_after_printing_the_lines_before(exported, runtime_model):
    args = ["node", str(DECODE), str(exported("gru").model_dir)]
    result = subprocess.run(args, input=b"2 3\n\xff 2\n", capture_output=True, timeout=120)
    assert (
        result.returncode == 2
        and result.stderr.decode() == "decode.mjs: stdin line 2: not UTF-8 text; save it as UTF-8\n"
    )
    assert result.stdout.decode().splitlines() == strip_all(runtime_model("gru"), runtime_model("gru").greedy([[2, 3]]))
    utf16 = subprocess.run(args, input="2 3\n".encode("utf-16"), capture_output=True, timeout=120)
    message = "decode.mjs: stdin line 1: not UTF-8 text (a UTF-16 byte order mark); save it as UTF-8\n"
    assert utf16.returncode == 2 and utf16.stderr.decode() == message


def test_node_decode_allow_untrained_lengths_decodes_them(exported, runtime_model):
    model = runtime_model("gru")
    result = node_decode(exported("gru").model_dir, "2 3 4 5 6 7\n", "--allow-untrained-lengths", "--two-graph")
    assert result.returncode == 0, result.stderr
    expected = model.greedy([[2, 3, 4, 5, 6, 7]], allow_untrained_lengths=True)
    assert result.stdout.splitlines() == strip_all(model, expected)


def test_node_decode_refuses_a_missing_folder_and_nonfinite_logits(exported, tmp_path):
    assert_refused(node_decode(tmp_path / "nowhere", "2 3\n"), "no such folder")
    model_dir = tmp_path / "nan"
    shutil.copytree(exported("gru").model_dir, model_dir)
    decoder = onnx.load(str(model_dir / contract.DECODER_FILE))
    bias = next(t for t in decoder.graph.initializer if len(t.dims) == 1 and t.dims[0] == 8)  # logits bias, V = 8
    values = onnx.numpy_helper.to_array(bias).copy()
    values[3] = np.nan
    bias.CopyFrom(onnx.numpy_helper.from_array(values, bias.name))
    onnx.save(decoder, str(model_dir / contract.DECODER_FILE))
    restamp(model_dir / contract.DECODER_FILE)
    message = "decoder_step.onnx: non-finite logits (NaN) at step 0, row 0; the model is damaged"
    assert_refused(node_decode(model_dir, "2 3\n", "--two-graph"), message)


def test_node_module_refuses_empty_batches_before_onnxruntime(exported):
    """onnxruntime's LSTM kernel aborts the process on a batch of 0 rows: the module refuses first, on both paths,
    and the process lives on to say so."""
    code = """
const m = await load(process.argv[1]);
const out = [];
for (const twoGraph of [false, true]) {
  for (const src of [[], [[]], [[0, 0]], [[2, 3], [2]], [[2, 3.5]], [["2"]]]) {
    out.push(await message(() => m.greedy(ort, src, { twoGraph })));
  }
}
out.push(await message(() => m.greedy(ort, [[2, 3]], { allowUntrainedLengths: "yes" })));
out.push(await message(() => m.greedy(ort, [[2, 3]], { maxLen: 0 })));
console.log(JSON.stringify(out));
"""
    out = json.loads(node_script(code, str(exported("lstm_attention").model_dir)).stdout)
    expected = [
        "InputError: source: empty batch",
        "InputError: source: empty sequence (source_len is 0)",
        "InputError: source[0]: empty sequence (starts with padding)",
        "InputError: source: rows have different lengths; right-pad them with the pad token",
        'InputError: source[0, 1]: "3.5" is not an integer token id',
        'InputError: source[0, 0]: "2" is not an integer token id',
    ]
    assert out[:6] == expected and out[6:12] == expected
    assert out[12] == 'TypeError: allowUntrainedLengths must be true or false, got "yes"'
    assert out[13] == "InputError: maxLen must be an integer in [1, 4096], got 0"


def test_node_module_refuses_max_len_past_a_fixed_length_models_answer_unless_allowed(exported, runtime_model):
    """As the Python runtime: without an end token, the steps past the trained answer length were never trained."""
    model = runtime_model("lstm")  # reverse_first: answers of exactly 2 tokens, no end token
    code = """
const m = await load(process.argv[1]);
const out = [];
for (const twoGraph of [false, true]) {
  out.push(await message(() => m.greedy(ort, [[2, 3, 4, 5]], { twoGraph, maxLen: 3 })));
  out.push(await m.greedy(ort, [[2, 3, 4, 5]], { twoGraph, maxLen: 3, allowUntrainedLengths: true }));
}
console.log(JSON.stringify(out));
"""
    out = json.loads(node_script(code, str(exported("lstm").model_dir)).stdout)
    refused = (
        "InputError: maxLen 3: this model has no end token and was trained to answer with exactly 2 tokens, so the "
        "steps past them are untrained (pass allowUntrainedLengths: true to decode them anyway)"
    )
    allowed = model.greedy([[2, 3, 4, 5]], 3, allow_untrained_lengths=True).tolist()  # one row of a batch
    assert out == [refused, allowed, refused, allowed]


def test_node_module_integrity_rule_corner_cases(exported, tmp_path):
    """Upper-case hex, two hash entries, no hash entry: refused with a clear message; every truncation of a file
    is refused by the hash check and never hangs or crashes the protobuf reader."""
    source = exported("lstm").model_dir / contract.ENCODER_FILE
    data = source.read_bytes()
    stored = next(p.value for p in onnx.load(str(source)).metadata_props if p.key == contract.CONTENT_HASH_KEY)
    (tmp_path / "upper.onnx").write_bytes(data.replace(stored.encode(), stored.upper().encode()))
    model = onnx.load(str(source))
    model.metadata_props.add(key=contract.CONTENT_HASH_KEY, value=stored)
    (tmp_path / "two.onnx").write_bytes(model.SerializeToString())
    restamp(source, tmp_path / "restamped.onnx")  # stays valid
    (tmp_path / "none.onnx").write_bytes(data.replace(b"content_sha256", b"content_sha999"))
    code = """
const dir = process.argv[1];
const out = {};
for (const name of ["upper", "two", "none", "restamped"]) {
  out[name] = await message(() => lit.checkContentHash(read(`${dir}/${name}.onnx`), name));
}
const bytes = read(process.argv[2]);
const cuts = new Set();
for (let n = 0; n < bytes.length; n += 97) cuts.add(n);
for (let n = Math.max(0, bytes.length - 300); n < bytes.length; n++) cuts.add(n);
const kinds = {};
for (const n of cuts) {
  const cut = bytes.subarray(0, n);
  const hash = await message(() => lit.checkContentHash(cut, "cut"));
  const meta = await message(() => lit.readMetadata(cut, "cut"));
  const kind = `${hash.split(":")[0]} / ${meta.split(":")[0]}`;
  kinds[kind] = (kinds[kind] ?? 0) + 1;
}
out.cuts = cuts.size;
out.kinds = kinds;
out.meta = lit.readMetadata(bytes).export_id;
console.log(JSON.stringify(out));
"""
    out = json.loads(node_script(code, str(tmp_path), str(source)).stdout)
    assert out["upper"] == (
        "ModelFileError: upper: content hash mismatch, its content_sha256 is not 64 lower-case hex digits; "
        "export it again"
    )
    assert out["two"] == "ModelFileError: two: 2 content_sha256 entries, exactly one expected (altered?)"
    assert out["none"].startswith("ModelFileError: none: no content_sha256 metadata (truncated")
    assert out["restamped"] == "no error"
    # Every cut fails the hash check; the reader either reads what is there (a cut between fields) or says why not.
    assert set(out["kinds"]) <= {"ModelFileError / no error", "ModelFileError / ModelFileError"}, out["kinds"]
    assert sum(out["kinds"].values()) == out["cuts"] > 300
    assert len(out["meta"]) == 32


# ------------------------------------------------------------------------------------------ format_version 2


TEXT_MODELS = {
    # char tokens, lower-cased after NFC: "E" + combining acute is "é"; target tokens joined by spaces
    "char": {
        "source_tokens": ["<pad>", "</s>", "a", "é", "c", "d", "e", "f"],
        "target_tokens": ["<pad>", "</s>", "x", "y", "z", "w", "v", "u"],
        "source_tokenizer": "char",
        "target_tokenizer": "space",
        "source_lowercase": "1",
        "lines": ["aéc", "E\u0301", "DaF", "ffe"],
        "ids": [[2, 3, 4], [3], [5, 2, 7], [7, 7, 6]],
        "unknown": (
            "aB",
            "line 1: unknown token 'b' at position 2 of 'ab', the text as the model reads it (lowercased)",
        ),
        "control": ("éa\x01c", "line 1: control character U+0001 at character 3; texts must be printable"),
    },
    # space tokens split as Python's str.split() does (an ideographic space too); target characters joined by ""
    "space": {
        "source_tokens": ["<pad>", "</s>", "one", "two", "three", "four", "five", "six"],
        "target_tokens": ["<pad>", "</s>", "p", "q", "r", "s", "t", "ü"],
        "source_tokenizer": "space",
        "target_tokenizer": "char",
        "source_lowercase": "0",
        "lines": ["one two", "  six\u3000five  ", "three"],
        "ids": [[2, 3], [7, 6], [4]],
        "unknown": ("one One", "line 1: unknown token 'One' at position 2"),
        "control": ("one\x0btwo", "line 1: control character U+000B at character 4; texts must be printable"),
        # a file without spaces is one token: its message shows 40 characters, as the Python runtime's does
        "long": (
            "one " + "ü" * 5000,
            f"line 1: unknown token '{'ü' * 40}'... (5,000 characters) at position 2",
        ),
    },
}


def as_text_model(model_dir: Path, spec: dict, out: Path) -> Path:
    """A copy of an id export (ids 2..7) re-stamped as a format_version 2 text model with the keys of `spec`."""
    shutil.copytree(model_dir, out)
    change = {"format_version": "2", "vocab_size": None, "source_vocab_size": "8", "target_vocab_size": "8"}
    change |= {k: spec[k] if isinstance(spec[k], str) else json.dumps(spec[k]) for k in list(spec)[:5]}
    change |= {"target_lowercase": "0", "normalization": "NFC", "unk_token": ""}
    for name in (contract.ENCODER_FILE, contract.DECODER_FILE, contract.GREEDY_FILE):
        restamp(out / name, **change)
    return out


@pytest.mark.parametrize("kind", list(TEXT_MODELS))
def test_node_decode_reads_format_version_2_text_models(kind, exported, runtime_model, tmp_path):
    """A gru export (copy, ids 2..7, end token 1) re-stamped as format_version 2 with text keys: text in, text out,
    the tokens of OnnxSeq2Seq on the same ids; vocab_size gone, source/target_vocab_size read instead."""
    spec = TEXT_MODELS[kind]
    model_dir = as_text_model(exported("gru").model_dir, spec, tmp_path / "v2")
    model = runtime_model("gru")
    joiner = "" if spec["target_tokenizer"] == "char" else " "
    expected = [
        joiner.join(spec["target_tokens"][t] for t in model.strip(r)) for r in model.greedy(pad_rows(spec["ids"]))
    ]
    for path in ([], ["--two-graph"]):
        result = node_decode(model_dir, "".join(f"{line}\n" for line in spec["lines"]), *path)
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines() == expected
    # a control character: refused as by OnnxSeq2Seq.encode_text, not split on
    for case in [case for case in ("unknown", "control", "long") if case in spec]:
        line, message = spec[case]
        assert_refused(node_decode(model_dir, f"{line}\n"), message)
    assert_refused(node_decode(model_dir, "\n\nx\n"), "line 1: empty text")  # as Python's decode words it
    done = node_decode(model_dir, f"{spec['lines'][0]}\n\n\n")  # empty lines at the end: dropped, as decode does
    assert (done.returncode, done.stdout.splitlines()) == (0, expected[:1]), done.stderr
    for name in (contract.ENCODER_FILE, contract.DECODER_FILE, contract.GREEDY_FILE):
        restamp(model_dir / name, source_tokenizer="bpe")
    assert_refused(
        node_decode(model_dir, "x\n"), 'metadata source_tokenizer "bpe"; this reader knows "char" and "space"'
    )


@pytest.mark.parametrize("name", ["trained", "unk_char", "space_source"])
def test_node_decode_translates_real_text_exports_as_the_python_runtime(name, text_exported):
    """Exports of text models written by `lit-seq2seq export` (format 2, own source and target vocabularies): the
    Node consumer turns the same texts into the same text as OnnxSeq2Seq.translate, greedy and beam, NFC and
    lowercasing included."""
    from conftest import text_pairs

    from lit_seq2seq.runtime import OnnxSeq2Seq

    model_dir = text_exported(name).model_dir
    model = OnnxSeq2Seq.load(model_dir)
    words = [word for word, _ in text_pairs(60, seed=3)] + ["ÉA", "Ab", "e\u0301a"]  # upper case, decomposed é
    if name == "space_source":  # letters as space-separated tokens, each composed first
        words = [" ".join(unicodedata.normalize("NFC", word)) for word in words]
    greedy, beam = model.translate(words), model.translate(words, beam_size=3)
    for path, expected in (([], greedy), (["--two-graph"], greedy), (["--beam-size", "3"], beam)):
        result = node_decode(model_dir, "".join(f"{w}\n" for w in words), *path)
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines() == expected
    code = """
const m = await load(process.argv[1]);
const words = JSON.parse(process.argv[2]);
const beam = (text) => m.beamText(ort, text, { beamSize: 3 });
console.log(JSON.stringify([await beam(words), await beam(words[0])]));
"""
    texts, single = json.loads(node_script(code, str(model_dir), json.dumps(words)).stdout)
    assert texts == beam and single == beam[0]


def test_node_decode_refuses_empty_and_long_texts_as_pythons_decode(text_exported, capsys):
    """An empty line of a text model is "empty text", a text of an untrained length counts characters (a char
    model) and a reference with a second tab is refused, as `lit-seq2seq decode` does (they were "source: empty
    sequence", "N tokens" and a reference that took the next column in); --flag=value is read as argparse reads it."""
    from conftest import text_pairs

    model_dir = text_exported("trained").model_dir
    word = text_pairs(1, seed=2)[0][0]
    for stdin in (f"{word}\n\n{word}\n", f"{word * 20}\n", f"{word}\n{word}\tAH\tB\n"):  # a reference's tab
        node = node_decode(model_dir, stdin, "--beam-size=2")
        code, out, err = cli_output(["decode", "--model_dir", model_dir, "--beam_size=2"], capsys, stdin=stdin)
        assert code == 2 and node.stdout == out, (node.stdout, out)
        python = err.split("error: ", 1)[1].replace("--allow_untrained_lengths", "--allow-untrained-lengths")
        assert_refused(node, python.replace("--beam_size", "--beam-size"))  # each command's spelling of its flags


def test_node_decode_scores_references_as_pythons_decode(text_exported, capsys):
    """Several reference lines of one source (CMUdict's alternate pronunciations), adjacent or not, and references
    with extra spaces: the same lines out and the same exact match as `lit-seq2seq decode` (it once scored each line
    as a raw string: a source with two references could not reach 100%)."""
    from conftest import text_pairs

    model_dir = text_exported("trained").model_dir
    pairs = text_pairs(30, seed=5)
    lines = []
    for i, (word, target) in enumerate(pairs):
        if i % 3 == 0:
            lines.append(f"{word}\tnot it")  # a wrong reference first: the right one follows on the next line
        lines.append(f"{word}\t{target}  " if i % 2 else f"{word}\t{target}")
    lines.append(f"{pairs[0][0]}\t{pairs[0][1]}")  # a source seen before, not adjacent: one more reference of it
    lines += [lines[-1]] * 3  # and the same reference again: held once
    stdin = "".join(f"{line}\n" for line in lines)
    code, out, err = cli_output(["decode", "--model_dir", model_dir], capsys, stdin=stdin)
    assert code == 0, err
    python = re.match(r"exact match: (\d+)/(\d+) = [\d.]+% \(WER [\d.]+%\); token error rate: \d+/\d+ = ", err)
    result = node_decode(model_dir, stdin)
    assert result.returncode == 0, result.stderr
    sources = [line.split("\t")[0] for line in lines]
    runs = 1 + sum(a != b for a, b in zip(sources, sources[1:]))  # adjacent lines of one source: one line out
    assert result.stdout.splitlines() == out.splitlines() and len(out.splitlines()) == runs
    assert result.stderr == err  # exact match, WER and token error rate, as Python counts and prints them
    assert int(python[2]) == len(set(sources)) and int(python[1]) >= len(set(sources)) // 2  # trained: most right


def test_node_module_takes_node_buffers_and_leaves_them_untouched(exported):
    """fs.readFileSync's Buffer is a Uint8Array whose slice() is a view: the hash check must copy, not zero the
    caller's bytes (it did, and then refused the file as altered)."""
    code = """
const dir = process.argv[1];
const bytes = { encoder: readFileSync(`${dir}/encoder.onnx`), decoder: readFileSync(`${dir}/decoder_step.onnx`) };
const before = Buffer.from(bytes.encoder);
const m = await lit.loadModel(ort, bytes);
console.log(JSON.stringify([before.equals(bytes.encoder), Array.from(await m.greedy(ort, [[2, 3]]))[0].length > 0]));
"""
    assert json.loads(node_script(code, str(exported("gru").model_dir)).stdout) == [True, True]


def test_node_decode_refuses_files_in_each_others_places(exported, tmp_path):
    """Each file's metadata agrees with itself; the roles the contract gives the I/O names catch the swap."""
    model_dir = tmp_path / "swapped"
    shutil.copytree(exported("gru").model_dir, model_dir)
    encoder, decoder = model_dir / contract.ENCODER_FILE, model_dir / contract.DECODER_FILE
    encoder_bytes = encoder.read_bytes()
    encoder.write_bytes(decoder.read_bytes())
    decoder.write_bytes(encoder_bytes)
    assert_refused(node_decode(model_dir, "2 3\n"), "do not match the contract (encoder: source -> state; decoder step")


def test_node_quotes_tokens_as_pythons_repr(text_exported):
    """lit.shown is Python's show_token (repr, cut after 40 code points): quotes, backslashes, escapes of what
    str.isprintable() refuses (format characters, separators, C0/C1, astral ones), astral letters kept; and an
    unknown token is refused by encodeText({where}) in the Python runtime's words, the line named as given."""
    from lit_seq2seq.runtime import OnnxSeq2Seq
    from lit_seq2seq.text import show_token

    tokens = ["a", "it's", 'say "hi"', "both ' \"", "back\\slash", "\t\n\r", "\x00\x7f\x85\xa0", "\u200b\u2028\ufeff",
              "\U0001f600\U000e0001", "\u3000 x", "é" * 41, "'" * 45, "\ud800"]  # fmt: skip
    code = "console.log(JSON.stringify(JSON.parse(process.argv[1]).map(lit.shown)));"
    assert json.loads(node_script(code, json.dumps(tokens)).stdout) == [show_token(t) for t in tokens]
    model_dir = text_exported("trained").model_dir
    code = """
const m = await load(process.argv[1]);
console.log(JSON.stringify([await message(() => m.encodeText("aX\u200b", { where: "line 3" })),
  await message(() => m.encodeText("ab", { where: "" })), await message(() => m.encodeText(["ab"], { where: "x" }))]));
"""
    out = json.loads(node_script(code, str(model_dir)).stdout)
    with pytest.raises(ValueError) as python:
        OnnxSeq2Seq.load(model_dir).encode_text("aX\u200b", where="line 3")
    assert out[0] == f"InputError: {python.value}" and "'ax\\u200b'" in out[0], out[0]
    assert out[1:] == [
        'TypeError: where must be a non-empty string, got ""',
        "InputError: encodeText: where names one text; a batch's are texts[i]",
    ]


def test_node_module_names_bad_texts_as_the_python_runtime_does(text_exported):
    code = """
const m = await load(process.argv[1]);
const out = [];
const texts = ["", "  ", 42, ["ab", 3], "\\u200bab", ["ab", "a"]];
for (const x of texts) out.push(await message(() => m.greedyText(ort, x)));
out.push(await message(() => m.decodeText([999])));
console.log(JSON.stringify(out));
"""
    out = json.loads(node_script(code, str(text_exported("trained").model_dir)).stdout)
    assert out[:5] == [
        "InputError: text: empty text",
        "InputError: text: unknown token ' ' (whitespace: no training source held it) at position 1",  # a char model
        "TypeError: text must be a string or an array of strings, got number",
        "TypeError: texts[1]: texts must be strings, got number",
        "InputError: text: unknown token '\\u200b' at position 1",  # escaped as Python's repr escapes it
    ]
    assert out[5] == "no error"
    assert out[6].startswith("InputError: decodeText: id 999 is not in the target vocabulary (0 to ")


def test_node_decode_names_a_carriage_return_inside_a_line_as_python(text_exported, capsys):
    """A file with CR line ends is one line: both name its first carriage return with a hint, not a bare control
    character (pair files say "its lines end with a lone carriage return")."""
    model_dir = text_exported("trained").model_dir
    for stdin, at in (
        ("ab\tAH BE\rb\tBE\r", "line 1 (reference): control character U+000D at character 6"),
        ("ab\rb\n", "line 1: control character U+000D at character 3"),
    ):
        node = node_decode(model_dir, stdin)
        code, out, err = cli_output(["decode", "--model_dir", model_dir], capsys, stdin=stdin)
        assert (node.returncode, node.stdout, code, out) == (2, "", 2, "")
        hint = "; texts must be printable (a carriage return inside a line: lines end at LF or CRLF; convert a file "
        assert node.stderr.removeprefix("decode.mjs: ") == err.removeprefix("lit-seq2seq decode: error: ")
        assert err == f"lit-seq2seq decode: error: {at}{hint}with CR line ends)\n"


@pytest.mark.parametrize("line", ["3 4", "3 4 5 6 7"], ids=["shorter", "longer"])
def test_node_decode_refuses_untrained_lengths_on_both_sides_as_python(line, exported, capsys):
    """A model trained on exactly 4 tokens: a mutation that dropped the lower bound passed every Node and web test."""
    model_dir = exported("lstm").model_dir
    code, _, err = cli_output(["decode", "--model_dir", model_dir, line], capsys)
    python = err.split("error: ", 1)[1].rstrip("\n")  # the flag alone named: each command's own spelling
    assert code == 2 and python.endswith("exactly 4 tokens (pass --allow_untrained_lengths to decode anyway)")
    node = python.replace("argument 1", "line 1").replace("--allow_untrained_lengths", "--allow-untrained-lengths")
    assert_refused(node_decode(model_dir, f"{line}\n"), node)
    assert node_decode(model_dir, f"{line}\n", "--allow-untrained-lengths").returncode == 0


def test_node_module_refuses_the_metadata_values_the_python_runtime_refuses(exported, text_exported, tmp_path):
    """The value checks of OnnxSeq2Seq._check_metadata, in the JS module too, each naming the key; the graphs'
    declared shapes (read from onnxruntime-node's inputMetadata/outputMetadata) with Python's very message."""
    import re

    # the key Python names (metadata KEY is ...), or for its "text metadata is damaged" the key changed
    cases = [
        (n, c, (re.search(r"metadata ([\w, ]+) is", m) or [None, next(iter(c))])[1]) for n, c, m in HOSTILE_METADATA
    ]
    shape_messages = {i: m for i, (_, _, m) in enumerate(HOSTILE_METADATA) if "the graphs'" in m}
    assert len(shape_messages) == 2  # hidden_size (h) and memory_dim (memory)
    folders = []
    for i, (name, changes, _) in enumerate(cases):
        source = text_exported("trained").model_dir if name == "text" else exported(name).model_dir
        shutil.copytree(source, tmp_path / str(i))
        for graph in contract.GRAPH_FILES:
            restamp(tmp_path / str(i) / graph, **changes)
        folders.append(str(tmp_path / str(i)))
    code = "const out = []; for (const dir of process.argv.slice(1)) out.push(await message(() => load(dir)));"
    out = json.loads(node_script(code + "console.log(JSON.stringify(out));", *folders).stdout)
    for i, ((_, changes, key), got) in enumerate(zip(cases, out, strict=True)):
        assert got.startswith("ModelFileError: ") and f"metadata {key}" in got, (changes, got)
        if i in shape_messages:
            assert got.endswith(shape_messages[i]), got


def test_node_decode_takes_texts_and_id_lines_as_arguments_as_python_decode(exported, text_exported, capsys):
    """`lit-seq2seq decode --model_dir DIR "hello"` had no Node counterpart: decode.mjs read stdin only."""
    from conftest import text_pairs

    words = [w for w, _ in text_pairs(3, seed=5)]
    for model_dir, args in (
        (exported("gru").model_dir, ["2 3 4", "5 6\t5 6", "2 3 4 5 6"]),  # one with a reference: scored
        (text_exported("trained").model_dir, words),
    ):
        node = node_decode(model_dir, "", *args)
        code, out, err = cli_output(["decode", "--model_dir", model_dir, *args], capsys)
        assert (node.returncode, node.stdout) == (code, out) == (0, out), (node.stderr, err)
    bad = node_decode(exported("gru").model_dir, "", "2 3", "2 99")
    assert_refused(bad, "argument 2: source[1]: token 99 is out of range")


# ------------------------------------------------------------------------------------------ --jsonl


def test_node_decode_jsonl_prints_and_scores_as_pythons_decode(exported, text_exported, capsys):
    """decode.mjs --jsonl: the output and scores of `lit-seq2seq decode --jsonl` and of its own SOURCE<TAB>REFERENCE
    lines, for a text model (several references per source, sources alone, non-ASCII escaped or not, other keys) and
    an id model (ids as strings), from stdin and as arguments."""
    from test_decode_jsonl import as_jsonl, as_tsv, text_rows

    id_rows = [("2 3", "3 2"), ("4 5 6", None), ("5 6", "6 5 1 0"), ("2 3 4", "2 3 4"), (" 7  6 ", "7 6")]
    for model_dir, rows in ((text_exported("trained").model_dir, text_rows()), (exported("gru").model_dir, id_rows)):
        tsv = node_decode(model_dir, as_tsv(rows), "--batch-size", "3")
        assert tsv.returncode == 0 and tsv.stderr.startswith("exact match: "), tsv.stderr
        for stdin in (as_jsonl(rows), as_jsonl(rows, ascii_only=False).replace('"source"', '"id": 1, "source"')):
            node = node_decode(model_dir, stdin, "--jsonl", "--batch-size", "3")
            code, out, err = cli_output(["decode", "--model_dir", model_dir, "--jsonl"], capsys, stdin=stdin)
            assert (node.returncode, node.stdout, node.stderr) == (code, out, err) == (0, tsv.stdout, tsv.stderr)
        lines = as_jsonl(rows[:5]).splitlines()
        node = node_decode(model_dir, "", "--jsonl", *lines)
        code, out, err = cli_output(["decode", "--model_dir", model_dir, "--jsonl", *lines], capsys)
        assert (node.returncode, node.stdout, node.stderr) == (code, out, err) and code == 0, node.stderr


def test_node_decode_names_jsonl_for_a_json_line_read_without_it(exported, text_exported):
    """Python's decode hints at --jsonl for a JSON object read as a SOURCE line; decode.mjs said only "unknown token"
    (a text model) or "not a list of space-separated integer token ids" (an id model)."""
    hint = "(decode reads SOURCE or SOURCE<TAB>REFERENCE lines; for JSON Lines add --jsonl)"
    line = ' {"source": "ab", "target": "AH BE"}'
    for model_dir in (text_exported("trained").model_dir, exported("gru").model_dir):
        for got in (node_decode(model_dir, f"{line}\n"), node_decode(model_dir, "", line)):
            assert_refused(got, hint)
            assert got.stderr.endswith(f"{hint}\n") and got.stderr.startswith("decode.mjs: "), got.stderr
        assert "add --jsonl" not in node_decode(model_dir, "", "ab{").stderr  # a brace inside: no JSON line
    assert node_decode(text_exported("trained").model_dir, f"{line}\n", "--jsonl").returncode == 0


def test_node_decode_refuses_a_command_line_onnxruntime_node_would_crash_on(exported):
    """onnxruntime-node 1.30 ended with a segmentation fault (exit code -11, nothing said) when the command line passed
    ~28 KB: a 30,000-character argument is refused, naming stdin; the same text on stdin decodes."""
    model_dir = exported("gru").model_dir
    long = " ".join(["2 3 4 5 6"] * 3000)  # 29,999 characters
    assert_refused(node_decode(model_dir, "", long), "give long or many sequences on stdin")
    assert node_decode(model_dir, "", *["2 3 4 5 6"] * 100).returncode == 0  # 1 KB: decoded
    piped = node_decode(model_dir, f"{long}\n", "--allow-untrained-lengths")
    assert piped.returncode == 0 and piped.stdout.count("\n") == 1, piped.stderr


def test_node_decode_says_what_it_read_as_unk_and_names_a_file_argument_as_pythons_decode(
    text_exported, tmp_path, monkeypatch, capsys
):
    """decode.mjs printed answers for texts of unknown letters (a model with <unk>) and for a file's name given as an
    argument, without a word; now Python's lines."""
    model_dir = text_exported("unk_char").model_dir
    stdin = "ab\nxb\tAB\nzz\nab\tAB\n"
    node = node_decode(model_dir, stdin)
    code, out, err = cli_output(["decode", "--model_dir", model_dir], capsys, stdin=stdin)
    assert (node.returncode, node.stdout, node.stderr) == (code, out, err) and "2 source(s) held tokens" in err
    monkeypatch.chdir(tmp_path)
    (tmp_path / "w.tsv").write_text("ab\tAB\n")
    node = node_decode(model_dir, "", "ab", "w.tsv")
    code, out, err = cli_output(["decode", "--model_dir", model_dir, "ab", "w.tsv"], capsys)
    assert (node.returncode, node.stdout) == (code, out) == (0, out)
    command = f"lit-seq2seq decode --model_dir {model_dir} < w.tsv"  # each names its own command to run
    assert node.stderr == err.replace(command, f"node {DECODE} {model_dir} < w.tsv") and command in err


def test_node_decode_skips_and_counts_bad_lines_as_pythons_decode(exported, text_exported, capsys):
    """decode.mjs had no --skip-bad-lines: a file with one bad line could not be decoded past it. Now the output,
    scores and counts of Python's --skip_bad_lines, for a text and an id model, empty lines inside included."""
    cases = [
        (text_exported("trained").model_dir, "ab\tAH BE\n\nax\n\nba\tBE AH\nab\t\nb\n\n"),
        (exported("gru").model_dir, "2 3\t3 2\n\n2 x\n4 5 6\n2 99\n"),
    ]
    for model_dir, stdin in cases:
        node = node_decode(model_dir, stdin, "--skip-bad-lines")
        code, out, err = cli_output(["decode", "--model_dir", model_dir, "--skip_bad_lines"], capsys, stdin=stdin)
        assert (node.returncode, node.stdout, node.stderr) == (code, out, err) and code == 0, (node.stderr, err)
        assert "skipped " in err and "bad line(s) of" in err
        node = node_decode(model_dir, "", "--skip_bad_lines", *stdin.split("\n")[:2])  # as arguments, both spellings
        code, out, err = cli_output(
            ["decode", "--model_dir", model_dir, "--skip-bad-lines", *stdin.split("\n")[:2]], capsys
        )
        assert (node.returncode, node.stdout, node.stderr) == (code, out, err) and "bad argument(s) of 2" in err
    every = node_decode(exported("gru").model_dir, "x\n\ny\n", "--skip-bad-lines")
    assert_refused(every, "decode.mjs: every line was bad (3 skipped), nothing decoded; the first: line 1: ")
    assert every.stdout == ""


def test_node_decode_with_source_prints_as_pythons_decode(exported, text_exported, capsys):
    """--with-source: the SOURCE<TAB>DECODING lines of Python's --with_source, a bad line skipped, references
    merged, --jsonl's "source", for a text and an id model."""
    cases = [
        (text_exported("trained").model_dir, "abé\tAH BE É\nab\tAH\nab\tBE\n\nЖ\n", [], 3),
        (text_exported("trained").model_dir, '{"source": "ab", "target": "AH"}\n{"source": "жж"}\n', ["--jsonl"], 2),
        (exported("gru").model_dir, "2 3\t3 2\n\n 4  5 6\n", [], 2),
    ]
    for model_dir, stdin, flags, outputs in cases:
        node = node_decode(model_dir, stdin, "--with-source", "--skip-bad-lines", *flags)
        code, out, err = cli_output(
            ["decode", "--model_dir", model_dir, "--with_source", "--skip_bad_lines", *flags], capsys, stdin=stdin
        )
        assert (node.returncode, node.stdout, node.stderr) == (code, out, err) and code == 0, (node.stderr, err)
        assert all("\t" in line for line in out.splitlines()) and len(out.splitlines()) == outputs


def _bad_jsonl_cases() -> list:
    from test_decode_jsonl import BAD_IDS, BAD_LINES

    return [pytest.param(line, id=name) for (line, _), name in zip(BAD_LINES, BAD_IDS, strict=True)]


@pytest.mark.parametrize("line", _bad_jsonl_cases())
def test_node_decode_jsonl_refuses_bad_lines_as_pythons_decode(line, text_exported, capsys):
    """Each bad line of test_decode_jsonl.BAD_LINES: Python's message (the reason a line is not JSON worded by
    JSON.parse instead), after the line before it was printed."""
    model_dir = text_exported("trained").model_dir
    stdin = f'{{"source": "abé"}}\n{line}\n{{"source": "ab", "target": "AH BE"}}\n'
    node = node_decode(model_dir, stdin, "--jsonl")
    code, out, err = cli_output(["decode", "--model_dir", model_dir, "--jsonl"], capsys, stdin=stdin)
    assert (node.stdout, code, out) == ("AH BE É\n", 2, "AH BE É\n")
    python = err.removeprefix("lit-seq2seq decode: error: ").rstrip("\n")
    if "bad JSON (" in python:
        before, after = python.split(" (", 1)[0], python.rsplit(")", 1)[1]
        assert_refused(node, f"decode.mjs: {before} (")
        assert node.stderr.rstrip("\n").endswith(f"){after}"), node.stderr
    else:  # an unknown token's too, worded as Python's (the token quoted as its repr quotes it)
        assert_refused(node, f"decode.mjs: {python}")
        assert node.stderr == f"decode.mjs: {python}\n"
    # as arguments, the bad one last (an empty one was held back as an empty line of stdin, then dropped)
    args = node_decode(model_dir, "", "--jsonl", '{"source": "abé"}', line)
    assert (args.returncode, args.stderr) == (2, node.stderr.replace("line 2", "argument 2"))


def test_node_decode_jsonl_names_a_repeated_key_and_the_keys_as_python(text_exported, capsys):
    """JSON.parse keeps the last of a repeated key silently: decode.mjs names it as Python's reader does (in nested
    objects too, the first object to close first), and lists the keys in the line's order (JavaScript puts integer
    keys first), escaped as Python's json.dumps escapes them."""
    model_dir = text_exported("trained").model_dir
    for line in (
        '{"source": "ab", "x": {"k": 1, "k": 2}}',
        '{"s": 1, "s": {"k": 1, "k": 2}}',
        '[{"source": "ab", "source": "a"}]',
        '{"b": 1, "2": 2, "é\\u00e9": 3, "\\ud83d\\ude00": 4}',
        '{"source": {"ж": [1, true, null, "é"]}}',
        '{"source": "ab", "target": "AH", "target": "BE"}',
    ):
        node = node_decode(model_dir, f"{line}\n", "--jsonl")
        code, _, err = cli_output(["decode", "--model_dir", model_dir, "--jsonl"], capsys, stdin=f"{line}\n")
        assert code == 2 and node.stderr == err.replace("lit-seq2seq decode: error: ", "decode.mjs: "), line


def _typed_at_a_terminal(command: list[str], lines: list[str]) -> tuple[list[str], str, int]:
    """Run `command` with a pseudo-terminal as stdin: type each line and wait (10 s at most) for its answer on
    stdout before typing the next, then Ctrl-D. The answers, stderr and the exit code."""
    import os
    import pty
    import select

    main_fd, terminal = pty.openpty()
    process = subprocess.Popen(command, stdin=terminal, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=NODE_DIR)
    os.close(terminal)
    answers = []
    try:
        for line in lines:
            os.write(main_fd, f"{line}\n".encode())
            ready, _, _ = select.select([process.stdout], [], [], 10)
            answers.append(process.stdout.readline().decode().rstrip("\n") if ready else "(no answer before EOF)")
        os.write(main_fd, b"\x04")  # Ctrl-D: the end of input
        out, err = process.communicate(timeout=30)
    finally:
        process.kill()
        os.close(main_fd)
    assert out == b""
    return answers, err.decode(), process.returncode


def test_decode_answers_each_line_typed_at_a_terminal_as_it_is_entered(text_exported):
    """A person typing at a terminal got nothing back until Ctrl-D (answers came per batch of 2,048, a text source
    one line late, as reference lines of it might follow): now each line's answer as it is entered, and a note
    saying so, from Python's decode and decode.mjs alike."""
    from lit_seq2seq.cli import TERMINAL_NOTE

    model_dir = text_exported("trained").model_dir
    python = [sys.executable, "-m", "lit_seq2seq", "decode", "--model_dir", str(model_dir)]
    expected = subprocess.run([*python, "ab", "ba", "abé"], capture_output=True, text=True).stdout.splitlines()
    for command in (python, ["node", str(DECODE), str(model_dir)]):
        answers, err, code = _typed_at_a_terminal(command, ["ab", "ba", "abé"])
        assert (answers, code) == (expected, 0), (command[0], err)
        assert err == TERMINAL_NOTE + "\n"


def test_decode_says_when_stdin_held_no_lines(exported, text_exported, capsys):
    """An empty stdin (or only empty lines) decoded nothing and said nothing: exit 0, a note on stderr, alike."""
    from lit_seq2seq.cli import NO_INPUT_NOTE

    for model_dir in (text_exported("trained").model_dir, exported("gru").model_dir):
        for stdin in ("", "\n\n"):
            node = node_decode(model_dir, stdin)
            code, out, err = cli_output(["decode", "--model_dir", model_dir], capsys, stdin=stdin)
            assert (node.returncode, node.stdout, node.stderr) == (code, out, err) == (0, "", NO_INPUT_NOTE + "\n")
    python = shlex.join([sys.executable, "-m", "lit_seq2seq", "decode", "--model_dir", str(model_dir)])
    # a closed stdin: as no lines (Python said "'NoneType' object is not iterable")
    for command in (python, shlex.join(["node", str(DECODE), str(model_dir)])):
        closed = subprocess.run(["bash", "-c", f"{command} <&-"], capture_output=True, text=True, timeout=60)
        assert (closed.returncode, closed.stdout, closed.stderr) == (0, "", NO_INPUT_NOTE + "\n")


@pytest.mark.parametrize(
    "model, args, exit_code",
    [
        ("trained", ["--", "--ab", "-x"], 2),  # after "--": sources, whatever they start with (unknown tokens here)
        ("trained", ["-"], 2),  # "-" alone: a source, as argparse reads it
        ("gru", ["-3"], 2),  # a negative number: a source (its token out of range), as argparse reads it
        ("trained", ["--threads", "2", "ab"], 0),
        ("trained", ["--threads", "0", "ab"], 2),
        ("trained", ["--two_graph", "ab", "ba"], 0),
        ("gru", ["--two-graph", "2 3 4"], 0),
        ("trained", ["--two_graph", "--beam_size", "2", "ab"], 2),  # beam search runs the two graphs anyway
        ("trained", ["-a b"], 2),  # a dash with a space: a source, as argparse reads it
    ],
    ids=[
        "double dash",
        "dash",
        "negative",
        "threads",
        "threads 0",
        "two graph",
        "two graph ids",
        "two graph beam",
        "dash space",
    ],  # fmt: skip
)
def test_node_and_python_decode_take_the_same_command_line(model, args, exit_code, exported, text_exported, capsys):
    """A trial found a script could not swap `lit-seq2seq decode` for decode.mjs: no --model_dir or --threads in
    Node, no --two_graph in Python, and "--", "-" and "-3" refused by Node as unknown options. Now both take each
    (in either spelling), with the same output and exit code; the flags named in messages are each tool's own."""
    model_dir = text_exported(model).model_dir if model == "trained" else exported(model).model_dir
    code, out, err = cli_output(["decode", "--model_dir", model_dir, *args], capsys)
    assert code == exit_code, err
    by_flag = [*args, "--model_dir", str(model_dir)] if "--" not in args else ["--model-dir", str(model_dir), *args]
    flagged = subprocess.run(  # the folder by flag, after the sources where it can (argparse takes either order)
        ["node", str(DECODE), *by_flag], capture_output=True, text=True, timeout=120
    )
    for node in (node_decode(model_dir, "", *args), flagged):
        assert (node.returncode, node.stdout) == (code, out), (node.stderr, err)
        python, js = err.removeprefix("lit-seq2seq decode: error: "), node.stderr.removeprefix("decode.mjs: ")
        if " must be " in python:  # a flag's value: worded by each tool's parser (Node quotes what it read)
            python, js = python.split(" must be ")[0], js.split(" must be ")[0]
        assert js.replace("-", "_") == python.replace("-", "_"), node.stderr
