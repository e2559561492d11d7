"""callbacks.py: LogProgress's plain-text lines and PredictionWriter's predictions.tsv, driven by a stand-in for the
few trainer attributes they read (one process; under DDP they are exercised by test_ddp.py); the weights' moving
average through the CLI (its exact resume: test_resume.py)."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest
import torch
from conftest import TINY_TASK, ema_flag, fit_in, last_metric, read_metrics, root_args, run_cli, tiny_run, version_dirs
from lightning.pytorch.trainer.states import TrainerFn

from lit_seq2seq.callbacks import EMAWeightAveraging, LogProgress, PredictionWriter
from lit_seq2seq.model import Seq2Seq


def progress_trainer(total: int, **kwargs) -> SimpleNamespace:
    settings = dict(num_training_batches=total, is_global_zero=True, current_epoch=2, sanity_checking=False)
    settings |= dict(state=SimpleNamespace(fn=TrainerFn.FITTING), ckpt_path=None)
    return SimpleNamespace(**(settings | dict(callback_metrics={}) | kwargs))


def run_epoch(callback: LogProgress, trainer: SimpleNamespace, losses: list[float] | None = None) -> None:
    callback.on_train_epoch_start(trainer, None)
    for batch_idx in range(trainer.num_training_batches):
        outputs = None if losses is None else {"loss": torch.tensor(losses[batch_idx])}  # as training_step returns
        callback.on_train_batch_end(trainer, None, outputs, None, batch_idx)


def test_log_progress_prints_the_first_batch_then_every_tenth_of_the_epoch(capsys):
    trainer = progress_trainer(20, callback_metrics={"train/loss": torch.tensor(9.0)})  # logged rarely: not shown
    run_epoch(LogProgress(), trainer, losses=[float(i) for i in range(20)])
    lines = capsys.readouterr().out.splitlines()
    assert [int(re.search(r"batch (\d+)/20", line)[1]) for line in lines] == list(range(1, 20, 2))
    assert all(re.fullmatch(r"epoch 2 batch \d+/20 train/loss \d+\.\d{4} \(\d+ batches/s\)", line) for line in lines)
    means = [float(re.search(r"train/loss (\S+)", line)[1]) for line in lines]
    assert means == [0.0, 1.5, *[i + 0.5 for i in range(3, 19, 2)]]  # each line: the batches since the one before


def test_log_progress_without_a_loss_yet_and_on_short_epochs(capsys):
    run_epoch(LogProgress(), progress_trainer(3))  # a tenth of 3 batches rounds to 0: every batch
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(" (")[0] for line in lines] == ["epoch 2 batch 1/3", "epoch 2 batch 2/3", "epoch 2 batch 3/3"]


def test_log_progress_prints_one_line_per_validation_without_positions(capsys):
    metrics = {"val/loss": torch.tensor(0.5), "val/exact_match": torch.tensor(0.75)}
    metrics |= {"val/position_0_acc": torch.tensor(1.0), "train/loss": torch.tensor(0.1)}
    callback = LogProgress()
    callback.on_validation_end(progress_trainer(10, callback_metrics=metrics), None)
    callback.on_validation_end(progress_trainer(10, callback_metrics=metrics, sanity_checking=True), None)
    callback.on_test_end(progress_trainer(10, callback_metrics={"test/exact_match": torch.tensor(1.0)}), None)
    assert capsys.readouterr().out.splitlines() == [
        "epoch 2 val/exact_match 0.7500 val/loss 0.5000",
        "epoch 2 test/exact_match 1.0000",
    ]


def test_validate_and_test_results_name_the_checkpoint_not_epoch_0(capsys):
    metrics = {"test/exact_match": torch.tensor(1.0)}
    testing = SimpleNamespace(fn=TrainerFn.TESTING)
    LogProgress().on_test_end(progress_trainer(10, callback_metrics=metrics, state=testing, ckpt_path="b.ckpt"), None)
    LogProgress().on_test_end(progress_trainer(10, callback_metrics=metrics, state=testing), None)
    metrics = {"val/exact_match": torch.tensor(0.5)}
    validating = SimpleNamespace(fn=TrainerFn.VALIDATING)
    LogProgress().on_validation_end(
        progress_trainer(1, callback_metrics=metrics, state=validating, ckpt_path="x"), None
    )
    assert capsys.readouterr().out.splitlines() == [
        "test of b.ckpt: test/exact_match 1.0000",
        "test: test/exact_match 1.0000",
        "validate of x: val/exact_match 0.5000",
    ]


def test_only_rank_0_prints_progress(capsys):
    trainer = progress_trainer(10, is_global_zero=False, callback_metrics={"val/loss": torch.tensor(0.5)})
    run_epoch(LogProgress(), trainer)
    LogProgress().on_validation_end(trainer, None)
    assert capsys.readouterr().out == ""


def predict_trainer(tmp_path, **kwargs) -> SimpleNamespace:
    settings = dict(world_size=1, log_dir=str(tmp_path / "version_3"), is_global_zero=True)
    return SimpleNamespace(default_root_dir=str(tmp_path), **(settings | kwargs))


def batch(source: list[list[int]], target: list[list[int]], prediction: list[list[int]]) -> dict[str, torch.Tensor]:
    return {"source": torch.tensor(source), "target": torch.tensor(target), "prediction": torch.tensor(prediction)}


def predict(trainer: SimpleNamespace, outputs: list[dict[str, torch.Tensor]]) -> None:
    """One predict epoch through a new PredictionWriter, `outputs` as predict_step's results."""
    writer = PredictionWriter()
    writer.on_predict_epoch_start(trainer, None)
    for batch_idx, output in enumerate(outputs):
        writer.on_predict_batch_end(trainer, None, output, None, batch_idx)
    writer.on_predict_epoch_end(trainer, None)


def test_prediction_writer_writes_every_batch_in_order(tmp_path, capsys):
    outputs = [
        batch([[3, 4, 5]], [[4, 3]], [[4, 3]]),
        batch([[6, 7, 0], [2, 2, 2]], [[7, 6], [2, 2]], [[7, 7], [2, 2]]),
    ]
    predict(predict_trainer(tmp_path), outputs)
    path = tmp_path / "version_3" / "predictions.tsv"
    assert path.read_text().splitlines() == [
        "source\ttarget\tprediction",
        "3 4 5\t4 3\t4 3",
        "6 7 0\t7 6\t7 7",
        "2 2 2\t2 2\t2 2",
    ]
    assert f"predictions written to {path}" in capsys.readouterr().err


def test_prediction_writer_writes_ids_as_sample_and_decode_do(tmp_path):
    net = SimpleNamespace(config=SimpleNamespace(eos_token=1, pad_token=0))  # a model with an end token
    writer, trainer = PredictionWriter(), predict_trainer(tmp_path)
    writer.on_predict_batch_end(
        trainer, None, batch([[6, 7, 0], [2, 2, 2]], [[7, 6, 1], [2, 1, 0]], [[7, 1, 0], [2, 1, 0]]), None, 0
    )
    writer.on_predict_epoch_end(trainer, SimpleNamespace(net=net))
    rows = (tmp_path / "version_3" / "predictions.tsv").read_text().splitlines()
    assert rows == ["source\ttarget\tprediction", "6 7\t7 6\t7", "2 2 2\t2\t2"]  # no padding, no end token


def test_prediction_writer_writes_nothing_for_no_rows_or_on_other_ranks(tmp_path):
    predict(predict_trainer(tmp_path), [])
    predict(predict_trainer(tmp_path, is_global_zero=False), [batch([[3]], [[3]], [[3]])])
    assert not list(tmp_path.iterdir())


def test_prediction_writer_falls_back_to_the_root_without_a_logger(tmp_path):
    predict(predict_trainer(tmp_path, log_dir=None), [batch([[3]], [[3]], [[3]])])
    assert (tmp_path / "predictions.tsv").read_text().splitlines()[1:] == ["3\t3\t3"]


def test_prediction_writer_starts_each_predict_epoch_afresh(tmp_path):
    trainer, writer = predict_trainer(tmp_path), PredictionWriter()
    writer.on_predict_batch_end(trainer, None, batch([[9]], [[9]], [[9]]), None, 0)  # an earlier, unfinished epoch
    writer.on_predict_epoch_start(trainer, None)
    writer.on_predict_batch_end(trainer, None, batch([[3]], [[3]], [[4]]), None, 0)
    writer.on_predict_epoch_end(trainer, None)
    assert (tmp_path / "version_3" / "predictions.tsv").read_text().splitlines()[1:] == ["3\t3\t4"]


@pytest.mark.filterwarnings("ignore:Be aware that when using `ckpt_path`")
def test_ema_the_average_is_what_is_validated_checkpointed_and_rebuilt_for_export(tmp_path):
    fit = [*TINY_TASK, *tiny_run(train=1024, val=128, epochs=2), ema_flag(decay=0.9)]
    root = fit_in(tmp_path, *fit)
    last = torch.load(root / "version_0/checkpoints/last.ckpt", weights_only=True)
    average, trained = last["state_dict"], last["current_model_state"]
    assert any(not torch.equal(trained[k], average[k]) for k in average)
    net = Seq2Seq.from_checkpoint(root / "version_0/checkpoints/last.ckpt")
    assert all(torch.equal(v, average[f"net.{k}"]) for k, v in net.state_dict().items())
    # the fit's last validation loss is the average's: `validate` of last.ckpt (no callback) gives it again
    run_cli(["validate", *fit[:-1], "--ckpt_path", root / "version_0/checkpoints/last.ckpt", *root_args(root)])
    fitted, validated = version_dirs(root)
    assert last_metric(validated, "val/loss") == pytest.approx(last_metric(fitted, "val/loss"), abs=1e-6)


def test_ema_before_its_start_step_validates_the_training_weights_and_never_alters_training(tmp_path):
    base = [*TINY_TASK, *tiny_run(train=1024, val=128, epochs=2)]  # 32 steps an epoch
    plain, ema = (
        fit_in(tmp_path / "plain", *base),
        fit_in(tmp_path / "ema", *base, ema_flag(decay=0.9, update_starting_at_step=40)),
    )

    def val_losses(root):
        return [float(r["val/loss"]) for r in read_metrics(root / "version_0") if r.get("val/loss")]

    (plain0, plain1), (ema0, ema1) = val_losses(plain), val_losses(ema)
    assert ema0 == plain0 and ema1 != plain1  # epoch 0: not averaging yet (not the initial weights); epoch 1: averaging
    trained = torch.load(ema / "version_0/checkpoints/last.ckpt", weights_only=True)["current_model_state"]
    want = torch.load(plain / "version_0/checkpoints/last.ckpt", weights_only=True)["state_dict"]
    assert all(torch.equal(trained[k], v) for k, v in want.items())


def test_ema_decay_out_of_range_is_refused():
    for decay in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match=r"--trainer.callbacks.decay must be in \(0, 1\), got"):
            EMAWeightAveraging(decay=decay)


def test_log_progress_after_a_mid_epoch_resume_marks_the_first_batch_then_times_from_it(capsys):
    """The first line after a resume read "(0 batches/s)": one batch over the time since the epoch's restart."""
    trainer = progress_trainer(20)
    callback = LogProgress()  # (Lightning calls no on_train_epoch_start for an epoch resumed in its middle)
    for batch_idx in range(12, 20):  # batches 0-11 were trained before the resume
        callback.on_train_batch_end(trainer, None, {"loss": torch.tensor(1.0)}, None, batch_idx)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "epoch 2 batch 13/20 train/loss 1.0000 (resumed here)"
    assert [line.split(" train")[0] for line in lines[1:]] == [
        "epoch 2 batch 15/20",
        "epoch 2 batch 17/20",
        "epoch 2 batch 19/20",
    ]
    assert all(re.search(r"\(\d+ batches/s\)$", line) for line in lines[1:])
