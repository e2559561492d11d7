"""DDP on CPU (gloo, 2 processes): `lit-seq2seq fit|test|predict --trainer.strategy ddp --trainer.devices 2`.

`ddp` re-executes the command line for the second rank, so the runs are `python -m lit_seq2seq ...` subprocesses.
A test-only callback (imported from this file by both ranks) records the source rows each rank trained on.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import TINY_TASK, ema_flag, last_metric, read_metrics, root_args, run_cli, tiny_run, version_dirs

from lit_seq2seq.data import Seq2SeqDataModule

# Odd eval sizes: a split that does not divide by 2 ranks must still count each row once.
TASK = [*TINY_TASK, *tiny_run(train=1000, val=63, test=101, hidden=16), "--data.predict_size", "37"]
TASK += ["--data.batch_size", "32"]
EPOCHS = 2
DDP = ["--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu"]


class RecordTrainRows(L.Callback):
    """Test only: saves the source rows of every training batch to <root>/rows-rank{R}-epoch{E}.pt."""

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.rows: list[torch.Tensor] = []

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        self.rows.append(batch[0].cpu())

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        path = Path(trainer.default_root_dir) / f"rows-rank{trainer.global_rank}-epoch{trainer.current_epoch}.pt"
        torch.save({"rows": torch.cat(self.rows), "world_size": trainer.world_size}, path)


class PoisonRank1(L.Callback):
    """Test only: a NaN weight on rank 1 alone at global step 5, so only that rank sees a NaN loss."""

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args) -> None:
        if trainer.global_rank == 1 and trainer.global_step == 5:
            with torch.no_grad():
                next(pl_module.parameters()).view(-1)[0] = float("nan")


def cli(root: Path, subcommand: str, *args: str, expect: int = 0) -> str:
    """`python -m lit_seq2seq SUBCOMMAND TASK ARGS` in a subprocess (the last flag wins: ARGS over TASK)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), *sys.path]))
    cmd = [sys.executable, "-m", "lit_seq2seq", subcommand, *TASK, *args, *root_args(root)]
    done = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == expect, done.stderr[-4000:]
    return done.stderr


def _multiset(rows: torch.Tensor) -> list[tuple[int, ...]]:
    return sorted(map(tuple, rows.tolist()))


@pytest.mark.slow  # two processes, ~30 s; the default suite's DDP fits: SIGTERM to rank 0, a NaN on one rank
@pytest.mark.filterwarnings("ignore:The dirpath has changed")
def test_ddp_two_ranks_shard_train_reduce_metrics_and_write_once(tmp_path, monkeypatch):
    root = tmp_path / "runs"
    root.mkdir()
    cli(root, "fit", *DDP, "--trainer.max_epochs", str(EPOCHS), "--trainer.callbacks+=test_ddp.RecordTrainRows")

    # Written once, by rank 0: one version folder, one config, one best and one last checkpoint, one report.
    assert [p.name for p in version_dirs(root)] == ["version_0"]
    version = root / "version_0"
    assert sorted(p.name for p in (version / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    written = ["checkpoints", "config.yaml", "hparams.yaml", "metrics.csv", "report.csv", "report.png"]
    assert sorted(p.name for p in version.iterdir()) == written
    assert len([r for r in read_metrics(version) if r.get("val/exact_match")]) == EPOCHS  # one row per epoch
    last = torch.load(version / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == EPOCHS * 16  # 1000 rows / 2 ranks = 500 per rank = 16 batches of 32

    # Each rank trained on its own half of the train split, and together on all of it, in every epoch.
    train = Seq2SeqDataModule(**{k: v for k, v in last["datamodule_hyper_parameters"].items() if k[0] != "_"})
    everything = _multiset(train.split("train").source)
    orders = []
    for epoch in range(EPOCHS):
        shards = [torch.load(root / f"rows-rank{r}-epoch{epoch}.pt", weights_only=True) for r in (0, 1)]
        assert [s["world_size"] for s in shards] == [2, 2]
        assert [len(s["rows"]) for s in shards] == [500, 500]
        assert _multiset(torch.cat([s["rows"] for s in shards])) == everything
        orders.append(shards[0]["rows"])
    assert not torch.equal(orders[0], orders[1])  # reshuffled per epoch

    # test under DDP: metrics over the whole split (101 rows, none twice), equal to a single-process test
    cli(root, "test", *DDP, "--ckpt_path", "best")
    ddp_test = version_dirs(root)[-1]
    monkeypatch.chdir(tmp_path)
    run_cli(["test", *TASK, "--ckpt_path", "best", *root_args(root)])
    single_test = version_dirs(root)[-1]
    assert [p.name for p in version_dirs(root)] == ["version_0", "version_1", "version_2"]
    assert last_metric(ddp_test, "test/exact_match") == last_metric(single_test, "test/exact_match")
    assert last_metric(ddp_test, "test/token_acc") == last_metric(single_test, "test/token_acc")
    assert last_metric(ddp_test, "test/loss") == pytest.approx(last_metric(single_test, "test/loss"), rel=1e-6)
    assert not (ddp_test / "checkpoints").exists()

    # predict under DDP: every row once, in the split's order, written by rank 0 alone
    cli(root, "predict", *DDP, "--ckpt_path", "best")
    ddp_predictions = (version_dirs(root)[-1] / "predictions.tsv").read_text()
    run_cli(["predict", *TASK, "--ckpt_path", "best", *root_args(root)])
    assert ddp_predictions == (version_dirs(root)[-1] / "predictions.tsv").read_text()
    assert len(ddp_predictions.splitlines()) == 1 + 37


def test_ddp_nan_loss_on_one_rank_stops_every_rank_with_exit_1(tmp_path):
    """The ranks agree on stopping; a rank that raised alone would leave the other hanging in the all-reduce."""
    flags = ["--trainer.max_epochs", "1", "--checkpoint.every_n_train_steps", "2"]
    flags += ["--trainer.callbacks+=test_ddp.PoisonRank1"]
    err = cli(tmp_path, "fit", *DDP, *flags, expect=1)
    assert "Traceback" not in err
    (message,) = [line for line in err.splitlines() if "error:" in line]  # rank 0 speaks for both
    assert message.startswith("lit-seq2seq fit: error: non-finite training loss (nan on rank 1) at global step 5")
    last = torch.load(tmp_path / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 4 and all(torch.isfinite(v).all() for v in last["state_dict"].values())


@pytest.mark.slow  # two processes, ~9 s; tests/test_callbacks.py covers the average in one process
def test_ddp_with_the_weights_moving_average(tmp_path):
    """The average's deepcopy of the module used to fail under DDP ("cannot pickle '_thread.lock' object"); the
    epoch metrics are already reduced over the ranks, so Lightning's sync_dist advice is not printed."""
    err = cli(tmp_path, "fit", *DDP, "--trainer.max_epochs", "1", ema_flag(decay=0.9))
    assert "sync_dist" not in err and "all_gather is deprecated" not in err
    last = torch.load(tmp_path / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)
    average, trained = last["state_dict"], last["current_model_state"]
    assert last["global_step"] == 16 and any(not torch.equal(trained[k], average[k]) for k in average)


# rank 1 getting the signal: ~17 s more of two processes; in the default suite rank 0, the usual target of `kill`
@pytest.mark.parametrize("rank", [0, pytest.param(1, marks=pytest.mark.slow)])
def test_ddp_sigterm_to_one_rank_stops_both_at_one_batch_then_resumes(rank, tmp_path):
    """`kill` of the fit's process: Lightning's handler broadcast from inside the signal handler and killed rank 1,
    which died of a gloo error (or both hung); now both stop after the same batch, with last.ckpt written there, and
    both exit 143 also when another process than rank 0 got the signal (rank 0 exited 0)."""
    spec = {"class_path": "test_resume.KillAt", "init_args": {"step": 5, "hook": "sigterm", "rank": rank}}
    sigterm = f"--trainer.callbacks+={json.dumps(spec)}"
    err = cli(tmp_path, "fit", *DDP, "--trainer.max_epochs", str(EPOCHS), sigterm, expect=143)
    assert "Traceback" not in err and "GLHF" not in err and "EnforceNotMet" not in err, err
    assert err.count("SIGTERM: stopped after step 5, written to ") == 1
    assert err.rstrip().endswith("lit-seq2seq fit: stopped by SIGTERM")
    last = tmp_path / "version_0" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 5
    cli(tmp_path, "fit", *DDP, "--trainer.max_epochs", str(EPOCHS), "--ckpt_path", "last")
    resumed = torch.load(tmp_path / "version_1" / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed["global_step"] == EPOCHS * 16
