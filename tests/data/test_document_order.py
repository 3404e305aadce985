"""Every slot reads its own documents: one epoch over all slots is every item of the split exactly once."""

import itertools

import pytest

from constellation_kit.data.document_order import DocumentOrder, Position
from constellation_kit.data.splits import split_chunks, validation_chunks


@pytest.mark.parametrize("num_chunks,num_slots", [(10, 4), (3, 4), (7, 1)])
def test_an_epoch_over_all_slots_reads_each_item_once(num_chunks: int, num_slots: int):
    chunks = {c: (c * 10, c * 10 + 10 - c % 3) for c in range(num_chunks)}  # chunks of uneven sizes
    expected = sorted(i for first, end in chunks.values() for i in range(first, end))
    read = []
    for slot in range(num_slots):
        order = DocumentOrder("web", chunks, slot, num_slots, seed=1)
        read += [item for item, *_ in order.read_from(Position(), endless=False)]
    assert sorted(read) == expected
    one = DocumentOrder("web", chunks, 0, num_slots, seed=1)
    epochs = [list(itertools.islice(one.read_from(Position(epoch=e), endless=False), 50)) for e in (0, 1)]
    assert epochs[0] != epochs[1]  # each epoch its own shuffle


def test_a_position_continues_where_it_stopped():
    chunks = {c: (c * 8, c * 8 + 8) for c in range(6)}
    order = DocumentOrder("code", chunks, 1, 2, seed=3)
    straight = [item for item, *_ in itertools.islice(order.read_from(Position()), 40)]  # over an epoch boundary
    position = Position()
    head = [item for item, *_ in itertools.islice(order.read_from(position), 17)]
    tail = [item for item, *_ in itertools.islice(DocumentOrder("code", chunks, 1, 2, seed=3).read_from(position), 23)]
    assert head + tail == straight


def test_validation_chunks_are_a_stable_share_of_at_least_one():
    assert len(validation_chunks("web", 100, 0, 0.05)) == 5
    assert len(validation_chunks("web", 4, 0, 0.01)) == 1
    assert validation_chunks("web", 100, 0, 0.05) == validation_chunks("web", 100, 0, 0.05)
    assert validation_chunks("web", 100, 0, 0.05) != validation_chunks("code", 100, 0, 0.05)


def test_a_single_chunk_source_holds_out_its_tail():
    train, val = split_chunks("web", [(0, 40)], seed=0, fraction=0.1)
    assert train == {0: (0, 36)} and val == {0: (36, 40)}
    train, val = split_chunks("web", [(0, 10), (10, 20), (20, 30)], seed=0, fraction=0.1)
    assert len(val) == 1 and sorted(train) + sorted(val) != [] and set(train) | set(val) == {0, 1, 2}
