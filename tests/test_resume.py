"""Exact resume: a fit stopped anywhere (SIGKILL included) and resumed with --ckpt_path ends with bit-identical
weights and optimizer state to an uninterrupted fit with the same seed (CPU, one thread).

One uninterrupted reference fit in this process keeps a copy of every last.ckpt it writes (a test-only callback
that wraps the trainer's CheckpointIO). Resuming from each kind of copy (mid-epoch before any validation, the last
batch of an epoch before its validation, an epoch end, mid-epoch later on, the final batch, a finished fit with a
larger max_epochs) is deterministic. Two tests then SIGKILL a real `python -m lit_seq2seq fit` subprocess
(mid-epoch, twice in a row; at an epoch boundary) and resume it with `--ckpt_path last` in a new process.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from conftest import TINY_TASK, cli_exit, fit_in, read_metrics, root_args, run_cli, tiny_run, version_dirs

pytestmark = [
    pytest.mark.filterwarnings("ignore:The number of training batches"),
    pytest.mark.filterwarnings("ignore:.*could not find the monitored key"),
    pytest.mark.filterwarnings("ignore:You.re resuming from a checkpoint that ended before the epoch ended"),
]

STEPS_PER_EPOCH = 128  # 4096 rows / batch 32
EPOCHS = 3
# Dropout (between the 2 layers and before the output) and scheduled sampling draw random numbers every step:
# the RNG must continue exactly where the checkpoint left it.
FIT = [
    *TINY_TASK, *tiny_run(train=4096, val=64, hidden=16, epochs=EPOCHS), "--data.batch_size", "32",
    "--model.net.num_layers", "2", "--model.net.dropout", "0.1", "--model.teacher_forcing_ratio", "0.5",
    "--model.optimizer", "Adam", "--model.optimizer.lr", "0.01", "--trainer.accelerator", "cpu",
]  # fmt: skip
EVERY = 32  # --checkpoint.every_n_train_steps: 4 per epoch, one of them on the epoch's last batch


class SnapshotCheckpoints(L.Callback):
    """Test only: copies every last.ckpt the trainer writes to <default_root_dir>/snapshots/NNN-stepS.ckpt."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        io = trainer.strategy.checkpoint_io
        save, folder, count = io.save_checkpoint, Path(trainer.default_root_dir) / "snapshots", [0]

        def save_and_copy(checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
            save(checkpoint, path, storage_options)
            if Path(path).name == "last.ckpt":
                folder.mkdir(exist_ok=True)
                shutil.copy(path, folder / f"{count[0]:03d}-step{checkpoint['global_step']}.ckpt")
                count[0] += 1

        io.save_checkpoint = save_and_copy


def load(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def newest_last(root: Path) -> Path:
    return max(Path(root).glob("version_*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)


def assert_same_training_state(got: dict[str, Any], want: dict[str, Any]) -> None:
    assert (got["global_step"], got["epoch"]) == (want["global_step"], want["epoch"])
    assert set(got["state_dict"]) == set(want["state_dict"])
    differ = [k for k, v in want["state_dict"].items() if not torch.equal(got["state_dict"][k], v)]
    assert not differ, f"weights differ from the uninterrupted fit: {differ}"
    adam, adam_want = got["optimizer_states"][0]["state"], want["optimizer_states"][0]["state"]
    for (i, a), (j, b) in zip(adam.items(), adam_want.items()):
        assert i == j and all(torch.equal(a[k], b[k]) for k in b), f"Adam state of parameter {i} differs"


def assert_same_best(root: Path, reference: Path) -> None:
    """`--ckpt_path best` (the newest best.ckpt under root) holds the uninterrupted fit's best weights."""
    newest = max(Path(root).glob("version_*/checkpoints/best.ckpt"), key=lambda p: p.stat().st_mtime)
    assert_same_training_state(load(newest), load(reference / "version_0" / "checkpoints" / "best.ckpt"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted fit, with a copy of every last.ckpt it wrote under <root>/snapshots."""
    snapshot = "--trainer.callbacks+=test_resume.SnapshotCheckpoints"
    return fit_in(tmp_path_factory.mktemp("reference"), *FIT, "--checkpoint.every_n_train_steps", EVERY, snapshot)


def snapshots(reference: Path) -> list[Path]:
    return sorted((reference / "snapshots").glob("*.ckpt"))


def test_last_ckpt_is_written_every_n_steps_and_every_epoch_end_and_holds_the_final_state(reference):
    steps = [load(p)["global_step"] for p in snapshots(reference)]
    # every 32 steps from the first epoch on (Lightning alone waits for the first validation); on an epoch's last
    # batch only at the epoch end, after its validation (Lightning alone skips that when val/exact_match did not
    # improve, and its batch-end save there resumes past the validation)
    assert steps == list(range(EVERY, STEPS_PER_EPOCH * EPOCHS + 1, EVERY))
    progress = [load(p)["loops"]["fit_loop"]["epoch_loop.batch_progress"] for p in snapshots(reference)]
    epoch_ends = [p["is_last_batch"] for p in progress]
    assert [s for s, end in zip(steps, epoch_ends) if end] == [STEPS_PER_EPOCH * e for e in range(1, EPOCHS + 1)]
    final = load(reference / "version_0" / "checkpoints" / "last.ckpt")
    assert final["global_step"] == STEPS_PER_EPOCH * EPOCHS and final["epoch"] == EPOCHS - 1
    assert_same_training_state(load(snapshots(reference)[-1]), final)  # the final last.ckpt is the last copy
    assert not list(reference.glob("**/.*.tmp"))  # no temporary files left by the atomic writer


def test_best_ckpt_holds_the_best_validated_weights(reference):
    val = [float(r["val/exact_match"]) for r in read_metrics(reference / "version_0") if r.get("val/exact_match")]
    assert len(val) == EPOCHS
    best = load(reference / "version_0" / "checkpoints" / "best.ckpt")
    best_epoch = max(range(EPOCHS), key=lambda e: val[e])
    assert best["epoch"] == best_epoch and best["global_step"] == STEPS_PER_EPOCH * (best_epoch + 1)
    epoch_end = [p for p in snapshots(reference) if load(p)["global_step"] == best["global_step"]]
    assert_same_training_state(best, load(epoch_end[0]))  # the weights that were validated, not later ones


RESUME_POINTS = [
    (32, "epoch 0 mid-epoch, before any validation"),
    (96, "epoch 0 mid-epoch, later"),
    (128, "end of epoch 0, after its validation"),
    (224, "epoch 1 mid-epoch"),
    (352, "epoch 2 mid-epoch, the final epoch"),
]


@pytest.mark.parametrize("step", [p for p, _ in RESUME_POINTS], ids=[d for _, d in RESUME_POINTS])
def test_resume_from_a_checkpoint_gives_bit_identical_weights(step, reference, tmp_path, monkeypatch):
    (snapshot,) = [p for p in snapshots(reference) if load(p)["global_step"] == step]
    monkeypatch.chdir(tmp_path)
    run_cli(["fit", *FIT, "--checkpoint.every_n_train_steps", EVERY, "--ckpt_path", snapshot, *root_args(tmp_path)])
    got = load(tmp_path / "version_0" / "checkpoints" / "last.ckpt")
    assert_same_training_state(got, load(reference / "version_0" / "checkpoints" / "last.ckpt"))


def test_resume_from_a_mid_epoch_validation(reference, tmp_path, monkeypatch):
    """With validation twice per epoch, last.ckpt is also written after the mid-epoch one; resuming from there."""
    monkeypatch.chdir(tmp_path)
    half = [*FIT, "--trainer.val_check_interval", "0.5"]
    run_cli([*(["fit", *half]), "--trainer.callbacks+=test_resume.SnapshotCheckpoints", *root_args(tmp_path / "a")])
    (mid,) = [p for p in snapshots(tmp_path / "a") if load(p)["global_step"] == STEPS_PER_EPOCH + STEPS_PER_EPOCH // 2]
    assert not load(mid)["loops"]["fit_loop"]["epoch_loop.batch_progress"]["is_last_batch"]
    run_cli(["fit", *half, "--ckpt_path", mid, *root_args(tmp_path / "b")])
    # validating more often changes nothing in training: the same final state as the reference
    want = load(reference / "version_0" / "checkpoints" / "last.ckpt")
    assert_same_training_state(load(tmp_path / "a" / "version_0" / "checkpoints" / "last.ckpt"), want)
    assert_same_training_state(load(tmp_path / "b" / "version_0" / "checkpoints" / "last.ckpt"), want)


def test_resume_a_finished_fit_with_more_epochs(reference, tmp_path, monkeypatch):
    """A 2-epoch fit continued to 3 epochs equals the 3-epoch fit (from its end-of-fit last.ckpt, no kill)."""
    monkeypatch.chdir(tmp_path)
    run_cli(["fit", *FIT, "--trainer.max_epochs", str(EPOCHS - 1), *root_args(tmp_path)])  # the last flag wins
    assert load(newest_last(tmp_path))["global_step"] == STEPS_PER_EPOCH * (EPOCHS - 1)
    run_cli(["fit", *FIT, "--ckpt_path", "last", *root_args(tmp_path)])
    assert [p.name for p in version_dirs(tmp_path)] == ["version_0", "version_1"]
    got = load(tmp_path / "version_1" / "checkpoints" / "last.ckpt")
    assert_same_training_state(got, load(reference / "version_0" / "checkpoints" / "last.ckpt"))
    # and resuming a fit that already reached max_epochs trains no further
    run_cli(["fit", *FIT, "--ckpt_path", "last", *root_args(tmp_path)])
    assert load(newest_last(tmp_path))["global_step"] == STEPS_PER_EPOCH * EPOCHS


# ------------------------------------------------------------------------------------------- SIGKILL, for real


def _fit_until_killed(root: Path, extra: list[str], kill_after_step: int) -> int:
    """Run `python -m lit_seq2seq fit` and SIGKILL it as soon as a last.ckpt at or after the step appears.

    Returns the global step of the newest last.ckpt left on disk (the one a resume continues from).
    """
    cmd = [sys.executable, "-m", "lit_seq2seq", "fit", *FIT, *extra, *root_args(root)]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    before = {p: p.stat().st_mtime_ns for p in root.glob("version_*/checkpoints/last.ckpt")}
    proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seen: dict[Path, int] = {}
    try:
        deadline = time.monotonic() + 240
        while proc.poll() is None and time.monotonic() < deadline:
            for path in root.glob("version_*/checkpoints/last.ckpt"):
                mtime = path.stat().st_mtime_ns
                if before.get(path) == mtime or seen.get(path) == mtime:
                    continue
                seen[path] = mtime
                if load(path)["global_step"] >= kill_after_step:  # atomic writes: never a partial file here
                    proc.send_signal(signal.SIGKILL)
                    break
            time.sleep(0.002)
    finally:
        if proc.poll() is None and time.monotonic() >= deadline:
            proc.kill()
        _, err = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, f"the fit was not killed (exit {proc.returncode}):\n{err[-3000:]}"
    return load(newest_last(root))["global_step"]


def _resume(root: Path, extra: list[str]) -> None:
    cmd = [sys.executable, "-m", "lit_seq2seq", "fit", *FIT, *extra, "--ckpt_path", "last", *root_args(root)]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    done = subprocess.run(cmd, cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert done.returncode == 0, done.stderr[-3000:]


def test_sigkill_mid_epoch_twice_then_resume_last(reference, tmp_path):
    extra = ["--checkpoint.every_n_train_steps", "40"]  # 40 never divides 128: every step save is mid-epoch
    first = _fit_until_killed(tmp_path, extra, 150)
    assert first % STEPS_PER_EPOCH, f"meant to die mid-epoch, but the newest last.ckpt is at step {first}"
    second = _fit_until_killed(tmp_path, [*extra, "--ckpt_path", "last"], first + 100)
    assert second % STEPS_PER_EPOCH and second > first
    _resume(tmp_path, extra)
    assert [p.name for p in version_dirs(tmp_path)] == ["version_0", "version_1", "version_2"]
    assert not list(tmp_path.glob("**/.*.tmp"))
    assert_same_training_state(load(newest_last(tmp_path)), load(reference / "version_0" / "checkpoints" / "last.ckpt"))
    assert_same_best(tmp_path, reference)


def test_sigkill_at_an_epoch_boundary_then_resume_last(reference, tmp_path):
    # default checkpointing: last.ckpt at every epoch end only
    at = _fit_until_killed(tmp_path, [], STEPS_PER_EPOCH)
    assert at % STEPS_PER_EPOCH == 0 and at < STEPS_PER_EPOCH * EPOCHS
    _resume(tmp_path, [])
    assert_same_training_state(load(newest_last(tmp_path)), load(reference / "version_0" / "checkpoints" / "last.ckpt"))
    assert_same_best(tmp_path, reference)


def test_fit_ckpt_path_last_without_a_checkpoint_exits_2(in_tmp, capsys):
    # Lightning alone would look in the new version folder only, warn, and train from scratch
    code, err = cli_exit(["fit", *FIT, "--ckpt_path", "last", *root_args(in_tmp / "runs")], capsys)
    assert code == 2
    assert "--ckpt_path last: no last.ckpt" in err and "Traceback" not in err
    assert not (in_tmp / "runs").exists()
