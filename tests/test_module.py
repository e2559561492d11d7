"""module.py: Seq2SeqModule (the net built from its config, scheduled sampling, the teacher-forcing ratio check)
and Seq2SeqMetrics' numbers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import manual_greedy, net_config, padded_sources

from lit_seq2seq.model import NetConfig, Seq2Seq, shift_right
from lit_seq2seq.module import Seq2SeqMetrics, Seq2SeqModule

V, H, S, T = 9, 16, 7, 5  # vocab, hidden, longest source, decoder steps
EOS = 1


def test_metrics_numbers():
    metric = Seq2SeqMetrics(max_target_length=3)
    target = torch.tensor([[5, 1, 0], [4, 6, 1], [2, 1, 0]])
    logits = F.one_hot(torch.tensor([[5, 1, 3], [4, 2, 1], [3, 3, 3]]), 8).float()  # argmax right on 5 of 7 tokens
    greedy = torch.tensor([[5, 1, 0], [4, 6, 1], [2, 3, 0]])
    metric.update(torch.tensor(7.0), logits, target, greedy, pad_token=0)
    out = metric.compute()
    assert out["loss"].item() == pytest.approx(1.0)  # 7 / 7 non-pad tokens
    assert out["token_acc"].item() == pytest.approx(4 / 7)
    assert out["exact_match"].item() == pytest.approx(2 / 3)
    assert [out[f"position_{i}_acc"].item() for i in range(3)] == pytest.approx([1.0, 2 / 3, 1.0])


def test_module_builds_the_net_from_primitive_hparams():
    config = net_config(vocab_size=V, max_target_length=T, eos_token=EOS, hidden_size=H, cell="gru", num_layers=2)
    module = Seq2SeqModule(config)
    assert isinstance(module.net, Seq2Seq) and module.net.config == config
    config = module.net.config
    assert (config.source_vocab_size, config.max_target_length, config.eos_token) == (V, T, EOS)
    assert config.cell == "gru" and config.num_layers == 2 and config.hidden_size == H
    assert "optimizer" not in module.hparams and "lr_scheduler" not in module.hparams
    assert set(module.hparams) == {"net", "teacher_forcing_ratio"}
    assert all(isinstance(v, (int, float, str, bool, type(None))) for v in module.hparams["net"].values())
    assert NetConfig.from_hparams(module.hparams) == config


def test_scheduled_sampling_ratio_zero_feeds_own_predictions():
    torch.manual_seed(0)
    module = Seq2SeqModule(net_config(V, max_target_length=T, hidden_size=H), teacher_forcing_ratio=0.0)
    source, target = padded_sources([S, S, S]), torch.randint(1, V, (3, T))
    module.train()
    with torch.no_grad():
        sampled = module._logits(source, target)
        free = manual_greedy(module.net, source, T)  # ratio 0: decoding feeds its argmax, like greedy
    assert sampled.shape == (3, T, V)
    assert torch.equal(sampled.argmax(-1), free)
    module.eval()  # evaluation is always teacher forced
    with torch.no_grad():
        torch.testing.assert_close(module._logits(source, target), module.net(source, shift_right(target, 0)))


@pytest.mark.parametrize("ratio", [-0.1, 1.01, 2.0])
def test_bad_teacher_forcing_ratio_names_the_flag(ratio):
    with pytest.raises(ValueError, match=r"--model\.teacher_forcing_ratio must be in \[0, 1\]"):
        Seq2SeqModule(net_config(V, hidden_size=H), teacher_forcing_ratio=ratio)


@pytest.mark.parametrize("ratio", [0.0, 0.5, 1.0])
def test_teacher_forcing_ratio_bounds_are_accepted(ratio):
    assert Seq2SeqModule(net_config(V, hidden_size=H), teacher_forcing_ratio=ratio).teacher_forcing_ratio == ratio
