import random

import numpy as np
import pytest
import torch

from idistill.data.batching import collate, token_batches
from idistill.data.token_pairs import TokenPairs

PAD, BOS, EOS = 0, 2, 3


@pytest.fixture
def lengths():
    rng = random.Random(0)
    src = [rng.randint(2, 40) for _ in range(500)]
    tgt = [max(2, s + rng.randint(-5, 5)) for s in src]
    return src, tgt


def _cost(batch, src, tgt):
    return len(batch) * max(max(src[i], tgt[i]) for i in batch)


@pytest.mark.parametrize("shuffle", [False, True])
def test_every_index_lands_in_exactly_one_batch(lengths, shuffle):
    batches = token_batches(*lengths, 300, shuffle=shuffle, seed=1)
    assert sorted(i for b in batches for i in b) == list(range(500))


@pytest.mark.parametrize("shuffle", [False, True])
def test_batches_respect_max_tokens_and_are_filled_greedily(lengths, shuffle):
    src, tgt = lengths
    batches = token_batches(src, tgt, 300, shuffle=shuffle, seed=1)
    assert all(_cost(b, src, tgt) <= 300 for b in batches)
    assert sum(_cost(b, src, tgt) for b in batches) > 0.8 * 300 * len(batches)


def test_same_seed_and_epoch_give_the_same_batches(lengths):
    a = token_batches(*lengths, 300, shuffle=True, seed=4, epoch=2)
    assert a == token_batches(*lengths, 300, shuffle=True, seed=4, epoch=2)
    assert a != token_batches(*lengths, 300, shuffle=True, seed=4, epoch=3)
    assert a != token_batches(*lengths, 300, shuffle=True, seed=5, epoch=2)


def test_without_shuffle_batches_come_in_length_order(lengths):
    src, tgt = lengths
    order = [i for b in token_batches(src, tgt, 300, shuffle=False) for i in b]
    keys = [(src[i], tgt[i]) for i in order]
    assert keys == sorted(keys)


def test_shuffle_breaks_length_ties_at_random():
    same = [10] * 100
    a = token_batches(same, same, 100, shuffle=True, seed=0, epoch=0)
    b = token_batches(same, same, 100, shuffle=True, seed=0, epoch=1)
    assert {frozenset(x) for x in a} != {frozenset(x) for x in b}


def test_example_longer_than_max_tokens_raises_naming_the_setting():
    with pytest.raises(ValueError, match="trainer.max_tokens"):
        token_batches([5, 50], [5, 5], 40, shuffle=False)


def test_collate_pads_and_adds_eos_and_bos():
    b = collate([([5, 6, 7], [8, 9]), ([5], [8, 9, 10, 11])], PAD, BOS, EOS)
    assert b["src_tokens"].tolist() == [[5, 6, 7, EOS], [5, EOS, PAD, PAD]]
    assert b["src_lengths"].tolist() == [4, 2]
    assert b["prev_output_tokens"].tolist() == [[BOS, 8, 9, PAD, PAD], [BOS, 8, 9, 10, 11]]
    assert b["target"].tolist() == [[8, 9, EOS, PAD, PAD], [8, 9, 10, 11, EOS]]
    assert all(t.dtype == torch.long for t in b.values())


def test_collate_ntokens_counts_non_pad_target_tokens():
    b = collate([([5, 6, 7], [8, 9]), ([5], [8, 9, 10, 11])], PAD, BOS, EOS)
    assert b["ntokens"].dim() == 0
    assert int(b["ntokens"]) == int(b["target"].ne(PAD).sum()) == 8


def test_collate_refuses_an_empty_batch():
    with pytest.raises(ValueError, match="empty"):
        collate([], PAD, BOS, EOS)


def test_numpy_lengths_give_the_same_batches_as_lists(lengths):
    src, tgt = lengths
    for shuffle in (False, True):
        as_lists = token_batches(src, tgt, 300, shuffle=shuffle, seed=2)
        as_arrays = token_batches(np.array(src), np.array(tgt), 300, shuffle=shuffle, seed=2)
        assert as_arrays == as_lists and all(type(i) is int for b in as_arrays for i in b)


def test_no_examples_give_no_batches():
    assert token_batches([], [], 100, shuffle=True) == []


def test_collate_takes_numpy_pairs_of_any_int_type():
    pairs = TokenPairs.from_lists([([5, 6, 7], [8, 9]), ([5], [8, 9, 10, 11])], dtype=np.uint16)
    from_numpy = collate([pairs[0], pairs[1]], PAD, BOS, EOS)
    from_lists = collate([([5, 6, 7], [8, 9]), ([5], [8, 9, 10, 11])], PAD, BOS, EOS)
    for key, value in from_lists.items():
        assert torch.equal(from_numpy[key], value) and from_numpy[key].dtype == torch.long


def test_collate_handles_empty_sentences():
    b = collate([([], [8]), ([5], [])], PAD, BOS, EOS)
    assert b["src_tokens"].tolist() == [[EOS, PAD], [5, EOS]]
    assert b["target"].tolist() == [[8, EOS], [EOS, PAD]]
    assert int(b["ntokens"]) == 3
