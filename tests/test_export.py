"""Export of fitted checkpoints to encoder.onnx + decoder_step.onnx + greedy.onnx: the contract, dynamic axes,
parity with PyTorch (tensors and tokens), end-token handling, and the export command's safety (refusals, atomic
replacement, clean failure on verification errors).

Every model is a tiny `lit-seq2seq fit` (one epoch, hidden 16) shared across the session (conftest.exported). The
export command's exit codes are in test_cli.py, the content hash rule in test_contract.py.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import CONTRACT_VARIANTS, EXPORT_SPECS, EXPORT_VARIANTS, cli_exit, run_cli

from lit_seq2seq import __version__, contract
from lit_seq2seq import export as export_module
from lit_seq2seq.export import ExportVerificationError, export_checkpoint, load_checkpoint
from lit_seq2seq.runtime import OnnxSeq2Seq

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*LeafSpec"),  # lightning vs torch 2.13 pytree deprecation notice
    pytest.mark.filterwarnings("ignore::UserWarning"),  # the TorchScript exporter's tracer chatter
]
FILES = (contract.ENCODER_FILE, contract.DECODER_FILE, contract.GREEDY_FILE)
ONNX_TYPES = {"tensor(int64)": np.int64, "tensor(float)": np.float32, "tensor(bool)": np.bool_}


@pytest.fixture(scope="module")
def loaded(exported):
    """name -> (torch net, task, OnnxSeq2Seq), cached for the module."""
    cache = {}

    def get(name):
        if name not in cache:
            ckpt, out = exported(name)
            net, task = load_checkpoint(ckpt)
            cache[name] = (net, task, OnnxSeq2Seq.load(out))
        return cache[name]

    return get


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def random_source(rng, batch: int, length: int, min_token: int, vocab: int) -> np.ndarray:
    """(batch, length) valid source; every other row right-padded at a random length >= 1."""
    source = rng.integers(min_token, vocab, size=(batch, length))
    for row in range(1, batch, 2):
        source[row, rng.integers(1, length + 1) :] = 0
    return source


# ----------------------------------------------------------------------------------------------- the contract


def _expected_shapes(meta: dict[str, str]) -> dict[str, list]:
    layers, hidden = int(meta["num_layers"]), int(meta["hidden_size"])
    state = [layers, "batch", hidden]
    return {
        contract.SOURCE: ["batch", "source_len"],
        contract.TOKEN: ["batch"],
        contract.LOGITS: ["batch", int(meta["target_vocab_size"])],
        contract.H: state,
        contract.C: state,
        contract.H + contract.OUT_SUFFIX: state,
        contract.C + contract.OUT_SUFFIX: state,
        contract.MEMORY: ["batch", "source_len", int(meta["memory_dim"])],
        contract.MEMORY_MASK: ["batch", "source_len"],
    }


def _expected_dtype(name: str):
    if name in (contract.SOURCE, contract.TOKEN):
        return np.int64
    return np.bool_ if name == contract.MEMORY_MASK else np.float32


@pytest.mark.parametrize("name", CONTRACT_VARIANTS)
def test_files_io_names_dtypes_and_shapes_follow_the_contract(name, exported):
    cell, attention, bidirectional, layers, task = EXPORT_SPECS[name]
    _, out = exported(name)
    # Three self-contained graphs and the contract document, nothing else: no external-data .onnx.data, no leftovers.
    assert sorted(p.name for p in out.iterdir()) == sorted([*FILES, contract.CONTRACT_FILE])
    for file, io in ((contract.ENCODER_FILE, contract.encoder_io), (contract.DECODER_FILE, contract.decoder_io)):
        session = ort.InferenceSession(str(out / file), providers=["CPUExecutionProvider"])
        meta = session.get_modelmeta().custom_metadata_map
        inputs, outputs = io(cell, attention)
        assert [i.name for i in session.get_inputs()] == inputs, file
        assert [o.name for o in session.get_outputs()] == outputs, file
        shapes = _expected_shapes(meta)
        for arg in [*session.get_inputs(), *session.get_outputs()]:
            assert ONNX_TYPES[arg.type] == _expected_dtype(arg.name.removesuffix(contract.OUT_SUFFIX)), arg
            assert arg.shape == shapes[arg.name], (file, arg.name, arg.shape)
        assert meta["inputs"] == ",".join(inputs) and meta["outputs"] == ",".join(outputs)
        model = onnx.load(str(out / file), load_external_data=False)
        assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer), (
            f"{file} stores weights outside the file"
        )


@pytest.mark.parametrize("name", CONTRACT_VARIANTS)
def test_metadata_holds_every_key_with_the_right_values(name, exported):
    cell, attention, bidirectional, layers, task = EXPORT_SPECS[name]
    _, out = exported(name)
    metas = []
    for file in FILES:
        meta = dict(ort.InferenceSession(str(out / file)).get_modelmeta().custom_metadata_map)
        assert set(meta) == set(contract.META_KEYS), f"{file}: {set(meta) ^ set(contract.META_KEYS)}"
        metas.append(meta)
    enc, dec, fused = metas
    common = {k for k in contract.META_KEYS if k not in ("inputs", "outputs", contract.CONTENT_HASH_KEY)}
    assert {k: enc[k] for k in common} == {k: dec[k] for k in common} == {k: fused[k] for k in common}  # export_id too
    assert (fused["inputs"], fused["outputs"]) == ("source,max_len", "tokens")
    assert len(dec["export_id"]) == 32
    expected = {
        "format_version": contract.FORMAT_VERSION,
        "producer_version": __version__,
        "task": task,
        "pad_token": "0",
        "start_token": "0",
        "hidden_size": "16",
        "num_layers": str(layers),
        "cell": cell,
        "bidirectional": str(int(bidirectional)),
        "attention": str(int(attention)),
        "context_rnn": str(int("context" in name)),
        "memory_dim": str(16 * (2 if bidirectional else 1) if attention else 0),
    }
    if task == "reverse_first":  # --data.vocab_size 9 --data.source_length 4 --data.target_length 2
        expected |= {
            "source_vocab_size": "9",
            "target_vocab_size": "9",
            "eos_token": "",
            "min_token": "1",
            "source_length": "4",
        }
        expected |= {"min_source_length": "4", "max_target_length": "2"}
    else:  # copy / reverse: --data.vocab_size 8 --data.source_length 5; targets end with token 1
        expected |= {
            "source_vocab_size": "8",
            "target_vocab_size": "8",
            "eos_token": "1",
            "min_token": "2",
            "source_length": "5",
        }
        expected |= {"min_source_length": "1", "max_target_length": "6"}
    assert {k: dec[k] for k in expected} == expected
    assert {k: dec[k] for k in contract.TEXT_KEYS} == dict.fromkeys(contract.TEXT_KEYS, "")  # an id-only model


# --------------------------------------------------------------------------------------- dynamic axes, parity


@pytest.mark.parametrize("name", CONTRACT_VARIANTS)
def test_dynamic_batch_and_source_length_match_torch(name, loaded):
    net, task, model = loaded(name)
    rng = np.random.default_rng(1)
    for batch in (1, 2, 5, 33):
        for length in (1, 3, 6, 11):  # 6 and 11 are longer than any training source
            source = random_source(rng, batch, length, task.min_token, net.config.source_vocab_size)
            with torch.no_grad():
                expected = net.encode(torch.from_numpy(source))
            got = model.encode(source, allow_untrained_lengths=True)
            assert list(got) == model.state_names
            for key, value in expected.items():
                assert got[key].shape == tuple(value.shape), (batch, length, key)
                if key == contract.MEMORY_MASK:
                    assert (got[key] == value.numpy()).all()
                else:
                    np.testing.assert_allclose(got[key], value.numpy(), atol=1e-4, err_msg=f"{batch}x{length} {key}")
            tokens = model.greedy(source, allow_untrained_lengths=True)
            assert tokens.dtype == np.int64 and len(tokens) == batch
            np.testing.assert_array_equal(tokens, net.greedy(torch.from_numpy(source)).numpy(), f"{batch}x{length}")


def test_parity_is_held_relative_to_each_outputs_scale():
    """Logits of a trained net reach tens: their float32 rounding is held to their scale, states to 1e-4 absolute."""
    from lit_seq2seq.export import PARITY_TOL, _max_diff

    logits, state = np.array([[40.0, -3.0]]), np.array([0.5, -0.25])
    assert _max_diff([logits, state], [logits + 2e-3, state]) == pytest.approx(5e-5)  # 2e-3 / 40
    assert _max_diff([logits, state], [logits, state + 5e-5]) == pytest.approx(5e-5)  # |state| <= 1: absolute
    caught = _max_diff([logits], [logits + [[0.0, 0.01]]])
    assert caught == pytest.approx(2.5e-4) and caught > PARITY_TOL
    assert _max_diff([np.zeros((0, 3))], [np.zeros((0, 3))]) == 0.0  # an empty output


@pytest.mark.parametrize("name", CONTRACT_VARIANTS)
def test_greedy_and_beam_tokens_identical_to_torch(name, loaded):
    net, task, model = loaded(name)
    source, _ = task.sample(48, np.random.default_rng(7))
    expected = net.greedy(torch.from_numpy(source)).numpy()
    np.testing.assert_array_equal(model.greedy(source), expected)
    tokens, scores = model.beam_search(source, beam_size=3)
    expected_tokens, expected_scores = net.beam_search(torch.from_numpy(source), beam_size=3)
    np.testing.assert_array_equal(tokens, expected_tokens.numpy())
    np.testing.assert_allclose(scores, expected_scores.numpy(), atol=1e-4)
    single = source[0][source[0] != 0]  # one (source_len,) sequence in, one (steps,) sequence out
    np.testing.assert_array_equal(model.greedy(single), net.greedy(torch.from_numpy(single[None])).numpy()[0])


def _assert_padded_after_eos(tokens: np.ndarray, eos: int) -> None:
    for row in tokens:
        ends = np.flatnonzero(row == eos)
        if len(ends):
            assert (row[ends[0] + 1 :] == 0).all(), f"tokens after the end token are not padding: {row}"


@pytest.mark.parametrize("name", ["gru", "lstm_attention", "gru_bi_attention", "copy_trained"])
def test_rows_are_padded_after_their_end_token(name, loaded):
    net, task, model = loaded(name)
    source, _ = task.sample(64, np.random.default_rng(3))
    _assert_padded_after_eos(model.greedy(source), model.eos_token)
    _assert_padded_after_eos(model.beam_search(source, beam_size=3)[0], model.eos_token)


def test_trained_copy_model_stops_each_row_at_its_end_token_and_the_batch_early(loaded):
    net, task, model = loaded("copy_trained")  # copy of 1..3 tokens in 2..5, max_target_length 4
    assert model.max_target_length == 4 and model.eos_token == 1
    source = np.array([[2, 3, 0], [4, 0, 0], [5, 0, 0]])
    tokens = model.greedy(source)
    assert tokens.shape == (3, 3)  # every row ended by step 3: no 4th step was run
    assert tokens.tolist() == [[2, 3, 1], [4, 1, 0], [5, 1, 0]]
    np.testing.assert_array_equal(tokens, net.greedy(torch.from_numpy(source)).numpy())
    assert model.greedy(np.array([[4], [5]])).tolist() == [[4, 1], [5, 1]]
    assert model.greedy(np.array([[2, 3, 4]])).shape == (1, 4)  # the longest target runs all steps
    beam = model.beam_search(source, beam_size=3)[0]  # runs until every beam ended, so it may be wider
    assert beam[:, :3].tolist() == tokens.tolist() and (beam[:, 3:] == 0).all()
    assert [model.strip(row) for row in tokens] == [[2, 3], [4], [5]]


def test_greedy_equals_a_loop_over_step(loaded):
    """runtime.greedy is the documented loop: argmax, feed back, keep finished rows at pad, stop when all end."""
    _, task, model = loaded("copy_trained")
    source, _ = task.sample(32, np.random.default_rng(11))
    state = model.encode(source)
    token = np.zeros(len(source), dtype=np.int64)
    done = np.zeros(len(source), dtype=bool)
    steps = []
    for _ in range(model.max_target_length):
        logits, state = model.step(token, state)
        token = np.where(done, 0, logits.argmax(-1))
        steps.append(token)
        done |= token == model.eos_token
        if done.all():
            break
    np.testing.assert_array_equal(model.greedy(source), np.stack(steps, 1))


# ------------------------------------------------------------------------------------------- export safety


def _copy_export(name: str, exported, dest: Path) -> tuple[Path, Path]:
    ckpt, out = exported(name)
    shutil.copytree(out, dest)
    return ckpt, dest


def test_export_is_quiet_about_packed_sequences_and_still_verified(exported, tmp_path, capfd):
    """The exporter's C++ notes on prim::PackPadded / PadPacked shape inference (written to fd 2) are held back;
    the graphs are verified against PyTorch all the same, and other stderr output still gets through."""
    capfd.readouterr()
    run_cli(["export", "--ckpt_path", exported("lstm_attention").ckpt, "--output_dir", tmp_path / "onnx"])
    out, err = capfd.readouterr()
    assert "PackPadded" not in err and "PadPacked" not in err, err
    assert "greedy tokens identical to PyTorch on 256 fresh task sources (the two-graph loop" in out


def test_held_back_stderr_passes_other_lines_on(capfd):
    import os

    with export_module._without_packed_shape_warnings():
        os.write(2, b"[W shape_type_inference.cpp] The shape inference of prim::PackPadded type is missing, so\n")
        os.write(2, b"something else\n")
    assert capfd.readouterr().err == "something else\n"


def test_existing_export_is_refused_without_overwrite_and_replaced_with_it(exported, tmp_path, capsys):
    ckpt, out = _copy_export("gru", exported, tmp_path / "model")
    before = snapshot(out)
    code, err = cli_exit(["export", "--ckpt_path", ckpt, "--output_dir", out, "--verify_samples", "8"], capsys)
    assert code == 2 and "--overwrite" in err and "Traceback" not in err
    assert snapshot(out) == before

    run_cli(["export", "--ckpt_path", ckpt, "--output_dir", out, "--verify_samples", "8", "--overwrite"])
    after = snapshot(out)
    assert sorted(after) == sorted([*FILES, contract.CONTRACT_FILE])
    assert all(after[f] != before[f] for f in FILES)  # new export_id and hash
    assert OnnxSeq2Seq.load(out).meta["export_id"] != OnnxSeq2Seq.load(exported("gru").model_dir).meta["export_id"]
    assert not list(tmp_path.glob(".model.export-*"))


def test_failed_verification_raises_and_leaves_the_folder_untouched(exported, tmp_path, monkeypatch):
    ckpt, out = _copy_export("lstm", exported, tmp_path / "model")
    before = snapshot(out)
    monkeypatch.setattr(export_module, "PARITY_TOL", -1.0)
    with pytest.raises(ExportVerificationError, match="differ from PyTorch"):
        export_checkpoint(ckpt, out, verify_samples=8, overwrite=True)
    assert snapshot(out) == before
    with pytest.raises(ExportVerificationError):
        export_checkpoint(ckpt, tmp_path / "fresh", verify_samples=8)
    assert not (tmp_path / "fresh").exists()  # nothing created for a failed export
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no .<name>.export-* temp dirs left


# ------------------------------------------------------------------------------------ greedy.onnx: one call


def _greedy_session(out: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(out / contract.GREEDY_FILE), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("name", list(EXPORT_VARIANTS))
def test_greedy_graph_passes_the_checker_and_has_the_contract_io(name, exported):
    out = exported(name).model_dir
    onnx.checker.check_model(str(out / contract.GREEDY_FILE), full_check=True)
    session = _greedy_session(out)
    meta = session.get_modelmeta().custom_metadata_map
    assert [(i.name, i.type, i.shape) for i in session.get_inputs()] == [
        ("source", "tensor(int64)", ["batch", "source_len"])
    ]
    # max_len has a default (the graph's initializer): onnxruntime lists it apart, as an input a caller may leave out
    assert [(i.name, i.type, i.shape) for i in session.get_overridable_initializers()] == [
        ("max_len", "tensor(int64)", [])
    ]
    assert [(o.name, o.type, o.shape) for o in session.get_outputs()] == [
        ("tokens", "tensor(int64)", ["batch", "steps"])
    ]
    default = next(i for i in onnx.load(str(out / contract.GREEDY_FILE)).graph.initializer if i.name == "max_len")
    assert onnx.numpy_helper.to_array(default).tolist() == int(meta["max_target_length"])
    ops = {n.op_type for n in onnx.load(str(out / contract.GREEDY_FILE)).graph.node}
    assert "Loop" in ops and ("LSTM" if EXPORT_SPECS[name][0] == "lstm" else "GRU") in ops
    # its encoder skips pack_padded_sequence's sort by length (ONNX RNNs take the lengths in any order)
    assert "TopK" in {n.op_type for n in onnx.load(str(out / contract.ENCODER_FILE)).graph.node}
    assert not ops & {"TopK", "ScatterElements"}


def test_the_unsorted_encoder_keeps_the_sort_where_the_permutation_is_used_otherwise(exported):
    graph = onnx.load(str(exported("lstm").model_dir / contract.ENCODER_FILE)).graph
    topk = next(n for n in graph.node if n.op_type == "TopK")
    graph.output.add(name=topk.output[1])  # the permutation itself is an output: it cannot be aliased away
    assert export_module._unsorted(graph) is graph
    assert export_module._unsorted(onnx.helper.make_graph([], "empty", [], [])).name == "empty"


@pytest.mark.parametrize("name", list(EXPORT_VARIANTS))
def test_greedy_graph_tokens_equal_the_two_graph_loop_and_torch(name, loaded, exported):
    """Random batches of 1, 2 and 7 rows (every other row padded), at max_len 1, the default and beyond it."""
    net, task, model = loaded(name)
    session = _greedy_session(exported(name).model_dir)
    rng = np.random.default_rng(5)
    for batch in (1, 2, 7):
        source = random_source(rng, batch, task.source_length, task.min_token, net.config.source_vocab_size)
        for max_len in (None, 1, model.max_target_length + 2):
            feed = {"source": source} if max_len is None else {"source": source, "max_len": np.array(max_len)}
            got = session.run(None, feed)[0]
            steps = model._greedy_steps(source, max_len or model.max_target_length)
            expected = net.greedy(torch.from_numpy(source), max_len).numpy()
            assert got.dtype == np.int64 and got.shape[0] == batch
            np.testing.assert_array_equal(got, steps, f"{batch} rows, max_len {max_len}")
            np.testing.assert_array_equal(got, expected, f"{batch} rows, max_len {max_len}")
        # max_len as a [1] tensor reads as the scalar; 0 runs no step and keeps the batch dimension
        one = session.run(None, {"source": source, "max_len": np.array([1], np.int64)})[0]
        np.testing.assert_array_equal(one, session.run(None, {"source": source, "max_len": np.array(1)})[0])
        assert session.run(None, {"source": source, "max_len": np.array(0)})[0].shape == (batch, 0)


def test_greedy_graph_stops_when_every_row_has_ended(exported):
    """The trained copy model (max_target_length 4): rows end at their end token and emit padding after it; the loop
    stops once all rows have ended, whatever max_len allows; without an end token it runs max_len steps."""
    session = _greedy_session(exported("copy_trained").model_dir)
    source = np.array([[2, 3, 0], [4, 0, 0], [5, 0, 0]])
    assert session.run(None, {"source": source})[0].tolist() == [[2, 3, 1], [4, 1, 0], [5, 1, 0]]
    assert session.run(None, {"source": source, "max_len": np.array(50)})[0].shape == (3, 3)
    assert session.run(None, {"source": source[1:], "max_len": np.array(50)})[0].tolist() == [[4, 1], [5, 1]]
    assert session.run(None, {"source": source, "max_len": np.array(2)})[0].tolist() == [[2, 3], [4, 1], [5, 1]]
    fixed = _greedy_session(exported("lstm").model_dir)  # reverse_first: no end token
    assert fixed.run(None, {"source": np.array([[1, 2, 3, 4]]), "max_len": np.array(9)})[0].shape == (1, 9)


def test_a_wrong_greedy_graph_fails_verification_and_nothing_is_written(exported, tmp_path, monkeypatch):
    """greedy.onnx is verified like the two graphs: here it adds 1 to every token, so nothing may be written."""
    build = export_module.greedy_model

    def off_by_one(*args):
        model = build(*args)
        last = model.graph.node[-1]
        last.output[0] = "wrong/tokens"
        one = onnx.helper.make_tensor("wrong/one", onnx.TensorProto.INT64, [], [1])
        model.graph.node.extend([
            onnx.helper.make_node("Constant", [], ["wrong/one"], value=one),
            onnx.helper.make_node("Add", ["wrong/tokens", "wrong/one"], [contract.TOKENS]),
        ])  # fmt: skip
        return model

    ckpt = exported("gru").ckpt  # built before the patch (the fixture exports it on first use)
    monkeypatch.setattr(export_module, "greedy_model", off_by_one)
    with pytest.raises(ExportVerificationError, match="greedy tokens differ between onnxruntime \\(greedy.onnx\\)"):
        export_checkpoint(ckpt, tmp_path / "fresh", verify_samples=8)
    assert list(tmp_path.iterdir()) == []


def _diffs(message: str) -> tuple[float, float]:
    """(encoder, decoder step) of verify's parity message."""
    import re

    found = re.search(r"encoder max abs diff (\S+), decoder step (\S+) ", message)
    return float(found[1]), float(found[2])


@pytest.mark.parametrize(
    "broken, message",
    [
        # each check alone: a mutation that dropped one of them left every other test passing
        ("step", "ONNX outputs differ from PyTorch"),
        ("_greedy_steps", "greedy tokens differ between onnxruntime (the two-graph loop) and PyTorch on 8 of 8"),
        ("beam_search", "beam-search tokens differ between onnxruntime and PyTorch (8 rows)"),
        ("checker", "onnx.checker rejected encoder.onnx: "),
    ],
)
def test_each_verification_check_alone_refuses_the_export(broken, message, exported, tmp_path, monkeypatch):
    ckpt, out = exported("gru").ckpt, tmp_path / "fresh"  # built before the patch
    methods = {name: getattr(OnnxSeq2Seq, name) for name in ("step", "_greedy_steps", "beam_search")}
    if broken == "step":  # the decoder step's logits off by 1e-2, its encoder exact

        def step(self: OnnxSeq2Seq, *args: object, **kwargs: object) -> object:
            logits, state = methods["step"](self, *args, **kwargs)
            return logits + 1e-2, state

        monkeypatch.setattr(OnnxSeq2Seq, "step", step)
    elif broken == "_greedy_steps":  # greedy.onnx stays right
        monkeypatch.setattr(OnnxSeq2Seq, broken, lambda self, *a: methods[broken](self, *a) + 1)
    elif broken == "beam_search":
        monkeypatch.setattr(OnnxSeq2Seq, broken, lambda self, *a, **k: (methods[broken](self, *a, **k)[0] + 1, None))
    else:

        def reject(path: str, full_check: bool = False) -> None:
            raise onnx.checker.ValidationError("a dangling input")

        monkeypatch.setattr(export_module.onnx.checker, "check_model", reject)
    with pytest.raises(ExportVerificationError) as error:
        export_checkpoint(ckpt, out, verify_samples=8)
    assert message in str(error.value), error.value
    if broken == "step":
        encoder, decoder = _diffs(str(error.value))
        assert encoder <= export_module.PARITY_TOL < decoder  # the decoder alone fails it
    assert not out.exists()


def test_the_exported_models_exact_match_is_the_runtimes_scored_as_test_scores(exported, tmp_path):
    """The figure export prints: it compared whole rows of the graph's output with the targets."""
    from lit_seq2seq.metrics import score
    from lit_seq2seq.search import to_width

    report = export_checkpoint(exported("gru").ckpt, tmp_path / "m", verify_samples=64)
    net, task = load_checkpoint(exported("gru").ckpt)
    source, target = task.sample(64, np.random.default_rng(20261128))  # verify's own draw
    tokens = OnnxSeq2Seq.load(tmp_path / "m").greedy(source)
    expected = score(tokens, target[:, None], net.config.eos_token, net.config.pad_token).exact_match
    some_token_right = float((to_width(tokens, target.shape[1], net.config.pad_token) == target).any(1).mean())
    assert report.exact_match == expected < some_token_right  # an untrained net: a figure that tells them apart
    assert f"exact match of the exported model on those sources: {expected:.2%}" in str(report)


def test_a_text_models_verification_sources_hold_every_trained_length(text_exported):
    net, task = load_checkpoint(text_exported("trained").ckpt)
    source, target = export_module._verify_sources(net, task, 64, np.random.default_rng(0))
    lengths = (source != net.config.pad_token).sum(1)
    assert target is None and set(lengths) == set(range(task.min_source_length, task.source_length + 1))


def test_a_net_with_dropout_exports_and_stays_in_eval_mode(tmp_path):
    """torch.onnx.export hands its module back in the mode it found it in, recursively: the graph wrappers, built in
    training mode, used to switch the net's dropout back on, and the verification then compared ONNX with a PyTorch
    net that dropped units (a G2P config with dropout 0.2 failed export with a decoder diff of 2.8)."""
    from conftest import net_config

    from lit_seq2seq.model import Seq2Seq
    from lit_seq2seq.tasks import make_task

    torch.manual_seed(0)
    task = make_task("copy", 9, 5)
    config = net_config(9, max_target_length=task.target_length, eos_token=1, hidden_size=16, embedding_dim=8)
    net = Seq2Seq(
        type(config)(**config.to_dict() | {"dropout": 0.5, "embedding_dropout": 0.5, "attention": True})
    ).eval()
    export_module.export_encoder(net, tmp_path / contract.ENCODER_FILE, task)
    export_module.export_decoder_step(net, tmp_path / contract.DECODER_FILE, task)
    assert not any(m.training for m in net.modules())
    source = torch.tensor([[2, 3, 4, 0], [5, 6, 7, 8]])
    with torch.no_grad():
        state = net.encode(source, pack=True)
        logits, _ = net.step(torch.tensor([0, 3]), state)
    step = ort.InferenceSession(str(tmp_path / contract.DECODER_FILE))
    inputs = {"token": np.array([0, 3])} | {k: v.numpy() for k, v in state.items()}
    np.testing.assert_allclose(step.run(["logits"], inputs)[0], logits.numpy(), atol=1e-5)


def test_a_fit_in_the_users_own_trainer_exports_like_a_cli_one(tmp_path):
    """The library way (README, "Your own Trainer"): Seq2SeqDataModule kept a Task object as its `task` hparam, a
    pickled object export refused to read ("not a lit-seq2seq checkpoint")."""
    import lightning as L

    from lit_seq2seq.data import Seq2SeqDataModule
    from lit_seq2seq.model import NetConfig
    from lit_seq2seq.module import Seq2SeqModule

    data = Seq2SeqDataModule(task="reverse", vocab_size=12, source_length=5, train_size=128, val_size=16, test_size=16)
    assert data.hparams["task"] == "reverse"
    net = NetConfig(
        source_vocab_size=data.source_vocab_size,
        target_vocab_size=data.target_vocab_size,
        max_target_length=data.max_target_length,
        eos_token=data.eos_token,
        hidden_size=8,
    )
    trainer = L.Trainer(max_epochs=1, default_root_dir=tmp_path, logger=False, enable_progress_bar=False)
    trainer.fit(Seq2SeqModule(net=net), data)
    report = export_checkpoint(trainer.checkpoint_callback.best_model_path, tmp_path / "onnx", verify_samples=8)
    assert "greedy tokens identical to PyTorch on 8 fresh task sources (the two-graph loop" in str(report)
    assert OnnxSeq2Seq.load(tmp_path / "onnx").meta["task"] == "reverse"


def test_a_checkpoint_without_a_task_or_vocabularies_is_refused_not_exported_as_the_default_task(exported, tmp_path):
    """A fit on plain DataLoaders: the export took the default task (reverse_first, vocabulary 51, 6 tokens) silently,
    or failed deep inside the verification."""
    checkpoint = torch.load(exported("gru").ckpt, weights_only=True)
    del checkpoint["datamodule_hyper_parameters"]
    torch.save(checkpoint, tmp_path / "bare.ckpt")
    with pytest.raises(ValueError, match=r"bare.ckpt: no task to describe the export with: the checkpoint has neither"):
        export_checkpoint(tmp_path / "bare.ckpt", tmp_path / "onnx")
    assert not (tmp_path / "onnx").exists()


@pytest.mark.parametrize(
    "field, value", [("hidden_size", 32), ("cell", "lstm")], ids=["hidden_size", "cell"]
)  # the gru export: 16 units
def test_a_checkpoint_whose_hyperparameters_were_edited_is_refused_in_one_line(
    field, value, exported, tmp_path, capsys
):
    """The weights hash covers the weights, not the hyperparameters: export raised torch's size-mismatch traceback."""
    checkpoint = torch.load(exported("gru").ckpt, weights_only=True)
    checkpoint["hyper_parameters"]["net"][field] = value
    torch.save(checkpoint, tmp_path / "edited.ckpt")
    code, err = cli_exit(["export", "--ckpt_path", tmp_path / "edited.ckpt", "--output_dir", tmp_path / "o"], capsys)
    message = f"--ckpt_path {tmp_path / 'edited.ckpt'}: its weights do not fit the net its hyper_parameters describe"
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "o").exists()
