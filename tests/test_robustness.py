"""Holding up: a NaN/infinite loss stops a fit with one clear line (exit 1) and leaves every checkpoint
byte-identical, writing none (save_on_exception or not); damaged, altered, foreign or mismatched checkpoints are
refused (exit 2, naming the file) by fit, test and export before any model is built from them; a fit removes the
temporary files that killed checkpoint writes left, and says so. (checkpoint.py's own checks, one by one, are in
test_checkpoint.py.)
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from conftest import (
    CHECKPOINT_DAMAGE,
    TINY_TASK,
    after_each_last_ckpt_write,
    cli_exit,
    damaged_checkpoint,
    fit_in,
    root_args,
    run_cli,
    tiny_run,
    version_dirs,
)

from lit_seq2seq.checkpoint import read_checkpoint

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*could not find the monitored key"),
]

TASK = [*TINY_TASK, *tiny_run(train=640, val=32, test=32)]
FIT = [*TASK, "--data.batch_size", "32"]  # 20 steps


def sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# ------------------------------------------------------------------------------------------- non-finite loss


class Poison(L.Callback):
    """Test only: sets one weight to NaN at global step `step`, before the step's forward pass ("loss") or right
    after its update, before the checkpoint callback saves ("weights"); or ("huge") sets the output layer's bias to
    +-3e38 before the step: finite weights, an infinite loss. Records (step, sha256) of every last.ckpt written, in
    `Poison.written`, and every checkpoint file under the run's root right before the poisoned step, in
    `Poison.before` (path -> sha256)."""

    written: list[tuple[int, str]] = []
    before: dict[Path, str] = {}

    def __init__(self, step: int = 10, when: str = "loss") -> None:
        self.step, self.when = step, when

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        Poison.written = []

        def record(checkpoint: dict[str, Any], path: Path) -> None:
            Poison.written.append((checkpoint["global_step"], sha(path)))

        after_each_last_ckpt_write(trainer, record)

    def _poison(self, pl_module: L.LightningModule) -> None:
        with torch.no_grad():
            next(pl_module.parameters()).view(-1)[0] = float("nan")

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if trainer.global_step != self.step:
            return
        Poison.before = {p: sha(p) for p in Path(trainer.default_root_dir).rglob("*.ckpt")}
        if self.when == "loss":
            self._poison(pl_module)
        elif self.when == "huge":
            with torch.no_grad():
                bias = pl_module.net.decoder.output.bias
                bias.fill_(-3e38)
                bias[0] = 3e38  # every target (never 0, the padding) gets probability 0: loss inf

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if self.when == "weights" and trainer.global_step == self.step:  # runs before ModelCheckpoint's hook
            self._poison(pl_module)


def _poisoned_fit(root: Path, step: int, when: str, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[Any, str]:
    callback = json.dumps({"class_path": "test_robustness.Poison", "init_args": {"step": step, "when": when}})
    args = ["fit", *FIT, "--checkpoint.every_n_train_steps", "4", f"--trainer.callbacks+={callback}", *extra]
    return cli_exit([*args, *root_args(root)], capsys)


def test_nan_loss_stops_with_one_line_exit_1_and_the_last_checkpoint_untouched(in_tmp, capsys):
    code, err = _poisoned_fit(in_tmp, 10, "loss", capsys)
    assert code == 1
    assert "lit-seq2seq fit: error: non-finite training loss (nan) at global step 10 (epoch 0, batch 10)" in err
    assert "Traceback" not in err
    last = in_tmp / "version_0" / "checkpoints" / "last.ckpt"
    assert [s for s, _ in Poison.written] == [4, 8]  # no write at or after the NaN step
    assert sha(last) == Poison.written[-1][1]  # byte-identical to what was written before the NaN step
    checkpoint = read_checkpoint(last)
    assert checkpoint["global_step"] == 8
    assert all(torch.isfinite(v).all() for v in checkpoint["state_dict"].values())


def test_nan_weights_are_never_saved(in_tmp, capsys):
    code, err = _poisoned_fit(in_tmp, 8, "weights", capsys)  # step 8 is a checkpoint step
    assert code == 1
    assert "non-finite weights (net." in err and "after global step 8" in err and "Traceback" not in err
    assert [s for s, _ in Poison.written] == [4]
    assert sha(in_tmp / "version_0" / "checkpoints" / "last.ckpt") == Poison.written[0][1]
    assert read_checkpoint(in_tmp / "version_0" / "checkpoints" / "last.ckpt")["global_step"] == 4


def test_a_non_finite_stop_writes_no_checkpoint_even_when_asked_to_save_on_exception(in_tmp, capsys):
    """Before: ModelCheckpoint's save_on_exception saved the diverged weights (3e38, finite) as best.ckpt and
    last.ckpt while the message said nothing was saved. Ours and a plain ModelCheckpoint both ask here."""
    plain = {"dirpath": str(in_tmp / "plain"), "filename": "plain", "save_on_exception": True}
    plain_callback = json.dumps({"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": plain})
    extra = ["--checkpoint.save_on_exception", "true", f"--trainer.callbacks+={plain_callback}"]
    code, err = _poisoned_fit(in_tmp, 10, "huge", capsys, *extra)
    assert code == 1 and "Traceback" not in err
    assert "lit-seq2seq fit: error: non-finite training loss (inf) at global step 10" in err
    assert Poison.before and {p: sha(p) for p in in_tmp.rglob("*.ckpt")} == Poison.before  # untouched, none new
    assert read_checkpoint(in_tmp / "version_0" / "checkpoints" / "last.ckpt")["global_step"] == 8


def test_a_fit_removes_what_killed_checkpoint_writes_left_and_says_so(in_tmp, capsys):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    old_run = in_tmp / "version_0" / "checkpoints"
    old_run.mkdir(parents=True)
    litter = old_run / f".last.ckpt.{int(dead.stdout)}.tmp"  # a writer that died before its rename
    live = old_run / f".last.ckpt.{os.getppid()}.tmp"  # a writer still running: left alone
    for path in (litter, live):
        path.write_bytes(b"PK half a checkpoint")
    capsys.readouterr()
    fit_in(in_tmp, *FIT, "--data.train_size", "64", "--report", "false")
    err = capsys.readouterr().err
    assert not litter.exists() and live.exists()
    (line,) = [line for line in err.splitlines() if "unfinished checkpoint" in line]
    assert line == f"removed 1 unfinished checkpoint write(s) of killed fits: {litter}"


def test_a_validation_interval_beyond_an_epoch_is_named_in_one_line_exit_2(in_tmp, capsys):
    """Lightning finds it only once the data is loaded, and raises it with a traceback."""
    code, err = cli_exit(["fit", *FIT, "--trainer.val_check_interval", "21", *root_args(in_tmp)], capsys)
    assert code == 2 and "Traceback" not in err
    assert (
        "lit-seq2seq fit: error: --trainer.val_check_interval 21 is more than the 20 training batches of an epoch: "
        "lower it, give a share of an epoch (e.g. 0.5), or count batches across epochs with "
        "--trainer.check_val_every_n_epoch null"
    ) in err.splitlines()
    assert not list(in_tmp.rglob("*.ckpt")) and not list(in_tmp.glob("version_*"))  # nor an empty run folder
    # an epoch's worth exactly: validated once, as Lightning allows
    assert run_cli(["fit", *FIT, "--trainer.val_check_interval", "20", *root_args(in_tmp)]) == 0


def test_a_share_of_an_epoch_under_one_batch_is_one_line_exit_2(in_tmp, capsys):
    """Lightning's check, from inside the run, raised a MisconfigurationException traceback."""
    code, err = cli_exit(["fit", *FIT, "--trainer.limit_train_batches", "0.01", *root_args(in_tmp)], capsys)
    assert code == 2 and "Traceback" not in err and err.count("\n") == 1, err
    assert err.startswith("lit-seq2seq fit: error: You requested to check 0.01 of the `train_dataloader` but 0.01 * 20")
    assert "limit_train_batches" in err
    assert not list(in_tmp.rglob("*.ckpt")) and not list(in_tmp.glob("version_*"))


@pytest.mark.slow  # a process of its own, ~6 s; the in-process NaN tests cover the stop and its message
def test_a_diverging_learning_rate_exits_1_from_the_shell(tmp_path):
    # no injection: SGD with lr 1e38 overflows within a few steps
    args = [*FIT, "--model.optimizer", "SGD", "--model.optimizer.lr", "1e38", "--checkpoint.every_n_train_steps", "1"]
    cmd = [sys.executable, "-m", "lit_seq2seq", "fit", *args, *root_args(tmp_path)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    (message,) = [line for line in done.stderr.splitlines() if "error:" in line]
    assert message.startswith("lit-seq2seq fit: error: non-finite training loss") and "at global step" in message
    step = int(message.split("at global step ")[1].split()[0])
    if step > 0:  # the checkpoint of the step before: finite (if absurd) weights that load
        checkpoint = read_checkpoint(tmp_path / "version_0" / "checkpoints" / "last.ckpt")
        assert checkpoint["global_step"] == step
        assert all(torch.isfinite(v).all() for v in checkpoint["state_dict"].values())


# ------------------------------------------------------------------------------------------ damaged checkpoints


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint of a tiny fit."""
    return fit_in(tmp_path_factory.mktemp("good"), *FIT) / "version_0" / "checkpoints" / "last.ckpt"


@pytest.mark.parametrize("kind", CHECKPOINT_DAMAGE)
@pytest.mark.parametrize("command", ["test", "validate", "predict", "fit", "export"])
def test_damaged_checkpoint_is_refused_with_exit_2_naming_the_file(command, kind, good, in_tmp, capsys):
    path = damaged_checkpoint(good, kind, in_tmp)
    runs = in_tmp / "runs"
    if command == "export":
        args = ["export", "--ckpt_path", path, "--output_dir", in_tmp / "export"]
    else:
        args = [command, *(FIT if command == "fit" else TASK), "--ckpt_path", path, *root_args(runs)]
    code, err = cli_exit(args, capsys)
    assert code == 2
    assert str(path) in err and "Traceback" not in err
    assert not runs.exists() and not (in_tmp / "export").exists()  # nothing built, trained, logged or exported


@pytest.mark.parametrize(
    "command,message",
    [
        # test takes the --model.* sizes from the checkpoint; the data's vocabulary is linked in afterwards
        ("test", "vocab_size=11 (the data gives 13)"),
        # a fit resumes: every data and model flag must be the checkpoint's
        ("fit", "--data.vocab_size 13 (checkpoint: 11)"),
    ],
)
def test_checkpoint_for_other_data_sizes_is_refused_with_exit_2(command, message, good, in_tmp, capsys):
    args = [command, *(FIT if command == "fit" else TASK), "--data.vocab_size", "13", "--ckpt_path", good]
    code, err = cli_exit([*args, *root_args(in_tmp / "runs")], capsys)
    assert code == 2
    assert f"--ckpt_path {good}" in err and message in err and "Traceback" not in err
    assert not version_dirs(in_tmp / "runs")


def test_named_checkpoint_that_is_damaged_is_refused(good, in_tmp, capsys):
    runs = in_tmp / "runs"
    target = runs / "version_0" / "checkpoints" / "best.ckpt"
    target.parent.mkdir(parents=True)
    target.write_bytes(good.read_bytes()[:1000])
    code, err = cli_exit(["test", *TASK, "--ckpt_path", "best", *root_args(runs)], capsys)
    assert code == 2 and str(target) in err
    assert version_dirs(runs) == [runs / "version_0"]


def test_a_refused_fit_prints_its_error_alone_from_the_shell(tmp_path):
    """Lightning's "Seed set to 42" came first, before any check of the data or flags: two lines, not one."""
    cmd = [sys.executable, "-m", "lit_seq2seq", "fit", "--data", "PairDataModule", "--data.train_file", "nope.tsv"]
    done = subprocess.run([*cmd, *root_args(tmp_path)], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stderr) == (2, "lit-seq2seq fit: error: --data.train_file nope.tsv: no such file\n")


def test_a_fit_whose_output_pipes_close_trains_on_to_its_checkpoints(tmp_path):
    """`lit-seq2seq fit ... 2>&1 | head -1`: the reader left and the next progress line killed the fit with a
    BrokenPipeError traceback, before its first checkpoint."""
    cmd = [sys.executable, "-m", "lit_seq2seq", "fit", *FIT, "--trainer.max_epochs", "1", *root_args(tmp_path)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout.readline()  # the first line, then the reader goes
    proc.stdout.close()
    assert proc.wait(timeout=300) == 0
    assert read_checkpoint(tmp_path / "version_0" / "checkpoints" / "last.ckpt")["global_step"] == 20


def test_a_command_lines_warnings_are_one_line_each(tmp_path):
    """A trial saw each warning with the file and line that raised it, then that line of code
    (`.../lit_seq2seq/data.py:37: UserWarning: fit without ...` and `  rank_zero_warn(f"fit without ...`)."""
    flags = ["--data.val_size", "0", "--trainer.max_steps", "2", *root_args(tmp_path)]
    cmd = [sys.executable, "-m", "lit_seq2seq", "fit", *FIT, *flags]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "\nUserWarning: fit without validation pairs (--data.val_size 0): " in f"\n{done.stderr}", done.stderr
    assert ".py:" not in done.stderr and "rank_zero_warn(" not in done.stderr, done.stderr
