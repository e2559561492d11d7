"""The export folder under faults: it changes as a whole (the complete old export or the complete new one, never a
mix), the next export cleans up what a killed one left, files that are not the export's are refused, and a full disk
or a read-only location is one line with exit code 2.

Faults are injected deterministically at a chosen call: raising OSError in this process (the export must clean up
after itself), or calling os._exit in a subprocess (a kill: the next export must clean up). Models are the session's
tiny exports (conftest.exported); every export here verifies on 4 sources.
"""

from __future__ import annotations

import errno
import os
import platform
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import PYTHON, cli_exit, cli_output, run_cli, run_python

from lit_seq2seq import contract
from lit_seq2seq import export as export_module
from lit_seq2seq.runtime import OnnxSeq2Seq

pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning"),  # the TorchScript exporter's tracer chatter
]
FILES = sorted((contract.ENCODER_FILE, contract.DECODER_FILE, contract.GREEDY_FILE))
ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def siblings(folder: Path) -> list[str]:
    """What lies beside `folder` in its parent (hidden staging and moved-aside folders included)."""
    return sorted(p.name for p in folder.parent.iterdir() if p.name != folder.name)


def export_args(ckpt: Path, out: Path, *flags: str) -> list:
    return ["export", "--ckpt_path", ckpt, "--output_dir", out, "--verify_samples", "4", *flags]


def assert_new_export(out: Path, before: dict[str, bytes] | None) -> None:
    """`out` holds a complete export other than `before`: every file replaced, loadable (the runtime refuses a mix)."""
    now = snapshot(out)
    assert sorted(now) == sorted([*FILES, contract.CONTRACT_FILE])
    assert before is None or all(now[f] != before[f] for f in FILES)
    OnnxSeq2Seq.load(out)


def fail_at(monkeypatch, owner, name: str, call: int, when: str, error: BaseException) -> None:
    """Call number `call` of owner.name raises `error`, before or after doing its work (`when`)."""
    original, calls = getattr(owner, name), []

    def faulty(*args, **kwargs):
        calls.append(args)
        if len(calls) == call and when == "before":
            raise error
        result = original(*args, **kwargs)
        if len(calls) == call:
            raise error
        return result

    monkeypatch.setattr(owner, name, faulty)


def no_exchange(monkeypatch) -> None:
    """As on a filesystem or OS without renameat2(RENAME_EXCHANGE): the two-rename fallback runs."""
    monkeypatch.setattr(export_module, "_rename_exchange", lambda a, b: False)


def dead_pid() -> int:
    """The pid of a process that has ended."""
    return int(subprocess.run([PYTHON, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout)


@pytest.fixture
def previous(exported, tmp_path):
    """(checkpoint, <tmp>/model holding a copy of the gru export, its bytes)."""
    ckpt, model_dir = exported("gru")
    out = tmp_path / "model"
    shutil.copytree(model_dir, out)
    return ckpt, out, snapshot(out)


# ------------------------------------------------------------------- a fault at each step, raised in process

# (module, function, call, before/after it ran, two-rename fallback): every step of an export over a previous one.
STEPS = {
    "encoder written": (export_module, "export_encoder", 1, "after", False),
    "encoder stamped": (export_module, "_prune_and_stamp", 1, "after", False),
    "decoder being written": (export_module, "export_decoder_step", 1, "before", False),
    "decoder stamped": (export_module, "_prune_and_stamp", 2, "after", False),
    "verified": (export_module, "verify", 1, "after", False),
    "fsync": (export_module, "_fsync", 2, "before", False),
    "the exchange": (export_module, "_rename_exchange", 1, "before", False),
    "fallback, moving the old aside": (os, "rename", 1, "before", True),
    "fallback, moving the new in": (os, "rename", 2, "before", True),
}


@pytest.mark.parametrize("step", list(STEPS))
def test_a_fault_at_any_step_leaves_the_previous_export_and_no_litter(step, previous, monkeypatch, capsys):
    ckpt, out, before = previous
    owner, name, call, when, fallback = STEPS[step]
    if fallback:
        no_exchange(monkeypatch)
    fail_at(monkeypatch, owner, name, call, when, ENOSPC)
    code, _, err = cli_output(export_args(ckpt, out, "--overwrite"), capsys)
    monkeypatch.undo()
    assert code == 2 and "Traceback" not in err, err
    assert err == (
        f"lit-seq2seq export: error: --output_dir {out}: no space left on the device of {out.parent}: free some "
        "space or choose another --output_dir; the previous export there is unchanged\n"
    )
    assert snapshot(out) == before  # bytes identical
    OnnxSeq2Seq.load(out)
    assert siblings(out) == []  # no staging or moved-aside folder left


FRESH_STEPS = {k: v for k, v in STEPS.items() if k not in ("the exchange",) and not v[4]}
FRESH_STEPS["the rename into place"] = (os, "rename", 1, "before", False)


@pytest.mark.parametrize("step", list(FRESH_STEPS))
def test_a_fault_at_any_step_of_a_first_export_creates_nothing(step, exported, tmp_path, monkeypatch, capsys):
    owner, name, call, when, _ = FRESH_STEPS[step]
    fail_at(monkeypatch, owner, name, call, when, ENOSPC)
    code, _, err = cli_output(export_args(exported("gru").ckpt, tmp_path / "model"), capsys)
    monkeypatch.undo()
    assert code == 2 and err.endswith("; nothing was written\n") and len(err.splitlines()) == 1, err
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_while_copying_the_contract_names_the_output_folder(exported, tmp_path, monkeypatch, capsys):
    """The error named the contract's source (export/README.md in the package) as the full device."""
    from lit_seq2seq import bundled

    def full(source: Path, destination: Path) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(bundled.contract_path()))

    ckpt = exported("gru").ckpt  # built before the patch
    monkeypatch.setattr(export_module.shutil, "copyfile", full)
    code, _, err = cli_output(export_args(ckpt, tmp_path / "model"), capsys)
    assert code == 2 and f"no space left on the device of {tmp_path}: free some space" in err, err
    assert list(tmp_path.iterdir()) == []


def test_an_export_written_meanwhile_by_another_is_kept_without_overwrite(exported, tmp_path, monkeypatch, capsys):
    """Two exports into one new folder at once: both succeeded, the second replacing the first without --overwrite."""
    out, verify = tmp_path / "model", export_module.verify
    other, ckpt = exported("lstm").model_dir, exported("gru").ckpt  # built before the patch

    def another_export_finishes_meanwhile(*args: object) -> object:
        report = verify(*args)
        shutil.copytree(other, out)
        return report

    monkeypatch.setattr(export_module, "verify", another_export_finishes_meanwhile)
    code, _, err = cli_output(export_args(ckpt, out), capsys)
    message = f"--output_dir {out}: another export wrote it while this one ran; pass --overwrite to replace it\n"
    assert code == 2 and err.endswith(message), err
    assert snapshot(out) == snapshot(other) and siblings(out) == []
    shutil.rmtree(out)  # the same race with --overwrite: this export replaces the other one
    assert run_cli(export_args(ckpt, out, "--overwrite")) == 0
    assert OnnxSeq2Seq.load(out).cell == "gru" and siblings(out) == []


# ---------------------------------------------------------------------- a kill at each step, in a subprocess

KILL = """
import importlib, os, sys
from lit_seq2seq import export
where, call, when, fallback, ckpt, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4] == "1", *sys.argv[5:]
owner_name, name = where.rsplit(".", 1)
owner = importlib.import_module(owner_name)
original, calls = getattr(owner, name), []
def killed(*args, **kwargs):
    calls.append(args)
    if len(calls) == call and when == "before":
        os._exit(9)
    result = original(*args, **kwargs)
    if len(calls) == call:
        os._exit(9)
    return result
setattr(owner, name, killed)
if fallback:
    export._rename_exchange = lambda a, b: False
export.export_checkpoint(ckpt, out, verify_samples=4, overwrite=True)
"""

# (function, call, before/after it ran, two-rename fallback, what the folder holds after the kill)
KILLS = {
    "encoder written": ("lit_seq2seq.export.export_encoder", 1, "after", False, "old"),
    "verified, not swapped": ("lit_seq2seq.export.verify", 1, "after", False, "old"),
    # lit-seq2seq 0.1 moved the two files one by one with os.replace: killed between them, it left a mixed pair
    "between two os.replace": ("os.replace", 2, "before", False, "new"),
    "swapped, old not yet removed": ("lit_seq2seq.export._rename_exchange", 1, "after", False, "new"),
    "fallback, old moved aside": ("os.rename", 1, "after", True, "aside"),
    "fallback, new moved in": ("os.rename", 2, "after", True, "new"),
}


@pytest.mark.parametrize("step", list(KILLS))
def test_a_kill_at_any_step_leaves_a_complete_export_and_the_next_export_cleans_up(step, previous, capsys):
    ckpt, out, before = previous
    where, call, when, fallback, holds = KILLS[step]
    result = run_python(KILL, where, str(call), when, str(int(fallback)), str(ckpt), str(out))
    if holds == "old":
        assert snapshot(out) == before
        OnnxSeq2Seq.load(out)
    elif holds == "new":
        assert_new_export(out, before)
    else:  # the fallback's one window: the previous export lies complete beside the folder, under a hidden name
        assert not out.exists()
        [aside] = out.parent.glob(".model.old-*")
        assert snapshot(aside) == before
        # The next export puts it back first; without --overwrite it then refuses to replace it.
        code, err = cli_exit(export_args(ckpt, out), capsys)
        assert code == 2 and err.startswith(
            f"lit-seq2seq export: cleaned up after an interrupted export of {out}: restored {out} from {aside.name}"
        )
        assert "pass --overwrite" in err and snapshot(out) == before
    # Killed where asked; os.replace is no longer called by the export, which then runs to its end.
    assert result.returncode == (0 if where == "os.replace" else 9), result.stderr
    left = siblings(out)
    assert all(name.startswith((".model.export-", ".model.old-")) for name in left), left

    code, _, err = cli_output(export_args(ckpt, out, "--overwrite"), capsys)
    assert code == 0, err
    cleaned = [line for line in err.splitlines() if "cleaned up" in line]
    note = f"lit-seq2seq export: cleaned up after an interrupted export of {out}: removed {', '.join(left)}"
    assert cleaned == ([note] if left else [])
    assert_new_export(out, before)
    assert siblings(out) == []


# ------------------------------------------------------------------------------------------------- leftovers


def test_leftovers_of_dead_exports_are_removed_and_those_of_running_ones_kept(previous, capsys):
    ckpt, out, _ = previous
    pid = dead_pid()
    dead = [f".model.export-{pid}-0123abcd", ".model.export-k2j4_x9q", f".model.old-{pid}-89abcdef"]  # 0.1's name too
    running = [f".model.export-{os.getpid()}-aaaaaaaa", f".model.export-{os.getpid()}-bbbbbbbb"]
    unrelated = [".model.backup", ".other.export-12345678", ".model.export-1.export-2-cccccccc"]
    unrelated += ["model.export-k2j4_x9q"]
    for name in dead + running + unrelated:
        (out.parent / name).mkdir()
        (out.parent / name / contract.ENCODER_FILE).write_bytes(b"partial")
    # The first is locked as a running export's folder is; the second not yet (just created), but its pid is alive.
    with export_module._held(out.parent / running[0]):
        code, _, err = cli_output(export_args(ckpt, out, "--overwrite"), capsys)
    assert code == 0
    assert [line for line in err.splitlines() if "cleaned up" in line] == [
        f"lit-seq2seq export: cleaned up after an interrupted export of {out}: removed {', '.join(sorted(dead))}"
    ]
    assert siblings(out) == sorted(running + unrelated)


def test_nothing_to_clean_up_says_nothing(previous, capsys):
    ckpt, out, _ = previous
    code, _, err = cli_output(export_args(ckpt, out, "--overwrite"), capsys)
    assert code == 0 and "cleaned up" not in err


# --------------------------------------------------------------------------------------- the folder's owner


def test_a_folder_holding_other_files_is_refused_naming_them(previous, capsys):
    ckpt, out, before = previous
    (out / "notes.txt").write_text("my notes")
    (out / "data").mkdir()
    code, err = cli_exit(export_args(ckpt, out, "--overwrite"), capsys)
    assert code == 2 and "Traceback" not in err
    assert (
        f"--output_dir {out} holds data, notes.txt, not written by an export: an export replaces the whole folder, "
        "so move them out or choose another --output_dir" in err
    )
    files = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert files == {**before, "notes.txt": b"my notes"} and (out / "data").is_dir()
    assert siblings(out) == []


def test_a_file_dropped_in_while_exporting_survives(previous, monkeypatch, capsys):
    """The folder is checked again right before the swap: a file added meanwhile is not swapped away."""
    ckpt, out, before = previous
    verify = export_module.verify

    def verify_then_a_user_writes(*args, **kwargs):
        report = verify(*args, **kwargs)
        (out / "notes.txt").write_text("written during the export")
        return report

    monkeypatch.setattr(export_module, "verify", verify_then_a_user_writes)
    code, err = cli_exit(export_args(ckpt, out, "--overwrite"), capsys)
    assert code == 2 and "holds notes.txt, not written by an export" in err
    assert snapshot(out) == {**before, "notes.txt": b"written during the export"}
    assert siblings(out) == []


def test_a_first_export_into_a_folder_holding_other_files_is_refused(exported, tmp_path, capsys):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "README").write_text("x")
    code, err = cli_exit(export_args(exported("gru").ckpt, tmp_path / "model"), capsys)
    assert code == 2 and "holds README, not written by an export" in err
    assert [p.name for p in (tmp_path / "model").iterdir()] == ["README"]


def test_an_empty_output_dir_or_one_under_a_file_is_refused_by_name(exported, tmp_path, monkeypatch, capsys):
    """A trial's `--output_dir ""` was read as the working folder, and a folder under a file said "File exists"."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("x")
    for out, message in (
        ("", "--output_dir is empty: name the folder to write the export into"),
        ("afile/sub/deeper", "--output_dir afile/sub/deeper: afile is a file, not a folder"),  # as typed
    ):
        code, _, err = cli_output(["export", "--ckpt_path", str(exported("gru").ckpt), "--output_dir", out], capsys)
        assert (code, err) == (2, f"lit-seq2seq export: error: {message}\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]
    if os.path.isdir("/proc/self") and not os.path.exists("/proc/lit-seq2seq"):  # a folder where none can be made
        code, _, err = cli_output(export_args(exported("gru").ckpt, Path("/proc/lit-seq2seq")), capsys)
        assert code == 2 and "cannot make a folder in /proc (No such file or directory); nothing was written" in err


def test_the_folder_keeps_its_permissions(exported, tmp_path):
    ckpt = exported("gru").ckpt
    plain = tmp_path / "plain"
    plain.mkdir()
    assert run_cli(export_args(ckpt, tmp_path / "new")) == 0  # a new folder: the mode a plain mkdir gets
    assert stat.S_IMODE((tmp_path / "new").stat().st_mode) == stat.S_IMODE(plain.stat().st_mode)
    out = tmp_path / "empty"
    out.mkdir()
    out.chmod(0o750)
    assert run_cli(export_args(ckpt, out)) == 0  # an empty folder needs no --overwrite
    assert run_cli(export_args(ckpt, out, "--overwrite")) == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o750
    assert_new_export(out, None)


def test_a_symlinked_folder_is_replaced_where_it_lies(previous, tmp_path):
    ckpt, out, before = previous
    link = tmp_path / "link"
    link.symlink_to(out, target_is_directory=True)
    assert run_cli(export_args(ckpt, link, "--overwrite")) == 0
    assert link.is_symlink() and link.resolve() == out
    assert_new_export(out, before)
    assert siblings(out) == ["link"]


def test_the_two_rename_fallback_replaces_the_export(previous, monkeypatch):
    ckpt, out, before = previous
    no_exchange(monkeypatch)
    assert run_cli(export_args(ckpt, out, "--overwrite")) == 0
    assert_new_export(out, before)
    assert siblings(out) == []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="renameat2 is Linux only")
@pytest.mark.parametrize("libc", ["renameat2", "syscall"])
def test_rename_exchange_swaps_two_folders_on_this_machine(libc, tmp_path, monkeypatch):
    """On the test's filesystem and on the tmpfs /dev/shm, through the C library's wrapper and the raw syscall
    (a C library older than glibc 2.28 has no wrapper)."""
    if libc == "syscall":
        if platform.machine() not in export_module._RENAMEAT2_SYSCALL:
            pytest.skip(f"no renameat2 syscall number known for {platform.machine()}")
        real = export_module.ctypes.CDLL

        class SyscallOnly:
            def __init__(self, name, use_errno):
                self.syscall = real(name, use_errno=use_errno).syscall

        monkeypatch.setattr(export_module.ctypes, "CDLL", SyscallOnly)
    roots = [tmp_path] + ([Path("/dev/shm")] if os.access("/dev/shm", os.W_OK) else [])
    for root in roots:
        a, b = Path(root, f"xa-{os.getpid()}"), Path(root, f"xb-{os.getpid()}")
        try:
            for folder, text in ((a, "a"), (b, "b")):
                folder.mkdir()
                (folder / "f").write_text(text)
            assert export_module._rename_exchange(a, b), root
            assert (a / "f").read_text() == "b" and (b / "f").read_text() == "a"
            with pytest.raises(FileNotFoundError):
                export_module._rename_exchange(a, Path(root, f"missing-{os.getpid()}"))
        finally:
            shutil.rmtree(a, ignore_errors=True)
            shutil.rmtree(b, ignore_errors=True)


# ---------------------------------------------------------------------------------------- resource faults


@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES])
def test_an_unwritable_location_is_one_line_and_changes_nothing(code, previous, monkeypatch, capsys):
    ckpt, out, before = previous
    mkdir = os.mkdir

    def refused(path, *args, **kwargs):  # creating the staging folder beside `out`, as on a read-only parent
        if ".model.export-" in os.fspath(path):
            raise OSError(code, os.strerror(code), os.fspath(path))
        return mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", refused)
    exit_code, _, err = cli_output(export_args(ckpt, out, "--overwrite"), capsys)
    monkeypatch.undo()
    assert exit_code == 2 and err == (
        f"lit-seq2seq export: error: --output_dir {out}: cannot write in {out.parent} ({os.strerror(code)}); an "
        "export is written beside its folder and then swapped in, so choose a --output_dir in a writable folder; "
        "the previous export there is unchanged\n"
    )
    assert snapshot(out) == before and siblings(out) == []


@pytest.fixture
def tiny_disk(tmp_path, exported):
    """A tmpfs at <tmp>/disk with room for one gru export and not two; skipped where mounting is not permitted."""
    if not sys.platform.startswith("linux") or os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a tmpfs needs Linux and root")
    pages = sum(-(-p.stat().st_size // 4096) for p in exported("gru").model_dir.iterdir())
    disk = tmp_path / "disk"
    disk.mkdir()
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={(pages + 1) * 4}k", "tmpfs", str(disk)],
                           capture_output=True, text=True)  # fmt: skip
    if mount.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {mount.stderr.strip()}")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=True)


def test_a_full_disk_and_a_read_only_disk_are_one_line_and_keep_the_export(tiny_disk, exported, capsys):
    """A real small tmpfs: the first export fits, a second cannot be staged beside it."""
    ckpt, out = exported("gru").ckpt, tiny_disk / "onnx"
    assert run_cli(export_args(ckpt, out)) == 0
    before = snapshot(out)
    code, _, err = cli_output(export_args(ckpt, out, "--overwrite"), capsys)
    assert code == 2 and err == (
        f"lit-seq2seq export: error: --output_dir {out}: no space left on the device of {tiny_disk}: free some space "
        "or choose another --output_dir; the previous export there is unchanged\n"
    )
    assert snapshot(out) == before and os.listdir(tiny_disk) == ["onnx"]
    OnnxSeq2Seq.load(out)

    subprocess.run(["mount", "-o", "remount,ro", str(tiny_disk)], check=True)
    code, _, err = cli_output(export_args(ckpt, out, "--overwrite"), capsys)
    assert code == 2 and f"cannot write in {tiny_disk} (Read-only file system)" in err and len(err.splitlines()) == 1
    assert snapshot(out) == before


def test_a_mount_point_is_refused(tiny_disk, exported, capsys):
    code, err = cli_exit(export_args(exported("gru").ckpt, tiny_disk), capsys)
    assert code == 2 and f"--output_dir {tiny_disk} is a mount point, which cannot be replaced" in err
    assert os.listdir(tiny_disk) == []
