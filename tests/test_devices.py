"""Device-agnostic training: mixed precision and device moves on CPU; the CUDA path itself under the gpu marker."""

from __future__ import annotations

import logging

import pytest
import torch
import yaml
from conftest import (
    REPO,
    REVERSE_YAML,
    TINY_TASK,
    cli_exit,
    last_metric,
    net_config,
    root_args,
    run_cli,
    tiny_run,
    version_dirs,
)

from lit_seq2seq import module as module_lib
from lit_seq2seq.model import Seq2Seq

# Learns well past chance (0.01) in seconds.
LEARNS = [*TINY_TASK, *tiny_run(train=2000, val=200, test=200, hidden=32, epochs=3), "--model.optimizer.lr", "0.01"]
OVERLAYS = sorted((REPO / "configs" / "trainer").glob("*.yaml"))


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_trainer_overlays_compose_with_a_task_config(overlay, capsys):
    capsys.readouterr()
    with pytest.raises(SystemExit):
        run_cli(["fit", "--config", REVERSE_YAML, "--config", overlay, "--print_config"])
    trainer = yaml.safe_load(capsys.readouterr().out)["trainer"]
    assert {k: trainer[k] for k in yaml.safe_load(overlay.read_text())["trainer"]} == yaml.safe_load(
        overlay.read_text()
    )["trainer"]


def test_bf16_mixed_precision_trains_on_cpu(tmp_path, caplog, recwarn):
    """The precision plugin path used on GPUs (bf16-mixed autocast) runs and learns on CPU too; without Lightning's
    cloud advertisements and its warning that the summary counts 32-bit weights (mixed precision keeps them so)."""
    caplog.set_level(logging.INFO, logger="lightning.pytorch")  # another test may have raised that logger's level
    run_cli(["fit", "--config", REVERSE_YAML, *LEARNS, "--trainer.precision", "bf16-mixed", *root_args(tmp_path)])
    assert last_metric(version_dirs(tmp_path)[-1], "val/exact_match") > 0.3  # chance: 0.01
    assert "Trainable params" in caplog.text and "Tip:" not in caplog.text
    assert not [w for w in recwarn if "not supported by the model summary" in str(w.message)]


@pytest.mark.parametrize("attention", [False, True])
def test_decoding_follows_the_module_device_and_dtype(attention):
    net = Seq2Seq(net_config(12, max_target_length=5, eos_token=1, hidden_size=8, attention=attention)).double()
    source = torch.tensor([[2, 3, 4], [5, 6, 0]])
    tokens = net.greedy(source)
    assert tokens.device == source.device and tokens.dtype == torch.int64
    assert torch.equal(tokens, net.beam_search(source, beam_size=1)[0])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fit_on_gpu_bf16_then_test(tmp_path):
    args = [*LEARNS, *root_args(tmp_path)]
    run_cli(["fit", "--config", REVERSE_YAML, "--config", REPO / "configs/trainer/gpu.yaml", *args])
    assert last_metric(version_dirs(tmp_path)[-1], "val/exact_match") > 0.3
    run_cli(["test", "--config", REVERSE_YAML, *args, "--trainer.accelerator", "gpu", "--trainer.devices", "1",
             "--ckpt_path", "best"])  # fmt: skip
    assert last_metric(version_dirs(tmp_path)[-1], "test/exact_match") > 0.3


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_greedy_on_gpu_matches_cpu():
    torch.manual_seed(0)
    net = Seq2Seq(net_config(20, max_target_length=6, eos_token=1, hidden_size=32, attention=True)).eval()
    source = torch.randint(2, 20, (64, 7))
    source[::3, 4:] = 0
    expected = net.greedy(source)
    got = net.cuda().greedy(source.cuda())
    assert got.is_cuda and torch.equal(got.cpu(), expected)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the machine has a GPU")
def test_a_gpu_asked_for_on_a_machine_without_one_names_the_flags(tmp_path, capsys):
    code, err = cli_exit(
        ["fit", "--config", REVERSE_YAML, "--trainer.accelerator", "gpu", *root_args(tmp_path)], capsys
    )
    assert code == 2 and err.endswith(
        "error: --trainer.accelerator gpu, --trainer.devices auto, --trainer.strategy auto: No supported gpu backend "
        "found!\n"
    )


@pytest.mark.parametrize(
    "flag,value,message",
    [
        ("trainer.max_epochs", "-5", "`max_epochs` must be a non-negative integer or -1. You passed in -5."),
        ("trainer.limit_train_batches", "-1", "You have passed invalid value -1 for limit_train_batches"),
        ("trainer.max_time", "bogus", "`Timer(duration='bogus')` is not a valid duration."),
        ("checkpoint.mode", "maximum", "`mode` can be min, max but got maximum"),
    ],
)
def test_a_value_lightning_refuses_is_named_by_its_own_flag(flag, value, message, tmp_path, capsys):
    """These named --trainer.accelerator/devices/strategy (the Trainer's refusals), or no flag at all (the checkpoint
    callback's)."""
    code, err = cli_exit(["fit", "--config", REVERSE_YAML, f"--{flag}", value, *root_args(tmp_path)], capsys)
    assert code == 2 and f"lit-seq2seq fit: error: --{flag} {value}: {message}" in err


@pytest.mark.parametrize("native", [False, True])
def test_bf16_mixed_on_a_cpu_without_bf16_hardware_says_to_use_32_true(native, tmp_path, monkeypatch, recwarn):
    """Without AVX512-BF16 or AMX torch emulates bfloat16 math: slower than float32 (4.3x a G2P step on AVX2)."""
    monkeypatch.setattr(module_lib, "cpu_native_bf16", lambda: native)
    flags = ["--trainer.max_steps", "2", "--trainer.limit_val_batches", "1", "--trainer.precision", "bf16-mixed"]
    run_cli(["fit", "--config", REVERSE_YAML, *TINY_TASK, *flags, *root_args(tmp_path)])
    said = [str(w.message) for w in recwarn if "without bfloat16 hardware" in str(w.message)]
    assert len(said) == (0 if native else 1)
    assert all("bf16-mixed (--trainer.precision)" in m and "pass --trainer.precision 32-true" in m for m in said)
