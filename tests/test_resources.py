"""Resource faults are messages, not tracebacks: settings too large for this machine's memory are refused before
anything is allocated (exit 2), every config is accepted at its full size; a full disk or a read-only folder while
`fit` writes gives one line naming the file (exit 1), leaves the earlier checkpoints as they were and no temporary
file; an unwritable --trainer.default_root_dir is refused before anything starts (exit 2).

Faults are injected deterministically: patched writes raising OSError(ENOSPC), and, where this machine lets the
tests mount one (root with CAP_SYS_ADMIN), a real tmpfs that is full or read-only; those tests skip elsewhere.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import yaml
from conftest import CONFIGS, REVERSE_YAML, TINY, TINY_TASK, cli_output, root_args, use_config_data

import lit_seq2seq.train_cli  # noqa: F401 - imported up front, so the timings below are the CLI's, not the imports'
from lit_seq2seq import checkpoint, tasks
from lit_seq2seq.checkpoint import CheckpointWriteError, read_checkpoint
from lit_seq2seq.data import Seq2SeqDataModule
from lit_seq2seq.model import NetConfig
from lit_seq2seq.pairs import PairDataModule


def enospc(*args: object) -> None:
    """Raise what a write onto a full disk raises (a new exception each time, as the system gives)."""
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


# ------------------------------------------------------------------------------------------------------ memory

TOO_BIG = [
    # The two cases: a one-hot table of 1e9 x 1e9 floats, and 100,000 sources of 100,000 tokens.
    (
        ["--data.vocab_size", "1000000000"],
        "the input tables alone (vocab^2 x 4 bytes, encoder and decoder) need 8.0e18",
    ),
    (["--data.source_length", "100000"], "x --data.source_length 100000: the generated data (int64: (source 100000"),
    (["--data.vocab_size", "1000000000", "--model.net.embedding_dim", "64"], "weights (x 4 bytes) need 1.0e12 bytes"),
    (["--model.net.hidden_size", "1000000"], "--model.net.hidden_size 1000000, --model.net.num_layers 1: the net's"),
    # Data that fits, a net that fits, but not one training step of them: the activations of 32 sources of 400,000
    # tokens (a pair file's one long line does this: test_one_long_line_in_a_pair_file_...)
    (
        [
            "--data.source_length",
            "400000",
            "--data.train_size",
            "64",
            "--data.val_size",
            "16",
            "--model.net.embedding_dim",
            "8",
        ],
        "--data.batch_size 32 x the longest source (400000 tokens) x 3 decoder steps: a training step's activations",
    ),
    # Bounded with a reason instead: add's numbers stay exact up to 14-digit operands.
    (
        ["--data.task", "add", "--data.vocab_size", "13", "--data.source_length", "41", "--data.target_length", "null"],
        "--data.source_length must be <= 30 for task add",
    ),
]


@pytest.mark.parametrize("flags,message", TOO_BIG, ids=[" ".join(f) for f, _ in TOO_BIG])
def test_settings_that_cannot_fit_exit_2_before_allocating(flags, message, in_tmp, capsys, monkeypatch):
    monkeypatch.setattr(tasks, "available_memory", lambda: 64 * 2**30)  # the same answer on any machine
    monkeypatch.setattr(tasks.Task, "sample", lambda *a: pytest.fail("generated the data"))
    monkeypatch.setattr(torch, "eye", lambda *a, **k: pytest.fail("allocated a one-hot table"))
    start = time.perf_counter()
    code, _, err = cli_output(["fit", "--config", REVERSE_YAML, *flags, *root_args(in_tmp / "runs")], capsys)
    elapsed = time.perf_counter() - start
    assert code == 2 and message in err and "Traceback" not in err, err
    assert "of memory available" in err or "task add" in err
    # The checks themselves take microseconds (test_data, test_model); this is LightningCLI's parsing: 0.6-0.8 s here.
    assert elapsed < 5.0, f"refused after {elapsed:.2f} s"
    assert not (in_tmp / "runs").exists()


@pytest.mark.parametrize(
    "available, message",
    [
        # the rows fit, a training step of the long line does not: refused before the rows are padded to it
        (30 * 2**30, "--data.batch_size 32 x the longest source (200000 tokens) x 4 decoder steps: a training step"),
        # not even the rows, padded to it: refused naming the line
        (
            40 * 2**20,
            "--data.train_file train.tsv:51: its source of 200000 tokens, the longest, sets the width every row is "
            "stored padded to: 51 pairs x 200004 ids need",
        ),
    ],
)
def test_one_long_line_in_a_pair_file_is_refused_before_the_rows_are_padded_to_it(
    available, message, in_tmp, capsys, monkeypatch
):
    """A new user's file with one 200,000-character line among short ones: this peaked at 11 GB and died in a
    traceback (a torch int64 copy of the padded rows). Now: exit 2 in one line, and a warning naming the line."""
    lines = [f"{'ab' * (1 + i % 4)}\tA B\n" for i in range(50)] + ["b" * 200000 + "\tB\n"]
    (in_tmp / "train.tsv").write_text("".join(lines), encoding="utf-8")
    monkeypatch.setattr(tasks, "available_memory", lambda: available)  # the same answer on any machine
    monkeypatch.setattr(PairDataModule, "_pad", lambda *a: pytest.fail("padded the rows"))
    fit = ["fit", "--data", "PairDataModule", "--data.train_file", "train.tsv", "--data.cache", "false"]
    with pytest.warns(UserWarning) as warned:
        code, _, err = cli_output([*fit, "--model.net.embedding_dim", "8", *root_args(in_tmp / "runs")], capsys)
    assert code == 2 and message in err and "Traceback" not in err and "of memory available" in err, err
    assert "cap the lengths" in err and "--data.max_source_tokens" in err
    assert not (in_tmp / "runs").exists()
    (warning,) = [str(w.message) for w in warned if "stored padded" in str(w.message)]
    assert warning.startswith("--data.train_file train.tsv:51: its source of 200000 tokens, the longest, is ")
    usual = "x the longest pair without outliers (8 tokens; all but the longest 1 of the 51 pairs have at most 8, an "
    usual += "outlier over 72)"
    assert f"{usual}: every row is stored padded to it" in warning
    assert warning.endswith("--data.max_source_tokens 8 --data.skip_long true would skip the 1 pair(s) above that")


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_every_config_fits_in_memory_at_its_full_size(config, monkeypatch, tmp_path):
    """The checks run on this machine's real available memory; each config's data and net, as big as they are."""
    settings = yaml.safe_load(config.read_text())
    if "class_path" in settings["data"]:  # pair files: their rows are the data
        use_config_data(settings, tmp_path, monkeypatch)
        data = PairDataModule(**settings["data"]["init_args"] | {"cache": False})
        data.load()
        data_bytes = sum(t.nbytes for ds in data.datasets.values() for t in vars(ds).values() if torch.is_tensor(t))
    else:
        data = Seq2SeqDataModule(**settings["data"])
        data_bytes = tasks.sample_bytes(data.task, list(data.sizes.values()))
    linked = {k: getattr(data, k) for k in lit_seq2seq.train_cli.DATA_TO_NET}
    net = NetConfig(**settings["model"]["net"], **linked)
    assert net.parameter_count() < 10_000_000 and data_bytes < 2**30  # the G2P headline: 3.4 M
    assert net.activation_bytes(data.batch_size, data.source_length) < 2**30  # the G2P headline: ~0.3 GiB a process


# ----------------------------------------------------------------------------------------- disk: full, read-only


@contextlib.contextmanager
def mounted_tmpfs(folder: Path, size: str, read_only: bool = False) -> Iterator[Path]:
    """A tmpfs of `size` at `folder` for the test, or a skip saying why this machine does not allow it."""
    if shutil.which("mount") is None:
        pytest.skip("no mount command here")
    folder.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", folder], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here (root with CAP_SYS_ADMIN needed): {done.stderr.strip()}")
    try:
        yield folder
    finally:
        if subprocess.run(["umount", folder], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", folder], capture_output=True)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("lit-seq2seq fit: error:")]


def _full_disk_message(path: Path) -> str:
    return (
        f"lit-seq2seq fit: error: cannot write checkpoint {path}: no space left on device; free space or pass "
        "--trainer.default_root_dir elsewhere; the earlier checkpoints are intact"
    )


FIT = ["fit", *TINY_TASK, *TINY, "--trainer.max_epochs", "2", "--report", "false"]


@pytest.mark.parametrize(
    "where,logs_fail_too",
    [("write", False), ("fsync", False), ("write", True)],
    ids=["torch-save-write", "fsync", "write-then-the-logs-too"],
)
def test_a_full_disk_at_the_third_checkpoint_stops_fit_with_one_line(where, logs_fail_too, in_tmp, capsys, monkeypatch):
    """The disk fills while the third checkpoint (the second epoch's first) is written: torch.save's writes into
    the temporary file fail (torch wraps that in a RuntimeError "[enforce fail at inline_container.cc] unexpected
    pos"), or the kernel reports it at fsync. With `logs_fail_too` the CSV logger's final flush fails next, as it
    would on the same disk: the first failure, the checkpoint's, is the one reported."""
    real_save, real_fsync, calls, failing = torch.save, os.fsync, [], {}

    def save(obj, f, *args, **kwargs):
        calls.append(Path(f.name))
        if len(calls) != 3:
            return real_save(obj, f, *args, **kwargs)
        failing["tmp"] = tmp = calls[-1]  # open already, empty
        failing["before"] = {name: data for name, data in _snapshot(tmp.parent).items() if name != tmp.name}
        if where == "fsync":
            monkeypatch.setattr(os, "fsync", enospc)
            return real_save(obj, f, *args, **kwargs)

        class FullDisk:  # the first 1,000 bytes fit, then the disk is full
            written = 0

            def write(self, data: bytes) -> int:
                if self.written + len(data) > 1000:
                    enospc()
                self.written += len(data)
                return f.write(data)

            def flush(self) -> None:
                f.flush()

        return real_save(obj, FullDisk(), *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    if logs_fail_too:
        from lightning.pytorch.loggers import CSVLogger

        real_logs = CSVLogger.save
        monkeypatch.setattr(CSVLogger, "save", lambda self: enospc() if failing else real_logs(self))
    code, _, err = cli_output([*FIT, *root_args(in_tmp / "runs")], capsys)
    monkeypatch.setattr(os, "fsync", real_fsync)

    tmp = failing["tmp"]
    target = tmp.with_name(tmp.name[1:].split(".ckpt.")[0] + ".ckpt")  # .last.ckpt.<pid>.tmp -> last.ckpt
    assert code == 1 and "Traceback" not in err, err
    assert _error_lines(err) == [_full_disk_message(target)]
    assert _snapshot(tmp.parent) == failing["before"]  # the earlier checkpoints, byte for byte; no temporary file
    assert set(failing["before"]) == {"best.ckpt", "last.ckpt"}
    read_checkpoint(tmp.parent / "last.ckpt")  # and still a checkpoint: resumable


def test_a_full_disk_while_the_logs_are_written_names_the_run_folder(in_tmp, capsys, monkeypatch):
    from lightning.pytorch.loggers import CSVLogger

    monkeypatch.setattr(CSVLogger, "save", enospc)
    root = in_tmp / "runs"
    code, _, err = cli_output([*FIT, *root_args(root)], capsys)
    assert code == 1 and "Traceback" not in err, err
    assert _error_lines(err) == [
        f"lit-seq2seq fit: error: cannot write into {root}: no space left on device; free space or pass "
        "--trainer.default_root_dir elsewhere; the earlier checkpoints are intact"
    ]


def test_a_real_full_tmpfs_stops_fit_with_one_line(tmp_path, capsys, monkeypatch):
    """A 2 MiB tmpfs, filled to the last byte right after the first checkpoint: the second write meets the
    kernel's own ENOSPC."""
    with mounted_tmpfs(tmp_path / "disk", "2M") as disk:
        io_class = checkpoint.Seq2SeqCheckpointIO
        real_save, saved = io_class.save_checkpoint, {}

        def save_then_fill(self, ckpt, path, storage_options=None):
            real_save(self, ckpt, path, storage_options)
            if not saved:
                saved.update(_snapshot(Path(path).parent))
                with open(disk / "filler", "wb", buffering=0) as filler:
                    with contextlib.suppress(OSError):
                        while True:
                            filler.write(b"\0" * 4096)

        monkeypatch.setattr(io_class, "save_checkpoint", save_then_fill)
        monkeypatch.chdir(disk)
        code, _, err = cli_output([*FIT, *root_args(disk / "runs")], capsys)
        folder = disk / "runs" / "version_0" / "checkpoints"
        assert os.statvfs(disk).f_bavail == 0  # still full: nothing freed behind our back
        assert code == 1 and "Traceback" not in err, err
        (line,) = _error_lines(err)
        assert line in (_full_disk_message(folder / "best.ckpt"), _full_disk_message(folder / "last.ckpt"))
        assert list(saved) == ["best.ckpt"] and _snapshot(folder) == saved  # byte for byte, no temporary file
        read_checkpoint(folder / "best.ckpt")


def _minimal() -> dict:
    return {"state_dict": {"w": torch.ones(2)}, "hyper_parameters": {}, "global_step": 3, "epoch": 0}


def test_a_read_only_checkpoint_folder_is_a_checkpoint_write_error(tmp_path):
    with mounted_tmpfs(tmp_path / "ro", "1M", read_only=True) as disk:
        target = disk / "runs" / "checkpoints" / "last.ckpt"
        with pytest.raises(CheckpointWriteError) as error:
            checkpoint.Seq2SeqCheckpointIO().save_checkpoint(_minimal(), target)
    assert str(error.value) == (
        f"cannot write checkpoint {target}: read-only file system; pass a writable --trainer.default_root_dir; "
        "the earlier checkpoints are intact"
    )


def test_a_forbidden_checkpoint_folder_is_a_checkpoint_write_error(tmp_path, monkeypatch):
    """As a user without write permission sees it (root writes through chmod 0o555, so mkdir is patched)."""

    def forbidden(self, *args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))

    monkeypatch.setattr(Path, "mkdir", forbidden)
    with pytest.raises(CheckpointWriteError, match=r"last\.ckpt: permission denied; pass a writable --trainer\."):
        checkpoint.Seq2SeqCheckpointIO().save_checkpoint(_minimal(), tmp_path / "new" / "last.ckpt")


def test_a_torch_save_failure_not_caused_by_a_write_is_raised_as_it_is(tmp_path, monkeypatch):
    """Only write failures become one-line messages; a bug keeps its traceback (and leaves no temporary file)."""

    def broken(obj, f, *args, **kwargs):
        f.write(b"PK partial")
        raise RuntimeError("something else went wrong")

    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(RuntimeError, match="^something else went wrong$") as error:
        checkpoint.Seq2SeqCheckpointIO().save_checkpoint(_minimal(), tmp_path / "last.ckpt")
    assert not isinstance(error.value, CheckpointWriteError) and list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------- an unwritable default_root_dir


@pytest.fixture(params=["read-only-tmpfs", "chmod-555", "patched-access"])
def unwritable(request, tmp_path, monkeypatch) -> Iterator[tuple[Path, str]]:
    """(a folder nothing can be written into, the reason the CLI gives), made the ways this machine allows."""
    folder = tmp_path / "locked"
    if request.param == "read-only-tmpfs":
        with mounted_tmpfs(folder, "1M", read_only=True):
            yield folder, "read-only file system"
        return
    folder.mkdir()
    if request.param == "chmod-555":
        if os.geteuid() == 0:
            pytest.skip("root writes through chmod 0o555 (the patched-access case covers it)")
        folder.chmod(0o555)
        yield folder, "permission denied"
        folder.chmod(0o755)
        return
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: str(path) != str(folder) and real_access(path, mode))
    yield folder, "permission denied"


@pytest.mark.parametrize("command", ["fit", "test"])
def test_an_unwritable_root_dir_is_refused_before_anything_starts(command, unwritable, in_tmp, capsys):
    folder, why = unwritable
    root = folder / "runs" / "reverse"  # not there yet: the nearest folder that is decides
    code, _, err = cli_output([command, *TINY_TASK, *TINY, *root_args(root)], capsys)
    assert code == 2 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1] == (  # one line, as every setting refused after parsing
        f"lit-seq2seq {command}: error: --trainer.default_root_dir {root}: cannot write into {folder} ({why}); pass a "
        "writable folder"
    )
    assert not (folder / "runs").exists()


@pytest.mark.parametrize("folders, file", [([], "version_0"), (["version_10"], "version_11")])
def test_a_file_named_as_a_run_folder_is_refused_before_anything_starts(folders, file, in_tmp, capsys):
    """The logger numbers runs past the version_N folders it sees: mkdir of the one a file holds failed, a traceback."""
    for name in folders:
        (in_tmp / name).mkdir()
    (in_tmp / file).write_text("mine")
    code, _, err = cli_output([*FIT, *root_args(in_tmp)], capsys)
    message = f"lit-seq2seq fit: error: --trainer.default_root_dir {in_tmp}: {file} is a file, where run folders are"
    assert code == 2 and err.startswith(message) and err.count("\n") == 1, err
    assert sorted(p.name for p in in_tmp.iterdir()) == sorted([*folders, file])


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
def test_a_root_dir_where_no_folder_can_be_made_is_refused(in_tmp, capsys):
    """/proc passes os.access for root, but mkdir fails there: a traceback from the logger's mkdir before."""
    code, _, err = cli_output(["fit", *TINY_TASK, *TINY, *root_args("/proc/lit-seq2seq-runs")], capsys)
    assert code == 2 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1] == (
        "lit-seq2seq fit: error: --trainer.default_root_dir /proc/lit-seq2seq-runs: cannot make a folder in /proc (No "
        "such file or directory); pass a writable folder"
    )


def test_a_file_as_root_dir_is_refused(in_tmp, capsys):
    (in_tmp / "runs").write_text("not a folder\n")
    code, _, err = cli_output(["fit", *TINY_TASK, *TINY, *root_args(in_tmp / "runs" / "x")], capsys)
    assert code == 2 and f"--trainer.default_root_dir {in_tmp}/runs/x: {in_tmp}/runs is a file, not a folder" in err
