"""report.py: report.png + report.csv from a run's CSV logs; bad rows, non-finite values and write faults."""

from __future__ import annotations

import csv
import errno
import os
import subprocess
import sys

import matplotlib.figure
import matplotlib.image as mpimg
import numpy as np
import pytest
from conftest import (
    REVERSE_YAML,
    TINY_TASK,
    TRAIN_EXTRA_HINT,
    cli_exit,
    cli_output,
    root_args,
    run_cli,
    tiny_run,
    version_dirs,
)

# reverse.yaml validates 4x per epoch: 8 points per validation curve.
CURVES = [*TINY_TASK, *tiny_run(train=1000, val=100, test=100, hidden=16, epochs=2), "--trainer.log_every_n_steps", "5"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    run_cli(["fit", "--config", REVERSE_YAML, *CURVES, *root_args(root)])
    return version_dirs(root)[-1]


def test_report_writes_curves_and_positions(run_dir):
    assert run_cli(["report", "--log_dir", run_dir]) == 0
    rows = list(csv.DictReader((run_dir / "report.csv").open()))
    metrics = {r["metric"] for r in rows}
    assert {"train/loss", "val/loss", "val/token_acc", "val/exact_match", "position_0_acc", "position_1_acc"} <= metrics
    assert sum(r["metric"] == "val/exact_match" for r in rows) == 8  # reverse.yaml validates 4x per epoch
    assert all(0.0 <= float(r["value"]) <= 1.0 for r in rows if "acc" in r["metric"] or "exact" in r["metric"])
    image = mpimg.imread(run_dir / "report.png")
    assert image.shape[:2] == (400, 1800)  # 18 x 4 inches at 100 dpi
    assert image[..., :3].std() > 0.05  # drawn, not blank
    # Plotted lines are coloured: some pixels are far from grey.
    rgb = image[..., :3]
    assert (np.ptp(rgb, axis=-1) > 0.3).mean() > 0.001


# --------------------------------------------------------------- issue 12: bad rows, non-finite values, atomic writes

HEADER = "epoch,step,train/loss,val/loss,val/token_acc,val/exact_match,val/position_0_acc\n"
GOOD = HEADER + "0,4,2.0,,,,\n0,9,,1.5,0.5,0.25,0.5\n0,14,1.0,,,,\n"  # lines 2-4


@pytest.fixture
def log_dir(tmp_path):
    """A folder with a hand-written metrics.csv and the report of it."""
    (tmp_path / "metrics.csv").write_text(GOOD)
    assert run_cli(["report", "--log_dir", tmp_path]) == 0
    return tmp_path


def report_files(folder) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in ("report.csv", "report.png")}


def listing(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize(
    "row,message",
    [
        ("0,19,abc,,,,", "line 5: 'abc' in column train/loss is not a number"),
        ("0,x1,0.5,,,,", "line 5: 'x1' in column step is not a number"),
        ("0,19,0.5,,,,,7", "line 5: 8 cells, the header has 7"),
        ("0,19,\xff,,,,", "line 5: not UTF-8 text (invalid start byte)"),
    ],
    ids=["not a number", "bad step", "extra cell", "not utf-8"],
)
def test_a_bad_metrics_row_exits_2_naming_file_and_line_and_keeps_the_report(row, message, log_dir, capsys):
    before = report_files(log_dir)
    (log_dir / "metrics.csv").write_bytes((GOOD + row + "\n").encode("latin-1"))
    code, err = cli_exit(["report", "--log_dir", log_dir], capsys)
    assert code == 2 and err == f"lit-seq2seq report: error: {log_dir / 'metrics.csv'} {message}\n"
    assert report_files(log_dir) == before and listing(log_dir) == ["metrics.csv", "report.csv", "report.png"]


def test_non_finite_values_are_left_out_and_counted_on_stderr(log_dir, capsys):
    """A diverged run logs nan/inf: the report shows the finite points and says how many it left out."""
    (log_dir / "metrics.csv").write_text(GOOD + "0,19,nan,,,,\n0,inf,0.5,,,,\n0,24,-inf,,,,\n")
    code, out, err = cli_output(["report", "--log_dir", log_dir], capsys)
    assert code == 0
    assert err == (
        f"lit-seq2seq report: left out 3 non-finite value(s) of {log_dir / 'metrics.csv'} (not plotted); the first: "
        "line 5 train/loss nan\n"
    )
    rows = list(csv.DictReader((log_dir / "report.csv").open()))
    assert [(r["step"], r["value"]) for r in rows if r["metric"] == "train/loss"] == [
        ("4", "2.0"),
        ("14", "1.0"),
        ("", "0.5"),  # its step was inf
    ]
    assert all(np.isfinite(float(r["value"])) for r in rows)


def test_without_matplotlib_the_report_is_one_line_naming_the_extra_as_it_installs(log_dir, monkeypatch, capsys):
    """It said pip install 'lit-seq2seq[report]', which finds nothing (the package is not on PyPI), after a usage."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    code, err = cli_exit(["report", "--log_dir", log_dir], capsys)
    assert code == 2 and err == (
        "lit-seq2seq report: error: the PNG report needs matplotlib (the report extra): "
        f"{TRAIN_EXTRA_HINT.replace('[train]', '[report]')}\n"
    )


@pytest.mark.parametrize("fault", ["table write", "figure write", "move into place"])
def test_a_failed_write_keeps_the_existing_report_and_leaves_no_temporary(fault, log_dir, monkeypatch, capsys):
    before = report_files(log_dir)
    (log_dir / "metrics.csv").write_text(GOOD + "0,19,0.5,,,,\n")  # new data: a new report would differ
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    owner, name = {"table write": (os, "fsync"), "figure write": (matplotlib.figure.Figure, "savefig")}.get(
        fault, (os, "replace")
    )

    def raise_full(*args, **kwargs):
        raise full

    monkeypatch.setattr(owner, name, raise_full)
    code, err = cli_exit(["report", "--log_dir", log_dir], capsys)
    monkeypatch.undo()
    assert code == 2 and err == (
        f"lit-seq2seq report: error: --log_dir {log_dir}: cannot write the report (No space left on device); free "
        "some space or make the folder writable; an existing report is unchanged\n"
    )
    assert report_files(log_dir) == before and listing(log_dir) == ["metrics.csv", "report.csv", "report.png"]


def test_temporaries_of_a_killed_report_are_removed(log_dir):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    killed = f".report.png.{int(dead.stdout)}.tmp"
    running = f".report.csv.{os.getppid()}.tmp"  # a live process's: kept
    for name in (killed, running):
        (log_dir / name).write_bytes(b"half")
    assert run_cli(["report", "--log_dir", log_dir]) == 0
    assert listing(log_dir) == sorted([running, "metrics.csv", "report.csv", "report.png"])


def test_without_per_position_accuracy_the_last_panel_plots_the_token_error_rate(tmp_path, monkeypatch):
    """Pair-file runs log no position_i_acc (references differ in length): the last panel shows token error rate,
    not an empty frame."""
    from lit_seq2seq import report

    rows = "epoch,step,train/loss,val/loss,val/exact_match,val/token_error_rate\n0,9,,1.5,0.25,0.4\n1,19,,1.0,0.5,0.2\n"
    (tmp_path / "metrics.csv").write_text(rows)
    titles = {}
    real = report._figure

    def spy(plt, curves, positions, log_dir, resumes):
        figure = real(plt, curves, positions, log_dir, resumes)
        titles["last"] = (figure.axes[-1].get_title(), [line.get_label() for line in figure.axes[-1].lines])
        return figure

    monkeypatch.setattr(report, "_figure", spy)
    assert run_cli(["report", "--log_dir", tmp_path]) == 0
    assert titles["last"] == ("token error rate", ["val/token_error_rate"])


def test_the_report_of_a_test_run_plots_its_test_metrics(tmp_path, monkeypatch):
    """A `test` run's folder holds test/* metrics alone: each panel plots its own (only the last one did)."""
    from lit_seq2seq import report

    header = "epoch,step,test/loss,test/token_acc,test/exact_match,test/token_error_rate\n"
    (tmp_path / "metrics.csv").write_text(header + "0,0,0.5,0.9,0.6,0.1\n")
    panels, titles = [], []
    real = report._figure

    def spy(plt, curves, positions, log_dir, resumes):
        figure = real(plt, curves, positions, log_dir, resumes)
        panels.extend([line.get_label() for line in ax.lines] for ax in figure.axes)
        titles.append(figure.get_suptitle())
        return figure

    monkeypatch.setattr(report, "_figure", spy)
    assert run_cli(["report", "--log_dir", tmp_path]) == 0
    assert panels == [["test/loss"], ["test/token_acc"], ["test/exact_match"], ["test/token_error_rate"]]
    # not a "training report" of points at step 0 (the checkpoint's step is elsewhere)
    assert titles == [f"lit-seq2seq evaluation report: {tmp_path} (a validate or test run: one point per metric)"]
    # a fit that logged no training value (fewer steps than log_every_n_steps), its checkpoints elsewhere: its
    # validations are at the steps it reached
    header = "epoch,step,val/loss,val/exact_match\n"
    (tmp_path / "metrics.csv").write_text(header + "0,1,0.9,0.1\n1,3,0.7,0.3\n")
    assert run_cli(["report", "--log_dir", tmp_path]) == 0
    assert titles[-1] == f"lit-seq2seq training report: {tmp_path}"


# ----------------------------------------------------------------------------- resumed fits: the curves before

RESUMED = "epoch,step,train/loss,val/loss,val/exact_match\n"


def _run(root, version: int, rows: str, resumed_from: tuple[int, int] | None = None, step_line: bool = True):
    """root/version_N with a metrics.csv and, if resumed, the record a resumed fit writes (from version_K's last.ckpt
    at a global step)."""
    folder = root / f"version_{version}"
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "metrics.csv").write_text(RESUMED + rows)
    if resumed_from is not None:
        earlier, step = resumed_from
        source = (root / f"version_{earlier}" / "checkpoints" / "last.ckpt").resolve()
        (folder / "checkpoints" / "resumed_from").write_text(
            f"{source}\n" + (f"global_step {step}\n" if step_line else "")
        )
    return folder


def test_the_report_of_a_resumed_fit_shows_the_runs_it_continues_up_to_each_resume(tmp_path, monkeypatch):
    from lit_seq2seq import report

    _run(tmp_path, 0, "0,4,2.0,,\n0,9,,1.5,0.25\n1,14,1.0,,\n1,19,,1.2,0.3\n")  # killed after step 19; last.ckpt at 9
    _run(tmp_path, 1, "1,14,0.9,,\n1,19,,1.1,0.4\n2,24,0.8,,\n", resumed_from=(0, 9))
    third = _run(tmp_path, 2, "2,29,0.7,,\n2,34,,0.9,0.6\n", resumed_from=(1, 24))
    titles = []
    real = report._figure

    def spy(plt, curves, positions, log_dir, resumes):
        figure = real(plt, curves, positions, log_dir, resumes)
        titles.append(figure.get_suptitle())
        return figure

    monkeypatch.setattr(report, "_figure", spy)
    assert run_cli(["report", "--log_dir", third]) == 0
    rows = [(r["metric"], float(r["step"]), float(r["value"])) for r in csv.DictReader((third / "report.csv").open())]
    assert [(step, value) for name, step, value in rows if name == "train/loss"] == [
        (4, 2.0),
        (14, 0.9),
        (24, 0.8),
        (29, 0.7),  # version_0's 14 and 19 were trained again after the resume
    ]
    assert [value for name, _, value in rows if name == "val/exact_match"] == [0.25, 0.4, 0.6]
    assert titles == [
        f"lit-seq2seq training report: {third} (resumed: version_0 to step 9; version_1 to step 24, dotted)"
    ]
    assert run_cli(["report", "--log_dir", tmp_path / "version_0"]) == 0  # a run's own report: its rows alone
    assert len(list(csv.DictReader((tmp_path / "version_0" / "report.csv").open()))) == 6


def test_a_resume_record_without_a_step_or_an_earlier_metrics_file_ends_the_history_there(tmp_path):
    from lit_seq2seq.report import run_history

    _run(tmp_path, 0, "0,4,2.0,,\n")
    old = _run(tmp_path, 1, "1,14,0.9,,\n", resumed_from=(0, 9), step_line=False)  # recorded by older versions
    assert run_history(old) == ([{"epoch": 1.0, "step": 14.0, "train/loss": 0.9}], [])
    (tmp_path / "version_0" / "metrics.csv").unlink()
    _run(tmp_path, 2, "2,24,0.8,,\n", resumed_from=(0, 9))
    assert run_history(tmp_path / "version_2") == ([{"epoch": 2.0, "step": 24.0, "train/loss": 0.8}], [])


def test_an_earlier_run_killed_before_its_first_log_adds_nothing_to_the_history(tmp_path):
    """Its metrics.csv holds the header alone: the resumed run's report failed ("holds no rows yet")."""
    from lit_seq2seq.report import run_history

    _run(tmp_path, 0, "0,4,2.0,,\n")
    _run(tmp_path, 1, "", resumed_from=(0, 4))  # killed before it logged
    rows, resumes = run_history(_run(tmp_path, 2, "2,24,0.8,,\n", resumed_from=(1, 4)))
    assert [r["step"] for r in rows] == [4.0, 24.0] and [s for s, _ in resumes] == [4.0, 4.0]


def test_a_log_dir_that_is_not_there_is_named_so(tmp_path, capsys):
    code, err = cli_exit(["report", "--log_dir", tmp_path / "nope"], capsys)
    assert code == 2 and f"--log_dir {tmp_path / 'nope'}: no such folder (pass a run folder such as" in err
    code, err = cli_exit(["report", "--log_dir", tmp_path], capsys)  # a folder without the logger's file
    assert code == 2 and f"--log_dir {tmp_path}: no metrics.csv (pass a run folder such as" in err
