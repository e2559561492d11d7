"""module.py: Seq2SeqModule (the net built from its config, scheduled sampling, the teacher-forcing ratio check)
and Seq2SeqMetrics' numbers."""

from __future__ import annotations

import functools
import re

import pytest
import torch
import torch.nn.functional as F
from conftest import manual_greedy, net_config, padded_sources

from lit_seq2seq.metrics import score
from lit_seq2seq.model import NetConfig, Seq2Seq, shift_right
from lit_seq2seq.module import Seq2SeqMetrics, Seq2SeqModule

V, H, S, T = 9, 16, 7, 5  # vocab, hidden, longest source, decoder steps
EOS = 1


def test_metrics_numbers():
    metric = Seq2SeqMetrics(max_target_length=3)
    target = torch.tensor([[5, 1, 0], [4, 6, 1], [2, 1, 0]])
    logits = F.one_hot(torch.tensor([[5, 1, 3], [4, 2, 1], [3, 3, 3]]), 8).float()  # argmax right on 5 of 7 tokens
    greedy = torch.tensor([[5, 1, 0], [4, 6, 1], [2, 3, 0]])
    scores = score(greedy.numpy(), target.numpy()[:, None], EOS, 0)
    metric.update(torch.tensor(7.0), logits, target, scores, pad_token=0, greedy=greedy)
    out = metric.compute()
    assert out["loss"].item() == pytest.approx(1.0)  # 7 / 7 non-pad tokens
    assert out["token_acc"].item() == pytest.approx(4 / 7)
    assert out["exact_match"].item() == pytest.approx(2 / 3)
    # [2, 3, 0]'s pad ends its answer, [2, 3]: one insertion over 4 reference tokens
    assert out["token_error_rate"].item() == pytest.approx(1 / 4)
    assert [out[f"position_{i}_acc"].item() for i in range(3)] == pytest.approx([1.0, 2 / 3, 1.0])


def test_module_builds_the_net_from_primitive_hparams():
    config = net_config(vocab_size=V, max_target_length=T, eos_token=EOS, hidden_size=H, cell="gru", num_layers=2)
    module = Seq2SeqModule(config)
    assert isinstance(module.net, Seq2Seq) and module.net.config == config
    config = module.net.config
    assert (config.source_vocab_size, config.max_target_length, config.eos_token) == (V, T, EOS)
    assert config.cell == "gru" and config.num_layers == 2 and config.hidden_size == H
    assert "optimizer" not in module.hparams and "lr_scheduler" not in module.hparams
    assert set(module.hparams) == {"net", "teacher_forcing_ratio", "label_smoothing", "lr_scheduler_interval"}
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


def test_scheduled_sampling_refuses_variational_dropout():
    """Stepping the decoder would draw a new mask each step: not one per sequence."""
    net = net_config(V, hidden_size=H, dropout=0.2, variational_dropout=True)
    with pytest.raises(ValueError, match=r"--model\.teacher_forcing_ratio < 1 steps the decoder .* --model\.net\."):
        Seq2SeqModule(net, teacher_forcing_ratio=0.5)
    Seq2SeqModule(net, teacher_forcing_ratio=1.0)  # teacher forcing: one parallel call, one mask per sequence


@pytest.mark.parametrize("ratio", [0.0, 0.5, 1.0])
def test_teacher_forcing_ratio_bounds_are_accepted(ratio):
    assert Seq2SeqModule(net_config(V, hidden_size=H), teacher_forcing_ratio=ratio).teacher_forcing_ratio == ratio


def test_label_smoothing_smooths_the_training_loss_only():
    torch.manual_seed(0)
    module = Seq2SeqModule(net_config(V, max_target_length=T, hidden_size=H), label_smoothing=0.1)
    logits, target = torch.randn(3, T, V), torch.randint(0, V, (3, T))
    flat = logits.flatten(0, 1), target.flatten()
    smoothed = F.cross_entropy(*flat, ignore_index=0, label_smoothing=0.1)
    torch.testing.assert_close(module._cross_entropy(logits, target, "mean"), smoothed)
    plain = F.cross_entropy(*flat, ignore_index=0, reduction="sum")
    torch.testing.assert_close(module._cross_entropy(logits, target, "sum"), plain)  # what val/test losses add up
    assert module.hparams["label_smoothing"] == 0.1


@pytest.mark.parametrize("value", [-0.1, 1.0])
def test_bad_label_smoothing_names_the_flag(value):
    with pytest.raises(ValueError, match=r"--model\.label_smoothing must be in \[0, 1\)"):
        Seq2SeqModule(net_config(V, hidden_size=H), label_smoothing=value)


# ---- i10-metrics: evaluation on (source, target, references) batches ------------------------------------------------


def scripted_module(monkeypatch: pytest.MonkeyPatch, predictions: list[list[int]]) -> Seq2SeqModule:
    """A tiny module whose greedy decoding returns `predictions` (padded with 0), whatever the source."""
    module = Seq2SeqModule(net_config(V, max_target_length=T, eos_token=EOS, hidden_size=H)).eval()
    decoded = torch.tensor([p + [0] * (T - len(p)) for p in predictions])
    monkeypatch.setattr(module.net, "greedy", lambda source: decoded[: len(source)])
    return module


def test_three_tuple_batch_counts_any_reference(monkeypatch: pytest.MonkeyPatch):
    # Sources with 1 or 2 references (-1 where absent); target = the first reference.
    references = torch.tensor(
        [
            [[5, 6, 1, 0, 0], [-1] * 5],  # predicted [5, 6]: exact, 0 errors / 2
            [[5, 6, 7, 1, 0], [4, 4, 1, 0, 0]],  # predicted [4, 4]: the second reference, exact, 0 / 2
            [[3, 3, 3, 1, 0], [2, 2, 1, 0, 0]],  # predicted [2, 3]: 1 error to [2, 2] (2 to the first), 1 / 2
            [[7, 8, 1, 0, 0], [-1] * 5],  # predicted nothing: 2 deletions, 2 / 2
        ]
    )
    module = scripted_module(monkeypatch, [[5, 6, 1], [4, 4, 1], [2, 3, 1], [1]])
    batch = (padded_sources([S] * 4), references[:, 0], references)
    with torch.no_grad():
        module.validation_step(batch, 0)
    out = module.metrics["val"].compute()
    assert out["exact_match"].item() == pytest.approx(2 / 4)  # against the target alone it would be 1 / 4
    assert out["token_error_rate"].item() == pytest.approx(3 / 8)
    assert not any(k.startswith("position_") for k in out)  # positions mean nothing with alternative references
    assert out["loss"].item() > 0 and 0 <= out["token_acc"].item() <= 1


def test_two_tuple_figures_are_the_old_formulas(monkeypatch: pytest.MonkeyPatch):
    # A generated task's batch: exact match and position accuracy as before this change (greedy at the target's width
    # equal to the target at every position), token error rate against the target as the one reference.
    predictions = [[5, 6, 1], [5, 6, 7, 8, 2], [5, 0, 1], [1], [5, 6, 1], [4, 1]]
    target = torch.tensor(
        [
            [5, 6, 1, 0, 0],  # exact
            [5, 6, 7, 8, 1],  # the prediction never ends: its 2 is one insertion
            [5, 1, 0, 0, 0],  # a pad emitted before the end ends the answer, as decode reads it: exact
            [1, 0, 0, 0, 0],  # both empty: exact
            [5, 7, 1, 0, 0],  # one substitution
            [4, 4, 1, 0, 0],  # one deletion
        ]
    )
    module = scripted_module(monkeypatch, predictions)
    with torch.no_grad():
        module.validation_step((padded_sources([S] * 6), target), 0)
    out = module.metrics["val"].compute()
    hits = module.net.greedy(target) == target  # the old definition, token by token
    assert hits.all(1).tolist() == [True, False, False, True, False, False]
    assert out["exact_match"].item() == pytest.approx(3 / 6)  # and row 2, whose pad ends its answer
    assert [out[f"position_{i}_acc"].item() for i in range(T)] == pytest.approx(hits.double().mean(0).tolist())
    assert out["token_error_rate"].item() == pytest.approx(3 / 11)  # 3 errors over 2 + 4 + 1 + 0 + 2 + 2 tokens


def test_metric_states_sum_across_ranks(monkeypatch: pytest.MonkeyPatch):
    # What DDP's "sum" reduction does: two ranks' states added give the figures of one process seeing both batches.
    references = torch.tensor([[[5, 1, 0, 0, 0], [4, 1, 0, 0, 0]], [[5, 6, 1, 0, 0], [-1] * 5]])
    module = scripted_module(monkeypatch, [[4, 1], [5, 7, 1]])
    three, two = (padded_sources([S] * 2), references[:, 0], references), (padded_sources([S] * 2), references[:, 0])
    ranks = [Seq2SeqModule(module.net.config).eval() for _ in range(2)]
    for rank in ranks:
        monkeypatch.setattr(rank.net, "greedy", module.net.greedy)
        rank.net.load_state_dict(module.net.state_dict())
    with torch.no_grad():
        module.validation_step(three, 0)
        module.validation_step(two, 1)
        ranks[0].validation_step(three, 0)  # a rank with only multi-reference batches: no position counts
        ranks[1].validation_step(two, 1)
    merged = ranks[0].metrics["val"]
    merged.merge_state(ranks[1].metrics["val"])
    alone, summed = module.metrics["val"].compute(), merged.compute()
    assert alone.keys() == summed.keys() and all(torch.equal(alone[k], summed[k]) for k in alone)
    assert alone["exact_match"].item() == pytest.approx(1 / 4)  # [4] is the second reference of row 0
    assert alone["token_error_rate"].item() == pytest.approx(3 / 6)
    assert alone["position_0_acc"].item() == 0.5  # from the 2-tuple batch alone


def test_predict_step_takes_both_batch_kinds(monkeypatch: pytest.MonkeyPatch):
    module = scripted_module(monkeypatch, [[5, 1], [6, 6, 1]])
    references = torch.tensor([[[5, 1, 0], [4, 1, 0]], [[6, 1, 0], [-1] * 3]])
    source = padded_sources([S, 2])
    out = module.predict_step((source, references[:, 0], references), 0)
    assert torch.equal(out["references"], references) and torch.equal(out["target"], references[:, 0])
    assert out["prediction"].tolist() == [[5, 1, 0, 0, 0], [6, 6, 1, 0, 0]]
    out = module.predict_step((source, references[:, 0]), 0)
    assert set(out) == {"source", "target", "prediction"}


def test_validate_logs_token_error_rate_for_both_batch_kinds(monkeypatch: pytest.MonkeyPatch):
    import lightning as L

    torch.manual_seed(0)
    module = Seq2SeqModule(net_config(V, max_target_length=T, eos_token=EOS, hidden_size=H))
    source = padded_sources([S, 3, 5, 2])
    references = torch.tensor([[[5, 1, 0, 0, 0], [4, 1, 0, 0, 0]]] * 4)
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    loader = functools.partial(torch.utils.data.DataLoader, batch_size=None)  # each item one batch
    three = trainer.validate(module, loader([(source, references[:, 0], references)]), verbose=False)[0]
    two = trainer.validate(module, loader([(source, references[:, 0])]), verbose=False)[0]
    assert {"val/exact_match", "val/token_error_rate", "val/loss", "val/token_acc"} <= three.keys()
    assert not any("position" in k for k in three) and "val/position_0_acc" in two
    assert three["val/token_error_rate"] <= two["val/token_error_rate"]  # more references: never further


def test_evaluation_decodes_in_float32_under_a_bf16_training_precision():
    """Lightning runs validation and test steps under the training precision's autocast; the metrics must be those of
    the float32 net, which is what the export decodes with."""
    torch.manual_seed(0)
    module = Seq2SeqModule(net_config(V, max_target_length=T, eos_token=EOS, hidden_size=H, attention=True)).eval()
    source, target = padded_sources([S, S - 1, S - 3, 2]), torch.randint(2, V, (4, T))
    results = []
    for bf16 in (False, True):
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            module._evaluate((source, target), "val")
            predicted = module.predict_step((source, target), 0)["prediction"]
        results.append(({k: v.item() for k, v in module.metrics["val"].compute().items()}, predicted))
        module.metrics["val"].reset()
    assert results[0][0] == results[1][0]
    assert torch.equal(results[0][1], results[1][1]) and torch.equal(results[0][1], module.net.greedy(source))


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"hidden_size": "128"}, "--model.net.hidden_size must be an integer, got '128'"),
        ({"hidden_size": 12.5}, "--model.net.hidden_size must be an integer, got 12.5"),
        ({"source_vocab_size": 51.0}, "--model.net.source_vocab_size must be an integer, got 51.0"),
        ({"bidirectional": "yes"}, "--model.net.bidirectional must be true or false, got 'yes'"),
        ({"dropout": "0.1"}, "--model.net.dropout must be a number, got '0.1'"),
        ({"embedding_dim": "16"}, "--model.net.embedding_dim must be an integer or null, got '16'"),
    ],
)
def test_net_config_names_a_field_of_the_wrong_type(fields, message):
    """From a script of one's own: a string size failed inside a comparison, a float one inside torch, "yes" was
    taken for true."""
    with pytest.raises(TypeError, match=f"^{re.escape(message)}$"):
        NetConfig(**fields)


def test_numpy_numbers_are_taken_as_python_numbers_so_the_checkpoint_loads(tmp_path):
    """From a notebook, np.int64 sizes failed inside torch's RNN ("hidden_size should be of type int") and the
    DataLoader, and numpy numbers in the hyperparameters made the checkpoint refuse to load (weights_only)."""
    import lightning as L
    import numpy as np

    from lit_seq2seq.checkpoint import read_checkpoint
    from lit_seq2seq.data import Seq2SeqDataModule

    data = Seq2SeqDataModule(
        task="reverse", vocab_size=np.int64(V), source_length=np.int32(4), train_size=64, val_size=np.int64(16)
    )
    data = Seq2SeqDataModule(**data.hparams | {"batch_size": np.int64(16), "seed": np.uint8(3)})
    config = NetConfig(
        source_vocab_size=data.source_vocab_size,
        target_vocab_size=data.target_vocab_size,
        max_target_length=data.max_target_length,
        eos_token=data.eos_token,
        hidden_size=np.int64(H),
        num_layers=np.int64(2),
        dropout=np.float64(0.1),
        bidirectional=np.True_,
    )
    assert [type(getattr(config, f)) for f in ("hidden_size", "dropout", "bidirectional")] == [int, float, bool]
    module = Seq2SeqModule(net=config, label_smoothing=np.float32(0.1), teacher_forcing_ratio=np.float64(1))
    trainer = L.Trainer(max_epochs=1, default_root_dir=tmp_path, logger=False, enable_progress_bar=False)
    trainer.fit(module, data)
    path = trainer.checkpoint_callback.best_model_path
    checkpoint = read_checkpoint(path)  # torch.load(weights_only=True) inside
    assert checkpoint["datamodule_hyper_parameters"]["batch_size"] == 16
    assert Seq2SeqModule.load_from_checkpoint(path).net.config == config
    with pytest.raises(TypeError, match=r"^--model.label_smoothing must be a number, got '0.1'$"):
        Seq2SeqModule(label_smoothing="0.1")  # failed inside a comparison


def test_module_arguments_of_the_wrong_kind_are_named():
    with pytest.raises(TypeError, match="--model.net must be a NetConfig .* got NoneType"):
        Seq2SeqModule(net=None)
    with pytest.raises(TypeError, match="--model.optimizer must be a class or callable .* got 'adam'"):
        Seq2SeqModule(optimizer="adam")  # failed at the first step: 'str' object is not callable
    with pytest.raises(TypeError, match="--model.lr_scheduler must be a class or callable .* got 'step'"):
        Seq2SeqModule(lr_scheduler="step")


@pytest.mark.parametrize(
    "field, value", [("source_vocab_size", 9), ("max_target_length", 2), ("eos_token", None)], ids=lambda v: str(v)
)
def test_a_net_whose_sizes_are_not_the_data_modules_is_refused_at_setup(field, value, tmp_path):
    """A script of one's own copies the sizes: a smaller vocabulary failed inside the embedding (IndexError), a shorter
    target inside the loss, and a missing end token trained silently on targets that have one."""
    import lightning as L

    from lit_seq2seq.data import Seq2SeqDataModule

    data = Seq2SeqDataModule(task="copy", vocab_size=12, source_length=4, train_size=64, val_size=8, test_size=8)
    sizes = {name: getattr(data, name) for name in ("source_vocab_size", "target_vocab_size", "max_target_length")}
    net = NetConfig(**(sizes | {"eos_token": data.eos_token, "hidden_size": 8, field: value}))
    trainer = L.Trainer(max_epochs=1, default_root_dir=tmp_path, logger=False, enable_progress_bar=False)
    with pytest.raises(ValueError, match=f"^net {field} is {value}, the data module's {getattr(data, field)}: build"):
        trainer.fit(Seq2SeqModule(net=net), data)
