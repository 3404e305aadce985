from constellation_kit.data import ResumableSampler


def test_same_seed_and_epoch_same_order_new_epoch_new_order() -> None:
    a, b = ResumableSampler(50, seed=3), ResumableSampler(50, seed=3)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first and sorted(a) == sorted(first)


def test_ranks_are_disjoint_and_equal_sized() -> None:
    shards = [list(ResumableSampler(10, seed=0, rank=r, world_size=3)) for r in range(3)]
    assert [len(s) for s in shards] == [3, 3, 3]
    assert len(set().union(*map(set, shards))) == 9


def test_skip_resumes_the_global_order_at_any_world_size() -> None:
    full = list(ResumableSampler(12, seed=1))
    resumed = ResumableSampler(12, seed=1, rank=1, world_size=2)
    resumed.skip(epoch=0, n=4)
    assert list(resumed) == full[4:][1::2]
    # The skip applies once: the next pass over the epoch is complete again.
    assert len(list(resumed)) == 6
