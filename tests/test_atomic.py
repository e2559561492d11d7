"""atomic.py: temporaries beside the targets, moved into place all together or not at all."""

from __future__ import annotations

import pytest

from lit_seq2seq.atomic import replacing, temporary_for


def test_the_block_writes_temporaries_and_its_end_moves_them_onto_the_paths(tmp_path):
    a, b = tmp_path / "a.csv", tmp_path / "b.png"
    a.write_text("old a")
    with replacing(a, b) as (tmp_a, tmp_b):
        assert (tmp_a, tmp_b) == (temporary_for(a), temporary_for(b)) and tmp_a.name.startswith(".a.csv.")
        tmp_a.write_text("new a")
        tmp_b.write_text("new b")
        assert a.read_text() == "old a" and not b.exists()  # nothing moves before the block ends
    assert (a.read_text(), b.read_text()) == ("new a", "new b")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.csv", "b.png"]


@pytest.mark.parametrize("fsync", [True, False])
def test_an_exception_in_the_block_leaves_every_path_as_it_was(fsync, tmp_path):
    a, b = tmp_path / "a.csv", tmp_path / "b.png"
    a.write_text("old a")
    with pytest.raises(OSError, match="disk full"), replacing(a, b, fsync=fsync) as (tmp_a, tmp_b):
        tmp_a.write_text("new a")
        tmp_b.write_text("half of b")
        raise OSError("disk full")
    assert a.read_text() == "old a" and not b.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["a.csv"]  # the temporaries are gone
