"""Every configs/*.yaml runs fit, test and export, with its own net and a few hundred samples: an edited config, or
a code change one of them trips over, fails here within seconds instead of minutes into a real fit."""

from __future__ import annotations

import pytest
import yaml
from conftest import (
    CONFIGS,
    REVERSE_YAML,
    cli_output,
    last_metric,
    root_args,
    run_cli,
    use_config_data,
    version_dirs,
)

from lit_seq2seq import contract
from lit_seq2seq.checkpoint import read_checkpoint
from lit_seq2seq.runtime import OnnxSeq2Seq

pytestmark = [
    pytest.mark.filterwarnings("ignore:The dirpath has changed"),  # test logs to a new version dir
    pytest.mark.filterwarnings("ignore::UserWarning"),
]
SIZES = ["--data.train_size", "256", "--data.val_size", "32", "--data.test_size", "32", "--trainer.max_epochs", "1"]


def test_configs_exist():
    assert REVERSE_YAML in CONFIGS


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_every_config_fits_tests_and_exports(config, in_tmp, capsys, monkeypatch):
    settings = yaml.safe_load(config.read_text())
    pairs = "class_path" in settings["data"]  # pair files, named relative to the repository root
    flags = ["--config", config, *(SIZES[-2:] if pairs else SIZES)]
    if pairs:
        flags += [f"--trainer.limit_{split}_batches={n}" for split, n in (("train", 2), ("val", 2), ("test", 2))]
        use_config_data(settings, in_tmp, monkeypatch)
        flags += ["--trainer.max_time", "null"]
    if settings["trainer"].get("strategy") == "ddp":  # in this process (test_ddp.py covers DDP)
        flags += ["--trainer.strategy", "auto", "--trainer.devices", "1"]
    if isinstance(settings["trainer"].get("val_check_interval"), float):  # a fraction of 2 batches: validate once
        flags += ["--trainer.val_check_interval", "1.0"]
    root = in_tmp / "runs"

    run_cli(["fit", *flags, *root_args(root)])
    assert not (in_tmp / settings["trainer"]["default_root_dir"]).exists()  # the root flag wins over the YAML's
    checkpoints = root / "version_0" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["best.ckpt", "last.ckpt"]
    net = read_checkpoint(checkpoints / "last.ckpt")["hyper_parameters"]["net"]
    assert {k: net[k] for k in settings["model"]["net"]} == settings["model"]["net"]  # the YAML's net, not a tiny one

    run_cli(["test", *flags, "--ckpt_path", "best", *root_args(root)])
    tested = version_dirs(root)[-1]
    assert yaml.safe_load((tested / "config.yaml").read_text())["ckpt_path"] == str(checkpoints / "best.ckpt")
    assert 0 <= last_metric(tested, "test/exact_match") <= 1

    out = in_tmp / "onnx"
    args = ["export", "--ckpt_path", checkpoints / "last.ckpt", "--output_dir", out, "--verify_samples", "16"]
    code, report, err = cli_output(args, capsys)
    assert code == 0, err
    sources = "random sources of the trained lengths" if pairs else "fresh task sources"
    assert f"greedy tokens identical to PyTorch on 16 {sources} (the two-graph loop" in report
    assert "beam search (beam 3) tokens identical on 16 sources\n" in report
    files = [contract.ENCODER_FILE, contract.DECODER_FILE, contract.GREEDY_FILE, contract.CONTRACT_FILE]
    assert sorted(p.name for p in out.iterdir()) == sorted(files)
    meta = OnnxSeq2Seq.load(out).meta
    task = "pairs" if pairs else settings["data"]["task"]
    assert (meta["task"], meta["cell"]) == (task, settings["model"]["net"]["cell"])
