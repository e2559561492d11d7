"""model.py: the Seq2Seq nets (shapes, teacher forcing == stepping, padding invariance, greedy and beam search) and
NetConfig's checks. Seq2SeqModule and its metrics are in test_module.py."""

from __future__ import annotations

import dataclasses
import itertools
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import manual_greedy, net_config, padded_sources, run_python

from lit_seq2seq import model as model_lib
from lit_seq2seq import tasks
from lit_seq2seq.model import Dropout, NetConfig, Seq2Seq, TokenInput, shift_right

V, H, S, T = 9, 16, 7, 5  # vocab, hidden, longest source, decoder steps
EOS = 1

COMBOS = [
    dict(cell=cell, num_layers=layers, bidirectional=bi, attention=att, embedding_dim=emb)
    for cell, layers, bi, att, emb in itertools.product(
        ("lstm", "gru"), (1, 2), (False, True), (False, True), (None, 8)
    )
]


# the context RNN (attention only): the G2P shape, and a GRU of 2 layers fed one-hot vectors
COMBOS += [
    dict(cell="lstm", num_layers=1, bidirectional=True, attention=True, embedding_dim=8, context_rnn=True),
    dict(cell="gru", num_layers=2, bidirectional=False, attention=True, embedding_dim=None, context_rnn=True),
]


def _id(c: dict) -> str:
    return (
        f"{c['cell']}-L{c['num_layers']}{'-bi' if c['bidirectional'] else ''}{'-att' if c['attention'] else ''}"
        f"{'-ctx' if c.get('context_rnn') else ''}-{'onehot' if c['embedding_dim'] is None else 'emb'}"
    )


def make_net(seed: int = 0, eos_token: int | None = EOS, **kwargs) -> Seq2Seq:
    torch.manual_seed(seed)
    settings = dict(vocab_size=V, max_target_length=T, eos_token=eos_token, hidden_size=H) | kwargs
    return Seq2Seq(net_config(**settings)).eval()


def make_ending_net(eos: int | None, end_bias: float = 1.5, **kwargs) -> Seq2Seq:
    """make_net; with an end token, its logit raised by `end_bias` so that rows end at different steps."""
    net = make_net(eos_token=eos, **kwargs)
    if eos is not None:
        with torch.no_grad():
            net.decoder.output.bias[EOS] += end_bias
    return net


LENGTHS = [7, 3, 5, 1, 7, 2]


# ------------------------------------------------------------------------------------------------------ shapes


@pytest.mark.parametrize("combo", COMBOS, ids=_id)
def test_output_shapes(combo):
    net = make_net(**combo)
    source = padded_sources(LENGTHS)
    b, layers = len(LENGTHS), combo["num_layers"] + combo.get("context_rnn", False)  # the context RNN's layer last
    assert net.config.state_layers == layers
    decoder_input = torch.randint(0, V, (b, T))
    assert net(source, decoder_input).shape == (b, T, V)

    state = net.encode(source)
    expected = {"h": (layers, b, H)}
    if combo["cell"] == "lstm":
        expected["c"] = (layers, b, H)
    if combo["attention"]:
        memory_dim = H * (2 if combo["bidirectional"] else 1)
        assert net.config.memory_dim == memory_dim
        expected |= {"memory": (b, S, memory_dim), "memory_mask": (b, S)}
        assert state["memory_mask"].dtype == torch.bool
        assert torch.equal(state["memory_mask"], source != 0)
    assert {k: tuple(v.shape) for k, v in state.items()} == expected

    logits, new_state = net.step(torch.zeros(b, dtype=torch.long), state)
    assert logits.shape == (b, V)
    assert {k: tuple(v.shape) for k, v in new_state.items()} == expected

    greedy = net.greedy(source)
    assert greedy.dtype == torch.int64 and greedy.shape[0] == b and 1 <= greedy.shape[1] <= T
    fixed = make_net(eos_token=None, **combo).greedy(source)
    assert fixed.shape == (b, T)
    assert net.greedy(source, max_len=2).shape[1] <= 2

    tokens, scores = net.beam_search(source, beam_size=3)
    assert tokens.shape[0] == b and tokens.shape[1] <= T and scores.shape == (b,)
    assert torch.isfinite(scores).all() and (scores <= 0).all()


def test_one_hot_and_embedding_inputs():
    one_hot = TokenInput(V, None)
    tokens = torch.tensor([[0, 3, 8]])
    assert one_hot.dim == V and torch.equal(one_hot(tokens), F.one_hot(tokens, V).float())
    assert not list(one_hot.parameters())  # the tutorial's fixed one-hot input has nothing to learn
    emb = TokenInput(V, 4)
    assert emb.dim == 4 and emb(tokens).shape == (1, 3, 4) and emb.table.requires_grad
    net = make_net(embedding_dim=None)
    assert net.encoder.rnn.input_size == V and net.decoder.rnn.input_size == V
    net = make_net(embedding_dim=6)
    assert net.encoder.rnn.input_size == 6 and net.decoder.rnn.input_size == 6


def test_shift_right():
    target = torch.tensor([[5, 6, 7], [8, 1, 0]])
    assert shift_right(target, 0).tolist() == [[0, 5, 6], [0, 8, 1]]
    assert shift_right(target, 3).tolist() == [[3, 5, 6], [3, 8, 1]]


# ------------------------------------------------------------------------------ teacher forcing == step by step


@pytest.mark.parametrize("combo", COMBOS, ids=_id)
def test_teacher_forced_logits_equal_step_by_step(combo):
    net = make_net(**combo)
    for source in (padded_sources(LENGTHS), padded_sources([S, S, S])):  # packed and unpacked encoder paths
        decoder_input = shift_right(torch.randint(0, V, (len(source), T)), net.config.start_token)
        with torch.no_grad():
            forced = net(source, decoder_input)
            state, steps = net.encode(source), []
            for t in range(T):
                logits, state = net.step(decoder_input[:, t], state)
                steps.append(logits)
        diff = (forced - torch.stack(steps, 1)).abs().max().item()
        assert diff < 1e-5, f"max abs diff {diff}"


# ------------------------------------------------------------------------------------------- padding invariance


@pytest.mark.parametrize("combo", COMBOS, ids=_id)
def test_padding_does_not_leak(combo):
    """Each right-padded row's encoder state and decoder logits equal those of the same row encoded alone."""
    net = make_net(**combo)
    source = padded_sources(LENGTHS)
    decoder_input = torch.randint(0, V, (len(source), 3))
    with torch.no_grad():
        batch_state = net.encode(source)
        batch_logits = net.decoder(decoder_input, batch_state)[0]
        for i, n in enumerate(LENGTHS):
            for alone in (source[i : i + 1, :n], F.pad(source[i : i + 1, :n], (0, 4))):  # unpadded; padded alone
                state = net.encode(alone)
                for name in ("h", "c"):
                    if name in state:
                        torch.testing.assert_close(batch_state[name][:, i], state[name][:, 0], atol=1e-6, rtol=0)
                if combo["attention"]:
                    torch.testing.assert_close(batch_state["memory"][i, :n], state["memory"][0, :n], atol=1e-6, rtol=0)
                    assert not batch_state["memory_mask"][i, n:].any()
                logits = net.decoder(decoder_input[i : i + 1], state)[0]
                torch.testing.assert_close(batch_logits[i], logits[0], atol=1e-5, rtol=0)


def test_padding_changes_nothing_even_when_pad_memory_is_large():
    """Attention must mask padded positions, whatever the encoder left there."""
    net = make_net(attention=True, bidirectional=True)
    source = padded_sources([3, 7])
    with torch.no_grad():
        state = net.encode(source)
        clean = net.decoder(torch.zeros(2, 2, dtype=torch.long), state)[0]
        state["memory"] = state["memory"].clone()
        state["memory"][0, 3:] = 1e3
        dirty = net.decoder(torch.zeros(2, 2, dtype=torch.long), state)[0]
    torch.testing.assert_close(clean, dirty, atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------------------------------- greedy


def _pad_to(tokens: torch.Tensor, width: int) -> torch.Tensor:
    return F.pad(tokens, (0, width - tokens.shape[1]))


@pytest.mark.parametrize("combo", COMBOS[::3] + [COMBOS[-1]], ids=_id)
@pytest.mark.parametrize("eos", [None, EOS])
def test_greedy_equals_manual_argmax_loop(combo, eos):
    net = make_ending_net(eos, **combo)
    source = padded_sources(LENGTHS * 3, seed=1)
    greedy = net.greedy(source)
    manual = manual_greedy(net, source, T)
    assert torch.equal(_pad_to(greedy, T), manual)
    if eos is None:
        assert greedy.shape == (len(source), T)
    else:
        ended = (manual == EOS).any(1)
        assert ended.any()  # the bias did its job: the test covers finished rows
        for row in manual[ended]:  # only padding after the end token
            at = row.tolist().index(EOS)
            assert (row[at + 1 :] == 0).all()


def test_greedy_stops_when_every_row_has_ended():
    net = make_net()
    with torch.no_grad():
        net.decoder.output.bias[EOS] += 100.0  # every row ends at the first step
    out = net.greedy(padded_sources(LENGTHS))
    assert out.tolist() == [[EOS]] * len(LENGTHS)


# ------------------------------------------------------------------------------------------------ beam search


@pytest.mark.parametrize("combo", COMBOS[::3] + [COMBOS[-1]], ids=_id)
@pytest.mark.parametrize("eos", [None, EOS])
def test_beam_size_one_equals_greedy(combo, eos):
    net = make_ending_net(eos, **combo)
    source = padded_sources(LENGTHS * 2, seed=2)
    tokens, _ = net.beam_search(source, beam_size=1)
    greedy = net.greedy(source)
    assert torch.equal(_pad_to(tokens, T), _pad_to(greedy, T))


def sequence_score(net: Seq2Seq, source: torch.Tensor, tokens: torch.Tensor, length_penalty: float) -> np.ndarray:
    """Sum of the tokens' log-probabilities up to and including the end token, / length ** length_penalty."""
    with torch.no_grad():
        logits = net(source, shift_right(tokens, net.config.start_token)).double()
    logp = logits.log_softmax(-1).gather(2, tokens[:, :, None])[:, :, 0]  # (B, T)
    keep = torch.ones_like(tokens, dtype=torch.bool)
    if net.config.eos_token is not None:
        is_end = (tokens == net.config.eos_token).long()
        ended_before = torch.cumsum(is_end, 1) - is_end
        keep = ended_before == 0
    total = (logp * keep).sum(1)
    length = keep.sum(1).double()
    return (total / length**length_penalty if length_penalty else total).numpy()


@pytest.mark.parametrize("combo", [COMBOS[0], COMBOS[7], COMBOS[-1]], ids=_id)
@pytest.mark.parametrize("eos", [None, EOS])
@pytest.mark.parametrize("length_penalty", [1.0, 0.0, 0.6])
def test_beam_score_is_the_normalised_log_prob_of_its_sequence(combo, eos, length_penalty):
    net = make_ending_net(eos, end_bias=1.0, **combo)
    source = padded_sources(LENGTHS, seed=3)
    tokens, scores = net.beam_search(source, beam_size=4, length_penalty=length_penalty)
    assert scores.dtype == torch.float64
    expected = sequence_score(net, source, _pad_to(tokens, T), length_penalty)
    np.testing.assert_allclose(scores.numpy(), expected, atol=1e-5, rtol=0)


def test_wide_beam_finds_the_exhaustive_best():
    """Beam as wide as the whole search space returns the best of all V**T sequences (raw sums, no end token)."""
    vocab, steps = 4, 3
    torch.manual_seed(4)
    net = Seq2Seq(net_config(vocab_size=vocab, max_target_length=steps, hidden_size=H)).eval()
    source = torch.randint(1, vocab, (5, 4))
    tokens, scores = net.beam_search(source, beam_size=vocab**steps, length_penalty=0.0)
    every = torch.tensor(list(itertools.product(range(vocab), repeat=steps)))  # (64, 3)
    for i in range(len(source)):
        all_scores = sequence_score(net, source[i : i + 1].expand(len(every), -1), every, 0.0)
        best = all_scores.argmax()
        assert tokens[i].tolist() == every[best].tolist()
        assert scores[i].item() == pytest.approx(all_scores[best], abs=1e-5)


def test_separate_source_and_target_vocabularies():
    """The encoder reads source ids, the decoder reads and writes target ids."""
    net = Seq2Seq(NetConfig(source_vocab_size=7, target_vocab_size=12, max_target_length=4, hidden_size=H)).eval()
    assert net.encoder.input.dim == 7 and net.decoder.input.dim == 12 and net.decoder.output.out_features == 12
    source = torch.randint(1, 7, (3, 5))
    assert net(source, torch.randint(0, 12, (3, 4))).shape == (3, 4, 12)
    assert net.greedy(source).shape == (3, 4)
    with pytest.raises(IndexError):  # a target id past the source vocabulary is not a source id
        net.encode(torch.full((1, 2), 11))


def test_from_checkpoint_rebuilds_the_net_from_its_stored_config(tmp_path):
    from lit_seq2seq.checkpoint import weights_sha256
    from lit_seq2seq.module import Seq2SeqModule

    config = net_config(V, max_target_length=T, eos_token=EOS, hidden_size=H, cell="gru", attention=True)
    module = Seq2SeqModule(config)
    state = module.state_dict()
    path = tmp_path / "m.ckpt"
    torch.save(
        {"state_dict": state, "hyper_parameters": dict(module.hparams), "weights_sha256": weights_sha256(state)}, path
    )
    net = Seq2Seq.from_checkpoint(path)
    assert net.config == config and not net.training
    assert all(torch.equal(v, state["net." + k]) for k, v in net.state_dict().items())
    assert Seq2Seq.from_checkpoint(torch.load(path, weights_only=True)).config == config  # an already-read one too


def test_reading_a_checkpoint_needs_no_lightning():
    """Seq2Seq.from_checkpoint and export read checkpoints with torch alone; Lightning (~2 s to import) loads only
    when the CLI asks for the checkpoint callback or IO."""
    code = (
        "import sys; import lit_seq2seq.checkpoint as c, lit_seq2seq.export, lit_seq2seq.model\n"
        "assert 'lightning' not in sys.modules, 'imported lightning'\n"
        "c.Seq2SeqCheckpoint; assert 'lightning' in sys.modules\n"
        "from lit_seq2seq.checkpoint import Seq2SeqCheckpointIO\n"
        "print(c.Seq2SeqCheckpoint.__module__, c.Seq2SeqCheckpoint.__qualname__, Seq2SeqCheckpointIO.__qualname__)"
    )
    done = run_python(code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["lit_seq2seq.checkpoint", "Seq2SeqCheckpoint", "Seq2SeqCheckpointIO"]


@pytest.mark.parametrize("max_len", [0, -1, 4097, 2.5])
def test_the_torch_path_refuses_bad_max_len_like_the_runtime(max_len):
    """search.py checks the settings, so net.greedy / net.beam_search refuse what OnnxSeq2Seq refuses."""
    net = make_net()
    with pytest.raises(ValueError, match=r"max_len must be an int in \[1, 4096\]"):
        net.greedy(padded_sources([3]), max_len=max_len)
    with pytest.raises(ValueError, match=r"max_len must be an int in \[1, 4096\]"):
        net.beam_search(padded_sources([3]), beam_size=2, max_len=max_len)


@pytest.mark.parametrize(
    "source, error, message",
    [
        ([[3, 4]], TypeError, "source must be a torch tensor of token ids (batch, source_len), got list"),
        (torch.ones(2, 3), TypeError, "source must hold integer token ids, got torch.float32"),
        (torch.ones(2, 3, dtype=torch.bool), TypeError, "source must hold integer token ids, got torch.bool"),
        (torch.tensor([3, 4]), ValueError, "source must have shape (batch, source_len), neither 0, got (2,)"),
        (torch.zeros(2, 0, dtype=torch.long), ValueError, "source must have shape (batch, source_len), neither 0"),
        (torch.tensor([[3, 51]]), ValueError, "source: token 51 is out of range; ids must be in [0, 50] (the net's"),
        (torch.tensor([[3, -1]]), ValueError, "source: token -1 is out of range"),
        (torch.tensor([[3, 4], [0, 0]]), ValueError, "source: a row starts with the pad token 0 (an empty sequence)"),
        # was decoded silently: the packed length counts 2 tokens, so the row read as [9, 0]
        (torch.tensor([[3, 4, 5], [9, 0, 6]]), ValueError, "source[1, 2]: token after padding; pad only at the end"),
    ],
)
def test_the_torch_path_names_a_bad_source(source, error, message):
    """net.greedy / net.beam_search name the problem instead of an IndexError from the embedding."""
    net = make_net(vocab_size=51)
    for decode in (net.greedy, lambda s: net.beam_search(s, beam_size=2)):
        with pytest.raises(error) as info:
            decode(source)
        assert str(info.value).startswith(message), str(info.value)


def test_beam_size_must_be_positive():
    with pytest.raises(ValueError, match="beam_size must be a positive int"):
        make_net().beam_search(padded_sources([3]), beam_size=0)


def test_dropout_drops_embeddings_and_memory_in_training_only():
    """embedding_dropout acts on both sides' token vectors, dropout on the memory attention reads; eval mode (what
    decoding and export use) is deterministic."""
    torch.manual_seed(0)
    source, tokens = padded_sources([S, S - 2]), torch.tensor([[0, 3], [0, 4]])
    for field, changed in (("embedding_dropout", ("h", "memory")), ("dropout", ("memory",))):
        net = make_net(attention=True, bidirectional=True, embedding_dim=8, **{field: 0.5})
        twice = [net.train().encode(source) for _ in range(2)]
        for name in ("h", "memory"):
            assert torch.equal(twice[0][name], twice[1][name]) != (name in changed), (field, name)
        net.eval()
        with torch.no_grad():
            assert torch.equal(net(source, tokens), net(source, tokens))
    net = make_net(attention=True, embedding_dim=8, embedding_dropout=0.5).train()
    state = {k: v.detach() for k, v in net.encode(source).items()}
    assert not torch.equal(net.decoder(tokens, state)[0], net.decoder(tokens, state)[0])  # the decoder's inputs too


def test_variational_dropout_drops_a_feature_at_every_step_or_none():
    """One mask per sequence and feature, shared by the time steps, scaled by 1 / keep; per element without the flag;
    eval mode (what decoding and export use) is the identity."""
    x = torch.ones(64, 6, 10)  # (B, T, D)
    for variational in (True, False):
        torch.manual_seed(0)
        y = Dropout(0.5, variational).train()(x)
        assert set(y.unique().tolist()) == {0.0, 2.0}
        assert torch.equal(y, y[:, :1].expand_as(y)) == variational
        assert torch.equal(Dropout(0.5, variational).eval()(x), x)
    torch.manual_seed(0)
    net = make_net(attention=True, bidirectional=True, embedding_dim=8, dropout=0.5, variational_dropout=True).train()
    memory = net.encode(padded_sources([S, S, S]))["memory"]  # (B, S, 2H), no padding: every step's output is nonzero
    dropped = memory == 0
    assert dropped.any() and torch.equal(dropped, dropped[:, :1].expand_as(dropped))
    torch.manual_seed(0)
    net = make_net(attention=True, embedding_dim=8, embedding_dropout=0.5, variational_dropout=True).train()
    vectors = net.encoder.input_dropout(net.encoder.input(padded_sources([S, S])))  # (B, S, D)
    dropped = vectors == 0
    assert dropped.any() and torch.equal(dropped, dropped[:, :1].expand_as(dropped))


# ------------------------------------------------------------------------------------------------- validation

BAD_NETS = [
    (dict(hidden_size=0), r"--model\.net\.hidden_size must be >= 1, got 0"),
    (dict(hidden_size=-2), r"--model\.net\.hidden_size must be >= 1"),
    (dict(num_layers=0), r"--model\.net\.num_layers must be >= 1"),
    (dict(cell="rnn"), r"--model\.net\.cell: unknown cell 'rnn'"),
    (dict(cell="LSTM"), r"--model\.net\.cell"),
    (dict(dropout=1.0), r"--model\.net\.dropout must be in \[0, 1\)"),
    (dict(dropout=-0.1), r"--model\.net\.dropout must be in \[0, 1\)"),
    (dict(embedding_dropout=1.0), r"--model\.net\.embedding_dropout must be in \[0, 1\)"),
    (dict(embedding_dim=0), r"--model\.net\.embedding_dim must be >= 1"),
    (dict(source_vocab_size=0), r"--model\.net\.source_vocab_size must be >= 1"),
    (dict(target_vocab_size=0), r"--model\.net\.target_vocab_size must be >= 1"),
    (dict(max_target_length=0), r"--model\.net\.max_target_length must be >= 1"),
    (dict(eos_token=V), r"--model\.net\.eos_token must be in \[0, target_vocab_size=9\)"),
    (dict(pad_token=V), r"--model\.net\.pad_token must be a token id of both vocabularies"),
    (dict(context_rnn=True), r"--model\.net\.context_rnn reads attention's output: it needs --model\.net\.attention"),
    (
        dict(variational_dropout=True),
        r"--model\.net\.variational_dropout shapes dropout masks: it needs --model\.net\.dropout or "
        r"--model\.net\.embedding_dropout > 0",
    ),
]


@pytest.mark.parametrize("kwargs,message", BAD_NETS, ids=[str(k) for k, _ in BAD_NETS])
def test_bad_net_settings_name_the_flag(kwargs, message):
    settings = dict(source_vocab_size=V, target_vocab_size=V, max_target_length=T, hidden_size=H) | kwargs
    with pytest.raises(ValueError, match=message):
        NetConfig(**settings)


# ------------------------------------------------------------------------------------------------------ memory


@pytest.mark.parametrize("combo", COMBOS, ids=_id)
@pytest.mark.parametrize("vocabs", [(V, V), (V, 12)], ids=["one-vocab", "two-vocabs"])
def test_parameter_count_is_that_of_the_built_net(combo, vocabs):
    config = NetConfig(source_vocab_size=vocabs[0], target_vocab_size=vocabs[1], hidden_size=H, **combo)
    assert config.parameter_count() == sum(p.numel() for p in Seq2Seq(config).parameters())


def _refused(monkeypatch: pytest.MonkeyPatch, **settings) -> str:
    """NetConfig(**settings)'s memory refusal, checked to come before any tensor is made and within a second."""
    monkeypatch.setattr(torch, "eye", lambda *a, **k: pytest.fail("allocated the one-hot table"))
    start = time.perf_counter()
    with pytest.raises(ValueError) as error:
        NetConfig(**settings)
    assert time.perf_counter() - start < 1.0
    return str(error.value)


def test_a_one_hot_table_that_cannot_fit_is_refused_before_allocating(monkeypatch):
    """The issue's case: --data.vocab_size 1000000000 used to call torch.eye(1e9), asking for 4e18 bytes."""
    message = _refused(monkeypatch, source_vocab_size=10**9, target_vocab_size=10**9)  # any machine: 8e18 bytes
    assert message.startswith(
        "vocabulary size 1000000000 with one-hot inputs: the input tables alone (vocab^2 x 4 bytes, encoder and "
        "decoder) need 8.0e18 bytes (6.9 EiB), more than the "
    )
    assert message.endswith(
        "; pass --model.net.embedding_dim (a learned embedding: vocab x dim) or a smaller vocabulary"
    )
    message = _refused(monkeypatch, source_vocab_size=9, target_vocab_size=10**9)
    assert message.startswith("vocabulary sizes 9 (source), 1000000000 (target) with one-hot")
    assert "need 4.0e18 bytes (3.5 EiB)" in message


@pytest.mark.parametrize(
    "settings,message,weights",
    [
        # A learned embedding instead: the embeddings and the output layer hold vocab x (64 + 64 + 128 + 1) weights.
        (
            dict(source_vocab_size=10**9, target_vocab_size=10**9, embedding_dim=64),
            "vocabulary size 1000000000, --model.net.hidden_size 128, --model.net.num_layers 1, "
            "--model.net.embedding_dim 64: the net's 2.6e11 weights (x 4 bytes) need 1.0e12 bytes (957.4 GiB)",
            10**9 * (64 + 64 + 128 + 1) + 2 * 4 * 128 * (64 + 128 + 2),
        ),
        # Wide and deep: four LSTM layers of 100,000 units in the encoder and in the decoder.
        (
            dict(hidden_size=100_000, num_layers=4),
            "vocabulary size 51, --model.net.hidden_size 100000, --model.net.num_layers 4: the net's 5.6e11 weights "
            "(x 4 bytes, and the one-hot tables) need 2.2e12 bytes (2.0 TiB)",
            2 * (4 * 10**5 * (51 + 10**5 + 2) + 3 * 4 * 10**5 * (2 * 10**5 + 2)) + 51 * 10**5 + 51,
        ),
    ],
)
def test_weights_that_cannot_fit_are_refused_naming_the_sizes(settings, message, weights, monkeypatch):
    monkeypatch.setattr(tasks, "available_memory", lambda: 2**80)
    assert NetConfig(**settings).parameter_count() == weights  # counted, never built
    monkeypatch.setattr(tasks, "available_memory", lambda: 64 * 2**30)  # the same answer on any machine
    assert _refused(monkeypatch, **settings) == (
        f"{message}, more than the 6.9e10 bytes (64.0 GiB) of memory available; lower these sizes (a fit needs about "
        "4x the weights: gradients and Adam's moments)"
    )


def test_a_net_is_refused_exactly_above_what_is_available(monkeypatch):
    config = NetConfig(hidden_size=H)  # the seed task's vocabulary (51), one-hot
    need = 4 * (2 * 51**2 + config.parameter_count())
    monkeypatch.setattr(tasks, "available_memory", lambda: need)
    Seq2Seq(NetConfig(hidden_size=H))
    monkeypatch.setattr(tasks, "available_memory", lambda: need - 1)
    with pytest.raises(ValueError, match=r"^vocabulary size 51, --model\.net\.hidden_size 16, "):
        NetConfig(hidden_size=H)


def test_lstm_nets_train_under_cpu_bf16_autocast_where_onednn_has_no_bf16_lstm(monkeypatch):
    """On AVX2 CPUs torch sends an LSTM under CPU bf16 autocast to oneDNN, which has no bf16 LSTM there and fails
    ("could not create a primitive descriptor"); run_rnn runs it in float32 instead, as autocast runs GRUs. (On
    CPUs with one, test_devices.py's bf16-mixed fit runs the bf16 LSTM.)"""
    monkeypatch.setattr(model_lib, "_cpu_bf16_lstm", lambda: False)
    config = net_config(12, max_target_length=4, eos_token=1, hidden_size=8, attention=True)
    net = Seq2Seq(dataclasses.replace(config, bidirectional=True, context_rnn=True, embedding_dim=6))
    source, target = torch.randint(2, 12, (3, 5)), torch.randint(2, 12, (3, 4))  # unpadded: the unpacked LSTM path
    ran = []  # the output dtype of each LSTM call (the net's own calls: on a CPU with bf16 LSTMs, finite bf16 too)
    for lstm in (m for m in net.modules() if isinstance(m, torch.nn.LSTM)):
        lstm.register_forward_hook(lambda module, args, out: ran.append(out[0].dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = net(source, shift_right(target, 0))
        x = torch.randn(3, 5, 6).bfloat16()
        out = model_lib.run_rnn(net.encoder.rnn, x)[0]
    F.cross_entropy(logits.float().flatten(0, 1), target.flatten()).backward()
    assert logits.shape == (3, 4, 12) and torch.isfinite(logits).all()
    assert ran == [torch.float32] * 4  # encoder, decoder, context RNN, then run_rnn's own call: each in float32
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters() if p.requires_grad)
    assert out.dtype == torch.float32 and torch.equal(out, net.encoder.rnn(x.float())[0])  # float32's numbers


def test_the_cpu_probes_run_rnn_and_the_bf16_warning_use_are_in_this_torch():
    """torch's private CPU probes: a torch that renamed them would fail every fit here; pin torch or port them."""
    assert isinstance(model_lib.cpu_native_bf16(), bool)
    assert isinstance(torch.ops.mkldnn._is_mkldnn_bf16_supported(), bool)
    assert model_lib._cpu_bf16_lstm() is bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
