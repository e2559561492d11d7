"""PairDataModule: vocabularies from the training split only, lengths and caps, the hash split, multi-reference eval
batches, the length-bucketed sampler (homogeneous, complete, DDP-sharded, resumable), and fits over TSV files through
the CLI: a tiny model learns, a resume is exact mid-epoch and refuses a changed training file, 2 DDP ranks shard it."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pytest
import torch
import yaml
from conftest import REPO, cli_exit, cli_output, fit_in, last_metric, read_metrics, root_args, run_cli, version_dirs

from lit_seq2seq.pairfiles import read_pairs
from lit_seq2seq.pairs import BucketSampler, PairDataModule, group_references, split_by_source
from lit_seq2seq.text import UNK_ID, Tokenizer

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*could not find the monitored key"),
    pytest.mark.filterwarnings("ignore:Total length of .* across ranks is zero"),
]
TINY_TRAIN = REPO / "tests" / "data" / "pairs_tiny" / "train.tsv"
TINY_TEST = TINY_TRAIN.with_name("test.tsv")


def write(path: Path, lines: list[str]) -> str:
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    return str(path)


def module(tmp_path: Path, train: list[str], val: list[str] | None = None, **kwargs: Any) -> PairDataModule:
    files = {"train_file": write(tmp_path / "train.tsv", train)}
    if val is not None:
        files["val_file"] = write(tmp_path / "val.tsv", val)
    return PairDataModule(**files, **({"target_tokenizer": "space", "cache": False} | kwargs))


# ----------------------------------------------------------------------------------------- vocabularies and lengths


def test_vocabularies_and_lengths_come_from_the_training_split_only(tmp_path):
    data = module(tmp_path, ["abc\tA B C", "ba\tB A", "c\tC"], ["ca\tC X"], unknown_source="error")
    with pytest.raises(ValueError) as info:  # X is in no training target
        data.load()
    assert str(info.value).startswith(
        f"--data.val_file {tmp_path / 'val.tsv'}:1: unknown target token 'X' at position 2"
    )

    data = module(tmp_path, ["abc\tA B C", "ba\tB A", "c\tC"], ["cab\tC A B", "dab\tA"])
    with pytest.raises(ValueError) as info:
        data.load()
    message = str(info.value)
    assert message.startswith(f"--data.val_file {tmp_path / 'val.tsv'}:2: unknown source token 'd' at position 1")
    assert "--data.unknown_source unk" in message

    data = module(tmp_path, ["abc\tA B C", "ba\tB A", "c\tC"], ["cab\tC A B", "dab\tA"], unknown_source="unk")
    spec = data.text_spec
    assert spec.source_vocab.tokens == ("<pad>", "</s>", "<unk>", "a", "b", "c")
    assert spec.target_vocab.tokens == ("<pad>", "</s>", "A", "B", "C")
    assert (data.source_vocab_size, data.target_vocab_size, data.eos_token) == (6, 5, 1)
    assert (data.source_length, data.min_source_length, data.max_target_length) == (3, 1, 4)
    val = data.datasets["val"]
    assert val.source.tolist() == [[5, 3, 4], [2, 3, 4]]  # 'd' -> <unk>
    assert val.target.tolist() == [[4, 2, 3, 1], [2, 1, 0, 0]]


@pytest.mark.parametrize(
    ("train", "unknown_source", "message"),
    [
        (["a b\tA", "a </s>\tB"], "error", ":2: the source holds '</s>', the vocabulary's reserved end token"),
        (["a b\tA <pad>", "a\tB"], "error", ":1: the target holds '<pad>', the vocabulary's reserved padding token"),
        (["a\tA", "b <unk>\tB"], "unk", ":2: the source holds '<unk>', the vocabulary's reserved unknown-token"),
    ],
)
def test_a_reserved_token_in_the_training_pairs_is_refused_naming_its_line(tmp_path, train, unknown_source, message):
    data = module(tmp_path, train, source_tokenizer="space", unknown_source=unknown_source)
    with pytest.raises(ValueError) as info:
        data.load()
    assert str(info.value).startswith(f"--data.train_file {tmp_path / 'train.tsv'}{message}")


def test_a_literal_unk_is_an_ordinary_token_where_the_vocabulary_has_no_unk_id(tmp_path):
    """The reserved ids are 0 <pad>, 1 </s> and, with --data.unknown_source unk, 2 <unk> in the source vocabulary: a
    target (or a source without unk) may hold the text "<unk>" like any other token."""
    data = module(tmp_path, ["a <unk>\tA <unk>", "b\tB"], source_tokenizer="space")
    data.load()
    assert data.text_spec.source_vocab.tokens == ("<pad>", "</s>", "<unk>", "a", "b")
    assert not data.text_spec.source_vocab.has_unk
    assert data.text_spec.target_vocab.tokens == ("<pad>", "</s>", "<unk>", "A", "B")


def test_val_pairs_whose_target_the_model_cannot_produce_are_an_error_or_skipped_and_counted(tmp_path, caplog):
    train, val = ["abc\tA B C", "ba\tB A"], ["ca\tC X", "ab\tA B", "ab\tA X Y", "cb\tC B"]
    with pytest.raises(ValueError) as info:
        module(tmp_path, train, val).load()
    assert str(info.value) == (
        f"--data.val_file {tmp_path / 'val.tsv'}:1: unknown target token 'X' at position 2: the training targets lack "
        "it (--data.skip_unknown_targets true skips and counts such pairs: the model can never produce them)"
    )
    caplog.set_level(logging.INFO, logger="lightning.pytorch")
    data = module(tmp_path, train, val, skip_unknown_targets=True)
    rows = data.datasets["val"]  # lines 2 and 4 stay: "ab" (one reference) and "cb"
    assert len(rows) == 2 and data.skipped_unknown == {"val": 2}
    assert "--data.skip_unknown_targets: skipped pairs whose target the model cannot produce: 2 val" in caplog.text
    everything_unknown = module(tmp_path, train, ["ca\tC X"], skip_unknown_targets=True)
    assert not everything_unknown._has("val") and everything_unknown.skipped_unknown == {"val": 1}


def test_caps_and_skip_long(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="lightning.pytorch")  # another test may have raised that logger's level
    train = ["abcd\tA B", "ab\tA B C D E", "a\tA"]
    with pytest.raises(ValueError) as info:
        module(tmp_path, train, max_source_tokens=3).load()
    assert str(info.value).startswith(
        f"--data.train_file {tmp_path / 'train.tsv'}:1: the source has 4 tokens, more than --data.max_source_tokens 3"
    )
    assert "--data.skip_long true" in str(info.value)
    data = module(tmp_path, train, ["abcd\tA", "a\tA B B B", "b\tB"], max_target_tokens=3, skip_long=True)
    # the longest training pair left (targets of 2 tokens) + the end token: the cap only skipped pairs
    assert (data.source_length, data.max_target_length) == (4, 3)
    assert len(data.datasets["train"]) == 2 and len(data.datasets["val"]) == 2
    assert data.skipped == {"train": 1, "val": 1}
    assert "--data.skip_long: skipped pairs outside the lengths trained on: 1 train, 1 val" in caplog.text
    with pytest.raises(ValueError, match=r"val\.tsv:1: the source has 5 tokens, more than the longest training source"):
        module(tmp_path, ["abcd\tA"], ["abcda\tA"]).load()
    # caps above the data widen no trained length: the runtime would otherwise answer untrained lengths
    roomy = module(tmp_path, train, max_source_tokens=50, max_target_tokens=80)
    assert (roomy.source_length, roomy.min_source_length, roomy.max_target_length) == (4, 1, 6)
    # a val/test/predict source shorter than any training source is untrained too, as the runtime and decode say
    with pytest.raises(ValueError) as info:
        module(tmp_path, ["ab\tA", "abc\tA"], ["ab\tA", "a\tA"]).load()
    assert str(info.value) == (
        f"--data.val_file {tmp_path / 'val.tsv'}:2: the source has 1 tokens, fewer than the shortest training source "
        "(2); pass --data.skip_long true to skip (and count) pairs outside the trained lengths"
    )
    short = module(tmp_path, ["ab\tA", "abc\tA"], ["ab\tA", "a\tA"], skip_long=True)
    assert len(short.datasets["val"]) == 1 and short.skipped == {"val": 1}
    with pytest.raises(ValueError, match=r"train\.tsv: --data.skip_long skipped all 2 training pairs: every one is"):
        module(tmp_path, train[:2], max_source_tokens=1, skip_long=True).load()
    # a val split emptied by skip_long is absent, as one emptied by skip_unknown_targets: `validate` then says it has
    # no pairs (it ran on nothing and exited 0), and a fit warns that it has no validation
    emptied = module(tmp_path, ["ab\tA"], ["abcd\tA"], skip_long=True)
    assert not emptied._has("val") and emptied.skipped == {"val": 1}
    assert emptied.missing_split("validate") == (
        "validate needs val pairs: --data.val_file gives none (--data.skip_long skipped all its pairs)"
    )
    with pytest.warns(UserWarning, match=r"fit without validation pairs \(--data.val_file gives none \(--data.skip_"):
        emptied.setup("fit")


def test_a_fit_without_validation_pairs_says_so(tmp_path):
    with pytest.warns(UserWarning, match=r"fit without validation pairs \(--data.val_file is unset\): no validation"):
        module(tmp_path, ["ab\tA B"]).setup("fit")


def test_bad_flags_name_the_flag(tmp_path):
    with pytest.raises(ValueError, match="--data.train_file .* or --data.file"):
        PairDataModule()
    with pytest.raises(ValueError, match="--data.split_fractions"):
        PairDataModule(file="x.tsv", split_fractions=(0.5, 0.4, 0.4))
    with pytest.raises(ValueError, match="--data.batch_size must be >= 1"):
        PairDataModule(train_file="x.tsv", batch_size=0)
    for side in ("source", "target"):  # 0 is a length, not "no cap"
        with pytest.raises(ValueError, match=f"--data.max_{side}_tokens must be >= 1, got 0"):
            PairDataModule(train_file="x.tsv", **{f"max_{side}_tokens": 0})
    with pytest.raises(ValueError, match="--data.split_fractions splits --data.file; with --data.train_file give"):
        PairDataModule(train_file="x.tsv", split_fractions=(0.8, 0.1, 0.1))


# ----------------------------------------------------------------------------------------- split by source hash


def test_one_file_splits_by_source_hash_deterministically(tmp_path):
    rng = np.random.default_rng(0)
    words = sorted({"".join(rng.choice(list("abcdefg"), rng.integers(1, 7))) for _ in range(3000)})
    lines = [f"{w}\t{' '.join(w.upper())}" for w in words] + [f"{w}\tX {w.upper()}" for w in words[::3]]
    shuffled = [lines[i] for i in rng.permutation(len(lines))]
    splits = []
    for name, content in (("a.tsv", lines), ("b.tsv", shuffled)):
        data = PairDataModule(file=write(tmp_path / name, content), split_fractions=(0.8, 0.1, 0.1), cache=False)
        spec = data.text_spec
        splits.append(
            {s: Counter(spec.source.join(spec.source_vocab.decode(r)) for r in ds.source.tolist())
             for s, ds in data.datasets.items() if s != "predict"}
        )  # fmt: skip
    assert splits[0] == splits[1]  # the order of the file does not matter
    seen = [set(c) for c in splits[0].values()]
    assert sum(len(s) for s in seen) == len(words) and set().union(*seen) == set(words)  # each source in one split
    train = splits[0]["train"]
    assert all(train[w] == (2 if i % 3 == 0 else 1) for i, w in enumerate(words) if w in train)  # both references
    fractions = [len(s) / len(words) for s in seen]
    assert fractions == pytest.approx([0.8, 0.1, 0.1], abs=0.03)


def test_split_by_source_is_stable_across_runs(tmp_path):
    """The split is a function of the source's tokens alone (no salted Python hash): these words land where they did
    when the test was written, on every machine and run."""
    words = ["aardvark", "zebra", "hello", "world", "ab", "ba", "naïve", "x", "café", "été"]
    lines = "".join(f"{w}\tw\n" for w in words)
    side = read_pairs(write(tmp_path / "w.tsv", [lines.rstrip()]), Tokenizer(), Tokenizer("space"), cache=False).source
    parts = split_by_source(side, (0.5, 0.25, 0.25))
    assert [[words[i] for i in p] for p in parts] == GOLDEN_SPLIT


GOLDEN_SPLIT = [["aardvark", "zebra", "ba", "été"], ["world", "naïve", "café"], ["hello", "ab", "x"]]


# ----------------------------------------------------------------------------------------- eval batches


def test_val_batches_hold_one_row_per_source_with_every_reference(tmp_path):
    train = ["ab\tA B", "ba\tB A", "a\tA", "b\tB"]
    val = ["ab\tA B", "ba\tB A", "ab\tA A", "a\tA", "ab\tB", "ba\tA", "ab\tA B"]  # ab's "A B" twice: kept once
    data = module(tmp_path, train, val, batch_size=2)
    data.setup("validate")
    batches = list(data.val_dataloader())
    assert [len(b) for b in batches] == [3, 3] and [len(b[0]) for b in batches] == [2, 1]
    source = [row for b in batches for row in b[0].tolist()]  # sources cut per batch to its longest
    assert source == [[2, 3], [3, 2], [2]]  # ab, ba, a: in the order of first appearance
    A, B, END, ABSENT = 2, 3, 1, -1
    # references padded per batch to its most (3, then 1), absent slots -1
    assert [b[2].dtype for b in batches] == [torch.int64] * 2
    assert [b[2].tolist() for b in batches] == [
        [[[A, B, END], [A, A, END], [B, END, 0]], [[B, A, END], [A, END, 0], [ABSENT] * 3]],
        [[[A, END, 0]]],
    ]
    assert all(torch.equal(b[1], b[2][:, 0]) for b in batches)  # the first reference: the loss's target
    assert group_references(np.zeros((0, 2), np.int32), np.zeros((0, 3), np.int32))[2].shape[0] == 0


def test_a_source_given_many_times_holds_its_distinct_references_once():
    """A word list with a common word 50,000 times among 50,000 others: references padded to the most of any source
    asked for 50,001 x 50,000 x T cells (65 GiB); each distinct reference is kept once, so 50,002 rows."""
    rows = np.arange(2, 50_002, dtype=np.int32)[:, None].repeat(2, axis=1)
    source = np.concatenate([rows, np.full((50_000, 2), 1, np.int32)])  # (1 is no other row's)
    target = np.concatenate([rows + 1, np.full((50_000, 2), 9, np.int32)])
    target[-1] = 8  # one other reference of the common source, last
    src, first, references, offsets = group_references(source, target)
    assert len(src) == 50_001 and len(references) == 50_002 and offsets[-1] == 50_002
    assert src[-1].tolist() == [1, 1]  # in order of first appearance
    assert references[offsets[-2] :].tolist() == [[9, 9], [8, 8]]  # in order of appearance
    assert (first == references[offsets[:-1]]).all()


def test_predict_defaults_to_the_test_split(tmp_path):
    data = PairDataModule(
        train_file=write(tmp_path / "train.tsv", ["ab\tA B", "ba\tB A"]),
        test_file=write(tmp_path / "test.tsv", ["ba\tB A"]),
        target_tokenizer="space",
        cache=False,
    )
    data.setup("predict")
    (batch,) = list(data.predict_dataloader())
    assert batch[0].tolist() == [[3, 2]]
    with pytest.raises(ValueError, match="validate needs val pairs: --data.val_file gives none"):
        data.setup("validate")


# ----------------------------------------------------------------------------------------- length buckets


def test_training_batches_are_cut_to_their_longest_row(tmp_path):
    data = module(tmp_path, ["abcdef\tA B C D E F", "ab\tA B", "ba\tB A", "a\tA"], batch_size=2, bucketing=True)
    batches = list(data.train_dataloader())
    widths = sorted((tuple(b[0].shape), tuple(b[1].shape)) for b in batches)
    assert widths == [((2, 2), (2, 3)), ((2, 6), (2, 7))] and all(b[0].dtype == torch.int64 for b in batches)


def test_with_unk_a_share_of_training_source_tokens_is_replaced_by_it_the_same_in_a_rerun(tmp_path):
    words = ["".join("abcdefgh"[(i * 7 + j) % 8] for j in range(3 + i % 5)) for i in range(400)]
    train = [f"{w}\t{' '.join(w.upper())}" for w in words]
    rows = module(tmp_path, train, unknown_source="unk", unk_rate=0.1, seed=3).datasets["train"]
    batches = [rows.__getitems__(list(range(i, i + 32))) for i in range(0, 384, 32)]
    source = torch.cat([s.flatten() for s, _ in batches])
    real = source[source != 0]
    assert 0.08 < (real == UNK_ID).float().mean() < 0.12  # ~10% of the 2,000 tokens; padding never replaced
    again = module(tmp_path, train, unknown_source="unk", unk_rate=0.1, seed=3).datasets["train"]
    assert all(
        torch.equal(a[0], again.__getitems__(list(range(i, i + 32)))[0]) for a, i in zip(batches, range(0, 384, 32))
    )
    other_batch = rows.__getitems__(list(range(1, 33)))[0]  # other rows in the batch: other draws
    assert not torch.equal(other_batch[:31] == UNK_ID, batches[0][0][1:32] == UNK_ID)
    default = module(tmp_path, train, unknown_source="unk").datasets["train"]
    assert default.unk_rate == 0.01 and module(tmp_path, train).datasets["train"].unk_rate == 0.0
    with pytest.raises(ValueError, match="--data.unk_rate trains <unk>: it needs --data.unknown_source unk"):
        module(tmp_path, train, unk_rate=0.05)
    for kwargs in ({"unknown_source": "unk", "unk_rate": 0.0}, {"unknown_source": "error"}):  # none replaced
        plain = module(tmp_path, train, **kwargs).datasets["train"]
        width = int(plain.source_lengths.max())
        assert torch.equal(plain.__getitems__(list(range(400)))[0], plain.source[:, :width].long())
    with pytest.raises(ValueError, match=r"--data.unk_rate must be in \[0, 1\), got 1.0"):
        module(tmp_path, train, unknown_source="unk", unk_rate=1.0)


def test_unk_is_trained_only_with_a_positive_unk_rate(tmp_path):
    """The new user's finding: with --data.unknown_source unk and nothing replaced in training, the <unk> row of the
    source embedding never got a gradient (Adam's moments exactly 0): unknown letters decoded to noise."""
    moments = {}
    for rate in ("0.02", "0"):
        flags = ["--data.unknown_source", "unk", "--data.unk_rate", rate, "--trainer.max_epochs", "1"]
        root = fit_in(tmp_path / rate, *TINY_FIT, *flags)
        saved = torch.load(root / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)
        names = list(saved["state_dict"])
        state = saved["optimizer_states"][0]["state"][names.index("net.encoder.input.table")]
        moments[rate] = state["exp_avg_sq"][UNK_ID].abs().sum().item()
    assert moments["0.02"] > 0 and moments["0"] == 0


def bucket_batches(lengths: np.ndarray, batch: int, replicas: int, rank: int, epoch: int) -> list[np.ndarray]:
    sampler = BucketSampler(range(len(lengths)), lengths, replicas, rank, seed=7, batch_size=batch)
    sampler.set_epoch(epoch)
    indices = np.array(list(sampler))
    assert len(indices) == len(sampler)
    return [indices[i : i + batch] for i in range(0, len(indices), batch)]


def test_bucketed_batches_are_length_homogeneous_and_cover_every_row_once_per_epoch():
    lengths = np.random.default_rng(1).integers(1, 21, 2000)
    orders = []
    for epoch in range(2):
        batches = bucket_batches(lengths, 32, 1, 0, epoch)
        rows = np.concatenate(batches)
        assert sorted(rows.tolist()) == list(range(2000))  # every row once
        assert [len(b) for b in batches] == [32] * 62 + [16]  # the one partial batch last
        spread = [int(np.ptp(lengths[b])) for b in batches]
        assert max(spread) <= 1 and sum(spread) <= 20  # one length per batch, two where lengths meet
        orders.append(rows)
    assert not np.array_equal(orders[0], orders[1])  # reshuffled per epoch
    assert np.array_equal(np.concatenate(bucket_batches(lengths, 32, 1, 0, 0)), orders[0])  # seeded


@pytest.mark.parametrize("rows", [2000, 2016, 40])
def test_bucketed_batches_shard_over_ranks(rows):
    lengths = np.random.default_rng(2).integers(1, 21, rows)
    shards = [bucket_batches(lengths, 32, 3, rank, 0) for rank in range(3)]
    assert len({len(s) for s in shards}) == 1  # every rank the same number of batches
    seen = Counter(np.concatenate([np.concatenate(s) for s in shards]).tolist())
    assert set(seen) == set(range(rows))  # every row; repeats only to even out the ranks
    assert sum(seen.values()) - rows < 3 * 32
    for shard in shards:
        assert all(len(b) == 32 for b in shard[:-1])  # a partial batch only at the end


def test_bucketed_sampler_resumes_mid_epoch_where_it_stopped():
    lengths = np.random.default_rng(3).integers(1, 21, 500)
    whole = np.concatenate(bucket_batches(lengths, 16, 2, 1, 3))
    sampler = BucketSampler(range(500), lengths, 2, 1, seed=7, batch_size=16)
    sampler.set_epoch(3)
    sampler.resume_epoch, sampler.skip_batches = 3, 5
    assert np.array_equal(np.array(list(sampler)), whole[5 * 16 :])
    assert np.array_equal(np.array(list(sampler)), whole)  # the next pass over the epoch is whole again


# ----------------------------------------------------------------------------------------- through the CLI

TINY_FIT = [
    "--data", "PairDataModule", "--data.train_file", TINY_TRAIN, "--data.target_tokenizer", "space",
    "--data.batch_size", "32", "--model.net.hidden_size", "32", "--model.net.embedding_dim", "16",
    "--model.net.attention", "true", "--model.optimizer", "Adam", "--model.optimizer.lr", "0.01",
    "--trainer.log_every_n_steps", "1", "--trainer.enable_model_summary", "false", "--trainer.accelerator", "cpu",
]  # fmt: skip


def test_a_tiny_tsv_model_learns_through_fit_and_its_checkpoint_carries_the_text(tmp_path):
    root = fit_in(tmp_path / "runs", *TINY_FIT, "--trainer.max_epochs", "6")
    losses = [float(r["train/loss"]) for r in read_metrics(root / "version_0") if r.get("train/loss")]
    assert len(losses) == 6 * 13  # 415 pairs / 32
    assert np.mean(losses[-13:]) < 0.35 < 2.0 < np.mean(losses[:3])  # ~0.25 by epoch 6 (the alternates stay)
    saved = torch.load(root / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)
    text = saved["text"]
    assert text["source_tokens"] == ["<pad>", "</s>", *"abcdefgh"] and text["target_tokenizer"] == "space"
    assert (text["source_length"], text["min_source_length"]) == (5, 2)
    assert saved["hyper_parameters"]["net"]["source_vocab_size"] == 10
    assert saved["datamodule_hyper_parameters"]["train_file"] == str(TINY_TRAIN)


def test_a_resumed_fit_refuses_a_changed_training_file(tmp_path, capsys):
    train = tmp_path / "train.tsv"
    train.write_text("ab\tA B\nba\tB A\n" * 40)
    flags = [*TINY_FIT, "--data.train_file", train, "--trainer.max_epochs", "1"]
    fit_in(tmp_path / "runs", *flags)
    ckpt = tmp_path / "runs" / "version_0" / "checkpoints" / "last.ckpt"
    resume = ["fit", *flags, "--trainer.max_epochs", "2", "--ckpt_path", ckpt, *root_args(tmp_path / "runs")]
    train.write_text("ab\tA B\nba\tB A\n" * 39 + "ab\tA B\nbab\tB A B\n")  # same vocabulary, other pairs
    code, err = cli_exit(resume, capsys)
    assert code == 2 and f"--data.train_file {train} changed since the checkpoint was written" in err
    train.write_text("ab\tA B\nca\tC A\n" * 40)  # other vocabularies
    code, err = cli_exit(resume, capsys)
    assert code == 2 and "gives other source_tokens, target_tokens" in err and "--fine_tune true" in err
    for command in (["test", "--data.test_file", train], ["fit", "--fine_tune", "true"]):  # ids would mean other tokens
        args = [command[0], *flags, *command[1:], "--ckpt_path", ckpt, *root_args(tmp_path / "runs")]
        code, err = cli_exit(args, capsys)
        assert code == 2 and f"--data.train_file {train} gives other source_tokens, target_tokens" in err
    code, err = cli_exit([*resume, "--data", "Seq2SeqDataModule"], capsys)
    assert code == 2 and "the checkpoint was trained with --data.bucketing" in err


def test_a_resumed_fit_takes_its_files_by_another_path_or_a_byte_identical_copy(tmp_path, monkeypatch, capsys):
    """The paths were compared as strings: the same training file written relative was refused, as was a copy; the
    training file's contents decide (their hash is in the checkpoint), a validation file's resolved path."""
    train, val = tmp_path / "train.tsv", tmp_path / "val.tsv"
    train.write_text("ab\tA B\nba\tB A\naab\tA A B\n" * 20)
    val.write_text("ab\tA B\n")
    flags = [*TINY_FIT, "--trainer.max_epochs", "1"]
    fit_in(tmp_path / "runs", *flags, "--data.train_file", train, "--data.val_file", val)
    ckpt = tmp_path / "runs" / "version_0" / "checkpoints" / "last.ckpt"
    copy = tmp_path / "copy.tsv"
    copy.write_bytes(train.read_bytes())
    monkeypatch.chdir(tmp_path)
    more = ["--trainer.max_epochs", "2", "--ckpt_path", ckpt, *root_args(tmp_path / "runs")]
    for path in ("train.tsv", copy, f"./runs/../{train.name}"):
        run_cli(["fit", *flags, "--data.train_file", path, "--data.val_file", "val.tsv", *more])
    other_val = tmp_path / "other.tsv"
    other_val.write_text("ab\tA B\n")
    code, err = cli_exit(["fit", *flags, "--data.train_file", train, "--data.val_file", other_val, *more], capsys)
    assert code == 2 and f"--data.val_file {other_val} (checkpoint: {val})" in err


def test_from_python_weights_refuse_data_of_other_vocabularies_as_the_cli_does(tmp_path):
    """A script of one's own: load_from_checkpoint + test, a Trainer's ckpt_path and a resume took data whose
    vocabularies had the checkpoint's sizes but other tokens, and reported figures of ids meaning other tokens."""
    from lit_seq2seq.model import NetConfig
    from lit_seq2seq.module import Seq2SeqModule

    train, other = tmp_path / "train.tsv", tmp_path / "other.tsv"
    train.write_text("ab\tA B\nba\tB A\n" * 20)
    other.write_text("ac\tA B\nca\tB A\n" * 20)  # as many tokens, c in place of b
    test = tmp_path / "test.tsv"
    test.write_text("aa\tA A\n")

    def data(train_file: Path, **kwargs: Any) -> PairDataModule:
        return PairDataModule(train_file=str(train_file), target_tokenizer="space", batch_size=8, **kwargs)

    first = data(train, val_file=str(test))
    first.setup("fit")
    sizes = ("source_vocab_size", "target_vocab_size", "max_target_length", "eos_token")
    net = NetConfig(**{k: getattr(first, k) for k in sizes}, hidden_size=8, embedding_dim=4)

    def trainer(**kwargs: Any) -> L.Trainer:
        quiet = dict(logger=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
        return L.Trainer(**quiet | kwargs)

    trainer(max_epochs=1).fit(Seq2SeqModule(net=net), first)
    ckpt = str(tmp_path / "checkpoints" / "epoch=0-step=5.ckpt")
    assert trainer().test(Seq2SeqModule.load_from_checkpoint(ckpt), data(train, test_file=str(test)), verbose=False)
    message = f"--data.train_file {other} gives other source_tokens than the checkpoint's: its ids would stand for"
    with pytest.raises(ValueError, match=re.escape(message)):
        trainer().test(Seq2SeqModule.load_from_checkpoint(ckpt), data(other, test_file=str(test)))
    with pytest.raises(ValueError, match=re.escape(message)):
        trainer().test(Seq2SeqModule(net=net), data(other, test_file=str(test)), ckpt_path=ckpt)
    another = f"--data.train_file {other} holds other pairs than {train}, the file the checkpoint's fit read"
    with pytest.raises(ValueError, match=re.escape(another)):
        trainer(max_epochs=2).fit(Seq2SeqModule(net=net), data(other), ckpt_path=ckpt)


def test_test_with_other_split_fractions_of_the_file_than_the_fit_exits_2(tmp_path, capsys):
    """Other fractions move sources between the splits of --data.file: test would score training pairs as unseen."""
    flags = [
        *TINY_FIT,
        "--data.train_file",
        "null",
        "--data.file",
        TINY_TRAIN,
        "--data.split_fractions",
        "[0.8, 0.1, 0.1]",
    ]
    root = fit_in(tmp_path / "runs", *flags, "--trainer.max_epochs", "1")
    test = ["test", *flags, "--data.skip_long", "true", "--ckpt_path", "last", *root_args(root)]
    code, err = cli_exit([*test, "--data.split_fractions", "[0.1, 0.1, 0.8]"], capsys)
    assert (
        code == 2
        and (
            "--data.split_fractions [0.1, 0.1, 0.8] splits --data.file otherwise than the checkpoint's fit ([0.8, 0.1, "
            "0.1]): pairs it trained on would be scored as unseen ones"
        )
        in err
    )
    assert run_cli(test) == 0
    # the tokenizer flags left out: the checkpoint's are used (the default char target gave other vocabularies)
    bare = [a for a in test if a not in ("--data.target_tokenizer", "space")]
    assert run_cli(bare) == 0
    code, err = cli_exit([*bare, "--data.target_tokenizer", "char"], capsys)  # typed: checked, as before
    assert code == 2 and "gives other target_tokenizer, target_tokens than the checkpoint's" in err, err


def test_validate_test_and_predict_without_the_training_file_read_the_checkpoints_vocabularies(
    tmp_path, capsys, caplog
):
    root = fit_in(tmp_path / "runs", *TINY_FIT, "--trainer.max_epochs", "2")
    ckpt = root / "version_0" / "checkpoints" / "last.ckpt"
    at = TINY_FIT.index("--data.train_file")
    no_train = TINY_FIT[:at] + TINY_FIT[at + 2 :]  # the fit's flags less the training file
    given = ["--data.test_file", TINY_TEST, "--data.val_file", TINY_TEST, "--ckpt_path", ckpt, *root_args(root)]
    metrics = {}
    for name, flags in (("train file", TINY_FIT), ("checkpoint", no_train)):
        for command in ("test", "validate"):
            assert run_cli([command, *flags, *given]) == 0
            key = f"{'val' if command == 'validate' else 'test'}/token_error_rate"
            metrics[name, command] = last_metric(version_dirs(root)[-1], key)
    assert metrics["checkpoint", "test"] == metrics["train file", "test"] > 0
    assert metrics["checkpoint", "validate"] == metrics["train file", "validate"]
    assert run_cli(["predict", *no_train, *given]) == 0
    rows = (version_dirs(root)[-1] / "predictions.tsv").read_text(encoding="utf-8").splitlines()
    assert rows[0] == "line\tsource\ttarget\tprediction" and len(rows) > 1
    # tokenizer flags other than the checkpoint's: read as trained (the only tokens the model knows), and said so
    caplog.set_level(logging.INFO, logger="lightning.pytorch")
    other = ["--data.source_tokenizer", "space", "--data.source_lowercase", "true"]
    assert run_cli(["test", *no_train, *other, *given]) == 0
    assert last_metric(version_dirs(root)[-1], "test/token_error_rate") == metrics["train file", "test"]
    said = "--data.text_from reads the files as the model was trained (source char, target space); not "
    assert said + "--data.source_tokenizer space, --data.source_lowercase true" in caplog.text
    caplog.clear()  # typed at its default (char): named too (it went unsaid: the data module cannot tell it typed)
    assert run_cli(["test", *no_train, "--data.target_tokenizer", "char", *given]) == 0
    assert said + "--data.target_tokenizer char\n" in caplog.text
    caplog.clear()  # the checkpoint's own settings (no_train types target_tokenizer space): nothing said
    assert run_cli(["test", *no_train, *given]) == 0
    assert "--data.text_from reads" not in caplog.text
    # --print_config prints what test runs: the checkpoint's file, model and text settings (it printed the defaults:
    # hidden_size 128, target_tokenizer char, text_from null), and starts no run
    runs = version_dirs(root)
    code, out, _ = cli_output(["test", "--data", "PairDataModule", *given[:2], "--ckpt_path", "last",
                               *root_args(root), "--print_config"], capsys)  # fmt: skip
    printed = yaml.safe_load(out)
    assert (code, printed["ckpt_path"], printed["data"]["init_args"]["text_from"]) == (0, str(ckpt), str(ckpt))
    assert (printed["model"]["net"]["hidden_size"], printed["model"]["net"]["attention"]) == (32, True)
    assert printed["data"]["init_args"]["target_tokenizer"] == "space" and version_dirs(root) == runs
    code, out, _ = cli_output(["test", "--data", "PairDataModule", *given[:2], "--ckpt_path", "last", *root_args(root),
                               "--seed_everything", "true", "--print_config"], capsys)  # fmt: skip
    assert (code, yaml.safe_load(out)["seed_everything"]) == (0, True)  # as given, not the seed a run would draw
    # explicit, with a training file too, in a fit, from a model without text: each refused, naming the flag
    bad = [
        (["test", *TINY_FIT, *given, "--data.text_from", ckpt], "leave --data.train_file and --data.file unset"),
        (["fit", *no_train, "--data.text_from", ckpt, *root_args(root)], "--data.text_from is for validate, test"),
    ]
    ids_root = fit_in(tmp_path / "ids", "--data.vocab_size", "9", "--data.source_length", "4", "--data.target_length",
                      "2", "--data.train_size", "64", "--data.val_size", "16", "--data.test_size", "16",
                      "--trainer.max_epochs", "1", "--model.net.hidden_size", "8")  # fmt: skip
    ids_ckpt = ids_root / "version_0" / "checkpoints" / "last.ckpt"
    bad.append((["test", *no_train, *given[:2], "--data.text_from", ids_ckpt, *root_args(root)], "not trained on text"))
    ids_model = f"--ckpt_path {ids_ckpt}: its model was trained on the generated task 'reverse_first', not on text "
    bad.append((["test", *no_train, *given[:2], "--ckpt_path", ids_ckpt, *root_args(root)], ids_model))
    gone = ["--data.train_file", tmp_path / "absent.tsv"]
    bad.append((["test", *no_train, *gone, *given], "no such file; to test without it, pass --data.train_file null"))
    only_val = [*no_train, "--data.val_file", TINY_TEST, "--ckpt_path", ckpt, *root_args(root)]  # no test file
    generated = ["--ckpt_path", ckpt, *root_args(root)]  # the default data: generated tasks
    bad.append((["test", *generated], f"--ckpt_path {ckpt}: its model was trained on text pairs; pass --data Pair"))
    bad.append((["test", *only_val], "test needs test pairs: --data.test_file gives none"))
    bad.append((["predict", *only_val], "predict needs predict pairs: --data.predict_file (or --data.test_file, its"))
    unknown = write(tmp_path / "unknown.tsv", ["abz\tAH B"])  # z: a letter the model never saw, and has no <unk>
    message = "unknown source token 'z' at position 3: the training sources lack it (the model was trained without "
    for unk in ([], ["--data.unknown_source", "unk"]):  # the flag cannot add <unk> to a trained vocabulary
        flags = [*no_train, *unk, "--data.test_file", unknown, "--ckpt_path", ckpt, *root_args(root)]
        bad.append((["test", *flags], message + "<unk>: fit it with --data.unknown_source unk to map such tokens)"))
    negative = ["--data.max_source_tokens", "-3"]  # our check's message alone, not jsonargparse's wrapping of it
    bad.append(
        (["fit", *TINY_FIT, *negative, *root_args(root)], "error: --data.max_source_tokens must be >= 1, got -3")
    )
    sums = ["--data.train_file", "null", "--data.file", TINY_TRAIN, "--data.split_fractions", "[0.8, 0.1, 0.05]"]
    bad.append((["fit", *TINY_FIT, *sums, *root_args(root)], "error: --data.split_fractions must be 3 fractions >= 0"))
    runs = version_dirs(root)
    for args, message in bad:
        code, err = cli_exit(args, capsys)
        assert code == 2 and message in err and "Traceback" not in err and "Union subtypes" not in err, err
    assert version_dirs(root) == runs  # refused before a run folder was made


def test_fit_resumes_exactly_mid_epoch_over_file_data(tmp_path):
    # dropout and 2 layers: the RNG must continue where it stopped, as the bucketed order must
    flags = [*TINY_FIT, "--trainer.max_epochs", "2", "--model.net.dropout", "0.2", "--model.net.num_layers", "2"]
    flags += ["--checkpoint.every_n_train_steps", "9"]
    reference = fit_in(tmp_path / "reference", *flags, "--trainer.callbacks+=test_resume.SnapshotCheckpoints")
    snapshots = {int(p.stem.split("step")[1]): p for p in (reference / "snapshots").glob("*.ckpt")}
    assert sorted(snapshots) == [9, 13, 18, 26]  # 13 batches an epoch
    final = torch.load(reference / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)
    resumed = fit_in(tmp_path / "resumed", *flags, "--ckpt_path", snapshots[18])  # mid-epoch 1
    got = torch.load(resumed / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)
    assert got["global_step"] == final["global_step"] == 26
    differ = [k for k, v in final["state_dict"].items() if not torch.equal(got["state_dict"][k], v)]
    assert not differ, f"weights differ from the uninterrupted fit: {differ}"
    assert torch.equal(got["rng_state"]["cpu"], final["rng_state"]["cpu"])


class RecordSources(L.Callback):
    """Test only (imported by both DDP ranks): saves each rank's training sources, padded to 8 columns."""

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.rows: list[torch.Tensor] = []

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        self.rows.append(torch.nn.functional.pad(batch[0].cpu(), (0, 8 - batch[0].shape[1])))

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        path = Path(trainer.default_root_dir) / f"rows-rank{trainer.global_rank}.pt"
        torch.save(torch.cat(self.rows), path)


@pytest.mark.slow  # two processes with torch, lightning and gloo: ~30-40 s on 2 cores
def test_ddp_two_ranks_shard_the_file_data(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), *sys.path]))
    ddp = ["--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.max_epochs", "1"]
    cmd = [sys.executable, "-m", "lit_seq2seq", "fit", *map(str, TINY_FIT), *ddp, *root_args(tmp_path)]
    cmd += ["--trainer.callbacks+=test_pairs.RecordSources", "--data.batch_size", "16"]
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    shards = [torch.load(tmp_path / f"rows-rank{r}.pt", weights_only=True) for r in (0, 1)]
    data = PairDataModule(train_file=str(TINY_TRAIN), target_tokenizer="space")
    data.load()
    everything = data.datasets["train"].source
    want = Counter(map(tuple, torch.nn.functional.pad(everything, (0, 3)).tolist()))
    got = [Counter(map(tuple, s.tolist())) for s in shards]
    assert got[0] + got[1] == want  # 415 pairs = 25 batches of 16 + 15: 13 batches a rank, no repeats
    assert [len(s) for s in shards] == [13 * 16, 12 * 16 + 15]
    last = torch.load(tmp_path / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 13


def test_predict_writes_the_text_of_each_line_its_reference_and_prediction(tmp_path):
    """predictions.tsv of a text model holds a row per line of the file, in its order, with the line's number and
    text (batches of file data differ in width: rows are joined one by one)."""
    root = fit_in(tmp_path / "runs", *TINY_FIT, "--trainer.max_epochs", "6")
    run_cli(["predict", *TINY_FIT, "--data.test_file", TINY_TEST, "--ckpt_path", "last", *root_args(root)])
    rows = (version_dirs(root)[-1] / "predictions.tsv").read_text(encoding="utf-8").splitlines()
    lines = TINY_TEST.read_text(encoding="utf-8").splitlines()
    assert rows[0] == "line\tsource\ttarget\tprediction" and len(rows) - 1 == len(lines)
    cells = [row.split("\t") for row in rows[1:]]
    assert [(number, f"{source}\t{target}") for number, source, target, _ in cells] == [
        (str(i), line) for i, line in enumerate(lines, 1)
    ]
    references = {tuple(line.split("\t")) for line in lines}
    right = sum((source, prediction) in references for _, source, _, prediction in cells)
    assert right >= 0.4 * len(cells)  # text predictions (17 of 32 lines right after these 6 epochs)
    # A file of sources alone (a word list; JSON Lines without "target"), a blank line in it: the same predictions,
    # the target empty, the numbers the file's.
    words = [source for _, source, _, _ in cells]
    for name, text in (
        ("words.txt", "\n" + "".join(f"{word}\n" for word in words)),
        ("words.jsonl", "\n" + "".join(json.dumps({"source": word}) + "\n" for word in words)),
    ):
        (tmp_path / name).write_text(text, encoding="utf-8")
        given = ["--data.predict_file", str(tmp_path / name), "--ckpt_path", "last", *root_args(root)]
        assert run_cli(["predict", *TINY_FIT, *given]) == 0
        alone = (version_dirs(root)[-1] / "predictions.tsv").read_text(encoding="utf-8").splitlines()
        expected = [f"{int(number) + 1}\t{source}\t\t{prediction}" for number, source, _, prediction in cells]
        assert alone == [rows[0], *expected]
    # targets in a predict file are echoed, never checked: tokens the model lacks, longer than any trained
    odd = ["Q Z", " ".join(["A"] * 50)]
    (tmp_path / "odd.tsv").write_text("".join(f"{w}\t{t}\n" for w, t in zip(words, odd)), encoding="utf-8")
    assert run_cli(["predict", *TINY_FIT, "--data.predict_file", tmp_path / "odd.tsv", *given[2:]]) == 0
    echoed = (version_dirs(root)[-1] / "predictions.tsv").read_text(encoding="utf-8").splitlines()
    assert echoed[1:] == [f"{i}\t{w}\t{t}\t{p}" for i, (w, t, (_, _, _, p)) in enumerate(zip(words, odd, cells), 1)]


@pytest.mark.parametrize(
    "arguments, message",
    [
        ({"source_lowercase": "no"}, "--data.source_lowercase must be true or false, got 'no'"),  # was taken as true
        ({"bucketing": "false"}, "--data.bucketing must be true or false, got 'false'"),
        ({"batch_size": "8"}, "--data.batch_size must be an integer, got '8'"),
        ({"max_source_tokens": 2.5}, "--data.max_source_tokens must be an integer or null, got 2.5"),
        ({"unk_rate": "0.1", "unknown_source": "unk"}, "--data.unk_rate must be a number or null, got '0.1'"),
        ({"split_fractions": "0.8"}, "--data.split_fractions must be 3 fractions (train, val, test), got '0.8'"),
        ({"val_file": 3}, "--data.val_file must be a file path or null, got 3"),
    ],
)
def test_pair_data_arguments_of_the_wrong_type_are_named(arguments, message):
    """From a script of one's own: "no" was a true flag, "8" failed inside a comparison."""
    with pytest.raises(TypeError, match=f"^{re.escape(message)}$"):
        PairDataModule(**{"train_file": "train.tsv"} | arguments)


def test_pair_data_takes_paths_and_numpy_numbers_as_plain_values(tmp_path):
    """A pathlib.Path or a numpy number in the checkpoint's hyperparameters stops it from loading (weights_only)."""
    data = PairDataModule(file=tmp_path / "t.tsv", batch_size=np.int64(8), split_fractions=(1, 0, 0))
    assert data.hparams["file"] == str(tmp_path / "t.tsv") and type(data.hparams["batch_size"]) is int
    assert data.hparams["split_fractions"] == (1.0, 0.0, 0.0)


def test_the_long_line_warning_suggests_the_cap_that_skips_the_outlier_alone(tmp_path):
    """It suggested the 99.9% mark (4 here), which would also have skipped the two usual 6-token pairs above it."""
    lines = ["abab\tA B\n"] * 2000 + ["ababab\tA B\n"] * 2 + ["b" * 500 + "\tB\n"]
    (tmp_path / "train.tsv").write_text("".join(lines), encoding="utf-8")
    data = PairDataModule(train_file=str(tmp_path / "train.tsv"), target_tokenizer="space", cache=False)
    usual = r"is 83x the longest pair without outliers \(6 tokens; all but the longest 3 of the 2003 pairs have at "
    usual += r"most 4, an outlier "
    with pytest.warns(UserWarning, match=usual + r"over 68\): every row is stored padded") as w:
        data.setup("fit")
    message = str(next(x.message for x in w if "stored padded" in str(x.message)))
    assert message.endswith("--data.max_source_tokens 6 --data.skip_long true would skip the 1 pair(s) above that")


def test_a_training_target_longer_than_a_model_decodes_is_refused_naming_the_line_and_the_cap(tmp_path):
    """A 4,200-token target passed the checks and failed at the first validation (max_len must be an int in [1, 4096])
    in a traceback; with validation off, the fit ended and export refused the metadata it wrote."""
    lines = ["ab\tA B", "ba\tB A", "aab\t" + " ".join(["A"] * 4096), "bb\tB"]
    data = PairDataModule(train_file=write(tmp_path / "train.tsv", lines), target_tokenizer="space", cache=False)
    with pytest.raises(ValueError) as caught:
        data.load()
    assert str(caught.value) == (
        f"--data.train_file {tmp_path / 'train.tsv'}:3: its target of 4,096 tokens is longer than the 4,095 (and end "
        "token) a model decodes; --data.max_target_tokens 4095 with --data.skip_long true skips (and counts) longer "
        "pairs"
    )
    capped = PairDataModule(
        train_file=tmp_path / "train.tsv", target_tokenizer="space", cache=False, max_target_tokens=4095, skip_long=True
    )
    capped.load()
    assert (capped.max_target_length, capped.skipped["train"]) == (3, 1)
    lines[2] = "aab\t" + " ".join(["A"] * 4095)  # the longest a model decodes, with its end token
    edge = PairDataModule(train_file=write(tmp_path / "edge.tsv", lines), target_tokenizer="space", cache=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the outlier warning
        edge.load()
    assert edge.max_target_length == 4096


def load_warnings(data: PairDataModule, phrase: str) -> list[str]:
    """The messages of the warnings `data.load()` gave that hold `phrase`."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data.load()
    return [str(w.message) for w in caught if phrase in str(w.message)]


def test_training_pairs_that_repeat_an_earlier_line_are_counted_in_a_warning(tmp_path):
    """A file concatenated twice trained each pair twice without a word. The same source with another target is an
    alternate reference (CMUdict's pronunciations), not a repeat; nor is a target under another source."""
    lines = ["ab\tA B", "ba\tB A", "ab\tA A", "aab\tA B", "ba\tB A", "ab\tA B", "ba\tB A"]
    data = PairDataModule(train_file=write(tmp_path / "train.tsv", lines), target_tokenizer="space", cache=False)
    assert load_warnings(data, "repeat an earlier line") == [
        f"--data.train_file {tmp_path / 'train.tsv'}:5: 3 of the 7 training pairs repeat an earlier line's source "
        "and target as tokenized (this the first; it repeats line 2): each copy weighs once more in training; remove "
        "the repeats if that is not meant (for identical lines, awk '!seen[$0]++' keeps the first of each)"
    ]
    unique = PairDataModule(train_file=write(tmp_path / "u.tsv", lines[:4]), target_tokenizer="space", cache=False)
    assert load_warnings(unique, "repeat an earlier line") == []
    # counted after --data.skip_long (aab, twice, is skipped), and never ahead of the refusal of a long line
    longer = write(tmp_path / "long.tsv", [*lines, "aab\tA B"])
    capped = dict(train_file=longer, target_tokenizer="space", cache=False, max_source_tokens=2)
    said = load_warnings(PairDataModule(**capped, skip_long=True), "repeat an earlier line")
    assert len(said) == 1 and ":5: 3 of the 6 training pairs repeat" in said[0], said
    with warnings.catch_warnings(record=True) as caught, pytest.raises(ValueError, match=r"long\.tsv:4: the source"):
        warnings.simplefilter("always")
        PairDataModule(**capped).load()
    assert not [w for w in caught if "repeat an earlier line" in str(w.message)]


def test_val_and_test_sources_that_are_training_sources_are_named_in_a_warning(tmp_path):
    """Files split by line, not by source, put a word's alternate pronunciations on both sides: flattering scores."""
    train = write(tmp_path / "train.tsv", ["ab\tA B", "ba\tB A", "aab\tA A B"])
    test = write(tmp_path / "test.tsv", ["bb\tB B", "ba\tB B A", "aab\tA A B"])
    val = write(tmp_path / "val.tsv", ["bab\tB A B"])
    data = PairDataModule(train_file=train, val_file=val, test_file=test, target_tokenizer="space", cache=False)
    assert load_warnings(data, "training file holds too") == [
        f"--data.test_file {test}:2: 2 of the file's 3 pairs (this the first) have a source the training file holds "
        "too: their scores flatter the model; split by source (--data.file with --data.split_fractions does)"
    ]
