"""checkpoint.py on its own: the weights hash, read_checkpoint's refusals, Seq2SeqCheckpointIO's atomic writes,
non-finite refusal and preloaded read, what `--ckpt_path best|last` resolves to (only within the newest run), and the
removal of killed writers' temporary files. The CLI's refusals of damaged checkpoints are in test_robustness.py;
best/last.ckpt over a real fit and its resumes in test_resume.py."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from conftest import damaged_checkpoint

from lit_seq2seq.atomic import remove_dead_temporaries
from lit_seq2seq.checkpoint import (
    RESUMED_FROM,
    WEIGHTS_HASH_KEY,
    NonFiniteError,
    Seq2SeqCheckpointIO,
    check_weights,
    read_checkpoint,
    resolve,
    weights_sha256,
)


@pytest.fixture(scope="module")
def good(exported) -> Path:
    """The last.ckpt of a tiny fit."""
    return exported("lstm").ckpt


def minimal(**state: torch.Tensor) -> dict:
    """The least read_checkpoint accepts: a state_dict and hyper_parameters."""
    return {"state_dict": state, "hyper_parameters": {}, "global_step": 3, "epoch": 0}


# ------------------------------------------------------------------------------------- hash and reading


def test_weights_hash_covers_names_dtypes_shapes_and_bytes_in_any_order():
    weights = {"a": torch.arange(6.0), "b": torch.ones(2, dtype=torch.int64)}
    digest = weights_sha256(weights)
    assert len(digest) == 64 and weights_sha256(dict(reversed(weights.items()))) == digest
    changed = [
        {**weights, "a": weights["a"] + 1e-3},
        {**weights, "a": weights["a"].double()},
        {**weights, "a": weights["a"].view(2, 3)},
        {"c": weights["a"], "b": weights["b"]},
    ]
    assert len({digest, *map(weights_sha256, changed)}) == 5


def test_raw_torch_load_on_a_flipped_tensor_byte(good, tmp_path):
    """torch.load alone does not notice one flipped bit inside a tensor's bytes: it does not check the zip CRC32
    on reading (mmap or not) and returns a different model. read_checkpoint checks the CRCs, and the saved
    weights_sha256 is the backstop behind them (also checked when Lightning restores a checkpoint)."""
    path = damaged_checkpoint(good, "flipped_tensor_byte", tmp_path)
    original = torch.load(good, weights_only=True)["state_dict"]
    for mmap in (False, True):
        damaged = torch.load(path, weights_only=True, mmap=mmap)
        assert [k for k in original if not torch.equal(original[k], damaged["state_dict"][k])] == [
            "net.decoder.output.weight"
        ]  # silently different weights
        with pytest.raises(ValueError, match=f"the weights do not match their saved {WEIGHTS_HASH_KEY}"):
            check_weights(damaged, str(path))
    with pytest.raises(ValueError, match=f"{path}: damaged .* fails its CRC check"):
        read_checkpoint(path)


def test_the_weights_hash_catches_what_the_zip_format_cannot(good, tmp_path):
    path = damaged_checkpoint(good, "altered_weights", tmp_path)
    checkpoint = torch.load(path, weights_only=True)  # loads fine: the file was rewritten whole
    assert WEIGHTS_HASH_KEY in checkpoint
    with pytest.raises(ValueError, match=f"{path}: the weights do not match their saved {WEIGHTS_HASH_KEY}"):
        read_checkpoint(path)


@pytest.mark.parametrize(
    "kind,message",
    [
        ("missing", "no such file"),
        ("not_a_checkpoint", "cannot be read as a checkpoint"),
        ("truncated_half", "cannot be read as a checkpoint"),
        ("damaged_zip_header", "cannot be read as a checkpoint .*'utf-8' codec can't decode"),
        ("foreign_dict", "not a lit-seq2seq checkpoint"),
        ("foreign_state_dict", "not a lit-seq2seq checkpoint"),
    ],
)
def test_read_checkpoint_refuses_naming_the_flag_and_the_file(kind, message, good, tmp_path):
    path = tmp_path / "missing.ckpt" if kind == "missing" else damaged_checkpoint(good, kind, tmp_path)
    with pytest.raises(ValueError, match=f"^--weights {path}: {message}"):
        read_checkpoint(path, flag="--weights")


def test_a_checkpoint_resaved_in_torchs_legacy_format_loads_and_is_still_checked(good, tmp_path):
    """torch.save(..., _use_new_zipfile_serialization=False) writes no zip (so no CRCs): the file loads as it is, its
    weights hash still checked, and cut in half it is refused in one line."""
    checkpoint = torch.load(good, weights_only=True)
    legacy = tmp_path / "legacy.ckpt"
    torch.save(checkpoint, legacy, _use_new_zipfile_serialization=False)
    assert not zipfile.is_zipfile(legacy)
    loaded = read_checkpoint(legacy)
    assert loaded["state_dict"].keys() == checkpoint["state_dict"].keys()
    assert all(torch.equal(loaded["state_dict"][k], v) for k, v in checkpoint["state_dict"].items())
    checkpoint["state_dict"]["net.decoder.output.bias"] += 1  # altered, its hash left as it was
    torch.save(checkpoint, legacy, _use_new_zipfile_serialization=False)
    with pytest.raises(ValueError, match="the weights do not match their saved"):
        read_checkpoint(legacy)
    data = legacy.read_bytes()
    legacy.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"legacy\.ckpt: cannot be read as a checkpoint \(truncated or damaged\?\)"):
        read_checkpoint(legacy)


class _Foreign:  # an object of another program's, pickled into its checkpoint
    pass


def test_a_checkpoint_of_pickled_objects_is_not_loaded_and_says_why(tmp_path):
    torch.save({"state_dict": _Foreign(), "hyper_parameters": {}}, tmp_path / "other.ckpt")
    with pytest.raises(ValueError, match=r"other\.ckpt: not a lit-seq2seq checkpoint: it holds Python objects beyond"):
        read_checkpoint(tmp_path / "other.ckpt")


def test_a_run_folder_given_as_a_checkpoint_names_its_checkpoints(tmp_path):
    (tmp_path / "version_0" / "checkpoints").mkdir(parents=True)
    torch.save(minimal(w=torch.ones(2)), tmp_path / "version_0" / "checkpoints" / "best.ckpt")
    with pytest.raises(ValueError, match=r"version_0: a folder; give a checkpoint file \(it holds .*best\.ckpt\)$"):
        read_checkpoint(tmp_path / "version_0")
    with pytest.raises(ValueError, match=r"^--ckpt_path \S+: a folder; give a checkpoint file$"):
        read_checkpoint(tmp_path)


def test_a_checkpoint_without_a_weights_hash_is_read(tmp_path):
    # written by a plain ModelCheckpoint/TorchCheckpointIO: nothing to check against
    torch.save(minimal(w=torch.ones(2)), tmp_path / "plain.ckpt")
    assert WEIGHTS_HASH_KEY not in read_checkpoint(tmp_path / "plain.ckpt")


# ------------------------------------------------------------------------------------------------ writing


def test_save_writes_the_file_whole_with_its_weights_hash(tmp_path):
    path = tmp_path / "sub" / "last.ckpt"
    Seq2SeqCheckpointIO().save_checkpoint(minimal(w=torch.arange(3.0), step=torch.tensor([7])), path)
    checkpoint = read_checkpoint(path)
    assert checkpoint[WEIGHTS_HASH_KEY] == weights_sha256(checkpoint["state_dict"])
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]  # no temporary file left beside it


@pytest.fixture
def written(tmp_path: Path) -> tuple[Seq2SeqCheckpointIO, Path]:
    """A Seq2SeqCheckpointIO and the checkpoint it wrote to <tmp_path>/last.ckpt."""
    io = Seq2SeqCheckpointIO()
    io.save_checkpoint(minimal(w=torch.ones(2)), tmp_path / "last.ckpt")
    return io, tmp_path / "last.ckpt"


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_weights_are_refused_and_the_old_file_kept(value, written, tmp_path):
    io, path = written
    before = path.read_bytes()
    with pytest.raises(NonFiniteError, match=r"non-finite weights \(bad\) after global step 3 \(epoch 0\)"):
        io.save_checkpoint(minimal(w=torch.ones(2), bad=torch.tensor([1.0, value])), path)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_non_finite_optimizer_state_is_refused_and_the_old_file_kept(written, tmp_path):
    """Adam's exp_avg_sq overflows before the weights do: a resume from such a state diverges at its first step."""
    io, path = written
    before = path.read_bytes()
    checkpoint = minimal(w=torch.ones(2))
    checkpoint["optimizer_states"] = [{"state": {0: {"exp_avg_sq": torch.tensor([1.0, float("inf")])}}}]
    with pytest.raises(NonFiniteError, match=r"non-finite optimizer state \(optimizer_states.0.state.0.exp_avg_sq\)"):
        io.save_checkpoint(checkpoint, path)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_nothing_is_written_while_a_non_finite_stop_unwinds(written, tmp_path):
    """Lightning calls the on_exception hooks inside its except block: ModelCheckpoint(save_on_exception=True) and
    the like would save the diverged (finite but huge) weights there."""
    io, path = written
    before = path.read_bytes()
    try:
        raise NonFiniteError("non-finite training loss")
    except NonFiniteError:
        io.save_checkpoint(minimal(w=torch.full((2,), 1e36)), path)
        io.save_checkpoint(minimal(w=torch.full((2,), 1e36)), tmp_path / "best.ckpt")
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]
    try:
        raise RuntimeError("another error")
    except RuntimeError:
        io.save_checkpoint(minimal(w=torch.zeros(2)), path)  # any other exception: written as asked
    assert read_checkpoint(path)["state_dict"]["w"].tolist() == [0.0, 0.0]


def test_a_write_that_fails_midway_leaves_the_old_file(written, tmp_path, monkeypatch):
    io, path = written
    before = path.read_bytes()

    def torn_save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError("no space left on device")

    monkeypatch.setattr(torch, "save", torn_save)
    with pytest.raises(OSError, match="no space left"):
        io.save_checkpoint(minimal(w=torch.zeros(2)), path)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_a_preloaded_checkpoint_is_handed_over_once_then_read_from_disk(written, tmp_path):
    io, path = written
    preloaded = read_checkpoint(path)
    io.preload(tmp_path / "sub" / ".." / "last.ckpt", preloaded)  # the same file, spelt differently
    assert io.load_checkpoint(path) is preloaded
    again = io.load_checkpoint(path)
    assert again is not preloaded and again[WEIGHTS_HASH_KEY] == preloaded[WEIGHTS_HASH_KEY]


# ----------------------------------------------------------------------------------------- best and last


def _touch(root: Path, version: int, name: str, mtime: float = 1_000) -> Path:
    path = root / f"version_{version}" / "checkpoints" / f"{name}.ckpt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    os.utime(path, (mtime, mtime))
    return path


def _run_folder(root: Path, version: int, resumed_from: Path | None = None) -> Path:
    """version_N/checkpoints as a fit creates it when it starts; a resumed one names the checkpoint it continues."""
    folder = root / f"version_{version}" / "checkpoints"
    folder.mkdir(parents=True)
    if resumed_from is not None:
        (folder / RESUMED_FROM).write_text(f"{resumed_from.resolve()}\n")
    return folder


def test_best_and_last_resolve_to_the_newest_run_not_the_newest_file(tmp_path):
    _touch(tmp_path, 0, "best", 9_000)  # newer, but of an older run
    _touch(tmp_path, 0, "last", 9_000)
    newest_best, newest_last = _touch(tmp_path, 1, "best"), _touch(tmp_path, 1, "last")
    (tmp_path / "version_2").mkdir()  # a test/validate/predict run: no checkpoints folder, not a fit
    assert resolve("best", tmp_path, "test") == newest_best
    assert resolve("last", tmp_path, "fit") == newest_last


def test_best_and_last_name_a_checkpoint_a_fit_wrote_elsewhere_under_the_root(tmp_path):
    """A fit with its own --checkpoint.filename (or logger name) wrote no best.ckpt where best|last look: the error
    names a file it did write, not "run fit first"."""
    with pytest.raises(ValueError, match="no best.ckpt under .*; run fit first or pass a file path"):
        resolve("best", tmp_path, "test")
    mine = tmp_path / "myexp" / "version_0" / "checkpoints" / "epoch=4.ckpt"
    mine.parent.mkdir(parents=True)
    mine.write_bytes(b"")
    with pytest.raises(ValueError) as info:
        resolve("best", tmp_path, "test")
    assert str(info.value) == (
        f"--ckpt_path best: no best.ckpt under {tmp_path}/*/checkpoints, where best|last look, but {tmp_path} holds "
        f"other checkpoints (written by a fit with another --checkpoint.filename, dirpath or logger name?), e.g. "
        f"{mine}: pass the file as --ckpt_path"
    )
    mine.unlink()
    loggerless = tmp_path / "checkpoints" / "best.ckpt"  # --trainer.logger false: no version_N folder
    loggerless.parent.mkdir()
    loggerless.write_bytes(b"")
    with pytest.raises(ValueError, match=r"\(written by a fit with --trainer.logger false\?\), e.g. .*/checkpoints/"):
        resolve("best", tmp_path, "test")


def test_a_resumed_run_resolves_within_the_run_it_continues(tmp_path):
    best, last = _touch(tmp_path, 0, "best"), _touch(tmp_path, 0, "last")
    _run_folder(tmp_path, 1, resumed_from=last)  # resumed, never beat the best, then wrote its own last.ckpt
    resumed_last = _touch(tmp_path, 1, "last")
    _run_folder(tmp_path, 2, resumed_from=resumed_last)  # resumed again, killed before its first write
    assert resolve("last", tmp_path, "fit") == resumed_last.resolve()  # where that run started: its newest state
    assert resolve("best", tmp_path, "test") == best  # the best of the run: the resumes did not beat it
    _run_folder(tmp_path, 3, resumed_from=best)  # `fit --ckpt_path best`, killed before its first write
    assert resolve("last", tmp_path, "fit") == best.resolve()


def test_the_note_of_best_or_last_names_other_fits_under_the_root_not_the_runs_it_resumed(tmp_path):
    """A trial's second fit into one root silently changed what `test --ckpt_path best` tested (0% for its 97% model):
    the note on stderr now names the other fits' files beside the one taken."""
    from lit_seq2seq.checkpoint import resolved_note

    first = _touch(tmp_path, 0, "best")
    assert resolved_note("best", tmp_path, first) == f"--ckpt_path best: {first}"  # one fit: the path alone
    _run_folder(tmp_path, 1, resumed_from=_touch(tmp_path, 0, "last"))  # resuming it: the same fit
    assert resolved_note("best", tmp_path, resolve("best", tmp_path, "test")) == f"--ckpt_path best: {first}"
    second = _touch(tmp_path, 2, "best")  # a second fit
    assert resolved_note("best", tmp_path, resolve("best", tmp_path, "test")) == (
        f"--ckpt_path best: {second}, the newest fit's; 1 other fit(s) under {tmp_path} (the latest: --ckpt_path "
        f"{first})"
    )


def test_a_newer_run_without_the_file_is_refused_naming_both_folders(tmp_path):
    older = _touch(tmp_path, 0, "last")
    _touch(tmp_path, 0, "best")
    _run_folder(tmp_path, 1)  # a new fit that died before its first checkpoint
    newest = tmp_path / "version_1"
    for name in ("last", "best"):
        with pytest.raises(ValueError) as info:
            resolve(name, tmp_path, "fit")
        message = str(info.value)
        assert message.startswith(f"--ckpt_path {name}: the newest run, {newest}, has no {name}.ckpt")
        assert f"{tmp_path / 'version_0'} has one but is another run" in message
        assert f"pass --ckpt_path {older.parent / (name + '.ckpt')} to use it, or drop --ckpt_path" in message


def test_a_run_resumed_from_a_file_elsewhere_does_not_reach_into_other_runs(tmp_path):
    _touch(tmp_path, 0, "best")
    outside = tmp_path / "elsewhere" / "snapshot.ckpt"
    outside.parent.mkdir()
    outside.write_bytes(b"")
    _run_folder(tmp_path, 1, resumed_from=outside)
    assert resolve("last", tmp_path, "fit") == outside.resolve()
    with pytest.raises(ValueError, match=r"the newest run, .*version_1, has no best.ckpt \(it validated nothing: "):
        resolve("best", tmp_path, "test")


@pytest.mark.parametrize("subcommand,hint", [("fit", "drop --ckpt_path to start a new fit"), ("test", "run fit first")])
def test_best_or_last_without_a_file_is_refused_with_a_hint(subcommand, hint, tmp_path):
    _touch(tmp_path, 0, "best", 1_000)
    with pytest.raises(ValueError, match=f"^--ckpt_path last: no last.ckpt under {tmp_path}/\\*/checkpoints; {hint}"):
        resolve("last", tmp_path, subcommand)


# ------------------------------------------------------------------------------------- killed writers' litter


def test_temporary_files_of_dead_writers_are_removed_and_of_live_ones_kept(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)  # that process has exited
    live_pid = os.getppid()
    a, b = _run_folder(tmp_path, 0), _run_folder(tmp_path, 1)
    litter = [a / f".last.ckpt.{dead_pid}.tmp", b / f".best.ckpt.{dead_pid}.tmp"]
    kept = [a / f".last.ckpt.{live_pid}.tmp", a / f".last.ckpt.{os.getpid()}.tmp", a / ".notes.tmp", a / "last.ckpt"]
    for path in litter + kept:
        path.write_bytes(b"PK half a checkpoint")
    assert remove_dead_temporaries([a, b, a], "*.ckpt") == litter
    assert not any(p.exists() for p in litter) and all(p.exists() for p in kept)


@pytest.mark.parametrize(
    ("filename", "auto", "name"),
    [
        ("{epoch}-{val/loss:.2f}", True, "epoch=3-val_loss=0.31.ckpt"),  # Lightning's: epoch=3-val/loss=0.31.ckpt
        ("{val/exact_match:.3f}", True, "val_exact_match=0.688.ckpt"),
        ("{epoch}-{val/loss:.2f}", False, "3-0.31.ckpt"),
        (None, True, "epoch=3-step=10.ckpt"),  # Lightning's default name
        ("best", True, "best.ckpt"),
    ],
)
def test_a_checkpoint_filename_with_a_metric_stays_one_file_name(filename, auto, name):
    """Lightning inserts a metric's name before its value, and val/loss holds a slash: the file landed in a folder
    "val" (checkpoints/epoch=3-val/loss=0.31.ckpt), which best|last and a user's ls never look in."""
    from lit_seq2seq.checkpoint import Seq2SeqCheckpoint

    metrics = {"epoch": torch.tensor(3), "step": torch.tensor(10), "val/loss": torch.tensor(0.3141)}
    metrics["val/exact_match"] = torch.tensor(0.6875)
    callback = Seq2SeqCheckpoint(filename=filename, auto_insert_metric_name=auto)
    assert callback.format_checkpoint_name(metrics) == name


def test_best_and_last_look_for_other_checkpoints_near_the_root_only(tmp_path):
    """The hint's search stays within Lightning's layouts (at most <root>/<name>/version_N/checkpoints/x.ckpt) and
    out of hidden folders: the root may be "." in a home folder, where a whole-tree walk takes minutes."""
    deep = tmp_path / "a" / "b" / "c" / "d" / "x.ckpt"
    hidden = tmp_path / ".cache" / "x.ckpt"
    for path in (deep, hidden):
        path.parent.mkdir(parents=True)
        path.write_bytes(b"")
    with pytest.raises(ValueError, match="no best.ckpt under .*; run fit first or pass a file path"):
        resolve("best", tmp_path, "test")
    near = tmp_path / "a" / "b" / "c" / "y.ckpt"
    near.write_bytes(b"")
    with pytest.raises(ValueError, match=f"e.g. {near}: pass the file"):
        resolve("best", tmp_path, "test")
