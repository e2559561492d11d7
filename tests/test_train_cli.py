"""train_cli.py, the LightningCLI in-process: print_config, flag errors (exit 2), a tiny fit that learns,
checkpoints, test, predict, repeated runs and determinism. Every config's fit/test/export is in test_configs.py."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any, ClassVar

import lightning as L
import onnx
import pytest
import torch
import yaml
from conftest import (
    REVERSE_YAML,
    TINY_TASK,
    cli_exit,
    fit_in,
    last_metric,
    read_metrics,
    root_args,
    run_cli,
    run_python,
    tiny_run,
    version_dirs,
)

from lit_seq2seq.data import Seq2SeqDataModule
from lit_seq2seq.metrics import answer_tokens
from lit_seq2seq.module import Seq2SeqModule

pytestmark = [
    pytest.mark.filterwarnings("ignore:The dirpath has changed"),  # test/predict log to a new version dir
]

# Measured test exact match after this fit: 0.83-0.93 over seeds 1, 2, 3, 7 and 42 (0.916 with the default 42).
TASK = [*TINY_TASK, *tiny_run(train=2000, val=200, test=500, hidden=32, epochs=3), "--data.predict_size", "100"]
TINY_FIT = [*TASK, "--model.optimizer", "Adam", "--model.optimizer.lr", "0.01"]
LEARNED = 0.6
# A few steps only: for tests about files and plumbing, not learning.
QUICK_FIT = [*TASK, "--data.train_size", "128", "--data.val_size", "32", "--trainer.max_epochs", "1"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny fit shared by the tests that only read its outputs; returns its default_root_dir."""
    return fit_in(tmp_path_factory.mktemp("trained") / "runs", *TINY_FIT)


def _test_run(root: Path, *extra: str) -> Path:
    """`test --ckpt_path best` in a new CLI call; returns the version directory it logged to."""
    before = set(version_dirs(root))
    run_cli(["test", *TASK, "--ckpt_path", "best", *root_args(root), *extra])
    (new,) = set(version_dirs(root)) - before
    return new


def _resolved_ckpt(version_dir: Path) -> str:
    return yaml.safe_load((version_dir / "config.yaml").read_text())["ckpt_path"]


# ------------------------------------------------------------------------------------------- print_config


def test_print_config_is_yaml_without_linked_keys(in_tmp, capsys):
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        run_cli(["fit", "--config", REVERSE_YAML, "--print_config"])
    assert info.value.code in (0, None)
    config = yaml.safe_load(capsys.readouterr().out)
    assert {"data", "model", "trainer", "checkpoint"} <= set(config)
    assert config["data"]["task"] == "reverse_first" and config["data"]["vocab_size"] == 51
    assert config["model"]["net"]["hidden_size"] == 128 and config["model"]["net"]["cell"] == "lstm"
    assert config["model"]["optimizer"]["init_args"]["lr"] == 0.001
    for linked in ("source_vocab_size", "target_vocab_size", "max_target_length", "eos_token"):
        assert linked not in config["model"]["net"], f"model.net.{linked} is linked from the data, not settable"
    assert config["checkpoint"]["monitor"] == "val/exact_match" and config["checkpoint"]["mode"] == "max"
    assert not list(in_tmp.iterdir())  # printing writes nothing


# ---------------------------------------------------------------------------------------------- flag errors

BAD_FLAGS = [
    (["--data.target_length", "9"], r"--data.target_length (9) must be <= --data.source_length (6)"),
    (["--data.target_length", "0"], "--data.target_length must be >= 1"),
    (["--data.source_length", "0", "--data.target_length", "1"], "--data.source_length must be >= 1"),
    (["--data.vocab_size", "1"], "--data.vocab_size must be >= 2"),
    (["--data.task", "copy", "--data.target_length", "null", "--data.vocab_size", "2"], "--data.vocab_size"),
    (["--data.task", "add", "--data.target_length", "null", "--data.vocab_size", "12"], "--data.vocab_size"),
    (["--data.batch_size", "0"], "--data.batch_size must be >= 1"),
    (["--data.train_size", "0"], "--data.train_size must be >= 1"),
    (["--data.task", "nope"], "--data.task: unknown task 'nope'"),
    (["--data.task", "copy", "--data.target_length", "null", "--data.min_source_length", "0"], "--data.min_source"),
    (["--data.task", "copy", "--data.target_length", "null", "--data.min_source_length", "7"], "--data.min_source"),
    (["--data.min_source_length", "3"], "--data.min_source_length"),
    (["--model.net.hidden_size", "0"], "--model.net.hidden_size must be >= 1"),
    (["--model.net.num_layers", "0"], "--model.net.num_layers must be >= 1"),
    (["--model.net.cell", "rnn"], "--model.net.cell: unknown cell 'rnn'"),
    (["--model.net.dropout", "1.0"], "--model.net.dropout must be in [0, 1)"),
    (["--model.net.dropout", "-0.5"], "--model.net.dropout must be in [0, 1)"),
    (["--model.net.embedding_dim", "0"], "--model.net.embedding_dim must be >= 1"),
    (["--model.teacher_forcing_ratio", "1.5"], "--model.teacher_forcing_ratio must be in [0, 1]"),
    (["--model.teacher_forcing_ratio", "-0.1"], "--model.teacher_forcing_ratio must be in [0, 1]"),
    # the optimizer's own checks and the Trainer's: named before any run folder exists, not a traceback from inside
    (["--model.optimizer.weight_decay", "-1"], "--model.optimizer / --model.lr_scheduler: Invalid weight_decay value"),
    (["--model.optimizer.lr", "-1"], "--model.optimizer / --model.lr_scheduler: Invalid learning rate: -1"),
    (["--trainer.devices", "0"], "`Trainer(devices='0')` value is not a valid input using cpu accelerator"),
    (["--trainer.max_epochs", "-5"], "`max_epochs` must be a non-negative integer or -1"),
    (["--trainer.max_time", "garbage"], "`Timer(duration='garbage')` is not a valid duration"),
    (["--model.lr_scheduler_interval", "batch"], "--model.lr_scheduler_interval"),
    (
        ["--model.lr_scheduler", "torch.optim.lr_scheduler.ReduceLROnPlateau", "--model.lr_scheduler_interval", "step"],
        "ReduceLROnPlateau steps on a validation metric: leave --model.lr_scheduler_interval at epoch",
    ),
    # reverse.yaml's Adam is fused: under fp16 it unscales the gradients inside its step, after any clipping
    (
        ["--trainer.precision", "16-mixed", "--trainer.gradient_clip_val", "1.0"],
        "--trainer.gradient_clip_val 1.0 cannot be combined with a fused optimizer (--model.optimizer.fused true)",
    ),
]


@pytest.mark.parametrize("flags,message", BAD_FLAGS, ids=[" ".join(f) for f, _ in BAD_FLAGS])
def test_bad_flags_exit_2_naming_the_flag(flags, message, in_tmp, capsys):
    code, err = cli_exit(["fit", "--config", REVERSE_YAML, *flags, *root_args(in_tmp / "runs")], capsys)
    assert code == 2
    assert message in err
    assert "Traceback" not in err
    assert not (in_tmp / "runs").exists()  # refused before the trainer started


class GradNorms(L.Callback):
    """The gradients' total norm and largest magnitude after each optimizer step: what the step was given."""

    seen: ClassVar[list[tuple[float, float]]] = []

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, *args: Any) -> None:
        grads = torch.cat([p.grad.flatten() for p in module.parameters() if p.grad is not None])
        GradNorms.seen.append((float(grads.norm()), float(grads.abs().max())))


@pytest.mark.parametrize("algorithm", ["norm", "value"])
@pytest.mark.parametrize("fused", ["true", "false"])
def test_clipping_under_bf16_mixed_precision_with_and_without_a_fused_optimizer(fused, algorithm, in_tmp):
    """Lightning's bf16-mixed plugin refuses to clip for a fused optimizer (it has no grad scaler to unscale with,
    so the gradients are the true ones): the module clips them itself, as it does for an unfused one, by the norm or
    by the value --trainer.gradient_clip_algorithm names."""
    flags = ["--model.optimizer.fused", fused, "--trainer.precision", "bf16-mixed", "--trainer.max_steps", "3"]
    flags += ["--data.train_size", "256", "--data.val_size", "32", "--trainer.callbacks+=test_train_cli.GradNorms"]
    flags += ["--trainer.gradient_clip_algorithm", algorithm]
    seen = {}
    for clip in ("null", "0.002"):
        GradNorms.seen.clear()
        run_cli(["fit", "--config", REVERSE_YAML, *flags, "--trainer.gradient_clip_val", clip, *root_args(in_tmp)])
        seen[clip] = list(GradNorms.seen)
    assert len(seen["0.002"]) == 3 and min(largest for _, largest in seen["null"]) > 0.02  # unclipped: well above
    if algorithm == "norm":
        assert all(norm == pytest.approx(0.002, rel=1e-3) for norm, _ in seen["0.002"])
    else:  # every gradient value within +-0.002, some at the bound, the norm above 0.002
        assert all(largest == pytest.approx(0.002) and norm > 0.004 for norm, largest in seen["0.002"])


@pytest.mark.parametrize("flags", [["--data.nope", "1"], ["--model.nope", "1"], ["--trainer.nope", "1"]])
def test_unknown_flag_exits_2(flags, in_tmp, capsys):
    code, err = cli_exit(["fit", "--config", REVERSE_YAML, *flags, *root_args(in_tmp)], capsys)
    assert code == 2 and flags[0].lstrip("-") in err


def test_unknown_key_in_yaml_exits_2(in_tmp, capsys):
    config = in_tmp / "bad.yaml"
    config.write_text(REVERSE_YAML.read_text() + "  nope: 1\n")  # lands under model:
    code, err = cli_exit(["fit", "--config", config, *root_args(in_tmp)], capsys)
    assert code == 2 and "nope" in err
    # one line, not the subcommand's ~90 lines of usage first
    assert err.strip() == (
        "lit-seq2seq fit: error: no option model.nope (a key of a --config file, or of a dict given to a flag; "
        "lit-seq2seq fit --help lists them)"
    )


def test_data_arguments_beside_the_class_path_exit_2_saying_they_go_under_init_args(in_tmp, capsys):
    (in_tmp / "flat.yaml").write_text("data:\n  class_path: lit_seq2seq.pairs.PairDataModule\n  train_file: x.tsv\n")
    code, err = cli_exit(["fit", "--config", in_tmp / "flat.yaml"], capsys)
    assert code == 2 and err.startswith(
        "lit-seq2seq fit: error: data: the arguments of a class_path go under init_args (class_path: ..., init_args: "
    )


def test_a_scalar_where_the_net_mapping_belongs_exits_2(in_tmp, capsys):
    """`model: {net: 32}`: a TypeError traceback inside Lightning's linking of the data's sizes into the net."""
    overlay = in_tmp / "net.yaml"
    overlay.write_text("model:\n  net: 32\n")
    code, err = cli_exit(["fit", "--config", REVERSE_YAML, "--config", overlay, *root_args(in_tmp)], capsys)
    assert (code, err.strip().splitlines()[-1]) == (
        2,
        "lit-seq2seq fit: error: --model.net must be a mapping of its fields (net: {hidden_size: 32, ...}, or "
        "--model.net.hidden_size 32), got 32",
    )


PAIRS = ["--data", "PairDataModule", "--data.train_file", "train.tsv"]
WRONG_TYPES = [
    (["--data.batch_size", "many"], "--data.batch_size must be an integer, got many"),
    (["--model.net.hidden_size", "big"], "--model.net.hidden_size must be an integer, got big"),
    (["--model.optimizer.lr", "abc"], "--model.optimizer.lr must be a number or Tensor, got abc (torch.optim.Adam)"),
    (
        ["--model.optimizer", "SGD", "--model.optimizer.lr", "0.1", "--model.optimizer.momentun", "0.9"],
        "--model.optimizer.momentun: torch.optim.SGD has no such option",
    ),
    (
        ["--model.optimizer", "Foo"],
        "--model.optimizer Foo: no such class (a class of torch.optim, e.g. Adam or AdamW, or an import path)",
    ),
    (
        ["--model.lr_scheduler", "torch.optim.lr_scheduler.Nope"],
        "--model.lr_scheduler torch.optim.lr_scheduler.Nope: no",
    ),
    (
        ["--model.lr_scheduler", "StepLR"],
        "--model.lr_scheduler torch.optim.lr_scheduler.StepLR needs --model.lr_scheduler.step_size (no default)",
    ),
    (
        ["--model.lr_scheduler.gamma", "0.5"],
        "--model.lr_scheduler.gamma 0.5: no --model.lr_scheduler class is chosen to take it; give --model.lr_scheduler "
        "CLASS first",
    ),
    (
        ["--model.net.source_vocab_size", "12"],
        "--model.net.source_vocab_size comes from the data, not a setting: for generated tasks from --data.vocab_size",
    ),
    ([*PAIRS, "--data.source_tokenizer", "chars"], "--data.source_tokenizer must be one of char, space, got chars"),
    ([*PAIRS, "--data.bucketing", "maybe"], "--data.bucketing must be true or false, got maybe"),
    ([*PAIRS, "--data.unk_rate", "lots"], "--data.unk_rate must be a number or null, got lots"),
    ([*PAIRS, "--data.max_source_tokens", "ten"], "--data.max_source_tokens must be an integer or null, got ten"),
    ([*PAIRS, "--data.split_fractions", "[0.9, 0.1]"], "--data.split_fractions must be a tuple with 3 elements, got"),
    ([*PAIRS, "--data.nosuch", "3"], "--data.nosuch: lit_seq2seq.pairs.PairDataModule has no such option (its opt"),
    (
        ["--data.train_file", "train.tsv", "--data", "PairDataModule"],  # read in order: the option came first
        "--data.train_file: lit_seq2seq.data.Seq2SeqDataModule has no such option (its options: lit-seq2seq fit "
        "--data.help lit_seq2seq.data.Seq2SeqDataModule); it is a PairDataModule option: give --data PairDataModule "
        "before the --data.* flags",
    ),
    (["--trainer.max_epoch", "3"], "unrecognized arguments: --trainer.max_epoch 3 (lit-seq2seq fit --help lists"),
    # a wrong value for the chosen optimizer's or schedule's argument named the bare key, or said no class was chosen
    (["--model.optimizer.betas", "0.9"], "--model.optimizer.betas must be a tuple, got 0.9 (torch.optim.Adam)"),
    (
        ["--model.lr_scheduler", "StepLR", "--model.lr_scheduler.step_size", "x"],
        "--model.lr_scheduler.step_size must be an integer, got x (torch.optim.lr_scheduler.StepLR)",
    ),
    # a data module class that does not exist: jsonargparse's words, without the flag
    (["--data", "PairDataModul"], "--data PairDataModul: no such class (PairDataModule for pair files, Seq2SeqData"),
    (["--data", "lit_seq2seq.pairs.PairDataModul"], "--data lit_seq2seq.pairs.PairDataModul: no such class (PairD"),
    # flags spelt with dashes, as export and decode take them: named with their underscored spelling
    ([*PAIRS, "--data.train-file", "t.tsv"], "--data.train-file: lit_seq2seq.pairs.PairDataModule has no such option"),
    (
        [*PAIRS, "--data.batch-size", "8"],
        "--data.batch-size: lit_seq2seq.pairs.PairDataModule has no such option (its options: lit-seq2seq fit "
        "--data.help lit_seq2seq.pairs.PairDataModule); flags are spelt with underscores: --data.batch_size",
    ),
    (
        ["--model.net.hidden-size", "8"],
        "unrecognized arguments: --model.net.hidden-size 8; flags are spelt with "
        "underscores: --model.net.hidden_size (lit-seq2seq fit --help lists",
    ),
    (
        ["--model.optimizer", "Adam", "--model.optimizer.weight-decay", "0.1"],
        "--model.optimizer.weight-decay: torch.optim.Adam has no such option; flags are spelt with underscores: "
        "--model.optimizer.weight_decay",
    ),
    # Union-typed trainer flags: the data module's unwrapping took the first subtype's complaint, without the flag
    (["--trainer.max_epochs", "x"], "--trainer.max_epochs must be an integer or null, got x"),
    (["--trainer.precision", "x"], "--trainer.precision must be one of 64, 32, 16, transformer-engine, transformer-"),
    (["--seed_everything", "x"], "--seed_everything must be true or false or an integer, got x"),
    # Lightning's own checks that raised a TypeError or ZeroDivisionError traceback, or took a value silently
    (["--trainer.devices", "x"], "--trainer.* flags: `devices` selected with `CPUAccelerator` should be an int > 0."),
    (["--trainer.accumulate_grad_batches", "0"], "--trainer.accumulate_grad_batches must be >= 1, got 0"),
    (["--trainer.gradient_clip_val", "-1"], "--trainer.gradient_clip_val must be >= 0 or null, got -1.0"),
    (["--trainer.log_every_n_steps", "0"], "--trainer.log_every_n_steps must be >= 1, got 0"),  # a modulo by zero
    (["--trainer.check_val_every_n_epoch", "0"], "--trainer.check_val_every_n_epoch must be >= 1 or null, got 0"),
    (["--trainer.limit_train_batches", "0"], "--trainer.limit_train_batches 0 trains on nothing: give a share"),
    (["--data.seed", "-1"], "--data.seed must be >= 0, got -1"),  # numpy's error at the first batch
    # Lightning's tracebacks: a modulo by zero after the first batch, numpy's seed range, the weights handed back by
    # spawned processes refused by the checkpoint IO, LearningRateMonitor's check when the fit starts
    (["--trainer.val_check_interval", "0"], "--trainer.val_check_interval must be > 0: a count of training batches"),
    (["--trainer.max_steps", "0"], "--trainer.max_steps 0 trains nothing: give a count, or -1 for no limit"),
    (["--trainer.max_epochs", "0"], "--trainer.max_epochs 0 trains nothing: give a count, or -1 for no limit"),
    (["--trainer.val_check_interval", "0.0"], "--trainer.val_check_interval must be > 0: a count of training"),
    (["--seed_everything", "-1"], "--seed_everything must be in [0, 4294967295] (or true for a random seed), got -1"),
    (["--seed_everything", "4294967296"], "--seed_everything must be in [0, 4294967295] (or true for a random seed)"),
    (["--trainer.strategy", "ddp_spawn"], "--trainer.strategy ddp_spawn: processes started by spawn are not"),
    (["--trainer.strategy", "ddp_fork_find_unused_parameters_true"], "--trainer.strategy ddp_fork_find_unused_para"),
    (
        ["--trainer.strategy", "DDPStrategy", "--trainer.strategy.start_method", "spawn"],
        "--trainer.strategy DDPStrategy: processes started by spawn are not supported",
    ),
    (["--trainer.precision", "bf16-true"], "--trainer.precision bf16-true: the weights themselves would be 16-bit"),
    (["--trainer.precision", "16-true"], "--trainer.precision 16-true: the weights themselves would be 16-bit, and so"),
    (["--trainer.enable_checkpointing", "false"], "--trainer.enable_checkpointing false: lit-seq2seq's fit always"),
    (
        ["--trainer.logger", "false", "--trainer.callbacks", "LearningRateMonitor"],
        "--trainer.callbacks LearningRateMonitor writes to the logger, and --trainer.logger false turns it off",
    ),
    ([*PAIRS, "--data.seed", "-1"], "--data.seed must be >= 0, got -1"),
]


@pytest.mark.parametrize("flags, message", WRONG_TYPES, ids=[" ".join(f[-2:]) for f, _ in WRONG_TYPES])
def test_a_value_of_the_wrong_type_is_one_line_naming_the_flag(flags, message, in_tmp, capsys):
    """jsonargparse printed ~90 lines of usage, then the flag's key nested in its Union-of-classes wording; a prefix
    of a flag (max_epoch) was taken for the flag. Nothing is written."""
    code, err = cli_exit(["fit", "--config", REVERSE_YAML, *flags, *root_args(in_tmp / "runs")], capsys)
    assert code == 2 and err.startswith(f"lit-seq2seq fit: error: {message}") and err.count("\n") == 1, err
    assert not (in_tmp / "runs").exists()
    if message.startswith("--data."):  # fit --help names the data module, not its options: --data.help lists them
        assert "fit --help" not in err


def test_a_second_run_without_a_logger_does_not_overwrite_the_first_ones_config(in_tmp, capsys):
    """--trainer.logger false writes config.yaml into the root itself: a second run there replaced the first's."""
    args = ["fit", *QUICK_FIT, "--trainer.logger", "false", *root_args(in_tmp)]
    assert run_cli(args) == 0
    first = (in_tmp / "config.yaml").read_text()
    code, err = cli_exit([*args, "--model.net.hidden_size", "16"], capsys)
    assert code == 2 and f"--trainer.logger false: this run's config.yaml would go into {in_tmp} itself" in err
    assert (in_tmp / "config.yaml").read_text() == first
    assert sorted(p.name for p in (in_tmp / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]


def test_a_configs_progress_bar_follows_the_terminal_it_runs_in(in_tmp):
    """The bar (on a terminal) or LogProgress lines (in a log) were a default written into config.yaml as
    enable_progress_bar false or true, so the config given again elsewhere kept the other one's choice."""
    assert run_cli(["fit", *QUICK_FIT, *root_args(in_tmp)]) == 0
    assert yaml.safe_load((in_tmp / "version_0" / "config.yaml").read_text())["trainer"]["enable_progress_bar"] is None


@pytest.mark.parametrize("logger, module", [("TensorBoardLogger", "tensorboard"), ("WandbLogger", "wandb")])
def test_a_logger_whose_package_is_missing_says_so_in_one_line(logger, module, in_tmp, capsys):
    """It was "--trainer.logger must be Logger, Iterable[Logger], ... got Namespace(...)" after the usage, or
    jsonargparse's Union listing."""
    import importlib.util

    code, err = cli_exit(["fit", *QUICK_FIT, "--trainer.logger", logger, *root_args(in_tmp)], capsys)
    expected = f"lit-seq2seq fit: error: --trainer.logger {logger}: "
    if importlib.util.find_spec(module) is None:  # (installed: what it still lacks is named)
        expected += f"needs the {module} package: pip install {module}"
    assert code == 2 and err.splitlines()[-1].startswith(expected) and "Namespace(" not in err, err
    assert "usage:" not in err


def test_seed_everything_true_draws_a_random_seed_and_records_it(in_tmp, monkeypatch):
    """Lightning 2.6 seeds `true` with 0 ("No seed found, seed set to 0"), where --help says a random seed; a seed
    left in the environment by an earlier fit in the process is not reused either."""

    monkeypatch.setenv("PL_GLOBAL_SEED", "42")
    seeds = []
    for _ in range(2):
        assert run_cli(["fit", *QUICK_FIT, "--seed_everything", "true", *root_args(in_tmp)]) == 0
        config = yaml.safe_load(sorted(version_dirs(in_tmp))[-1].joinpath("config.yaml").read_text())
        seeds.append(config["seed_everything"])
    assert all(isinstance(s, int) and s not in (0, 42) for s in seeds) and seeds[0] != seeds[1], seeds


@pytest.mark.parametrize("command", ["test", "validate", "predict"])
@pytest.mark.parametrize("name", ["best", "last"])
def test_named_checkpoint_without_a_fit_exits_2(command, name, in_tmp, capsys):
    code, err = cli_exit([command, *TASK, "--ckpt_path", name, *root_args(in_tmp / "runs")], capsys)
    assert code == 2
    assert f"--ckpt_path {name}: no {name}.ckpt" in err


def test_ctrl_c_while_the_data_loads_is_one_line_and_exit_130(in_tmp, monkeypatch, capsys):
    # Pair files are read while the CLI builds the model (their sizes are linked into it): before Lightning's own
    # Ctrl-C handler, which covers only the run, is active.
    from lit_seq2seq.pairs import PairDataModule

    def interrupted(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(PairDataModule, "load", interrupted)
    (in_tmp / "train.tsv").write_text("ab\tA B\n", encoding="utf-8")
    for command in ("fit", "validate"):
        args = [command, "--data", "PairDataModule", "--data.train_file", in_tmp / "train.tsv", *root_args(in_tmp)]
        code, err = cli_exit(args, capsys)
        assert (code, err) == (130, f"lit-seq2seq {command}: interrupted\n")


def test_ctrl_c_during_the_run_is_left_to_lightning(in_tmp, monkeypatch, capsys):
    def interrupted(self, stage):
        raise KeyboardInterrupt

    monkeypatch.setattr(Seq2SeqDataModule, "setup", interrupted)  # called by the trainer, inside its handler
    sigint = signal.getsignal(signal.SIGINT)
    try:
        code, err = cli_exit(["fit", *QUICK_FIT, *root_args(in_tmp)], capsys)
    finally:
        signal.signal(signal.SIGINT, sigint)  # Lightning ignores further Ctrl-C while it shuts down
    assert code == 1 and "interrupted" not in err and "Traceback" not in err


# ------------------------------------------------------------------------------------------------ a tiny fit


def test_fit_writes_best_and_last_checkpoints(trained):
    assert [p.name for p in version_dirs(trained)][:1] == ["version_0"]
    checkpoints = trained / "version_0" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["best.ckpt", "last.ckpt"]
    assert (trained / "version_0" / "config.yaml").exists()
    val = _val_scores(trained / "version_0")
    assert len(val) == 3  # one validation per epoch
    best = torch.load(checkpoints / "best.ckpt", weights_only=True)
    last = torch.load(checkpoints / "last.ckpt", weights_only=True)
    assert last["epoch"] == 2 and last["global_step"] == 3 * 63  # 2000 rows / batch 32 = 63 steps per epoch
    # best = the epoch with the best val/exact_match; of tied ones, the lowest token error rate, then the earliest
    assert best["epoch"] == max(range(3), key=lambda e: val[e])
    val = [exact for exact, _ in val]
    state = best["callbacks"][next(k for k in best["callbacks"] if k.startswith("ModelCheckpoint"))]
    assert float(state["best_model_score"]) == pytest.approx(max(val))


def _val_scores(version: Path) -> list[tuple[float, float]]:
    """(val/exact_match, -val/token_error_rate) of each validation: what best.ckpt is chosen by, higher better."""
    rows = [r for r in read_metrics(version) if r.get("val/exact_match")]
    return [(float(r["val/exact_match"]), -float(r["val/token_error_rate"])) for r in rows]


# Too small to get any row right: val/exact_match is 0 in every epoch while the token error rate moves (measured:
# 0.949, 0.953, 0.914, 0.895 over the 4 epochs).
UNSOLVED = [
    "--data.task", "reverse_first", "--data.vocab_size", "51", "--data.source_length", "6", "--data.target_length",
    "4", *tiny_run(train=512, val=64, hidden=8), "--model.optimizer", "Adam", "--model.optimizer.lr", "0.02",
]  # fmt: skip


def test_a_tie_on_exact_match_goes_to_the_lower_token_error_rate_across_a_resume(in_tmp):
    def best_of(version: Path) -> tuple[int, float]:
        best = torch.load(version / "checkpoints" / "best.ckpt", weights_only=True)
        state = best["callbacks"][next(k for k in best["callbacks"] if k.startswith("ModelCheckpoint"))]
        return best["epoch"], state["best_tie_score"]

    root = in_tmp / "runs"
    run_cli(["fit", *UNSOLVED, "--trainer.max_epochs", "2", *root_args(root)])
    first = _val_scores(root / "version_0")
    assert [exact for exact, _ in first] == [0.0, 0.0]
    assert first[1][1] < first[0][1]  # epoch 1's token error rate is higher: best.ckpt keeps epoch 0
    assert best_of(root / "version_0") == (0, -first[0][1])

    run_cli(["fit", *UNSOLVED, "--trainer.max_epochs", "4", "--ckpt_path", "last", *root_args(root)])
    scores = first + _val_scores(root / "version_1")
    assert [exact for exact, _ in scores] == [0.0] * 4
    best = max(range(4), key=lambda e: scores[e])
    assert best >= 2  # the resumed run beat the best it carried over: the tie went to the lower token error rate
    assert best_of(root / "version_1") == (best, -scores[best][1])


def test_tiny_fit_learns(trained):
    val = last_metric(trained / "version_0", "val/exact_match")
    assert val > LEARNED, f"val/exact_match {val:.3f}; chance is 0.01"
    assert last_metric(trained / "version_0", "val/token_acc") > 0.75
    losses = [float(r["train/loss"]) for r in read_metrics(trained / "version_0") if r.get("train/loss")]
    assert losses[-1] < losses[0] / 2


def test_test_with_best_resolves_the_checkpoint_in_a_new_call(trained):
    version = _test_run(trained)
    assert _resolved_ckpt(version) == str(trained / "version_0" / "checkpoints" / "best.ckpt")
    exact = last_metric(version, "test/exact_match")
    assert exact > LEARNED, f"test/exact_match {exact:.3f}; chance is 0.01"
    assert 0 <= last_metric(version, "test/position_0_acc") <= 1
    assert not (version / "checkpoints").exists()  # test writes no checkpoint


@pytest.mark.parametrize("name", ["best", "last"])
def test_export_resolves_best_and_last_under_root_dir(name, trained, tmp_path, capsys):
    capsys.readouterr()
    args = ["export", "--ckpt_path", name, "--root_dir", trained, "--verify_samples", "8"]
    assert run_cli([*args, "--output_dir", tmp_path / "named"]) == 0
    path = trained / "version_0" / "checkpoints" / f"{name}.ckpt"
    assert f"--ckpt_path {name}: {path}" in capsys.readouterr().err
    plain = ["export", "--ckpt_path", path, "--verify_samples", "8", "--output_dir", tmp_path / "file"]
    assert run_cli(plain) == 0
    for graph in ("encoder.onnx", "decoder_step.onnx"):  # the same weights: the same graphs (metadata holds an id)
        named, file = (onnx.load(tmp_path / folder / graph).graph for folder in ("named", "file"))
        assert named.SerializeToString() == file.SerializeToString()


def test_export_of_best_without_a_fit_names_root_dir(in_tmp, capsys):
    code, err = cli_exit(["export", "--ckpt_path", "best", "--output_dir", in_tmp / "onnx"], capsys)
    assert code == 2 and not (in_tmp / "onnx").exists()
    assert "--ckpt_path best: no best.ckpt under lightning_logs" in err
    assert "(--root_dir lightning_logs: the fit's --trainer.default_root_dir)" in err


def test_a_fit_without_default_root_dir_goes_to_lightning_logs_where_best_finds_it(in_tmp, capsys):
    """Lightning's default folder, not the current one, which got a version_N folder per run among the user's files."""
    assert run_cli(["fit", *QUICK_FIT]) == 0
    assert sorted(p.name for p in in_tmp.iterdir()) == ["lightning_logs"]
    assert (in_tmp / "lightning_logs" / "version_0" / "checkpoints" / "best.ckpt").is_file()
    saved = yaml.safe_load((in_tmp / "lightning_logs" / "version_0" / "config.yaml").read_text())
    assert saved["trainer"]["default_root_dir"] == "lightning_logs"
    assert run_cli(["test", *TASK, "--ckpt_path", "best"]) == 0
    assert sorted(p.name for p in (in_tmp / "lightning_logs").iterdir()) == ["version_0", "version_1"]
    capsys.readouterr()
    assert run_cli(["export", "--ckpt_path", "best", "--output_dir", "onnx", "--verify_samples", "8"]) == 0
    best = Path("lightning_logs") / "version_0" / "checkpoints" / "best.ckpt"
    assert f"--ckpt_path best: {best}" in capsys.readouterr().err


def test_checkpoints_load_safely_and_rebuild_the_model(trained):
    path = trained / "version_0" / "checkpoints" / "best.ckpt"
    for name in ("best.ckpt", "last.ckpt"):
        checkpoint = torch.load(path.parent / name, weights_only=True)
        net = checkpoint["hyper_parameters"]["net"]
        assert (net["source_vocab_size"], net["target_vocab_size"], net["max_target_length"]) == (11, 11, 2)
        assert net["eos_token"] is None and net["hidden_size"] == 32

    checkpoint = torch.load(path, weights_only=True)
    module = Seq2SeqModule.load_from_checkpoint(path, map_location="cpu").eval()
    config = module.net.config
    assert (config.source_vocab_size, config.max_target_length, config.hidden_size) == (11, 2, 32)
    loaded = module.state_dict()
    assert set(loaded) == set(checkpoint["state_dict"])
    assert all(torch.equal(loaded[k], v) for k, v in checkpoint["state_dict"].items())

    # The rebuilt model scores on the test split exactly what `test --ckpt_path best` logs.
    data_hparams = {k: v for k, v in checkpoint["datamodule_hyper_parameters"].items() if not k.startswith("_")}
    data = Seq2SeqDataModule(**(data_hparams | {"test_size": 500}))
    test = data.split("test")
    exact = (module.net.greedy(test.source) == test.target).all(1).float().mean().item()
    assert exact > LEARNED
    assert exact == pytest.approx(last_metric(_test_run(trained), "test/exact_match"), abs=1e-6)


def test_predict_writes_predictions_tsv(trained):
    before = set(version_dirs(trained))
    run_cli(["predict", *TASK, "--ckpt_path", "best", *root_args(trained)])
    (version,) = set(version_dirs(trained)) - before
    lines = (version / "predictions.tsv").read_text().splitlines()
    assert lines[0] == "source\ttarget\tprediction"
    rows = [[list(map(int, col.split())) for col in line.split("\t")] for line in lines[1:]]
    assert len(rows) == 100  # --data.predict_size
    assert all(len(s) == 4 and len(t) == 2 and len(p) == 2 for s, t, p in rows)
    assert all(t == s[:2][::-1] for s, t, _ in rows)
    assert sum(p == t for _, t, p in rows) / len(rows) > LEARNED


@pytest.mark.parametrize("command", ["test", "predict"])
def test_a_model_flag_the_checkpoint_contradicts_is_refused_not_ignored(command, trained, capsys):
    """test/predict use the checkpoint's model: --model.net.hidden_size 999 ran the 16-unit model, silently."""
    ckpt = trained / "version_0" / "checkpoints" / "best.ckpt"
    hidden = torch.load(ckpt, weights_only=True)["hyper_parameters"]["net"]["hidden_size"]
    args = [command, *TASK, "--ckpt_path", ckpt, *root_args(trained)]
    code, err = cli_exit([*args, "--model.net.hidden_size", "999"], capsys)
    message = f"--model.net.hidden_size 999: the checkpoint's model has {hidden}, and {command} uses the model of"
    assert code == 2 and message in err and err.count("\n") == 1, err
    code, err = cli_exit([*args, "--model.net.cell=gru"], capsys)
    assert code == 2 and "--model.net.cell gru: the checkpoint's model has lstm" in err, err
    assert run_cli([*args, f"--model.net.hidden_size={hidden}"]) == 0  # the same value: nothing to refuse


def test_sigterm_or_ctrl_c_during_predict_leaves_no_predictions_tsv(trained, monkeypatch, capsys):
    """SIGTERM was ignored by predict's loop (it ran to the end); a Ctrl-C while predictions.tsv was being written
    left it cut at a line's end, nothing telling it from a whole one."""
    from lit_seq2seq import callbacks

    step = Seq2SeqModule.predict_step

    def terminated_at_batch_1(self: Seq2SeqModule, batch: Any, batch_idx: int, *args: Any) -> Any:
        if batch_idx == 1:
            os.kill(os.getpid(), signal.SIGTERM)  # as `kill PID` does: the handler runs before the next line
        return step(self, batch, batch_idx, *args)

    args = ["predict", *TASK, "--ckpt_path", "best", "--data.batch_size", "16", *root_args(trained)]
    before = set(version_dirs(trained))
    monkeypatch.setattr(Seq2SeqModule, "predict_step", terminated_at_batch_1)
    code, err = cli_exit(args, capsys)
    assert code == 143 and err.endswith("lit-seq2seq predict: stopped by SIGTERM\n") and "Traceback" not in err, err
    monkeypatch.undo()
    written = []

    def interrupted_at_row_50(row: list[int], eos: int | None, pad: int) -> list[int]:
        written.append(row)
        if len(written) == 3 * 50:  # three columns a row
            raise KeyboardInterrupt
        return answer_tokens(row, eos, pad)

    monkeypatch.setattr(callbacks, "answer_tokens", interrupted_at_row_50)
    assert cli_exit(args, capsys)[0] != 0
    runs = set(version_dirs(trained)) - before
    assert len(runs) == 2 and not [p for run in runs for p in run.iterdir() if "predictions" in p.name]


# --------------------------------------------------------------------------------- repeated runs, determinism


def test_fit_writes_the_training_report_and_says_where(trained, capsys):
    version = trained / "version_0"
    assert (version / "report.png").stat().st_size > 0
    rows = (version / "report.csv").read_text().splitlines()
    assert rows[0] == "metric,step,value" and any(r.startswith("val/exact_match,") for r in rows)


def test_fit_with_report_false_writes_none(in_tmp, capsys):
    capsys.readouterr()
    run_cli(["fit", *QUICK_FIT, "--report", "false", *root_args(in_tmp)])
    assert not list(in_tmp.glob("version_0/report.*"))
    assert "training report" not in capsys.readouterr().err


@pytest.mark.parametrize("command", ["fit", "test"])
def test_ckpt_path_is_read_once(command, trained, in_tmp, monkeypatch):
    """Our check reads the file; Lightning's hyperparameter parse and restore reuse that read."""
    import torch

    ckpt = trained / "version_0" / "checkpoints" / "last.ckpt"
    copy = in_tmp / "copy.ckpt"
    copy.write_bytes(ckpt.read_bytes())
    reads = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda f, *a, **k: reads.append(str(f)) or real_load(f, *a, **k))
    extra = ["--trainer.max_epochs", "4"] if command == "fit" else []  # the trained fit ran 3 epochs
    run_cli([command, *TINY_FIT, "--ckpt_path", copy, *extra, *root_args(in_tmp / "runs")])
    assert reads.count(str(copy)) == 1, reads


def test_a_checkpoint_of_lit_seq2seq_0_1_still_tests_and_exports(trained, in_tmp, capsys):
    """0.1 stored the net's hyperparameters flat, with one vocab_size: they are read into today's NetConfig."""
    from lit_seq2seq.checkpoint import weights_sha256
    from lit_seq2seq.model import Seq2Seq

    checkpoint = torch.load(trained / "version_0" / "checkpoints" / "best.ckpt", weights_only=True)
    hparams = checkpoint["hyper_parameters"]
    net = dict(hparams.pop("net"))
    net["vocab_size"] = net.pop("source_vocab_size")
    del net["target_vocab_size"]
    checkpoint["hyper_parameters"] = {**net, **hparams}
    checkpoint["weights_sha256"] = weights_sha256(checkpoint["state_dict"])
    old = in_tmp / "old.ckpt"
    torch.save(checkpoint, old)

    assert Seq2Seq.from_checkpoint(old).config.target_vocab_size == 11
    version = in_tmp / "runs"
    run_cli(["test", *TASK, "--ckpt_path", old, *root_args(version)])
    assert last_metric(version_dirs(version)[-1], "test/exact_match") > LEARNED
    assert run_cli(["export", "--ckpt_path", old, "--output_dir", in_tmp / "onnx", "--verify_samples", "8"]) == 0


def test_fit_twice_in_the_same_dir_and_best_resolves_the_newest(in_tmp):
    root = in_tmp / "runs"
    run_cli(["fit", *QUICK_FIT, *root_args(root)])
    run_cli(["fit", *QUICK_FIT, *root_args(root)])
    assert [p.name for p in version_dirs(root)] == ["version_0", "version_1"]
    for v in version_dirs(root):
        assert (v / "checkpoints" / "best.ckpt").exists() and (v / "checkpoints" / "last.ckpt").exists()
    version = _test_run(root)
    assert version.name == "version_2"
    assert _resolved_ckpt(version) == str(root / "version_1" / "checkpoints" / "best.ckpt")
    assert 0 <= last_metric(version, "test/exact_match") <= 1
    before = set(version_dirs(root))
    run_cli(["validate", *TASK, "--data.val_size", "32", "--ckpt_path", "last", *root_args(root)])
    (version,) = set(version_dirs(root)) - before
    assert _resolved_ckpt(version) == str(root / "version_1" / "checkpoints" / "last.ckpt")


def _last_weights(root: Path) -> dict[str, torch.Tensor]:
    return torch.load(root / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]


def test_same_seed_fits_give_bit_identical_weights(in_tmp):
    # dropout and scheduled sampling draw random numbers every step: they must come from the seeded generators too
    flags = [*QUICK_FIT, "--model.net.num_layers", "2", "--model.net.dropout", "0.2"]
    flags += ["--model.teacher_forcing_ratio", "0.5"]
    run_cli(["fit", *flags, *root_args(in_tmp / "a")])
    run_cli(["fit", *flags, *root_args(in_tmp / "b")])
    run_cli(["fit", *flags, "--seed_everything", "7", *root_args(in_tmp / "c")])
    a, b, c = _last_weights(in_tmp / "a"), _last_weights(in_tmp / "b"), _last_weights(in_tmp / "c")
    assert set(a) == set(b)
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"weights differ between two fits with the same seed: {different}"
    assert any(not torch.equal(a[k], c[k]) for k in a)  # and the seed matters


def test_a_checkpoint_of_other_data_sizes_than_the_flags_exits_2_naming_them(trained, in_tmp, capsys):
    """The net's own settings come from the checkpoint (LightningCLI applies its hyperparameters), but the sizes the
    data decides are linked from the --data flags: a checkpoint trained on another vocabulary cannot be loaded."""
    ckpt = trained / "version_0" / "checkpoints" / "best.ckpt"
    flags = [*TASK, "--data.vocab_size", "13", "--ckpt_path", ckpt, *root_args(in_tmp)]
    code, err = cli_exit(["test", *flags], capsys)
    assert code == 2 and "Traceback" not in err
    assert "the checkpoint holds a model of other sizes than the flags describe" in err
    assert "net.source_vocab_size=11 (the data gives 13), net.target_vocab_size=11 (the data gives 13)" in err
    assert (
        "the data decides source_vocab_size, target_vocab_size, max_target_length, eos_token: for generated tasks "
        "--data.vocab_size" in err
    )


# ------------------------------------------------------------------------------------- resume or fine-tune


def test_a_resume_with_other_data_or_model_flags_exits_2_naming_each(trained, in_tmp, capsys):
    """Before: LightningCLI silently took the model's settings from the checkpoint and the data's from the flags,
    and "resumed" a fit on other data."""
    ckpt = trained / "version_0" / "checkpoints" / "last.ckpt"
    flags = [*TINY_FIT, "--data.train_size", "1000", "--model.net.hidden_size", "16"]
    flags += ["--model.teacher_forcing_ratio", "0.5", "--data.test_size", "7", "--trainer.max_epochs", "4"]
    code, err = cli_exit(["fit", *flags, "--ckpt_path", ckpt, *root_args(in_tmp)], capsys)
    assert code == 2 and "Traceback" not in err
    differ = "--data.train_size 1000 (checkpoint: 2000), --model.net.hidden_size 16 (checkpoint: 32), "
    differ += "--model.teacher_forcing_ratio 0.5 (checkpoint: 1.0)"  # test_size and max_epochs may change
    assert f"--ckpt_path {ckpt}: a resumed fit must keep the settings it was trained with, but {differ};" in err
    assert "or --fine_tune true to start a new fit from its weights" in err
    assert not version_dirs(in_tmp)


def test_fine_tune_starts_a_new_fit_from_the_weights_only(trained, in_tmp):
    best = trained / "version_0" / "checkpoints" / "best.ckpt"
    other_data = ["--data.train_size", "128", "--data.seed", "5", "--trainer.max_epochs", "1"]
    frozen = ["--model.optimizer", "SGD", "--model.optimizer.lr", "0.0"]  # the weights stay the loaded ones
    run_cli(["fit", *TINY_FIT, *other_data, *frozen, "--fine_tune", "true", "--ckpt_path", best, *root_args(in_tmp)])
    last = torch.load(in_tmp / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)
    assert (last["global_step"], last["epoch"]) == (4, 0)  # a new fit: 128 rows / 32, from step 0
    assert last["datamodule_hyper_parameters"]["train_size"] == 128
    loaded = torch.load(best, weights_only=True)["state_dict"]
    assert all(torch.equal(last["state_dict"][k], v) for k, v in loaded.items())
    assert not (in_tmp / "version_0" / "checkpoints" / "resumed_from").exists()  # continues no run


@pytest.mark.parametrize(
    "args,message",
    [
        (["fit", *QUICK_FIT, "--fine_tune", "true"], "--fine_tune true needs fit and a --ckpt_path"),
        (["test", *TASK, "--fine_tune", "true", "--ckpt_path", "best"], "--fine_tune true needs fit and a --ckpt_path"),
        (["fit", *TINY_FIT, "--model.net.hidden_size", "16", "--fine_tune", "true", "--ckpt_path", "best"],
         "the checkpoint holds a model of other sizes than the flags describe: net.hidden_size=32 (flags: 16)"),
    ],
)  # fmt: skip
def test_fine_tune_refusals_exit_2(args, message, trained, capsys):
    code, err = cli_exit([*args, *root_args(trained)], capsys)
    assert code == 2 and message in err and "Traceback" not in err


# Records OMP_WAIT_POLICY at the moment torch is imported (when OpenMP reads it), then runs the CLI. The finder sees
# every lookup of "torch" before the import too (find_spec checks): the last one it sees is the import itself.
_OMP_PROBE = """
import os, sys
if sys.argv[1] == "unset":
    os.environ.pop("OMP_WAIT_POLICY", None)
else:
    os.environ["OMP_WAIT_POLICY"] = sys.argv[1]
class _Probe:
    seen = None
    def find_spec(self, name, path=None, target=None):
        if name == "torch" and "torch" not in sys.modules:
            _Probe.seen = os.environ.get("OMP_WAIT_POLICY", "unset")
        return None
sys.meta_path.insert(0, _Probe())
from lit_seq2seq.cli import main
try:
    main(["fit", "--print_config", "--config", "reverse_fast"])
except SystemExit:
    pass
print("at torch import:", _Probe.seen, file=sys.stderr)
"""


@pytest.mark.parametrize("given,expected", [("unset", "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_fit_sets_passive_openmp_waiting_before_torch_loads_unless_the_user_chose(given, expected):
    """Spin-waiting OpenMP threads made a fit under load 7x slower (benchmarks/omp_under_load.py); a user's value
    wins."""
    result = run_python(_OMP_PROBE, given)
    assert f"at torch import: {expected}" in result.stderr, result.stderr[-2000:]


@pytest.mark.parametrize(
    ("scheduler", "metric", "best"),
    [
        (
            [
                "lightning.pytorch.cli.ReduceLROnPlateau",
                "--model.lr_scheduler.monitor",
                "val/exact_match",
                "--model.lr_scheduler.mode",
                "max",
            ],
            "val/exact_match",
            max,
        ),  # fmt: skip
        (["torch.optim.lr_scheduler.ReduceLROnPlateau"], "val/loss", min),
    ],
    ids=["lightning-monitor", "torch-default-val-loss"],
)
def test_reduce_lr_on_plateau_steps_on_the_validation_metric(tmp_path, scheduler, metric, best):
    """A plateau schedule needs a metric: the one lightning.pytorch.cli's subclass names, else val/loss. What it saw
    is what validation logged (last.ckpt is written after the last validation, before the schedule's step)."""
    flags = [*QUICK_FIT, "--trainer.max_epochs", "3", "--model.lr_scheduler", *scheduler]
    fit_in(tmp_path, *flags, "--model.lr_scheduler.factor", "0.5", "--model.lr_scheduler.patience", "0")
    state = torch.load(tmp_path / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)["lr_schedulers"][0]
    logged = [float(r[metric]) for r in read_metrics(tmp_path / "version_0") if r.get(metric)]
    assert len(logged) == 3 and len(set(logged)) > 1 and state["best"] == pytest.approx(best(logged[:2]))
    assert state["factor"] == 0.5 and state["last_epoch"] == 2


@pytest.mark.parametrize("interval", ["epoch", "step"])
def test_lr_scheduler_interval_steps_the_schedule_per_epoch_or_per_optimizer_step(tmp_path, interval):
    """A schedule counted in steps (LinearLR over 6 steps) reaches its end within the first epoch with `step`; with
    `epoch` it has stepped once per epoch. The state is in last.ckpt, so a resume continues it."""
    flags = [*QUICK_FIT, "--trainer.max_epochs", "2", "--model.lr_scheduler", "torch.optim.lr_scheduler.LinearLR"]
    flags += ["--model.lr_scheduler.start_factor", "1", "--model.lr_scheduler.end_factor", "0.1"]
    flags += ["--model.lr_scheduler.total_iters", "6"]
    fit_in(tmp_path, *flags, "--model.lr_scheduler_interval", interval)
    last = torch.load(tmp_path / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)
    state, steps = last["lr_schedulers"][0], last["global_step"]
    assert steps > 6
    assert state["last_epoch"] == (steps if interval == "step" else 2)
    lr = last["optimizer_states"][0]["param_groups"][0]["lr"]
    base = state["base_lrs"][0]
    assert lr == pytest.approx(base * 0.1 if interval == "step" else base * (1 - 0.9 * 2 / 6))


@pytest.mark.parametrize(
    ("interval", "total", "message"),
    [
        ("step", "10", "has 10 steps (total_steps, or epochs x steps_per_epoch) and fails when stepped past them, but "
         "this fit plans 12 optimizer steps (--model.lr_scheduler_interval step): raise them, or stop the fit there "
         "with --trainer.max_steps 10"),
        ("epoch", "2", "but this fit plans 3 epochs (--model.lr_scheduler_interval epoch): raise them, or stop the fit "
         "there with --trainer.max_epochs 2"),
    ],
)  # fmt: skip
def test_a_one_cycle_schedule_shorter_than_the_fit_is_refused_before_training(interval, total, message, in_tmp, capsys):
    """OneCycleLR raised "Tried to step 11 times" with a traceback after the steps it had, mid-fit."""
    flags = [*QUICK_FIT, "--trainer.max_epochs", "3", "--model.lr_scheduler", "torch.optim.lr_scheduler.OneCycleLR"]
    flags += ["--model.lr_scheduler.max_lr", "0.01", "--model.lr_scheduler_interval", interval]
    code, err = cli_exit(["fit", *flags, "--model.lr_scheduler.total_steps", total, *root_args(in_tmp)], capsys)
    assert code == 2 and "Traceback" not in err
    assert err.startswith("lit-seq2seq fit: error: --model.lr_scheduler OneCycleLR has ") and message in err
    assert not list(in_tmp.rglob("*.ckpt"))
    enough = {"step": "12", "epoch": "3"}[interval]
    fit_in(in_tmp / "ok", *flags, "--model.lr_scheduler.total_steps", enough)
    last = torch.load(in_tmp / "ok" / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["lr_schedulers"][0]["last_epoch"] == int(enough)


SCHEDULED = [*TINY_FIT, "--model.lr_scheduler", "torch.optim.lr_scheduler.ExponentialLR"]
SCHEDULED += ["--model.lr_scheduler.gamma", "0.5", "--trainer.max_epochs", "1"]
CHANGED_RECIPES = [
    (["--model.optimizer.lr", "0.02"], "--model.optimizer.lr 0.02 (checkpoint: 0.01)"),
    (["--model.optimizer.weight_decay", "0.1"], "--model.optimizer.weight_decay 0.1 (checkpoint: 0.0)"),
    (["--model.optimizer", "SGD", "--model.optimizer.lr", "0.01"], "--model.optimizer SGD (checkpoint: another opt"),
    (["--model.lr_scheduler.gamma", "0.7"], "--model.lr_scheduler.gamma 0.7 (checkpoint: 0.5)"),
    (["--model.lr_scheduler_interval", "step"], "--model.lr_scheduler_interval step (checkpoint: epoch)"),
    (["--model.lr_scheduler", "null"], "--model.lr_scheduler null (checkpoint: a schedule)"),
    (["--model.lr_scheduler", "LinearLR"], "--model.lr_scheduler LinearLR (checkpoint: another schedule)"),
]


@pytest.mark.parametrize(("flags", "differ"), CHANGED_RECIPES, ids=[" ".join(f) for f, _ in CHANGED_RECIPES])
def test_a_resume_with_another_optimizer_or_schedule_exits_2_naming_it(tmp_path, flags, differ, capsys):
    """Lightning loads the checkpoint's optimizer and scheduler state over the new ones: a changed learning rate was
    dropped silently, a changed schedule went on from a state it never had. The same flags resume."""
    root = fit_in(tmp_path / "runs", *SCHEDULED)
    ckpt = root / "version_0" / "checkpoints" / "last.ckpt"
    resume = [*SCHEDULED, "--trainer.max_epochs", "2", "--ckpt_path", ckpt, *root_args(root)]
    code, err = cli_exit(["fit", *resume, *flags], capsys)
    assert code == 2 and "Traceback" not in err
    assert f"a resumed fit must keep the settings it was trained with, but {differ}" in err
    assert run_cli(["fit", *resume, "--model.optimizer.fused", "true"]) == 0  # how the step runs may change
    steps = [torch.load(v / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] for v in version_dirs(root)]
    assert steps[-1] == 2 * steps[0] > 0


def test_a_resume_with_another_one_cycle_peak_names_it_not_the_rates_torch_derives(tmp_path, capsys):
    flags = [*TINY_FIT, "--model.lr_scheduler", "OneCycleLR", "--model.lr_scheduler.total_steps", "200"]
    flags += ["--model.lr_scheduler_interval", "step"]
    root = fit_in(tmp_path, *flags, "--model.lr_scheduler.max_lr", "0.01", "--trainer.max_epochs", "1")
    resume = [*flags, "--trainer.max_epochs", "2", "--ckpt_path", root / "version_0" / "checkpoints" / "last.ckpt"]
    code, err = cli_exit(["fit", *resume, "--model.lr_scheduler.max_lr", "0.02", *root_args(root)], capsys)
    assert code == 2 and "but --model.lr_scheduler.max_lr 0.02 (checkpoint: 0.01); pass" in err


def test_a_runs_saved_config_given_again_follows_a_new_default_root_dir(tmp_path):
    """config.yaml of a run holds the logger the CLI set, with that run's root: reused with another
    --trainer.default_root_dir, the new run goes there (it went beside the old one: --ckpt_path best missed it)."""
    assert run_cli(["fit", "--config", REVERSE_YAML, *TINY_TASK, *tiny_run(), *root_args(tmp_path / "a")]) == 0
    saved = version_dirs(tmp_path / "a")[-1] / "config.yaml"
    assert run_cli(["fit", "--config", saved, *root_args(tmp_path / "b")]) == 0
    assert [d.name for d in version_dirs(tmp_path / "b")] == ["version_0"] and len(version_dirs(tmp_path / "a")) == 1
    assert (version_dirs(tmp_path / "b")[0] / "checkpoints" / "last.ckpt").exists()


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--checkpoint.monitor", "val/acc"], "--checkpoint.monitor val/acc: the fit logs no such metric; it logs "),
        (["--model.lr_scheduler", "lightning.pytorch.cli.ReduceLROnPlateau", "--model.lr_scheduler.monitor", "val/acc"],
         "--model.lr_scheduler ReduceLROnPlateau monitor val/acc: the fit logs no such metric"),
        ("early stopping on val_loss", "--trainer.callbacks EarlyStopping monitor val_loss: the fit logs no such"),
    ],
    ids=["checkpoint", "plateau", "early stopping"],
)  # fmt: skip
def test_a_monitor_of_a_metric_the_fit_never_logs_exits_2_before_training(flags, message, tmp_path, capsys):
    """Lightning raised it after the first epoch's validation, with a traceback and exit 1, the epoch lost."""
    if isinstance(flags, str):
        overlay = tmp_path / "early.yaml"
        callback = {"class_path": "lightning.pytorch.callbacks.EarlyStopping", "init_args": {"monitor": "val_loss"}}
        overlay.write_text(yaml.safe_dump({"trainer": {"callbacks": [callback]}}))
        flags = ["--config", overlay]
    code, err = cli_exit(
        ["fit", "--config", REVERSE_YAML, *TINY_TASK, *tiny_run(), *flags, *root_args(tmp_path)], capsys
    )
    assert code == 2 and message in err and "Traceback" not in err
    assert not version_dirs(tmp_path)  # no run folder: nothing started
    watched = [
        "--checkpoint.monitor",
        "val/position_0_acc",
        "--model.lr_scheduler",
        "torch.optim.lr_scheduler.ReduceLROnPlateau",
    ]
    assert run_cli(["fit", "--config", REVERSE_YAML, *TINY_TASK, *tiny_run(), *watched, *root_args(tmp_path)]) == 0
    # the names the check accepts are the ones the module writes (Seq2SeqModule.logs mirrors Seq2SeqMetrics.compute)
    logged = set(read_metrics(version_dirs(tmp_path)[-1])[0]) - {"epoch", "step"}
    assert {"val/exact_match", "val/position_0_acc"} <= logged  # (train/loss: every 50 steps, none in this fit)
    assert all(Seq2SeqModule.logs(name) for name in logged), sorted(logged)


def test_limit_batches_of_1_is_one_batch_and_of_a_float_a_share(tmp_path):
    """The Trainer types them float | int: jsonargparse read "1" as 1.0, the whole epoch (the usual smoke test)."""
    flags = ["--config", REVERSE_YAML, *TINY_TASK, *tiny_run(train=512, epochs=1), "--data.batch_size", "32"]
    for limit, steps in (("1", 1), ("0.25", 4), ("1.0", 16)):
        root = tmp_path / limit
        assert run_cli(["fit", *flags, "--trainer.limit_train_batches", limit, *root_args(root)]) == 0
        last = torch.load(version_dirs(root)[-1] / "checkpoints" / "last.ckpt", weights_only=True)
        assert last["global_step"] == steps


@pytest.mark.parametrize(
    "flags,paths",
    [
        (
            ["--model.lr_scheduler", "ReduceLROnPlateau"],
            "lightning.pytorch.cli.ReduceLROnPlateau or torch.optim.lr_scheduler.ReduceLROnPlateau",
        ),
        (
            ["--trainer.callbacks+", "EMAWeightAveraging"],
            "lightning.pytorch.callbacks.weight_averaging.EMAWeightAveraging or "
            "lit_seq2seq.callbacks.EMAWeightAveraging",
        ),
    ],
)
def test_a_short_class_name_two_classes_share_is_named_with_both_paths(flags, paths, tmp_path, capsys):
    """jsonargparse refuses such a name as a wrong type ("must be Callable[...], got ReduceLROnPlateau"), while
    StepLR or ExponentialLR work: the error now says why and what to give."""
    code, err = cli_exit(["fit", "--config", REVERSE_YAML, *flags, *root_args(tmp_path)], capsys)
    name = flags[1]
    assert code == 2 and f"got {name} ({name} names 2 classes: give the full path, {paths})" in err


def test_test_without_a_checkpoint_says_it_uses_the_initial_weights(in_tmp, capsys):
    from conftest import cli_output

    notice = "lit-seq2seq test: no --ckpt_path: the model's initial weights (untrained) are used; pass --ckpt_path"
    code, _, err = cli_output(["test", *TASK, *root_args(in_tmp)], capsys)
    assert code == 0 and err.count(notice) == 1
    assert run_cli(["fit", *TINY_TASK, *tiny_run(), *root_args(in_tmp / "runs")]) == 0
    code, _, err = cli_output(
        ["test", *TINY_TASK, *tiny_run(), "--ckpt_path", "last", *root_args(in_tmp / "runs")], capsys
    )
    assert code == 0 and "no --ckpt_path" not in err


def test_a_misspelt_data_key_of_a_config_file_is_named_as_a_key_of_that_file(tmp_path, capsys):
    """It was named as the flag --data.target_tokenizr, which the user never typed."""
    config = tmp_path / "cfg.yaml"
    config.write_text(
        "data:\n  class_path: lit_seq2seq.pairs.PairDataModule\n  init_args:\n    train_file: train.tsv\n"
        "    target_tokenizr: space\n"
    )
    code, err = cli_exit(["fit", "--config", config], capsys)
    assert code == 2 and err.endswith(
        f"fit: error: {config}: the key target_tokenizr under data: lit_seq2seq.pairs.PairDataModule has no such "
        "option (its options: lit-seq2seq fit --data.help lit_seq2seq.pairs.PairDataModule)\n"
    )
    code, err = cli_exit(["fit", f"--config={config}", "--data.target_tokenizr", "x"], capsys)  # typed: the flag
    assert code == 2 and "error: --data.target_tokenizr: lit_seq2seq.pairs.PairDataModule has no such option" in err


@pytest.mark.parametrize(
    "flags, reason",
    [
        (["--data.val_size", "0"], "--data.val_size 0"),
        (["--trainer.limit_val_batches", "0"], "--trainer.limit_val_batches 0 validates on none"),
        (["--trainer.check_val_every_n_epoch", "3"], "--trainer.check_val_every_n_epoch 3 > --trainer.max_epochs 1"),
    ],
)
def test_a_fit_that_never_validates_says_so_in_our_words_alone(tmp_path, recwarn, flags, reason):
    """Lightning's own words were noise ("Total length of `list` across ranks is zero", "HINT: Did you call
    log('val/exact_match', value) in the LightningModule?") or nothing at all (check_val_every_n_epoch)."""
    assert run_cli(["fit", *TINY_TASK, *tiny_run(train=64, val=16, test=16), *flags, *root_args(tmp_path)]) == 0
    said = [str(w.message) for w in recwarn]
    assert f"fit without validation pairs ({reason}): no validation metrics and no best.ckpt" in said, said
    assert not [m for m in said if "HINT" in m or "Total length" in m], said
    assert not (tmp_path / "version_0" / "checkpoints" / "best.ckpt").exists()


@pytest.mark.parametrize(
    "flags, warned",
    [
        (["--trainer.max_steps", "3"], "after 4 steps"),
        (["--trainer.max_steps", "3", "--trainer.accumulate_grad_batches", "2"], None),  # steps of 2 batches
        (
            ["--trainer.max_steps", "5", "--trainer.max_epochs", "3", "--trainer.check_val_every_n_epoch", "2"],
            "after 8 steps",
        ),
        (["--trainer.max_steps", "3", "--trainer.val_check_interval", "2"], None),
        (["--trainer.max_steps", "4"], None),
    ],
)
def test_a_fit_that_max_steps_ends_before_its_first_validation_says_so(tmp_path, recwarn, capsys, flags, warned):
    """The trial's fit with --trainer.max_steps inside the first epoch validated nothing, wrote no best.ckpt and said
    nothing; then `export --ckpt_path best` said "run fit first". Now both say what happened."""
    fit = ["fit", *TINY_TASK, *tiny_run(train=256, val=16, test=16), "--data.batch_size", "64", *flags]
    assert run_cli([*fit, *root_args(tmp_path)]) == 0
    said = [str(w.message) for w in recwarn if "ends the fit before its first validation" in str(w.message)]
    best = tmp_path / "version_0" / "checkpoints" / "best.ckpt"
    if warned is None:
        assert not said and best.is_file(), said
        return
    message = f"--trainer.max_steps {flags[1]} ends the fit before its first validation ({warned}): no validation "
    message += "metrics and no best.ckpt; validate sooner with --trainer.val_check_interval (a count of batches, or a "
    assert said == [message + "share of an epoch)"] and not best.exists()
    code, err = cli_exit(
        ["export", "--ckpt_path", "best", "--root_dir", tmp_path, "--output_dir", tmp_path / "o"], capsys
    )
    assert (
        code == 2 and f"--ckpt_path best: the newest run, {tmp_path}/version_0, has no best.ckpt (it validated " in err
    )
    assert "its last state is --ckpt_path last" in err
