"""Seq2SeqDataModule and ResumableSampler: sizes, shapes, determinism, DDP shards, mid-epoch resume."""

from __future__ import annotations

import time
import warnings

import numpy as np
import pytest
import torch
from conftest import run_python

from lit_seq2seq import tasks
from lit_seq2seq.data import ResumableSampler, Seq2SeqDataModule, TensorPairs
from lit_seq2seq.tasks import split_rng

SMALL = dict(train_size=200, val_size=50, test_size=30, predict_size=20, batch_size=16)


def _batches(loader) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return list(loader)


def test_split_sizes_and_linked_properties():
    dm = Seq2SeqDataModule(**SMALL)
    dm.setup("fit")
    assert set(dm.datasets) == {"train", "val"}  # fit builds only what it needs
    dm.setup("test")
    dm.setup("predict")
    assert {k: len(v) for k, v in dm.datasets.items()} == {"train": 200, "val": 50, "test": 30, "predict": 20}
    assert (dm.source_vocab_size, dm.target_vocab_size, dm.max_target_length, dm.eos_token) == (51, 51, 3, None)
    dm = Seq2SeqDataModule(task="copy", vocab_size=9, source_length=5, **SMALL)
    assert (dm.source_vocab_size, dm.target_vocab_size, dm.max_target_length, dm.eos_token) == (9, 9, 6, 1)


@pytest.mark.parametrize(
    "kwargs,shape",
    [
        (dict(), (6, 3)),
        (dict(task="reverse_first", source_length=4, target_length=2, vocab_size=11), (4, 2)),
        (dict(task="copy", vocab_size=9, source_length=5), (5, 6)),
        (dict(task="add", vocab_size=13, source_length=5), (5, 4)),
    ],
)
def test_batch_shapes_and_dtype(kwargs, shape):
    dm = Seq2SeqDataModule(**kwargs, **SMALL)
    dm.setup("fit")
    dm.setup("test")
    dm.setup("predict")
    s, t = shape
    for loader, size in (
        (dm.train_dataloader(), 200),
        (dm.val_dataloader(), 50),
        (dm.test_dataloader(), 30),
        (dm.predict_dataloader(), 20),
    ):
        batches = _batches(loader)
        assert len(batches) == -(-size // 16)
        for i, (source, target) in enumerate(batches):
            b = 16 if i < len(batches) - 1 else size - 16 * (len(batches) - 1)
            assert source.shape == (b, s) and target.shape == (b, t)
            assert source.dtype == torch.int64 and target.dtype == torch.int64
        assert sum(len(x) for x, _ in batches) == size


def test_split_equals_task_sample_of_its_stream():
    dm = Seq2SeqDataModule(seed=5, **SMALL)
    source, target = dm.task.sample(50, split_rng(5, "val"))
    val = dm.split("val")
    np.testing.assert_array_equal(val.source.numpy(), source)
    np.testing.assert_array_equal(val.target.numpy(), target)
    # eval loaders keep the generated order
    got = torch.cat([x for x, _ in dm.val_dataloader()])
    np.testing.assert_array_equal(got.numpy(), source)


def test_same_seed_identical_batches_across_instances():
    def epoch_batches(seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        dm = Seq2SeqDataModule(seed=seed, **SMALL)
        dm.setup("fit")
        return _batches(dm.train_dataloader()) + _batches(dm.val_dataloader())

    a, b, c = epoch_batches(3), epoch_batches(3), epoch_batches(4)
    assert len(a) == len(b)
    for (sa, ta), (sb, tb) in zip(a, b):
        assert torch.equal(sa, sb) and torch.equal(ta, tb)
    assert not all(torch.equal(sa, sc) for (sa, _), (sc, _) in zip(a, c))


def test_train_loader_shuffles_per_epoch_and_covers_everything():
    dm = Seq2SeqDataModule(**SMALL)
    loader = dm.train_dataloader()
    rows = dm.split("train").source
    order0 = torch.cat([x for x, _ in loader])
    loader.sampler.set_epoch(1)
    order1 = torch.cat([x for x, _ in loader])
    assert not torch.equal(order0, rows)  # shuffled
    assert not torch.equal(order0, order1)  # reshuffled per epoch
    key = lambda t: sorted(map(tuple, t.tolist()))  # noqa: E731
    assert key(order0) == key(rows) == key(order1)  # each epoch is a permutation of the split


def test_tensor_pairs_getitems_matches_getitem():
    source, target = torch.arange(20).view(10, 2), torch.arange(10)
    ds = TensorPairs(source, target)
    s, t = ds.__getitems__([3, 1, 7])
    assert torch.equal(s, torch.stack([ds[i][0] for i in (3, 1, 7)]))
    assert torch.equal(t, torch.tensor([3, 1, 7]))


# -------------------------------------------------------------------------------------------- ResumableSampler


@pytest.mark.parametrize("size", [100, 64])
def test_two_ranks_get_disjoint_shards_covering_the_dataset(size):
    ds = TensorPairs(torch.zeros(size, 1), torch.zeros(size, 1))
    for epoch in (0, 1):
        shards = []
        for rank in (0, 1):
            sampler = ResumableSampler(ds, num_replicas=2, rank=rank, seed=11, batch_size=8)
            sampler.set_epoch(epoch)
            shards.append(list(sampler))
        assert len(shards[0]) == len(shards[1]) == size // 2
        assert not set(shards[0]) & set(shards[1])
        assert sorted(shards[0] + shards[1]) == list(range(size))


def test_single_rank_is_a_seeded_permutation():
    ds = TensorPairs(torch.zeros(50, 1), torch.zeros(50, 1))
    a = list(ResumableSampler(ds, 1, 0, seed=1, batch_size=4))
    b = list(ResumableSampler(ds, 1, 0, seed=1, batch_size=4))
    c = list(ResumableSampler(ds, 1, 0, seed=2, batch_size=4))
    assert a == b != c and sorted(a) == list(range(50))


@pytest.mark.parametrize("replicas", [1, 2])
@pytest.mark.parametrize("skip", [0, 1, 3])
def test_skip_batches_drops_exactly_the_trained_batches_of_the_resume_epoch(replicas, skip):
    ds = TensorPairs(torch.zeros(96, 1), torch.zeros(96, 1))
    batch = 5
    for rank in range(replicas):
        full = ResumableSampler(ds, replicas, rank, seed=3, batch_size=batch)
        full.set_epoch(2)
        expected = list(full)
        full.set_epoch(3)
        expected_next = list(full)

        sampler = ResumableSampler(ds, replicas, rank, seed=3, batch_size=batch)
        sampler.resume_epoch, sampler.skip_batches = 2, skip
        sampler.set_epoch(1)
        assert len(list(sampler)) == 96 // replicas  # an earlier epoch is not touched
        sampler.set_epoch(2)
        resumed = list(sampler)
        assert resumed == expected[skip * batch :]  # same order, the first skip * batch indices dropped
        assert len(resumed) == 96 // replicas - skip * batch
        sampler.set_epoch(3)
        assert list(sampler) == expected_next  # the following epoch is whole again


def test_datamodule_resume_state_reaches_the_sampler():
    dm = Seq2SeqDataModule(**SMALL)
    full = [x for x, _ in dm.train_dataloader()]
    assert dm.state_dict() == {}  # no trainer: nothing to save
    dm.load_state_dict({"epoch": 0, "batches": 4})
    resumed = [x for x, _ in dm.train_dataloader()]
    assert len(resumed) == len(full) - 4
    assert all(torch.equal(a, b) for a, b in zip(full[4:], resumed))
    again = [x for x, _ in dm.train_dataloader()]  # consumed once: a new loader starts from the beginning
    assert len(again) == len(full)


# ------------------------------------------------------------------------------------------------- validation

BAD_DATA = [
    (dict(batch_size=0), r"--data\.batch_size must be >= 1, got 0"),
    (dict(batch_size=-4), r"--data\.batch_size must be >= 1"),
    (dict(train_size=0), r"--data\.train_size must be >= 1"),
    (dict(val_size=-1), r"--data\.val_size must be >= 0"),
    (dict(test_size=-1), r"--data\.test_size must be >= 0"),
    (dict(predict_size=-1), r"--data\.predict_size must be >= 0"),
    (dict(num_workers=-1), r"--data\.num_workers must be >= 0"),
    (dict(target_length=9), r"--data\.target_length.*must be <= --data\.source_length"),
    (dict(task="nope"), r"--data\.task"),
    (dict(vocab_size=1), r"--data\.vocab_size"),
    (dict(task="copy", min_source_length=9), r"--data\.min_source_length"),
]


@pytest.mark.parametrize("kwargs,message", BAD_DATA, ids=[str(k) for k, _ in BAD_DATA])
def test_bad_data_settings_name_the_flag(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Seq2SeqDataModule(**kwargs)


@pytest.mark.parametrize(
    "kwargs,need",
    [
        # The case: 100,000 sources of 100,000 tokens; before, 49 s and 8 GB, then a traceback.
        (dict(source_length=100_000), "2.6e11 bytes (240.7 GiB)"),
        (dict(train_size=10**9), "2.3e11 bytes (214.6 GiB)"),
        (dict(task="copy", source_length=1000, train_size=10**7), "5.1e11 bytes (477.1 GiB)"),
    ],
)
def test_data_that_cannot_fit_is_refused_before_it_is_drawn(kwargs, need, monkeypatch):
    monkeypatch.setattr(tasks, "available_memory", lambda: 64 * 2**30)  # the same answer on any machine
    monkeypatch.setattr(tasks.Task, "sample", lambda *a: pytest.fail("drew the data"))
    start = time.perf_counter()
    with pytest.raises(ValueError) as error:
        Seq2SeqDataModule(**kwargs)
    assert time.perf_counter() - start < 1.0
    message = str(error.value)
    assert message.startswith(f"--data.train_size {kwargs.get('train_size', 100_000)} (and 3000 val/test/predict ")
    assert f"x --data.source_length {kwargs.get('source_length', 6)}: the generated data (int64: " in message
    assert f"needs {need}, more than the 6.9e10 bytes (64.0 GiB) of memory available" in message
    assert message.endswith("; lower --data.train_size or --data.source_length")


def test_data_is_refused_exactly_above_what_is_available(monkeypatch):
    sizes = dict(train_size=1000, val_size=10, test_size=0, predict_size=0)  # 6 + 3 int64 a sample: 72 bytes
    need = 1010 * 72 + int(2.2 * 1000 * 72)  # every split, and the largest's temporaries while it is drawn
    monkeypatch.setattr(tasks, "available_memory", lambda: need)
    Seq2SeqDataModule(**sizes).setup("fit")
    monkeypatch.setattr(tasks, "available_memory", lambda: need - 1)
    with pytest.raises(ValueError, match=r"--data\.train_size 1000 \(and 10 val/test/predict samples\) x "):
        Seq2SeqDataModule(**sizes)


def test_empty_eval_splits_are_allowed():
    dm = Seq2SeqDataModule(train_size=10, val_size=0, test_size=0, predict_size=0, batch_size=4)
    with pytest.warns(UserWarning, match="fit without validation pairs"):
        dm.setup("fit")
    assert len(dm.split("val")) == 0 and _batches(dm.val_dataloader()) == []


def test_importing_the_data_module_leaves_the_warning_filters_alone():
    # torch and Lightning add filters of their own on import: take the snapshot after them.
    code = "import warnings, lightning, torch, torchmetrics; before = list(warnings.filters)\n"
    code += "import lit_seq2seq.data; print(warnings.filters == before)"
    done = run_python(code)
    assert done.returncode == 0 and done.stdout.strip() == "True", done.stderr


@pytest.mark.parametrize(
    "arguments, message",
    [
        ({"batch_size": "32"}, "--data.batch_size must be an integer, got '32'"),
        ({"train_size": 1.5}, "--data.train_size must be an integer, got 1.5"),
        ({"target_length": 2.0}, "--data.target_length must be an integer or null, got 2.0"),
        ({"seed": True}, "--data.seed must be an integer, got True"),
    ],
)
def test_arguments_of_the_wrong_type_are_named(arguments, message):
    """From a script of one's own: "32" failed inside a comparison, 1.5 inside numpy at setup."""
    with pytest.raises(TypeError, match=f"^{message}$"):
        Seq2SeqDataModule(**arguments)


def test_a_fit_without_validation_samples_says_so():
    """As PairDataModule says of a fit without val pairs: the fit runs, with no metrics to pick best.ckpt by."""
    dm = Seq2SeqDataModule(train_size=10, val_size=0, test_size=0, predict_size=0, batch_size=4)
    with pytest.warns(
        UserWarning, match=r"^fit without validation pairs \(--data\.val_size 0\): no validation metrics"
    ):
        dm.setup("fit")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Seq2SeqDataModule(**SMALL).setup("fit")


@pytest.mark.parametrize("size, world", [(101, 2), (10, 3), (2, 4)])
def test_shard_samplers_of_all_ranks_cover_the_split_once_in_order(size, world):
    """Each val/test/predict row on exactly one rank, none repeated (DistributedSampler pads with repeats); a sampler
    that gave every rank rank 0's rows was caught only by a slow DDP test's exact match of 0.0 against 0.0099."""
    from lit_seq2seq.data import ShardSampler

    shards = [list(ShardSampler(range(size), num_replicas=world, rank=rank)) for rank in range(world)]
    assert sorted(i for shard in shards for i in shard) == list(range(size))
    assert all(shard == sorted(shard) and len(shard) == len(ShardSampler(range(size), world, r)) for r, shard in
               enumerate(shards))  # fmt: skip
    assert shards[1][:2] == [1, 1 + world][: len(shards[1])]
