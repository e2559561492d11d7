"""cli.py's own commands through `lit_seq2seq.cli.main`: `sample | decode` (also as the installed command and
without torch), export's and decode's exit codes and messages, and report's refusal of a folder without logs.
fit/validate/test/predict (LightningCLI) are in test_train_cli.py.

Models are the session's tiny exports (conftest.exported).
"""

from __future__ import annotations

import io
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import (
    BLOCK_IMPORTS,
    CLI,
    REPO,
    TRAIN_EXTRA_HINT,
    cli_exit,
    cli_output,
    damaged_checkpoint,
    into_closed_pipe,
    pad_rows,
    root_args,
    run_cli,
    run_python,
    strip_all,
    version_dirs,
)  # fmt: skip

import lit_seq2seq
from lit_seq2seq import export as export_module
from lit_seq2seq.runtime import OnnxSeq2Seq

pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning"),
]

# ------------------------------------------------------------------------------------------ sample | decode


def test_python_m_decode_runs_without_torch_or_lightning(exported):
    code = (
        BLOCK_IMPORTS
        + """
import runpy
sys.argv = ["lit_seq2seq", "decode", "--model_dir", sys.argv[2], "2 3 4", "5 4"]
try:
    runpy.run_module("lit_seq2seq", run_name="__main__", alter_sys=True)
except SystemExit as exit:
    assert not any(m.split(".")[0] in _Blocked.names for m in sys.modules), sorted(sys.modules)
    raise
"""
    )
    model_dir = exported("copy_trained").model_dir
    result = run_python(code, "none", str(model_dir))
    assert result.returncode == 0, result.stderr
    model = OnnxSeq2Seq.load(model_dir)
    assert result.stdout.splitlines() == strip_all(model, model.greedy(pad_rows([[2, 3, 4], [5, 4]])))


def test_sample_then_decode_scores_exact_match(exported, runtime_model, capsys):
    model_dir, model = exported("copy_trained").model_dir, runtime_model("copy_trained")
    code, sample, _ = cli_output(["sample", "--model_dir", model_dir, "-n", "40", "--seed", "3"], capsys)
    lines = sample.splitlines()
    assert code == 0 and len(lines) == 40 and all("\t" in line for line in lines)
    code, out, err = cli_output(["decode", "--model_dir", model_dir], capsys, sample)
    assert code == 0
    sources = pad_rows([[int(t) for t in line.split("\t")[0].split()] for line in lines])
    assert out.splitlines() == strip_all(model, model.greedy(sources))
    hits = sum(o == line.split("\t")[1] for o, line in zip(out.splitlines(), lines))
    assert f"exact match: {hits}/40 = " in err
    assert hits >= 20  # the fit learned copy (~95% on its validation set)
    # expected answers as a target row holds them (end token, padding: predictions.tsv of older versions): the same
    rows = "".join(line + " 1 0 0\n" for line in lines)
    assert cli_output(["decode", "--model_dir", model_dir], capsys, rows)[2] == err

    code, out, err = cli_output(["decode", "--model_dir", model_dir, "--beam_size", "3"], capsys, sample)
    assert code == 0 and out.splitlines() == strip_all(model, model.beam_search(sources, beam_size=3)[0])
    assert "exact match: " in err


def test_decode_arguments_and_no_tab_print_no_score(exported, runtime_model, capsys):
    model = runtime_model("lstm")
    args = ["decode", "--model_dir", exported("lstm").model_dir, "1 2 3 4", "8 7 6 5", "3 3 2 2"]
    code, out, err = cli_output(args, capsys)
    assert code == 0 and "exact match" not in err
    expected = strip_all(model, model.greedy(pad_rows([[1, 2, 3, 4], [8, 7, 6, 5], [3, 3, 2, 2]])))
    assert out.splitlines() == expected and all(len(line.split()) == 2 for line in expected)


def test_sample_piped_into_decode_with_the_installed_command(exported):
    model_dir = str(exported("copy_trained").model_dir)
    sample = subprocess.run([CLI, "sample", "--model_dir", model_dir, "-n", "10"], capture_output=True, text=True)
    assert sample.returncode == 0, sample.stderr
    decode = subprocess.run(
        [CLI, "decode", "--model_dir", model_dir], input=sample.stdout, capture_output=True, text=True
    )
    assert decode.returncode == 0, decode.stderr
    assert len(decode.stdout.splitlines()) == 10 and "exact match: " in decode.stderr
    # a CRLF file reads alike; a lone carriage return stays inside its line (a real stdin's universal newlines
    # would end the line there)
    crlf = "".join(line + "\r\n" for line in sample.stdout.splitlines())
    for stdin, code, out in ((crlf, 0, decode.stdout), ("x\ry\n", 2, "")):
        again = subprocess.run([CLI, "decode", "--model_dir", model_dir], input=stdin, capture_output=True, text=True)
        assert (again.returncode, again.stdout) == (code, out), again.stderr
    assert "line 1: 'x\\ry' is not a list of space-separated integer token ids" in again.stderr


@pytest.mark.parametrize(
    "flags,message", [(["-n", "0"], "--num must be >= 1, got 0"), (["--seed", "-1"], "--seed must be >= 0, got -1")]
)
def test_bad_sample_flags_are_named(flags, message, exported, capsys):
    code, err = cli_exit(["sample", "--model_dir", exported("gru").model_dir, *flags], capsys)
    assert code == 2 and f"lit-seq2seq sample: error: {message}" in err


def test_ctrl_c_in_an_own_command_is_one_line_and_exit_130(exported, monkeypatch, capsys):
    from lit_seq2seq.runtime import OnnxSeq2Seq

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(OnnxSeq2Seq, "load", interrupted)
    code, err = cli_exit(["decode", "--model_dir", exported("gru").model_dir, "2 3"], capsys)
    assert (code, err) == (130, "lit-seq2seq decode: interrupted\n")


def test_an_unknown_command_lists_every_command(capsys):
    code, err = cli_exit(["decod", "--model_dir", "x"], capsys)
    assert code == 2 and err == (
        "lit-seq2seq: error: unknown command 'decod' (choose from 'fit', 'validate', 'test', 'predict', 'export', "
        "'decode', 'sample', 'report')\n"
    )
    code, err = cli_exit([], capsys)  # LightningCLI's own message named its four commands only
    assert code == 2 and err == (
        "lit-seq2seq: error: no command (choose from 'fit', 'validate', 'test', 'predict', 'export', 'decode', "
        "'sample', 'report'; lit-seq2seq --help)\n"
    )


def test_python_dash_m_names_the_program_lit_seq2seq():
    """`python -m lit_seq2seq fit --help` said "usage: __main__.py ..."."""
    done = subprocess.run([sys.executable, "-m", "lit_seq2seq", "fit", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "usage: lit-seq2seq [options] fit" in done.stdout


# ------------------------------------------------------------------------------------------ decode refusals


@pytest.mark.parametrize(
    "stdin,message",
    [
        ("2 3\t2 3\n2 x 4\t2 4\n", "line 2: '2 x 4' is not a list of space-separated integer token ids"),
        ("2 3\n4 5\t4 y\n", "line 2 (expected)"),
        ("2 3\n\n4 5\n", "line 2: source: empty sequence"),  # (empty lines at the end of the input are dropped)
        ("2 3\n4 5\n2 9\n", "line 3: source[1]: token 9 is out of range"),
        ("2 3\n2 0 3\n", "line 2: source[2]: token after padding"),
        ("1 2\n", "line 1: source[0]: token 1 is out of range"),
        ("2 3\n4 5\t\n6\n", "line 2: empty reference after the tab"),  # fit refuses such a pair as well
        ("2 3\t \n", "line 1: empty reference after the tab"),
        ("2 3\t2 3\t4\n", "line 1 (reference): control character U+0009 at character 4"),  # a second column
        # ids: ASCII digits between whitespace (U+FEFF is none), as decode.mjs and consumer_example.py read them
        ("2 3\n1_3 2\n", "line 2: '1_3 2' is not a list of space-separated integer token ids"),
        ("2 3\n\u0663 2\n", "line 2: '\u0663 2' is not a list of space-separated integer token ids"),
        ("2 3\n2\ufeff3\n", r"line 2: '2\ufeff3' is not a list of space-separated integer token ids"),  # repr
    ],
    ids=["not a number", "bad expected", "empty line", "token too large", "pad inside", "eos inside",
         "tab, no reference", "tab, blank reference", "two tabs", "underscore", "arabic digit", "BOM inside"],
)  # fmt: skip
def test_bad_decode_line_exits_2_naming_the_line(stdin, message, exported, runtime_model, capsys):
    code, out, err = cli_output(["decode", "--model_dir", exported("gru").model_dir], capsys, stdin)
    assert code == 2 and message in err and "Traceback" not in err, err
    assert "usage:" not in err  # a data error, not a usage error
    assert err.startswith("lit-seq2seq decode: error: line ") and len(err.splitlines()) == 1
    before = stdin.splitlines()[: int(message.split()[1].rstrip(":")) - 1]  # decoded and printed, nothing after
    rows = [[int(t) for t in line.split("\t")[0].split()] for line in before]
    model = runtime_model("gru")
    assert out.splitlines() == (strip_all(model, model.greedy(pad_rows(rows))) if rows else [])


def test_skip_bad_lines_decodes_the_rest_and_counts_the_skipped(exported, runtime_model, capsys):
    model = runtime_model("gru")
    good = ["2 3", "4 5 6"]
    expected = [" ".join(map(str, model.strip(model.greedy([int(t) for t in g.split()])))) for g in good]
    stdin = f"{good[0]}\n2 x\n\n{good[1]}\t{expected[1]}\n2 9\n"
    args = ["decode", "--model_dir", exported("gru").model_dir, "--skip_bad_lines"]
    code, out, err = cli_output(args, capsys, stdin)
    assert code in (0, None)
    assert out.splitlines() == expected  # nothing printed for the three bad lines
    assert "exact match: 1/1 = 100.00%" in err
    assert "skipped 3 bad line(s) of 5; the first: line 2: '2 x' is not a list" in err
    # every line bad: nothing decoded is an error, not an empty answer with exit 0
    code, out, err = cli_output(args, capsys, "2 x\n2 9\n")
    assert (code, out) == (2, "")
    assert err.startswith(
        "lit-seq2seq decode: error: every line was bad (2 skipped), nothing decoded; the first: line 1"
    )


def test_with_source_prints_each_decoding_after_its_source_as_read(exported, runtime_model, capsys):
    """An id model's SOURCE<TAB>DECODING lines: `sample`'s pair format, the source as the line spelled it (a bad line
    skipped: no line for it); decoded again, they score 100%."""
    model = runtime_model("gru")
    good = ["2 3", " 4  5 6 "]
    expected = [" ".join(map(str, model.strip(model.greedy([int(t) for t in g.split()])))) for g in good]
    args = ["decode", "--model_dir", exported("gru").model_dir, "--skip_bad_lines", "--with-source"]
    code, out, _ = cli_output(args, capsys, f"{good[0]}\n2 x\n{good[1]}\t9 9\n")
    assert code in (0, None)
    assert out.splitlines() == [f"{g}\t{e}" for g, e in zip(good, expected, strict=True)]
    code, again, err = cli_output(args[:3], capsys, out)
    assert code in (0, None) and again.splitlines() == expected and "exact match: 2/2 = 100.00%" in err
    # --n_best: that many lines a source, the best first; an id model's too
    code, out, err = cli_output([*args, "--beam_size", "3", "--n_best", "2"], capsys, "2 3\t9 9\n4 5 6\n")
    answers = model.distinct(*model.beam_search([2, 3], beam_size=3, n_best=2))
    lines = out.splitlines()
    assert code in (0, None) and [line for line in lines if line.startswith("2 3\t")] == [
        f"2 3\t{' '.join(map(str, a))}" for a in answers
    ]
    assert lines[0] == f"2 3\t{' '.join(map(str, answers[0]))}" and 2 <= len(lines) <= 4
    assert "exact match: 0/1 = 0.00%" in err


@pytest.mark.parametrize("flag", ["--beam_size", "--batch_size", "--threads"])
def test_bad_decode_flags_exit_2(flag, exported, capsys):
    code, err = cli_exit(["decode", "--model_dir", exported("gru").model_dir, flag, "0", "2 3"], capsys)
    assert code == 2 and err == f"lit-seq2seq decode: error: {flag} must be >= 1, got 0\n"


def test_a_bad_export_flag_value_is_one_line_without_the_usage(tmp_path, capsys):
    """The value of a flag argparse read fine: one line naming it, as decode's (export printed its usage first)."""
    code, err = cli_exit(["export", "--ckpt_path", tmp_path / "nope.ckpt", "--output_dir", tmp_path / "out"], capsys)
    assert (code, err) == (2, f"lit-seq2seq export: error: --ckpt_path {tmp_path / 'nope.ckpt'}: no such file\n")


class _UnreadStdin:
    """stdin that fails the test if decode reads it: flags are checked first."""

    @property
    def buffer(self):
        raise AssertionError("decode read stdin before refusing its flags")


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--length_penalty", "2"], "--length_penalty applies to beam search only: add --beam_size K (K > 1)"),
        (["--length_penalty", "0", "--beam_size", "1"], "--length_penalty applies to beam search only: add"),
        (["--length_penalty", "nan"], "--length_penalty applies to beam search only: add"),
        (["--length_penalty", "nan", "--beam_size", "2"], "--length_penalty must be finite, got nan"),
        (["--length_penalty=-inf", "--beam_size", "2"], "--length_penalty must be finite, got -inf"),
        (["--length_penalty", "10.5", "--beam_size", "2"], "--length_penalty must be in [-10, 10] (scores are"),
        (["--beam_size", "1025"], "--beam_size must be <= 1024, got 1025"),
    ],
)
def test_bad_beam_flags_exit_2_before_reading_stdin(flags, message, exported, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", _UnreadStdin())
    code, err = cli_exit(["decode", "--model_dir", exported("gru").model_dir, *flags], capsys)
    assert code == 2 and f"lit-seq2seq decode: error: {message}" in err and "Traceback" not in err, err


def test_length_penalty_changes_nothing_but_beam_search(exported, runtime_model, capsys):
    model = runtime_model("gru")
    sources = [[2, 3], [4, 5, 6], [7, 2, 2, 6, 5]]
    args = ["decode", "--model_dir", exported("gru").model_dir, *(" ".join(map(str, s)) for s in sources)]
    for penalty in ("0", "-2.5"):
        code, out, err = cli_output([*args, "--beam_size", "3", "--length_penalty", penalty], capsys)
        expected = strip_all(model, model.beam_search(pad_rows(sources), beam_size=3, length_penalty=float(penalty))[0])
        empty = [i for i, line in enumerate(expected, 1) if not line]  # the untrained model's answers of nothing
        note = f"{len(empty)} source(s) had an empty answer, printed as an empty line (the first: argument "
        assert (code, out.splitlines(), err) == (0, expected, f"{note}{empty[0]})\n" if empty else "")
    code, out, _ = cli_output([*args, "--beam_size", "3"], capsys)  # the default, 1
    assert out.splitlines() == strip_all(model, model.beam_search(pad_rows(sources), beam_size=3)[0])


def test_decode_says_how_many_lines_had_no_reference(exported, runtime_model, capsys):
    model = runtime_model("gru")
    answer = " ".join(map(str, model.strip(model.greedy([2, 3]))))
    model_dir = exported("gru").model_dir
    code, out, err = cli_output(["decode", "--model_dir", model_dir], capsys, f"2 3\t{answer}\n4 5\n6\n")
    assert code == 0 and len(out.splitlines()) == 3
    assert err == "exact match: 1/1 = 100.00%; 2 lines without a reference not scored\n"
    code, _, err = cli_output(["decode", "--model_dir", model_dir], capsys, f"4 5\n2 3\t{answer}\n")
    assert err == "exact match: 1/1 = 100.00%; 1 line without a reference not scored\n"
    code, _, err = cli_output(["decode", "--model_dir", model_dir, f"2 3\t{answer}", "4 5"], capsys)
    assert err == "exact match: 1/1 = 100.00%; 1 argument without a reference not scored\n"


# ------------------------------------------------------------------------------------------ export refusals


def test_cli_returns_1_when_verification_fails(exported, tmp_path, monkeypatch, capsys):
    ckpt = exported("lstm").ckpt  # built (and exported, verified) first: alone, this test would build it below
    monkeypatch.setattr(export_module, "PARITY_TOL", -1.0)
    args = ["export", "--ckpt_path", ckpt, "--output_dir", tmp_path / "m", "--verify_samples", "8"]
    code, _, err = cli_output(args, capsys)
    assert code == 1
    assert "differ from PyTorch" in err
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("how", ["truncated_half", "truncated_tail", "flipped_tensor_byte", "flipped_optimizer_byte"])
def test_damaged_checkpoint_exits_2_naming_the_flag(how, exported, tmp_path, capsys):
    ckpt = damaged_checkpoint(exported("lstm").ckpt, how, tmp_path)
    code, err = cli_exit(["export", "--ckpt_path", ckpt, "--output_dir", tmp_path / "m"], capsys)
    assert code == 2 and "--ckpt_path" in err and "Traceback" not in err, err
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--ckpt_path", "missing.ckpt"], "--ckpt_path missing.ckpt: no such file"),
        (["--verify_samples", "0"], "--verify_samples must be in [1, 100,000], got 0"),
        (["--verify_samples", "-3"], "--verify_samples must be in [1, 100,000]"),
        (["--verify_samples", "1000000000"], "--verify_samples must be in [1, 100,000]"),  # asked for 45 GiB
        (["--opset", "9"], "--opset must be in"),
    ],
)
def test_bad_export_flags_exit_2_naming_the_flag(flags, message, exported, in_tmp, capsys):
    args = ["export", "--ckpt_path", exported("lstm").ckpt, "--output_dir", in_tmp / "m", *flags]
    code, err = cli_exit(args, capsys)
    assert code == 2 and message in err and "Traceback" not in err, err
    assert not (in_tmp / "m").exists()


def test_export_from_python_names_arguments_of_the_wrong_type(exported, tmp_path):
    """From a script of one's own: None failed inside pathlib, "5" inside a comparison."""
    ckpt = exported("lstm").ckpt
    for kwargs, message in (
        ({"ckpt_path": None}, "--ckpt_path must be a path, got None"),
        ({"verify_samples": "5"}, "--verify_samples must be an integer, got '5'"),
        ({"opset": 17.0}, "--opset must be an integer, got 17.0"),
    ):
        with pytest.raises(TypeError, match=f"^{re.escape(message)}$"):
            export_module.export_checkpoint(**{"ckpt_path": ckpt, "output_dir": tmp_path / "m"} | kwargs)
    assert not (tmp_path / "m").exists()


def test_output_dir_that_is_a_file_exits_2(exported, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    code, err = cli_exit(["export", "--ckpt_path", exported("lstm").ckpt, "--output_dir", tmp_path / "file"], capsys)
    assert code == 2 and "--output_dir" in err and (tmp_path / "file").read_text() == "x"


# ------------------------------------------------------------------------------------------------- report


def test_report_of_a_folder_without_logs_exits_2(tmp_path, capsys):
    code, err = cli_exit(["report", "--log_dir", tmp_path], capsys)
    assert code == 2 and "--log_dir" in err and "metrics.csv" in err


def test_a_fit_too_short_to_log_says_why_it_has_no_report(tmp_path, capsys):
    (tmp_path / "train.tsv").write_text("ab\tA B\nba\tB A\n", encoding="utf-8")
    fit = ["fit", "--data", "PairDataModule", "--data.train_file", tmp_path / "train.tsv", "--trainer.max_epochs", "2"]
    code, _, err = cli_output([*fit, "--model.net.hidden_size", "8", *root_args(tmp_path)], capsys)
    assert code == 0 and "no training report: nothing was logged (2 training steps, no validation; " in err
    assert "--trainer.log_every_n_steps 50 steps" in err
    # resumed when its end is reached already: nothing trained, and it says so (not the logging interval); the run
    # folder it made, empty but for its config, goes, so `last` and the report see the run as it was
    for report in ("true", "false"):
        code, _, err = cli_output(
            [*fit, "--model.net.hidden_size", "8", "--ckpt_path", "last", "--report", report, *root_args(tmp_path)],
            capsys,
        )
        assert code == 0 and "nothing trained: the checkpoint (step 2) had already reached the fit's end" in err
        assert f"(its empty run folder {tmp_path / 'version_1'} was removed)" in err
        assert [p.name for p in version_dirs(tmp_path)] == ["version_0"]


# ------------------------------------------------ issue 12: untrained lengths, streaming decode and sample


def test_decode_refuses_untrained_lengths_unless_allowed(exported, runtime_model, capsys):
    model, model_dir = runtime_model("lstm"), exported("lstm").model_dir  # trained on exactly 4 tokens
    stdin = "1 2 3 4\n1 2 3 4 5\n8 7 6 5\n3 3\n"
    code, out, err = cli_output(["decode", "--model_dir", model_dir], capsys, stdin)
    assert code == 2 and "Traceback" not in err and len(err.splitlines()) == 1
    assert "line 2: source: 5 tokens; this model was trained on sources of exactly 4 tokens" in err
    assert "--allow_untrained_lengths" in err
    assert out.splitlines() == strip_all(model, model.greedy([[1, 2, 3, 4]]))  # line 1 only

    rows = pad_rows([[int(t) for t in line.split()] for line in stdin.splitlines()])
    for beam in ("1", "2"):
        args = ["decode", "--model_dir", model_dir, "--allow_untrained_lengths", "--beam_size", beam]
        code, out, err = cli_output(args, capsys, stdin)
        expected = model.beam_search(rows, 2, allow_untrained_lengths=True)[0] if beam == "2" else None
        if expected is None:
            expected = model.greedy(rows, allow_untrained_lengths=True)
        assert code == 0 and out.splitlines() == strip_all(model, expected)

    code, out, err = cli_output(["decode", "--model_dir", model_dir, "--skip_bad_lines"], capsys, stdin)
    assert code == 0 and out.splitlines() == strip_all(model, model.greedy([[1, 2, 3, 4], [8, 7, 6, 5]]))
    assert "skipped 2 bad line(s) of 4; the first: line 2: source: 5 tokens" in err


class _RecordingStdin:
    """stdin that records, as each line is read, how many lines decode has printed so far."""

    def __init__(self, lines: list[str], out: io.StringIO) -> None:
        self.lines, self.out, self.printed = lines, out, []

    def __iter__(self):
        for line in self.lines:
            self.printed.append(len(self.out.getvalue().splitlines()))
            yield line + "\n"

    def read(self) -> str:  # all at once, as decode read stdin before it streamed
        self.printed = [len(self.out.getvalue().splitlines())] * len(self.lines)
        return "".join(line + "\n" for line in self.lines)


def test_decode_prints_each_batch_before_reading_further_lines(exported, runtime_model, monkeypatch):
    model = runtime_model("gru")
    lines = ["2 3", "4 5 6", "7", "2 2 2 2 2", "6 5"]
    out = io.StringIO()
    stdin = _RecordingStdin(lines, out)
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stdin", stdin)
    assert run_cli(["decode", "--model_dir", exported("gru").model_dir, "--batch_size", "2"]) == 0
    assert stdin.printed == [0, 0, 2, 2, 4]  # memory holds one batch of lines, whatever the input's size
    rows = pad_rows([[int(t) for t in line.split()] for line in lines])
    assert out.getvalue().splitlines() == strip_all(model, model.greedy(rows))


def test_decode_reads_stdin_lines_as_the_file_has_them(exported, runtime_model, capsys):
    model = runtime_model("gru")
    stdin = "2 3\r\n4 5\r6\x0c7 2\n\n6\u20282"  # only \n ends a line (a \r before it is dropped): line N is line N
    args = ["decode", "--model_dir", exported("gru").model_dir, "--skip_bad_lines"]
    code, out, err = cli_output(args, capsys, stdin)
    assert code == 0 and out.splitlines() == strip_all(model, model.greedy(pad_rows([[2, 3], [4, 5, 6, 7, 2], [6, 2]])))
    assert "skipped 1 bad line(s) of 4; the first: line 3: source: empty sequence" in err


@pytest.mark.parametrize("name", ["lstm", "gru"])  # fixed-length and variable-length sources
def test_sample_prints_the_lines_of_one_draw_piece_by_piece(name, exported, runtime_model, monkeypatch, capsys):
    from lit_seq2seq import cli
    from lit_seq2seq.tasks import task_from_metadata

    monkeypatch.setattr(cli, "_SAMPLE_CELLS", 15)  # pieces of 3 rows: 17 lines take 6 of them
    code, out, _ = cli_output(["sample", "--model_dir", exported(name).model_dir, "-n", "17", "--seed", "4"], capsys)
    model = runtime_model(name)
    source, target = task_from_metadata(model.meta).sample(17, np.random.default_rng(4))
    expected = [
        " ".join(map(str, s[s != 0])) + "\t" + " ".join(map(str, model.strip(t))) for s, t in zip(source, target)
    ]
    assert code == 0 and out.splitlines() == expected


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the peak RSS from /proc (Linux)")
def test_sample_memory_does_not_grow_with_n(exported):
    # VmHWM, the peak RSS of this process's memory: unlike getrusage's ru_maxrss, it does not start at the
    # peak of the forking parent (this pytest process, torch and all).
    code = """
import os, re, sys
from pathlib import Path
from lit_seq2seq.cli import main
sys.stdout = open(os.devnull, "w")
peak = []
for n in ("1000", "1000000"):
    assert main(["sample", "--model_dir", sys.argv[1], "-n", n]) == 0
    peak.append(int(re.search(r"VmHWM:\\s*(\\d+) kB", Path("/proc/self/status").read_text())[1]))
print(peak[1] - peak[0], file=sys.__stdout__)
"""
    result = run_python(code, str(exported("lstm").model_dir))
    assert result.returncode == 0, result.stderr
    # Drawn and printed in pieces: a million lines need no more memory than a thousand (the whole draw: +105 MB).
    assert int(result.stdout) < 16 * 1024, f"peak RSS grew by {int(result.stdout) / 1024:.0f} MiB"


def test_sample_and_decode_into_a_closed_pipe_exit_0_quietly(exported, tmp_path):
    model_dir = str(exported("gru").model_dir)
    (tmp_path / "in.txt").write_text("2 3 4\n" * 5000)
    with (tmp_path / "in.txt").open() as lines:
        for args, stdin in (
            (["sample", "-n", "1000000000"], subprocess.DEVNULL),  # the case: 7.9 GB, then a traceback
            (["decode"], lines),
        ):
            with subprocess.Popen([CLI, *args, "--model_dir", model_dir], stdin=stdin, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) as proc:  # fmt: skip
                assert proc.stdout.readline().strip()
                proc.stdout.close()  # as `| head -1` does
                assert proc.wait(timeout=120) == 0 and proc.stderr.read() == ""
    # A little output left in Python's buffer (unbuffered here, a user's stdout is not) when the reader has gone: it
    # failed at exit, outside the handler (exit code 120, "Exception ignored ... BrokenPipeError").
    for command in (f"sample -n 5 --model_dir {model_dir}", f"decode --model_dir {model_dir} < in.txt"):
        done = into_closed_pipe(f"{CLI} {command}", "true", tmp_path)
        assert (done.returncode, done.stderr) == (0, ""), command


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="a device whose writes fail with ENOSPC (Linux)")
def test_decode_into_a_full_or_closed_stdout_says_so_in_one_line(exported):
    """It ended in a traceback: OSError from a write into /dev/full, AttributeError from print() with stdout `>&-`."""
    cmd = [CLI, "decode", "--model_dir", str(exported("gru").model_dir), "2 3 4"]
    with open("/dev/full", "w") as full:
        done = subprocess.run(cmd, stdout=full, stderr=subprocess.PIPE, text=True, timeout=120)
    message = "lit-seq2seq decode: error: cannot write the output to stdout: No space left on device\n"
    assert (done.returncode, done.stderr) == (1, message)
    closed = subprocess.run(" ".join(cmd[:-1]) + " '2 3 4' >&-", shell=True, capture_output=True, text=True)
    message = "lit-seq2seq decode: error: stdout is closed: nowhere to write the output\n"
    assert (closed.returncode, closed.stderr) == (1, message)


@pytest.mark.parametrize(
    "args, message",
    [
        (["export", "--ckpt_path", "x.ckpt", "--output_dir", "bad\udcffname/out"], "export: error: --output_dir: "
         "invalid UTF-8 (byte 0xff at character 4); file and folder names must be UTF-8"),
        (["fit", "--trainer.default_root_dir=/tmp/bad\udcffname"], "fit: error: --trainer.default_root_dir: invalid "
         "UTF-8 (byte 0xff at character 9); file and folder names must be UTF-8"),
        (["decode", "--model_dir", "m", "13 28 \udcff"], "decode: error: argument 1: invalid UTF-8 (byte 0xff at "
         "character 7)"),  # an id model's argument too; the model folder is checked later
        (["decode", "--model_dir", "m", "--skip_bad_lines", "13 28 \udcff"], "decode: error: every argument was "
         "bad (1 skipped), nothing decoded; the first: argument 1: invalid UTF-8 (byte 0xff at character 7)"),
        # ^ the word after a switch is no value of it (it was named as --skip_bad_lines's)
        (["decode", "--model_dir", "m", "--skip", "13 28 \udcff"], "decode: error: unrecognized arguments: --skip"),
        # ^ no abbreviations (argparse took --skip for --skip_bad_lines, and the check named --skip for the text)
    ],
    ids=["export", "fit", "decode", "decode-switch", "decode-prefix"],
)  # fmt: skip
def test_arguments_that_are_not_utf8_are_named_in_one_line(args, message, exported, capsys):
    """A folder named in bytes that are not UTF-8 failed in tens of lines: jsonargparse's Union report, or torch's
    ONNX exporter printing its graph."""
    if args[0] == "decode":
        args[2] = str(exported("gru").model_dir)
    code, err = cli_exit(args, capsys)
    if "unrecognized arguments" in message:  # argparse's own error, after its usage lines
        err = err.splitlines(keepends=True)[-1]
    assert (code, err) == (2, f"lit-seq2seq {message}\n")


@pytest.mark.parametrize(
    "args",
    [
        ["decode", "--model_d", "runs/m", "13 28"],
        ["decode", "--modeldir=runs/m"],
        ["export", "--ckpt", "best", "--output_dir", "o"],
        ["sample", "--model", "runs/m"],
    ],
)
def test_an_unknown_flag_is_named_even_when_a_required_one_is_missing(args, capsys):
    """`decode --model_d DIR` said "the following arguments are required: --model_dir", not what was wrong."""
    code, err = cli_exit(args, capsys)
    unknown = args[1].partition("=")[0]
    assert code == 2 and err.splitlines()[-1] == f"lit-seq2seq {args[0]}: error: unrecognized arguments: {unknown}"


def test_a_bad_line_is_shown_cut_in_its_one_line_error(exported, capsys):
    """A 50 MB line made a 50 MB "one line" error; a 5,000-digit id one of 5,000 digits (and int() refuses those)."""
    model_dir = exported("gru").model_dir
    for line, shown in (
        ("x" * 1_000_000, f"{'x' * 40!r}... (1,000,000 characters) is not a list of space-separated integer token ids"),
        ("2 " + "1" * 5000, f"token {'1' * 40!r}... (5,000 characters) is out of range"),
        ("2 " + "9" * 20, f"token {'9' * 20} is out of range"),
    ):
        code, out, err = cli_output(["decode", "--model_dir", model_dir], capsys, stdin=f"2 3\n{line}\n")
        assert (code, out.count("\n")) == (2, 1) and err == f"lit-seq2seq decode: error: line 2: {shown}\n", err


# --------------------------------------------------------------------- the base install and bundled configs


@pytest.mark.parametrize("command", ["fit", "validate", "test", "predict", "export"])
def test_train_commands_without_the_train_extra_name_it_in_one_line(command: str) -> None:
    # As on a base install (numpy + onnxruntime): torch, Lightning and onnx cannot be imported.
    code = BLOCK_IMPORTS + "from lit_seq2seq.cli import main\nmain(sys.argv[2:])"
    done = run_python(code, "onnx", command, "--config", "reverse_fast")
    assert done.returncode == 2
    missing = "torch, lightning, torchmetrics, onnx"
    assert done.stderr == f"lit-seq2seq {command}: needs the training extra (missing: {missing}): {TRAIN_EXTRA_HINT}\n"


def test_help_and_version_of_a_base_install_exit_0() -> None:
    """Packagers smoke-test an install with `--help` and `--version`: on the base install `--help` exited 2."""
    code = BLOCK_IMPORTS + "from lit_seq2seq.cli import main\nsys.exit(main(sys.argv[2:]))"
    done = run_python(code, "onnx", "--help")
    assert (done.returncode, done.stderr) == (0, "")
    missing = "torch, lightning, torchmetrics, onnx"
    assert done.stdout == (
        "Commands of the base install: decode, sample, report (lit-seq2seq COMMAND --help; report needs the report "
        f"extra)\nfit, validate, test, predict, export: needs the training extra (missing: {missing}): "
        f"{TRAIN_EXTRA_HINT}\n"
    )
    done = run_python(code, "onnx", "--version")
    assert (done.returncode, done.stdout, done.stderr) == (0, f"lit-seq2seq {lit_seq2seq.__version__}\n", "")


def print_config(capsys: pytest.CaptureFixture[str], *configs: str) -> str:
    code, out, err = cli_output(["fit", *(a for c in configs for a in ("--config", c)), "--print_config"], capsys)
    assert code == 0, err
    return out


def test_config_takes_a_bundled_name(in_tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # From a folder without configs/: the name, the name with .yaml and the README's path all mean the bundled file.
    by_path = print_config(capsys, str(REPO / "configs" / "reverse_fast.yaml"))
    assert "max_epochs: 1" in by_path
    for name in ("reverse_fast", "reverse_fast.yaml", "configs/reverse_fast.yaml"):
        assert print_config(capsys, name) == by_path
    overlaid = print_config(capsys, "reverse", "trainer/gpu")
    assert overlaid == print_config(capsys, str(REPO / "configs/reverse.yaml"), str(REPO / "configs/trainer/gpu.yaml"))
    assert "accelerator: gpu" in overlaid


def test_config_prefers_an_existing_file_to_a_bundled_name(in_tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (in_tmp / "reverse_fast").write_text((REPO / "configs" / "reverse_fast.yaml").read_text() + "seed_everything: 7\n")
    assert "seed_everything: 7" in print_config(capsys, "reverse_fast")


def test_config_unknown_name_exits_2_listing_the_bundled_ones(in_tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = cli_exit(["fit", "--config", "reverse_fats"], capsys)
    assert code == 2
    assert err.startswith("lit-seq2seq fit: error: --config reverse_fats: no such file, and not a bundled config (add,")
    assert "reverse_fast, " in err and "trainer/gpu)" in err and err.count("\n") == 1


@pytest.mark.parametrize(
    "text, message",
    [
        (
            "trainer:\n  max_epochs: 1\n   bad: x\n",
            "not valid YAML at line 3, column 7: mapping values are not allowed here",
        ),
        (
            "trainer:\n\tmax_epochs: 1\n",
            "not valid YAML at line 2, column 1: found character '\\t' that cannot start any token",
        ),
    ],
    ids=["indent", "tab"],
)
def test_a_config_that_is_not_yaml_exits_2_naming_the_file_and_line(text, message, in_tmp: Path, capsys) -> None:
    """jsonargparse named '"<unicode string>", line 3' over several lines: not which of the --config files."""
    (in_tmp / "bad.yaml").write_text(text)
    code, err = cli_exit(["fit", "--config", "reverse", "--config", "bad.yaml"], capsys)
    assert (code, err) == (2, f"lit-seq2seq fit: error: --config bad.yaml: {message}\n")


def test_a_config_that_sets_a_size_the_data_decides_exits_2(in_tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """jsonargparse dropped model.net.source_vocab_size from a --config without a word (the data's value won)."""
    (in_tmp / "sizes.yaml").write_text("model:\n  net:\n    hidden_size: 32\n    source_vocab_size: 5\n")
    code, err = cli_exit(["fit", "--config", "reverse", "--config", "sizes.yaml"], capsys)
    assert (code, err) == (
        2,
        "lit-seq2seq fit: error: --config sizes.yaml: model.net.source_vocab_size comes from the data, not a setting: "
        "for generated tasks from --data.vocab_size, --data.target_length and --data.task, for pair files from "
        "their vocabularies and lengths; remove it\n",
    )


def test_a_config_of_comments_alone_adds_nothing(in_tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A file whose every line is commented out: jsonargparse refused it, printing it as an "Unexpected config"."""
    (in_tmp / "off.yaml").write_text("# trainer:\n#   max_epochs: 1\n")
    (in_tmp / "empty.yaml").write_text("")
    assert print_config(capsys, "reverse", "off.yaml", "empty.yaml") == print_config(capsys, "reverse")


def test_fit_help_lists_the_bundled_configs(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli_output(["fit", "--help"], capsys)
    assert code == 0
    files = (REPO / "configs").rglob("*.yaml")
    names = ", ".join(sorted(p.relative_to(REPO / "configs").with_suffix("").as_posix() for p in files))
    assert f"Bundled configs (--config NAME, or a file): {names}\n" in out
    assert "trainer/ddp_cpu" in names and "reverse_fast" in names


def test_own_commands_take_decode_mjs_dashed_flag_spellings(exported, capsys):
    """A script written for decode.mjs (--beam-size 4) failed with "unrecognized arguments" in Python's decode; the
    dashed spellings of a command's own flags now read as its underscored ones, nothing else does."""
    model_dir = str(exported("gru").model_dir)
    plain = cli_output(
        ["decode", "--model_dir", model_dir, "--beam_size", "3", "--length_penalty", "0.5", "2 3 4"], capsys
    )
    dashed = cli_output(
        ["decode", "--model-dir", model_dir, "--beam-size", "3", "--length-penalty=0.5", "2 3 4"], capsys
    )
    assert dashed == plain and plain[0] == 0
    code, err = cli_exit(["decode", "--model_dir", model_dir, "--beam-siz", "3", "2 3"], capsys)  # no prefixes either
    assert code == 2 and err.endswith("error: unrecognized arguments: --beam-siz\n")


def test_decode_two_graph_runs_the_step_loop_and_not_greedy_onnx(exported, monkeypatch, capsys):
    """--two_graph (decode.mjs's --two-graph): the encoder + decoder-step loop, not greedy.onnx; the same answers."""
    args = ["decode", "--model_dir", exported("gru").model_dir, "2 3 4", "5 6"]
    monkeypatch.setattr(OnnxSeq2Seq, "_greedy_steps", lambda *_: pytest.fail("the two-graph loop ran"))
    code, expected, _ = cli_output(args, capsys)
    monkeypatch.undo()
    monkeypatch.setattr(OnnxSeq2Seq, "_greedy_graph", lambda *_: pytest.fail("greedy.onnx ran"))
    assert (code, cli_output([*args, "--two_graph"], capsys)[:2]) == (0, (0, expected)) and expected.count("\n") == 2
