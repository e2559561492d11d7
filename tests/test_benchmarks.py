"""The training benchmark compares like with like: Trainer.fit and the plain loop end with bit-identical weights, on
the seed task and on pair files (the G2P mode), training on the very batches the data module hands ours. The DDP
benchmark runs both of its sides."""

from __future__ import annotations

import logging
import platform
import re
import shutil
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import yaml
from conftest import REPO, REVERSE_YAML, text_pairs

from lit_seq2seq import model as model_lib

if str(REPO) not in sys.path:  # `python -m pytest` from the repo root has it; a bare `pytest` puts only tests/ there
    sys.path.insert(0, str(REPO))

from benchmarks import (  # noqa: E402
    ddp_speed,
    dropout_speed,
    fit_memory,
    g2p_baselines,
    g2p_eval,
    precision_speed,
    train_speed,
    translate_batch,
    unknown_letter,
)


def test_trainer_fit_does_exactly_the_plain_loops_work():
    seconds, nets = train_speed.run_interleaved(train_speed.SeedTask(640))  # 20 steps of batch 32
    # Same weights, batches and optimizer code: any extra or missing work in Seq2SeqModule would show here.
    assert train_speed.max_weight_diff(nets["ours"], nets["plain+same"]) == 0.0
    # The seed config's fused Adam is the same algorithm as torch's default one, up to rounding.
    assert train_speed.max_weight_diff(nets["ours"], nets["plain"]) < 1e-5
    assert train_speed.shipped_adam() == {"lr": 1e-3, "fused": True}
    assert set(seconds) == {"ours", "plain", "plain+same"} and all(s > 0 for s in seconds.values())


def pair_config(tmp_path: Path, trainer: dict | None = None, model: dict | None = None) -> Path:
    """A G2P-shaped config over the tiny pair files: bucketed batches of 32, bi-GRU + attention with dropout (drawn
    from torch's global RNG), Adam with a schedule and a clipping norm small enough to clip every step. Its val file
    does not exist: only training is read."""
    shutil.copy(REPO / "tests" / "data" / "pairs_tiny" / "train.tsv", tmp_path / "train.tsv")
    config = {
        "seed_everything": 42,
        "trainer": {"gradient_clip_val": 0.05, "max_epochs": 100},
        "data": {
            "class_path": "lit_seq2seq.pairs.PairDataModule",
            "init_args": {
                "train_file": str(tmp_path / "train.tsv"),
                "val_file": str(tmp_path / "absent.tsv"),
                "source_tokenizer": "char",
                "target_tokenizer": "space",
                "batch_size": 32,
            },
        },
        "model": {
            "net": {
                "hidden_size": 16,
                "cell": "gru",
                "bidirectional": True,
                "attention": True,
                "embedding_dim": 8,
                "dropout": 0.3,
            },
            "optimizer": {"class_path": "torch.optim.Adam", "init_args": {"lr": 0.01}},
            "lr_scheduler": {"class_path": "torch.optim.lr_scheduler.ExponentialLR", "init_args": {"gamma": 0.5}},
        },
    }
    config["trainer"] |= trainer or {}
    config["model"] |= model or {}
    path = tmp_path / "pairs.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


class Seen(L.Callback):
    def __init__(self) -> None:
        self.batches: list[tuple[torch.Tensor, torch.Tensor]] = []

    def on_train_batch_start(self, trainer: L.Trainer, module: L.LightningModule, batch: tuple, index: int) -> None:
        self.batches.append(batch)


def test_pair_mode_trains_every_side_on_the_data_modules_batches(tmp_path):
    work = train_speed.PairTask(str(pair_config(tmp_path)), limit_batches=4)
    assert work.steps == 4 and work.data.bucketing
    # Ours is handed exactly the batches the plain loops were given before timing, in that order.
    seen = Seen()
    trainer, module, data = work.ours([seen])
    trainer.fit(module, data)
    assert len(seen.batches) == 4
    for (s, t), (ps, pt) in zip(seen.batches, work.epochs[0], strict=True):
        assert torch.equal(s, ps) and torch.equal(t, pt)
    assert len({s.shape[1] for s, _ in work.epochs[0]}) > 1  # cut per batch: bucketed widths differ

    seconds, nets = train_speed.run_interleaved(work)
    assert train_speed.max_weight_diff(nets["ours"], nets["plain+same"]) == 0.0  # same optimizer and clipping
    assert train_speed.max_weight_diff(nets["ours"], nets["plain"]) > 0.0  # plain does not clip: ours does
    assert train_speed.max_weight_diff(nets["ours"], module.net) == 0.0  # and the recorded fit did the same work
    assert all(s > 0 for s in seconds.values())


def test_pair_mode_steps_a_per_step_schedule_on_every_side(tmp_path):
    """model.lr_scheduler_interval step: ours and plain+same halve the rate after every optimizer step (gamma 0.5),
    so they end with the same weights, and not those of the per-epoch schedule."""
    nets = {}
    for interval in ("epoch", "step"):
        work = train_speed.PairTask(
            str(pair_config(tmp_path, model={"lr_scheduler_interval": interval})), limit_batches=4
        )
        assert f"ExponentialLR({{'gamma': 0.5}}) per {interval}" in "\n".join(work.describe())
        _, nets[interval] = train_speed.run_interleaved(work)
        assert train_speed.max_weight_diff(nets[interval]["ours"], nets[interval]["plain+same"]) == 0.0
    assert train_speed.max_weight_diff(nets["step"]["ours"], nets["epoch"]["ours"]) > 0.0


def test_pair_mode_reproduces_bf16_mixed_precision_and_label_smoothing(tmp_path):
    """A config's trainer.precision bf16-mixed and model.label_smoothing are part of the work every side does: ours
    (Lightning's autocast) and plain+same (torch.autocast around forward and loss) still end bit-identical."""
    config = pair_config(tmp_path, {"precision": "bf16-mixed"}, {"label_smoothing": 0.1})
    work = train_speed.PairTask(str(config), limit_batches=4)
    assert work.precision == "bf16-mixed" and work.label_smoothing == 0.1
    assert "precision bf16-mixed, label smoothing 0.1" in "\n".join(work.describe())
    seconds, nets = train_speed.run_interleaved(work)
    assert train_speed.max_weight_diff(nets["ours"], nets["plain+same"]) == 0.0
    fp32 = train_speed.run_interleaved(train_speed.PairTask(str(pair_config(tmp_path)), limit_batches=4))[1]
    assert train_speed.max_weight_diff(nets["ours"], fp32["ours"]) > 0.0  # it did run in bf16, smoothed


def test_pair_mode_refuses_a_precision_it_does_not_reproduce(tmp_path):
    with pytest.raises(ValueError, match="trainer.precision 16-mixed: this benchmark runs 32, 32-true, bf16-mixed"):
        train_speed.PairTask(str(pair_config(tmp_path, {"precision": "16-mixed"})), limit_batches=2)


def test_pair_mode_from_the_command_line(tmp_path, capsys):
    config = pair_config(tmp_path)
    logger, threads = logging.getLogger("lightning.pytorch"), torch.get_num_threads()
    level = logger.level
    args = ["--config", str(config), "--limit_batches", "3", "--repeats", "1", "--threads", str(threads + 1)]
    assert train_speed.main(args) == 0
    assert (logger.level, torch.get_num_threads()) == (level, threads)  # the caller's settings are given back
    out = capsys.readouterr().out
    assert "3 steps per run" in out and "gradient clipping at norm 0.05" in out
    assert out.count("ours vs plain+same weights bit-identical") == 2  # whole run and interleaved fit
    assert "ratio ours/plain: " in out and "ratio ours/plain+same: " in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--config", str(REVERSE_YAML)], "data.class_path must be lit_seq2seq.pairs.PairDataModule"),
        (["--config", "absent.yaml"], "--config absent.yaml: cannot read it"),
        (["--limit_batches", "0"], "--limit_batches must be >= 1, got 0"),
        (["--train_file", "x.tsv"], "--train_file needs --config"),
    ],
)
def test_bad_benchmark_flags_are_named(args, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        train_speed.main(args)
    assert exit_.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.slow  # a 2-process DDP launch, ~15 s; its flag checks stay in the default suite
def test_ddp_speed_times_one_process_against_ddp_on_a_config(tmp_path, capsys):
    ema = {"class_path": "lit_seq2seq.callbacks.EMAWeightAveraging", "init_args": {"decay": 0.9}}
    config = yaml.safe_load(pair_config(tmp_path, {"callbacks": [ema]}).read_text())
    config["data"]["init_args"] |= {"val_file": config["data"]["init_args"]["train_file"], "batch_size": 8}
    (tmp_path / "ddp.yaml").write_text(yaml.safe_dump(config))
    args = ["--config", str(tmp_path / "ddp.yaml"), "--batches", "16", "--warmup", "2", "--rounds", "1"]
    assert ddp_speed.main([*args, "--processes", "2"]) == 0
    out = capsys.readouterr().out
    assert "  one process, " in out and "  DDP, 2 processes x 1 thread  " in out
    ratio = float(out.split("DDP trains ")[1].split("x")[0])
    assert ratio > 0


def test_dropout_speed_times_per_element_variational_and_no_dropout_on_the_same_batches(tmp_path, capsys):
    threads = torch.get_num_threads()
    assert dropout_speed.main(["--config", str(pair_config(tmp_path)), "--batches", "6", "--warmup", "1"]) == 0
    assert torch.get_num_threads() == threads
    out = capsys.readouterr().out
    assert "dropout 0.3, embedding_dropout 0.0 (the config's variational_dropout: false); 1 thread(s)" in out
    assert "training step, median over 6 steps" in out
    rows = {line.strip().split("  ")[0]: line.split() for line in out.splitlines() if line.endswith("x")}
    assert set(rows) == {"per element", "variational", "none"} and rows["variational"][-1] == "1.00x"
    assert all(float(row[-3]) > 0 for row in rows.values())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--batches", "0"], "--batches must be >= 1, got 0"),
        (["--warmup", "40"], "--warmup 40 must be below the"),
        (["--config", "absent.yaml"], "--config absent.yaml: cannot read it"),
    ],
)
def test_bad_dropout_speed_flags_are_named(tmp_path, args, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        dropout_speed.main(["--config", str(pair_config(tmp_path)), *args])
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_dropout_speed_needs_a_net_with_dropout(tmp_path, capsys):
    config = yaml.safe_load(pair_config(tmp_path).read_text())
    config["model"]["net"]["dropout"] = 0.0
    (tmp_path / "none.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(SystemExit) as exit_:
        dropout_speed.main(["--config", str(tmp_path / "none.yaml")])
    assert exit_.value.code == 2 and "its net has no dropout to compare" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--processes", "1"], "--processes must be >= 2, got 1"),
        (["--batches", "40", "--processes", "2", "--warmup", "20"], "--batches / --processes must exceed --warmup"),
        (["--config", "absent.yaml", "--processes", "2"], "--config absent.yaml: no such file"),
    ],
)
def test_bad_ddp_speed_flags_are_named(args, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        ddp_speed.main(args)
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_stress_merged_maps_each_stressed_phoneme_to_its_first_spelling():
    tokens = ("<pad>", "</s>", "AA0", "AA1", "AH0", "B", "AH1", "AA2")
    assert g2p_eval.stress_merged(tokens).tolist() == [0, 1, 2, 2, 4, 5, 4, 2, 8]  # the last: ids the vocab lacks


def test_g2p_eval_scores_pytorch_and_onnx_alike_with_and_without_stress(tmp_path, text_exported, capsys):
    built = text_exported("trained")
    pairs = text_pairs(60, seed=3)
    pairs += [(pairs[0][0], "AH AH AH")]  # a second reference of one source, adjacent to its first
    pairs.sort(key=lambda p: p[0])
    pairs += [(pairs[5][0].upper(), "AH")]  # the model lowercases: one source with pairs[5], as test and decode count
    (tmp_path / "test.tsv").write_text("".join(f"{s}\t{t}\n" for s, t in pairs), encoding="utf-8")
    args = ["--ckpt_path", str(built.ckpt), "--model_dir", str(built.model_dir), "--file", str(tmp_path / "test.tsv")]
    assert g2p_eval.main([*args, "--ignore_stress", "--beam_size", "2"]) == 0
    out = capsys.readouterr().out
    sources = len({s.lower() for s, _ in pairs})
    assert f"{sources} sources, {len(pairs)} references" in out
    assert f"PyTorch and ONNX greedy tokens identical on {sources}/{sources} sources" in out
    plain, stressless = out.split("error rates, stress ignored")
    rows = [[line.split()[-3:-1] for line in part.splitlines() if "%" in line] for part in (plain, stressless)]
    assert rows[0] == rows[1] and len(rows[0]) == 3  # WER and PER: these made-up phonemes carry no stress digits
    assert all(float(wer.rstrip("%")) < 50 for wer, _ in rows[0])  # the trained model knows the rules


def test_g2p_eval_n_best_oracle_takes_any_right_beam_and_the_closest_beams_errors(tmp_path, text_exported, capsys):
    # Worked by hand (end token 1, padding 0): source 0's second beam is its reference, "5 7" (its first, "5 6", is
    # one substitution off); source 1's beams "5" and "7 7" are both 2 edits from "6 6": the first of them counts.
    predicted = np.array([[[5, 6, 1], [5, 7, 1]], [[5, 1, 0], [7, 7, 1]]])
    refs = np.array([[[5, 7, 1]], [[6, 6, 1]]])
    scores = g2p_eval.best_of(predicted, refs, None, eos_token=1, pad_token=0)
    assert (scores.exact.tolist(), scores.errors.tolist(), scores.length.tolist()) == ([True, False], [0, 2], [2, 2])
    assert g2p_eval.best_of(predicted[:, 0], refs, None, 1, 0).exact.tolist() == [False, False]  # the best beams
    built = text_exported("trained")
    (tmp_path / "test.tsv").write_text("".join(f"{s}\t{t}\n" for s, t in text_pairs(60, seed=4)), encoding="utf-8")
    args = ["--ckpt_path", str(built.ckpt), "--model_dir", str(built.model_dir), "--file", str(tmp_path / "test.tsv")]
    assert g2p_eval.main([*args, "--beam_size", "3", "--n_best", "3"]) == 0
    rows = {line.strip().split("  ")[0]: line.split() for line in capsys.readouterr().out.splitlines() if "%" in line}
    beam, oracle = rows["ONNX beam 3"], rows["ONNX beam 3, 3-best oracle"]
    assert float(oracle[-2].rstrip("%")) <= float(beam[-3].rstrip("%"))  # WER: any of 3 is right at least as often
    with pytest.raises(SystemExit) as exit_:
        g2p_eval.main([*args, "--beam_size", "2", "--n_best", "3"])
    assert exit_.value.code == 2 and "--n_best must be in [0, --beam_size (2)], got 3" in capsys.readouterr().err


@pytest.mark.skipif(sys.platform != "linux", reason="reads the RSS from /proc")
def test_the_fit_memory_estimate_is_near_a_measured_training_step(capsys):
    """NetConfig.activation_bytes, which `fit` refuses settings by, against the peak RSS of a real step (~0.45 GiB)."""
    (ratio,) = fit_memory.main(["--quick"])
    assert 0.7 < ratio < 1.4, capsys.readouterr().out  # 0.90 here


def test_g2p_eval_refuses_bad_input_in_one_line(tmp_path, text_exported, capsys):
    built, other = text_exported("trained"), text_exported("unk_char")
    good = tmp_path / "good.tsv"
    good.write_text("ab\tAH BE\n", encoding="utf-8")
    cases = {
        "no tab": ("ab AH BE\n", built, "good.tsv:1: not SOURCE<TAB>REFERENCE"),
        "empty": ("\n", built, "good.tsv: no SOURCE<TAB>REFERENCE lines"),
        "unknown letter": ("ab\tAH\naq\tAH\n", built, "good.tsv: source 2 ('aq'): unknown token 'q' at position 2"),
        "too long": ("aaaaaa\tAH\n", built, "source 1 ('aaaaaa'): 6 characters; this model was trained on"),
        "other model": ("ab\tAH BE\n", other, "hold different models (export it)"),
        "blank line inside": ("ab\tAH BE\n\nb\tBE\n\n", built, "good.tsv:2: not SOURCE<TAB>REFERENCE"),
        "not utf-8": (
            b"ab\tAH\n\xff\n",
            built,
            "good.tsv line 2: not UTF-8 text (invalid start byte); save it as UTF-8",
        ),
    }
    for name, (content, export, message) in cases.items():
        good.write_bytes(content if isinstance(content, bytes) else content.encode())
        args = ["--ckpt_path", str(built.ckpt), "--model_dir", str(export.model_dir), "--file", str(good)]
        assert g2p_eval.main(args) == 2, name
        err = capsys.readouterr().err
        assert err.startswith("g2p_eval: error: ") and message in err and err.count("\n") == 1, (name, err)
    args = ["--ckpt_path", str(built.ckpt), "--model_dir", str(built.model_dir), "--file", str(tmp_path / "none.tsv")]
    assert g2p_eval.main(args) == 2 and "No such file" in capsys.readouterr().err


def test_g2p_baselines_scores_texts_against_any_reference_with_and_without_stress():
    predictions = ["AH1 B", "K AE1 T", "X", ""]  # "": a word the baseline gave no pronunciation
    references = [["AH0 B", "AH1 B"], ["K AE0 T"], ["Y Z"], ["AH"]]
    plain = g2p_baselines.score_texts(predictions, references)
    assert plain.exact.tolist() == [True, False, False, False]
    assert plain.errors.tolist() == [0, 1, 2, 1] and plain.length.tolist() == [2, 3, 2, 1]
    stressless = g2p_baselines.score_texts(predictions, references, ignore_stress=True)
    assert stressless.exact.tolist() == [True, True, False, False] and stressless.token_error_rate == 3 / 8
    with pytest.raises(ValueError, match="3 predictions for 4 sources"):
        g2p_baselines.score_texts(predictions[:3], references)


@pytest.mark.skipif(
    sys.platform != "linux" or platform.machine() != "x86_64", reason="phonetisaurus ships linux x86_64 binaries only"
)
def test_g2p_baselines_trains_phonetisaurus_and_scores_it_beside_our_export(tmp_path, text_exported, capsys):
    built = text_exported("trained")

    def write(name: str, pairs: list[tuple[str, str]]) -> None:
        (tmp_path / name).write_text("".join(f"{s}\t{t}\n" for s, t in pairs), encoding="utf-8")

    write("train.tsv", text_pairs(300, seed=1))
    write("test.tsv", [*text_pairs(40, seed=2), ("ab", "AH BE")])
    args = ["--train_file", str(tmp_path / "train.tsv"), "--test_file", str(tmp_path / "test.tsv")]
    args += ["--workdir", str(tmp_path / "w"), "--phonetisaurus_order", "3", "--sequitur", str(tmp_path / "none")]
    assert g2p_baselines.main([*args, "--model_dir", str(built.model_dir), "--beam_size", "2"]) == 0
    out = capsys.readouterr().out
    assert f"sequitur: skipped, not installed (--sequitur {tmp_path / 'none'}: no such program)" in out
    cells = [re.split(r"\s{2,}", line.strip()) for line in out.splitlines() if "%" in line]
    rows = {name.removeprefix(f"{built.model_dir}, "): rest for name, *rest in cells}
    assert rows["phonetisaurus, order 3"][-4:] == ["0.00%"] * 4  # one phoneme group per letter: n-gram territory
    assert rows["phonetisaurus, order 3"][0] != "reused"
    assert set(rows) == {"greedy", "beam 2", "phonetisaurus, order 3"}  # rows of an export are named by its folder
    assert g2p_eval.main(["--ckpt_path", str(built.ckpt), "--model_dir", str(built.model_dir), "--file", args[3]]) == 0
    onnx_greedy = next(line.split() for line in capsys.readouterr().out.splitlines() if "ONNX greedy" in line)
    assert rows["greedy"][-4:-2] == onnx_greedy[2:4]  # one scorer of text, the other of ids: the same rates
    assert g2p_baselines.main(args) == 0 and "reused" in capsys.readouterr().out  # a second run: the trained model
    write("train.tsv", text_pairs(200, seed=5))  # a changed training file trains anew, beside the old model
    assert g2p_baselines.main(args) == 0 and "reused" not in capsys.readouterr().out
    assert len(list((tmp_path / "w").glob("phonetisaurus_o3_*"))) == 2


def test_unknown_letter_replaces_one_letter_of_each_word_alike_for_every_model(tmp_path, text_exported, capsys):
    picks = unknown_letter.replaced(["abcd", "ab", "a'bc", "bcda", "'"], "q", 10, 3, seed=1)
    assert sorted(i for i, _ in picks) == [0, 2, 3]  # long enough, and not only apostrophes
    assert picks == unknown_letter.replaced(["abcd", "ab", "a'bc", "bcda", "'"], "q", 10, 3, seed=1)
    for i, word in picks:
        original = ["abcd", "ab", "a'bc", "bcda", "'"][i]
        assert len(word) == len(original) and sum(a != b for a, b in zip(word, original)) == 1 and "q" in word
        assert "'" not in word or word.index("'") == original.index("'")
    (tmp_path / "test.tsv").write_text("".join(f"{s}\t{t}\n" for s, t in text_pairs(30, seed=4)), encoding="utf-8")
    unk = str(text_exported("unk_char").model_dir)
    args = ["--file", str(tmp_path / "test.tsv"), "--count", "20", "--min_length", "2"]
    assert unknown_letter.main(["--model_dir", unk, unk, *args]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if "%" in line]
    assert [r[:2] for r in rows] == [[unk, "replaced"], [unk, "unchanged"]] * 2 and rows[:2] == rows[2:]
    no_unk = str(text_exported("trained").model_dir)
    assert unknown_letter.main(["--model_dir", no_unk, *args]) == 2
    assert "not a text model with <unk> (--data.unknown_source unk)" in capsys.readouterr().err


def test_translate_batch_times_chunks_against_one_call_with_the_same_texts(tmp_path, text_exported, capsys):
    pairs = text_pairs(900, seed=4)
    (tmp_path / "words.tsv").write_text("".join(f"{s}\t{t}\n" for s, t in pairs), encoding="utf-8")
    args = ["--model_dir", str(text_exported("trained").model_dir), "--file", str(tmp_path / "words.tsv")]
    assert translate_batch.main([*args, "--rounds", "1"]) == 0
    out = capsys.readouterr().out
    texts = len({s for s, _ in pairs})
    assert texts > 256  # more than one chunk
    assert f"translate() of {texts} texts, greedy, 1 thread, median of 1 processes each; same texts" in out
    assert re.search(r"chunks vs one call: [\d.]+x faster, [\d.]+x less peak memory", out)


def test_precision_speed_times_bf16_mixed_against_32_true_on_the_same_batches(tmp_path, capsys):
    net = {"hidden_size": 16, "cell": "lstm", "bidirectional": True, "attention": True, "dropout": 0.3}
    lstm = pair_config(tmp_path, model={"net": net})
    assert precision_speed.main(["--config", str(lstm), "--batches", "4", "--warmup", "1"]) == 0
    out = capsys.readouterr().out
    hardware = "yes" if model_lib.cpu_native_bf16() else "no"
    assert f"bfloat16 hardware (AVX512-BF16 or AMX): {hardware}; oneDNN bf16 LSTM: " in out
    assert "training step, median over 4 steps" in out and "net: lstm 16 bidirectional" in out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.endswith("x")}
    assert set(rows) == {"32-true", "bf16-mixed"} and rows["32-true"][-1] == "1.00x"
    assert all(float(row[1]) > 0 for row in rows.values())


def test_bad_precision_speed_flags_are_named(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        precision_speed.main(["--config", str(pair_config(tmp_path)), "--batches", "40"])
    assert exit_.value.code == 2 and "--batches + --warmup must be <= the" in capsys.readouterr().err
