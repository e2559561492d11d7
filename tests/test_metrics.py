"""metrics.py: batched edit distance and multi-reference exact match / token error rate, against hand-counted cases and
torchmetrics' edit distance."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import BLOCK_IMPORTS, run_python

from lit_seq2seq.metrics import answer_tokens, edit_distance, score

EOS, PAD = 1, 0


def refs(*rows: list[list[int]], width: int = 6) -> np.ndarray:
    """references (B, R, width): each reference's tokens then the end token then 0; missing slots -1."""
    slots = max(len(r) for r in rows)
    out = np.full((len(rows), slots, width), -1, dtype=np.int64)
    for b, row in enumerate(rows):
        for r, tokens in enumerate(row):
            out[b, r] = np.pad(np.array([*tokens, EOS]), (0, width - len(tokens) - 1))
    return out


def preds(*rows: list[int], width: int = 7) -> np.ndarray:
    """predictions (B, width) as greedy decodes them: tokens, the end token, then 0."""
    return np.stack([np.pad(np.array([*r, EOS]), (0, width - len(r) - 1)) for r in rows])


@pytest.mark.parametrize(
    ("prediction", "reference", "errors"),
    [
        ([5, 6, 7], [5, 6, 7], 0),  # identical
        ([5, 9, 7], [5, 6, 7], 1),  # one substitution
        ([5, 6, 8, 7], [5, 6, 7], 1),  # one insertion
        ([5, 7], [5, 6, 7], 1),  # one deletion
        ([], [5, 6, 7], 3),  # empty prediction: every reference token deleted
        ([5, 6, 7], [], 3),  # empty reference
        ([7, 6, 5], [5, 6, 7], 2),  # reversed: two substitutions
        ([2, 3, 4, 5], [3, 4, 5, 2], 2),  # a rotation: a deletion and an insertion
    ],
)
def test_exact_cases(prediction: list[int], reference: list[int], errors: int) -> None:
    s = score(preds(prediction), refs([reference]), EOS, PAD)
    assert (bool(s.exact[0]), int(s.errors[0]), int(s.length[0])) == (errors == 0, errors, len(reference))


def test_end_token_ends_the_prediction_and_padding_after_it_is_ignored() -> None:
    reference = refs([[5, 6]], [[5, 6]], [[5, 6]], [[5, 6]], [[5, 6]])
    predictions = np.array(
        [
            [5, 6, 1, 0, 0],  # the end, then padding
            [5, 6, 1, 7, 7],  # anything after the end is not the prediction's
            [5, 6, 0, 1, 0],  # a pad the model emitted before the end ends the answer too (the contract's step 6)
            [5, 0, 6, 1, 0],  # ... so here the answer is [5]: one deletion
            [5, 6, 6, 6, 6],  # never ended: every token counts
        ]
    )
    s = score(predictions, reference, EOS, PAD)
    assert s.exact.tolist() == [True, True, True, False, False] and s.errors.tolist() == [0, 0, 0, 1, 3]
    # what decode prints and scores, and test / validate score: one answer
    answers = [answer_tokens(row, EOS, PAD) for row in predictions.tolist()]
    assert [len(a) for a in answers] == [2, 2, 2, 1, 5]


def test_without_an_end_token_the_whole_row_is_the_answer() -> None:
    """Fixed-length tasks: every decoded token counts, a 0 the model emitted at the end too (as decode prints it)."""
    s = score(np.array([[5, 6, 0], [5, 0, 7]]), np.array([[[5, 6, 7]], [[5, 6, 7]]]), None, PAD)
    assert s.exact.tolist() == [False, False] and s.errors.tolist() == [1, 1]
    assert answer_tokens([5, 6, 0], None, PAD) == [5, 6, 0]
    s = score(np.array([[5, 6]]), np.array([[[5, 6, 0]]]), None, PAD)  # a reference's padding is not its tokens
    assert s.exact.tolist() == [True] and s.length.tolist() == [2]


def test_absent_reference_slots_and_ties() -> None:
    references = refs(
        [[5, 6, 7]],  # one reference: the other slots are -1
        [[5, 6, 7], [5, 8]],  # [5, 8] exact
        [[5, 9, 7, 7], [5, 9]],  # a tie (1 error each): the first listed is the closest; its length counts
        [[4, 4], [5, 9, 7, 7]],  # 2 errors to [4, 4] vs 1 to the second: the second
    )
    assert references[0, 1:].tolist() == [[-1] * 6]
    s = score(preds([5, 6, 7], [5, 8], [5, 9, 7], [5, 9, 7]), references, EOS, PAD)
    assert s.exact.tolist() == [True, True, False, False]
    assert s.errors.tolist() == [0, 0, 1, 1] and s.length.tolist() == [3, 2, 4, 4]
    assert s.exact_match == 0.5 and s.token_error_rate == pytest.approx(2 / 13)


def test_corpus_figures_word_and_token_error_rate() -> None:
    s = score(preds([5, 6, 7], [5, 9, 7], [], [2, 3]), refs([[5, 6, 7]], [[5, 6, 7]], [[2, 3]], [[2, 3], [4]]), EOS)
    assert s.errors.tolist() == [0, 1, 2, 0] and s.length.tolist() == [3, 3, 2, 2]
    assert s.exact_match == 0.5  # WER 50%
    assert s.token_error_rate == pytest.approx(3 / 10)


def test_tasks_without_an_end_token_use_the_whole_row() -> None:
    # reverse_first: fixed-length targets, 1 is an ordinary token and nothing ends a row; trailing pads are padding.
    references = np.array([[[3, 1, 2]], [[3, 1, 2]], [[3, 1, 2]]])
    s = score(np.array([[3, 1, 2], [3, 2, 2], [3, 1, 0]]), references, None, PAD)
    assert s.exact.tolist() == [True, False, False] and s.errors.tolist() == [0, 1, 1] and s.length.tolist() == [3] * 3


def test_bad_shapes_and_a_row_without_reference() -> None:
    with pytest.raises(ValueError, match=r"predictions \(B, T'\) and references \(B, R, T\) expected"):
        score(np.zeros((2, 3), dtype=np.int64), np.zeros((2, 3), dtype=np.int64), EOS)
    references = refs([[5]], [[5]])
    references[1] = -1
    with pytest.raises(ValueError, match="row 1 has no reference"):
        score(preds([5], [5]), references, EOS)


def test_edit_distance_of_padded_rows_reads_only_their_lengths() -> None:
    a = np.array([[5, 6, 9, 9], [1, 2, 3, 4], [7, 7, 7, 7]])
    b = np.array([[5, 6, 4], [2, 3, 8], [0, 0, 0]])
    assert edit_distance(a, [2, 4, 0], b, [2, 2, 0]).tolist() == [0, 2, 0]
    assert edit_distance(a, [4, 0, 3], b, [3, 3, 1]).tolist() == [2, 3, 3]  # 9 -> 4 and one 9 deleted
    assert edit_distance(a[:0], [], b[:0], []).tolist() == []


def as_text(tokens: np.ndarray, length: int) -> str:
    """Token ids as characters: torchmetrics' edit distance counts characters of strings."""
    return "".join(chr(0x100 + int(t)) for t in tokens[:length])


def test_agrees_with_torchmetrics_on_random_pairs() -> None:
    from torchmetrics.functional.text import edit_distance as tm_edit_distance

    rng = np.random.default_rng(0)
    n, width = 5000, 14
    a, b = rng.integers(2, 6, (n, width)), rng.integers(2, 6, (n, width + 3))  # few symbols: many near matches
    a_length, b_length = rng.integers(0, width + 1, n), rng.integers(0, width + 4, n)
    ours = edit_distance(a, a_length, b, b_length)
    theirs = tm_edit_distance(
        [as_text(x, k) for x, k in zip(a, a_length)], [as_text(y, k) for y, k in zip(b, b_length)], reduction="none"
    )
    assert ours.tolist() == theirs.tolist()
    assert 0 < (ours == 0).sum() and ours.max() == width + 3


def test_multi_reference_score_agrees_with_torchmetrics_closest_reference() -> None:
    from torchmetrics.functional.text import edit_distance as tm_edit_distance

    rng = np.random.default_rng(1)
    b, r, width = 2000, 3, 8
    references = np.full((b, r, width), -1)
    counts = rng.integers(1, r + 1, b)
    for i in range(b):
        for j in range(counts[i]):
            k = rng.integers(0, width)
            references[i, j] = np.pad(np.append(rng.integers(2, 5, k), EOS), (0, width - k - 1))
    k = rng.integers(0, width + 2, b)
    predictions = np.where(np.arange(width + 3) < k[:, None], rng.integers(2, 5, (b, width + 3)), PAD)
    predictions[np.arange(b), k] = EOS
    s = score(predictions, references, EOS, PAD)
    for i in range(b):
        texts = [as_text(references[i, j], list(references[i, j]).index(EOS)) for j in range(counts[i])]
        d = tm_edit_distance([as_text(predictions[i], k[i])] * counts[i], texts, reduction="none").tolist()
        best = d.index(min(d))
        assert (s.errors[i], s.length[i], s.exact[i]) == (d[best], len(texts[best]), d[best] == 0), i
    assert 0 < s.exact.sum() < b


def test_scoring_needs_no_torch() -> None:
    code = BLOCK_IMPORTS + (
        "import numpy as np\nfrom lit_seq2seq.metrics import score\n"
        "s = score(np.array([[5, 1]]), np.array([[[5, 1], [-1, -1]]]), 1)\nprint(s.exact_match, s.token_error_rate)"
    )
    done = run_python(code, "torch")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1.0", "0.0"]
