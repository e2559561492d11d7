"""Generated tasks: every target checked against a plain-python reference, sizes, determinism, split streams."""

from __future__ import annotations

import errno
import os
import time
import tracemalloc

import numpy as np
import pytest

from lit_seq2seq import tasks
from lit_seq2seq.tasks import _TARGETS, EOS, PAD, SPLITS, TASKS, make_task, split_rng

N = 200  # rows checked one by one against the reference


def _reference(name: str, tokens: list[int], target_length: int) -> list[int]:
    """The target of `tokens` (the source without padding), in plain python."""
    if name == "reverse_first":
        return tokens[:target_length][::-1]
    if name == "add":
        plus = tokens.index(12)
        a = int("".join(str(t - 2) for t in tokens[:plus]))
        b = int("".join(str(t - 2) for t in tokens[plus + 1 :]))
        body = [int(ch) + 2 for ch in str(a + b)]
    else:
        body = {"copy": tokens, "reverse": tokens[::-1], "sort": sorted(tokens)}[name]
    out = body + [EOS]
    return out + [PAD] * (target_length - len(out))


def _unpadded(row: np.ndarray) -> list[int]:
    tokens = [int(t) for t in row]
    n = tokens.index(PAD) if PAD in tokens else len(tokens)
    assert all(t == PAD for t in tokens[n:]), f"padding is not a suffix: {tokens}"
    return tokens[:n]


# ---------------------------------------------------------------------------------------------- the seed task


def test_reverse_first_defaults_and_relationship():
    task = make_task()
    assert (task.name, task.vocab_size, task.source_length, task.target_length) == ("reverse_first", 51, 6, 3)
    assert task.eos_token is None and task.min_token == 1 and task.min_source_length == 6
    source, target = task.sample(1000, np.random.default_rng(0))
    assert source.shape == (1000, 6) and target.shape == (1000, 3)
    assert source.dtype == np.int64 and target.dtype == np.int64
    assert source.min() == 1 and source.max() == 50  # 1..V-1, no padding: every source has the full length
    np.testing.assert_array_equal(target, source[:, 2::-1])
    for row, trow in zip(source[:N], target[:N]):
        assert list(trow) == _reference("reverse_first", [int(t) for t in row], 3)


@pytest.mark.parametrize("vocab_size,source_length,target_length", [(2, 1, 1), (11, 4, 2), (11, 4, 4), (7, 9, 5)])
def test_reverse_first_sizes(vocab_size, source_length, target_length):
    task = make_task("reverse_first", vocab_size, source_length, target_length)
    source, target = task.sample(500, np.random.default_rng(1))
    assert source.shape == (500, source_length) and target.shape == (500, target_length)
    assert ((source >= 1) & (source < vocab_size)).all()
    np.testing.assert_array_equal(target, source[:, :target_length][:, ::-1])
    if vocab_size > 2:
        assert len(np.unique(source)) == vocab_size - 1  # every real token is drawn


# ------------------------------------------------------------------------------------- tasks with an end token


@pytest.mark.parametrize("name", ["copy", "reverse", "sort"])
@pytest.mark.parametrize("vocab_size,source_length,min_source_length", [(51, 6, None), (5, 8, 3), (3, 4, 4)])
def test_variable_length_targets_match_reference(name, vocab_size, source_length, min_source_length):
    task = make_task(name, vocab_size, source_length, None, min_source_length)
    lo = 1 if min_source_length is None else min_source_length
    assert task.eos_token == EOS and task.min_token == 2
    assert task.target_length == source_length + 1 and task.min_source_length == lo
    source, target = task.sample(N, np.random.default_rng(3))
    assert source.shape == (N, source_length) and target.shape == (N, source_length + 1)
    assert source.dtype == np.int64 and target.dtype == np.int64
    lengths = []
    for row, trow in zip(source, target):
        tokens = _unpadded(row)
        lengths.append(len(tokens))
        assert all(2 <= t < vocab_size for t in tokens)
        assert [int(t) for t in trow] == _reference(name, tokens, task.target_length)
        # exactly one end token, right after the body, only padding after it
        eos_at = list(trow).index(EOS)
        assert eos_at == len(tokens) and (trow[eos_at + 1 :] == PAD).all() and (trow[:eos_at] >= 2).all()
    assert min(lengths) >= lo and max(lengths) <= source_length
    assert set(lengths) == set(range(lo, source_length + 1))  # 200 draws hit every allowed length


@pytest.mark.parametrize("source_length", [3, 5, 6, 7, 9])
def test_add_targets_match_reference(source_length):
    """a+b with up to (S-1)//2 digits per operand; the target is the digits of the sum, then the end token."""
    task = make_task("add", 13, source_length)
    digits = (source_length - 1) // 2
    assert task.target_length == digits + 2 and task.eos_token == EOS and task.min_source_length == 3
    source, target = task.sample(N, np.random.default_rng(5))
    assert source.shape == (N, source_length) and target.shape == (N, digits + 2)
    wrong = []
    for row, trow in zip(source, target):
        tokens = _unpadded(row)
        assert tokens.count(12) == 1 and 3 <= len(tokens) <= 2 * digits + 1
        plus = tokens.index(12)
        assert 1 <= plus <= digits and 1 <= len(tokens) - plus - 1 <= digits
        assert all(2 <= t <= 11 for i, t in enumerate(tokens) if i != plus)
        if [int(t) for t in trow] != _reference("add", tokens, task.target_length):
            wrong.append((tokens, [int(t) for t in trow]))
    assert not wrong, f"{len(wrong)}/{N} wrong sums, e.g. source {wrong[0][0]} -> target {wrong[0][1]}"


@pytest.mark.parametrize(
    "a,b", [(588, 1), (5, 3), (5, 30), (70, 1), (1, 588), (999, 999), (0, 0), (100, 7)], ids=lambda v: str(v)
)
def test_add_target_of_hand_written_source(a, b):
    """Three-digit operands (source_length 7): the target of a hand-built source "a+b" is the digits of a + b."""
    task = make_task("add", 13, 7)
    tokens = [int(ch) + 2 for ch in str(a)] + [12] + [int(ch) + 2 for ch in str(b)]
    source = np.array([tokens + [PAD] * (7 - len(tokens))], dtype=np.int64)
    target = _TARGETS["add"](task, source, np.array([len(tokens)]))  # the function Task.sample applies
    assert [int(t) for t in target[0]] == _reference("add", tokens, task.target_length), f"{a}+{b}"


def test_add_arithmetic_known_sums():
    """Decode targets back to integers: a + b for all rows, with the carries and the 1-digit cases."""
    task = make_task("add", 13, 5)  # two-digit operands
    source, target = task.sample(5000, np.random.default_rng(6))

    def number(tokens: list[int]) -> int:
        return int("".join(str(t - 2) for t in tokens))

    sums = set()
    for row, trow in zip(source, target):
        tokens = _unpadded(row)
        plus = tokens.index(12)
        a, b = number(tokens[:plus]), number(tokens[plus + 1 :])
        body = _unpadded(trow)[:-1]
        assert _unpadded(trow)[-1] == EOS
        assert number(body) == a + b
        sums.add(a + b)
    assert 0 in sums or min(sums) < 5
    assert max(sums) > 180  # three-digit sums (carry into the extra digit) are produced and right


# ------------------------------------------------------------------------------------ determinism and streams


@pytest.mark.parametrize("name", TASKS)
def test_same_seed_same_arrays(name):
    task = make_task(name, 13)
    a = task.sample(300, split_rng(7, "train"))
    b = task.sample(300, split_rng(7, "train"))
    c = task.sample(300, split_rng(8, "train"))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_split_streams_are_distinct():
    task = make_task()  # 50**6 possible sources: distinct streams should almost never repeat a row
    arrays = {s: task.sample(2000, split_rng(42, s))[0] for s in SPLITS}
    for i, s in enumerate(SPLITS):
        for t in SPLITS[i + 1 :]:
            assert not np.array_equal(arrays[s], arrays[t]), (s, t)
            assert (arrays[s] != arrays[t]).any(1).mean() > 0.99  # row by row, not just somewhere
    train = {r.tobytes() for r in task.sample(20_000, split_rng(42, "train"))[0]}
    test = [r.tobytes() for r in arrays["test"]]
    assert sum(r in train for r in test) <= 2  # overlap between train and test rows is negligible
    with pytest.raises(ValueError):
        split_rng(42, "nope")


def test_small_task_splits_still_differ():
    """Even when the row space is tiny the streams differ in order (they are not the same stream)."""
    task = make_task("reverse_first", 3, 2, 1)
    a = task.sample(100, split_rng(0, "train"))[0]
    b = task.sample(100, split_rng(0, "test"))[0]
    assert not np.array_equal(a, b)


def test_generation_is_fast():
    task = make_task()
    best = float("inf")
    for _ in range(3):  # best of three: robust to a busy machine
        start = time.perf_counter()
        source, target = task.sample(100_000, split_rng(42, "train"))
        best = min(best, time.perf_counter() - start)
    assert source.shape == (100_000, 6) and target.shape == (100_000, 3)
    assert best < 1.0, f"100,000 samples took {best:.3f} s"


@pytest.mark.parametrize("name", ["copy", "reverse", "sort", "add"])
def test_variable_tasks_generate_fast(name):
    task = make_task(name, 13, 9)
    start = time.perf_counter()
    task.sample(100_000, split_rng(0, "train"))
    assert time.perf_counter() - start < 2.0


# ------------------------------------------------------------------------------------------------ validation

BAD_TASKS = [
    (dict(target_length=7), r"--data\.target_length \(7\) must be <= --data\.source_length \(6\)"),
    (dict(source_length=2, target_length=3), r"--data\.target_length.*must be <= --data\.source_length"),
    (dict(target_length=0), r"--data\.target_length must be >= 1"),
    (dict(target_length=-3), r"--data\.target_length must be >= 1"),
    (dict(source_length=0), r"--data\.source_length must be >= 1"),
    (dict(source_length=-1, target_length=1), r"--data\.source_length must be >= 1"),
    (dict(vocab_size=1), r"--data\.vocab_size must be >= 2"),
    (dict(vocab_size=0), r"--data\.vocab_size must be >= 2"),
    (dict(name="nope"), r"--data\.task: unknown task 'nope'"),
    (dict(name="Copy"), r"--data\.task"),
    (dict(min_source_length=3), r"--data\.min_source_length"),
    (dict(name="copy", vocab_size=2), r"--data\.vocab_size must be >= 3 for task copy"),
    (dict(name="reverse", vocab_size=2), r"--data\.vocab_size must be >= 3 for task reverse"),
    (dict(name="sort", vocab_size=1), r"--data\.vocab_size must be >= 3 for task sort"),
    (dict(name="add", vocab_size=12), r"--data\.vocab_size must be >= 13 for task add"),
    (dict(name="add", vocab_size=13, source_length=2), r"--data\.source_length must be >= 3 for task add"),
    (
        dict(name="add", vocab_size=13, source_length=31),
        r"--data\.source_length must be <= 30 for task add \(operands ",
    ),
    (dict(name="add", vocab_size=13, source_length=41), r"--data\.source_length must be <= 30 for task add"),
    (dict(vocab_size=2**63 + 1), r"--data\.vocab_size must be <= 2\*\*63 \(token ids are int64\)"),
    (dict(name="add", vocab_size=13, min_source_length=3), r"--data\.min_source_length"),
    (dict(name="add", vocab_size=13, target_length=9), r"--data\.target_length: task add derives it"),
    (dict(name="copy", target_length=3), r"--data\.target_length: task copy derives it \(7"),
    (dict(name="copy", min_source_length=0), r"--data\.min_source_length must be in \[1, --data\.source_length=6\]"),
    (dict(name="reverse", min_source_length=7), r"--data\.min_source_length must be in \[1"),
    (dict(name="sort", min_source_length=-1), r"--data\.min_source_length"),
    (dict(name="copy", source_length=0), r"--data\.source_length must be >= 1"),
]


@pytest.mark.parametrize("kwargs,message", BAD_TASKS, ids=[str(k) for k, _ in BAD_TASKS])
def test_bad_task_settings_name_the_flag(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_task(**kwargs)


def test_boundary_settings_are_accepted():
    assert make_task("reverse_first", 2, 1, 1).target_length == 1
    assert make_task("reverse_first", 51, 6, 6).target_length == 6
    assert make_task("reverse_first", 51, 6, None, 6).min_source_length == 6  # equal to source_length: allowed
    assert make_task("copy", 3, 1).target_length == 2
    assert make_task("copy", 51, 6, 7, 6).min_source_length == 6  # the derived target length may be stated
    assert make_task("add", 13, 3).target_length == 3
    assert make_task("add", 13, 30).target_length == 16
    assert make_task("copy", 2**63, 4).vocab_size == 2**63


def test_add_at_its_longest_source_gives_exact_sums():
    """source_length 30: 14-digit operands. Before the bound, 39 and up raised numpy's "high is out of bounds for
    int64" at the first sample, and from 31 a number like 10**15 - 1 got a leading zero digit (float64 log10)."""
    task = make_task("add", 13, 30)
    source, target = task.sample(N, np.random.default_rng(9))
    for row, trow in zip(source, target):
        tokens = _unpadded(row)
        assert [int(t) for t in trow] == _reference("add", tokens, task.target_length)
    # The extremes, by hand: all nines (the longest sum, 15 digits) and powers of ten (where log10 is closest).
    for a, b in [(10**14 - 1, 10**14 - 1), (10**13, 10**14 - 10**13), (10**14 - 1, 1), (0, 10**14 - 1)]:
        tokens = [int(ch) + 2 for ch in str(a)] + [12] + [int(ch) + 2 for ch in str(b)]
        padded = np.array([tokens + [PAD] * (30 - len(tokens))], dtype=np.int64)
        out = _TARGETS["add"](task, padded, np.array([len(tokens)]))
        assert [int(t) for t in out[0]] == _reference("add", tokens, task.target_length), f"{a}+{b}"


# ---------------------------------------------------------------------------------------------------- memory


def test_available_memory_reads_proc_meminfo_then_sysconf_then_a_generous_bound(tmp_path, monkeypatch):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24683652 kB\nMemFree:  1 kB\nMemAvailable:   23914888 kB\n")
    real_open = open

    def fake_open(path, *args):
        return real_open(meminfo if path == "/proc/meminfo" else path, *args)

    monkeypatch.setattr(tasks, "open", fake_open, raising=False)  # shadows the builtin in the module
    assert tasks.available_memory() == 23914888 * 1024

    def no_meminfo(path, *args):
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)

    pages = {"SC_PAGE_SIZE": 4096, "SC_AVPHYS_PAGES": 1000}
    monkeypatch.setattr(tasks, "open", no_meminfo, raising=False)
    monkeypatch.setattr(tasks.os, "sysconf", lambda name: pages[name])
    assert tasks.available_memory() == 4096 * 1000

    def no_such_name(name):  # as on macOS, which has no SC_AVPHYS_PAGES
        raise ValueError("unrecognized configuration name")

    monkeypatch.setattr(tasks.os, "sysconf", no_such_name)
    assert tasks.available_memory() == tasks.UNKNOWN_MEMORY == 2**40


@pytest.mark.skipif(not os.path.exists("/proc/meminfo"), reason="Linux only: /proc/meminfo")
def test_available_memory_is_this_machines_memavailable():
    with open("/proc/meminfo") as f:
        kb = next(int(line.split()[1]) for line in f if line.startswith("MemAvailable:"))
    assert abs(tasks.available_memory() - kb * 1024) < 2**30  # read a moment apart


@pytest.mark.parametrize(
    "n,text",
    [
        (0, "0.0e0 bytes (0.0 B)"),
        (1536, "1.5e3 bytes (1.5 KiB)"),
        (4 * 10**18, "4.0e18 bytes (3.5 EiB)"),
        (2.4e10, "2.4e10 bytes (22.4 GiB)"),
        (10**400, "1.0e400 bytes"),  # more than a float holds: a vocabulary of 1e200 squared
    ],
)
def test_format_bytes(n, text):
    assert tasks.format_bytes(n) == text


def test_check_memory_refuses_only_above_what_is_available(monkeypatch):
    monkeypatch.setattr(tasks, "available_memory", lambda: 1000)
    tasks.check_memory(1000, "--x 1: the thing needs", "lower --x")  # exactly what is there: accepted
    with pytest.raises(ValueError) as error:
        tasks.check_memory(1001, "--x 1: the thing needs", "lower --x")
    message = "--x 1: the thing needs 1.0e3 bytes (1001.0 B), more than the 1.0e3 bytes (1000.0 B) of memory "
    assert str(error.value) == message + "available; lower --x"


@pytest.mark.parametrize("name", TASKS)
def test_sample_bytes_bounds_the_measured_peak_of_generating(name):
    """The data module refuses sizes by sample_bytes: it must not be below what drawing a split really takes
    (numpy's allocations, traced). Measured peaks: 1.6x (copy) to 3.1x (reverse_first) the final arrays."""
    task = make_task(name, 13, 29 if name == "add" else 40)
    n = 5000
    tracemalloc.start()
    try:
        source, target = task.sample(n, split_rng(1, "train"))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    final = source.nbytes + target.nbytes
    assert final == n * (task.source_length + task.target_length) * 8
    assert final < peak <= tasks.sample_bytes(task, [n]) <= 3.2 * final + 1


def test_sample_bytes_of_several_splits_holds_them_all_and_the_largest_being_drawn():
    task = make_task()  # 6 + 3 int64 a sample: 72 bytes
    assert tasks.sample_bytes(task, [1000, 10, 0, 0]) == 1010 * 72 + int(2.2 * 1000 * 72)
    assert tasks.sample_bytes(task, [100_000, 1000, 1000, 1000]) == 7_416_000 + int(2.2 * 7_200_000)


@pytest.mark.parametrize("task", [("reverse_first", 11, 4, 2), ("copy", 8, 5), ("sort", 9, 6, None, 3), ("add", 13, 7)])
def test_sample_chunks_are_sample_in_pieces(task):
    task = make_task(*task)
    for n, rows in ((1, 1), (10, 1), (10, 3), (10, 10), (10, 64), (1000, 333)):
        whole_rng, piece_rng = np.random.default_rng(n), np.random.default_rng(n)
        source, target = task.sample(n, whole_rng)
        pieces = list(task.sample_chunks(n, piece_rng, rows))
        assert [len(s) for s, _ in pieces] == [min(rows, n - i) for i in range(0, n, rows)]
        np.testing.assert_array_equal(np.concatenate([s for s, _ in pieces]), source)
        np.testing.assert_array_equal(np.concatenate([t for _, t in pieces]), target)
        assert piece_rng.bit_generator.state == whole_rng.bit_generator.state  # the next draw is the same too
