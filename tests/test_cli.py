"""cli.py's own commands through `lit_seq2seq.cli.main`: `sample | decode` (also as the installed command and
without torch), export's and decode's exit codes and messages, and report's refusal of a folder without logs.
fit/validate/test/predict (LightningCLI) are in test_train_cli.py.

Models are the session's tiny exports (conftest.exported).
"""

from __future__ import annotations

import subprocess

import pytest
from conftest import BLOCK_IMPORTS, CLI, cli_exit, cli_output, damaged_checkpoint, pad_rows, run_python, strip_all

from lit_seq2seq import export as export_module
from lit_seq2seq.runtime import OnnxSeq2Seq

pytestmark = [
    pytest.mark.filterwarnings("ignore:The number of training batches"),
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

    code, out, err = cli_output(["decode", "--model_dir", model_dir, "--beam_size", "3"], capsys, sample)
    assert code == 0 and out.splitlines() == strip_all(model, model.beam_search(sources, beam_size=3)[0])
    assert "exact match: " in err


def test_decode_arguments_and_no_tab_print_no_score(exported, runtime_model, capsys):
    model = runtime_model("lstm")
    args = ["decode", "--model_dir", exported("lstm").model_dir, "1 2 3 4", "8 7 6 5", "3 3"]
    code, out, err = cli_output(args, capsys)
    assert code == 0 and "exact match" not in err
    expected = strip_all(model, model.greedy(pad_rows([[1, 2, 3, 4], [8, 7, 6, 5], [3, 3]])))
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


# ------------------------------------------------------------------------------------------ decode refusals


@pytest.mark.parametrize(
    "stdin,message",
    [
        ("2 3\t2 3\n2 x 4\t2 4\n", "line 2: '2 x 4' is not a list of space-separated integer token ids"),
        ("2 3\n4 5\t4 y\n", "line 2 (expected)"),
        ("2 3\n\n", "line 2: source: empty sequence"),
        ("2 3\n4 5\n2 9\n", "line 3: source position 1: token 9 is out of range"),
        ("2 3\n2 0 3\n", "line 2: source position 2: token after padding"),
        ("1 2\n", "line 1: source position 0: token 1 is out of range"),
    ],
    ids=["not a number", "bad expected", "empty line", "token too large", "pad inside", "eos inside"],
)
def test_bad_decode_line_exits_2_naming_the_line(stdin, message, exported, capsys):
    code, out, err = cli_output(["decode", "--model_dir", exported("gru").model_dir], capsys, stdin)
    assert code == 2 and message in err and "Traceback" not in err, err
    assert "usage:" not in err  # a data error, not a usage error
    assert err.startswith("lit-seq2seq decode: error: line ") and len(err.splitlines()) == 1
    assert not out  # every line is checked before anything is decoded


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


@pytest.mark.parametrize("flag", ["--beam_size", "--batch_size", "--threads"])
def test_bad_decode_flags_exit_2(flag, exported, capsys):
    code, err = cli_exit(["decode", "--model_dir", exported("gru").model_dir, flag, "0", "2 3"], capsys)
    assert code == 2 and f"{flag} must be >= 1" in err


# ------------------------------------------------------------------------------------------ export refusals


def test_cli_returns_1_when_verification_fails(exported, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(export_module, "PARITY_TOL", -1.0)
    args = ["export", "--ckpt_path", exported("lstm").ckpt, "--output_dir", tmp_path / "m", "--verify_samples", "8"]
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
        (["--verify_samples", "0"], "--verify_samples must be >= 1"),
        (["--verify_samples", "-3"], "--verify_samples must be >= 1"),
        (["--opset", "9"], "--opset must be in"),
    ],
)
def test_bad_export_flags_exit_2_naming_the_flag(flags, message, exported, in_tmp, capsys):
    args = ["export", "--ckpt_path", exported("lstm").ckpt, "--output_dir", in_tmp / "m", *flags]
    code, err = cli_exit(args, capsys)
    assert code == 2 and message in err and "Traceback" not in err, err
    assert not (in_tmp / "m").exists()


def test_output_dir_that_is_a_file_exits_2(exported, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    code, err = cli_exit(["export", "--ckpt_path", exported("lstm").ckpt, "--output_dir", tmp_path / "file"], capsys)
    assert code == 2 and "--output_dir" in err and (tmp_path / "file").read_text() == "x"


# ------------------------------------------------------------------------------------------------- report


def test_report_of_a_folder_without_logs_exits_2(tmp_path, capsys):
    code, err = cli_exit(["report", "--log_dir", tmp_path], capsys)
    assert code == 2 and "--log_dir" in err and "metrics.csv" in err
