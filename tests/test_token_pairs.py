"""TokenPairs: flat numpy storage of tokenized pairs, saved, memory-mapped and sliced."""

import numpy as np
import pytest

from idistill.data.token_pairs import TokenPairs, id_dtype

PAIRS = [([5, 6, 7], [8, 9]), ([], [4]), ([10], []), ([11, 12], [13, 14, 15, 16])]


@pytest.fixture
def pairs():
    return TokenPairs.from_lists(PAIRS)


def test_round_trip_through_files_is_exact_and_memory_mapped(pairs, tmp_path):
    pairs.save(tmp_path / "train")
    loaded = TokenPairs.load(tmp_path / "train")
    assert loaded == pairs and loaded.tolist() == [(list(s), list(t)) for s, t in PAIRS]
    assert isinstance(loaded.src, np.memmap) and not loaded.src.flags.writeable
    assert TokenPairs.load(tmp_path / "train", mmap=False) == pairs


def test_indexing_gives_numpy_views_without_bos_or_eos(pairs):
    src, tgt = pairs[0]
    assert src.tolist() == [5, 6, 7] and tgt.tolist() == [8, 9]
    assert pairs[-1][1].tolist() == [13, 14, 15, 16]
    assert len(pairs[1][0]) == 0 and len(pairs[2][1]) == 0
    with pytest.raises(IndexError):
        pairs[4]


def test_lengths_are_arrays(pairs):
    assert pairs.src_lens.tolist() == [3, 0, 1, 2]
    assert pairs.tgt_lens.tolist() == [2, 1, 0, 4]
    assert len(pairs) == 4 and pairs.src_lens.dtype == np.int64


@pytest.mark.parametrize(
    "index", [slice(None, 2), slice(1, None), slice(-2, None), slice(3, 1), slice(None, None, 2)]
)
def test_slices_select_the_same_pairs_as_on_a_list(pairs, index):
    part = pairs[index]
    assert isinstance(part, TokenPairs)
    assert part.tolist() == [(list(s), list(t)) for s, t in PAIRS[index]]
    assert part.src_lens.tolist() == [len(s) for s, _ in PAIRS[index]]


def test_a_contiguous_slice_shares_the_arrays_and_saves_only_its_pairs(pairs, tmp_path):
    head = pairs[1:3]
    assert head.src is pairs.src
    head.save(tmp_path / "head")
    assert TokenPairs.load(tmp_path / "head").tolist() == [([], [4]), ([10], [])]


def test_index_lists_and_boolean_masks_select_copies(pairs):
    assert pairs[[3, 0]].tolist() == [([11, 12], [13, 14, 15, 16]), ([5, 6, 7], [8, 9])]
    mask = np.array([True, False, False, True])
    assert pairs[mask] == pairs[[0, 3]]
    with pytest.raises(IndexError, match="mask of 2 for 4 pairs"):
        pairs[np.array([True, False])]


def test_equality_compares_contents_not_storage(pairs):
    assert pairs[1:] == TokenPairs.from_lists(PAIRS[1:])
    assert pairs != TokenPairs.from_lists(PAIRS[:3])
    assert pairs != TokenPairs.from_lists([(s, t[::-1]) for s, t in PAIRS])


def test_lengths_that_do_not_match_the_arrays_are_refused():
    with pytest.raises(ValueError, match=r"add up to \(3, 1\) ids but the arrays hold \(2, 1\)"):
        TokenPairs.from_lengths(np.zeros(2), np.zeros(1), np.array([3]), np.array([1]))


def test_ids_take_two_bytes_when_the_vocabulary_allows():
    assert id_dtype(32000) == np.uint16 and id_dtype(65536) == np.uint16
    assert id_dtype(250_002) == np.int32
