from constellation_kit.data.splits import is_validation


def test_split_is_deterministic_and_near_the_fraction() -> None:
    ids = [f"doc{i}" for i in range(2000)]
    held_out = [i for i in ids if is_validation(i, seed=0, fraction=0.1)]
    assert held_out == [i for i in ids if is_validation(i, seed=0, fraction=0.1)]
    assert 150 < len(held_out) < 250


def test_other_seed_other_split() -> None:
    ids = [f"doc{i}" for i in range(200)]
    assert [is_validation(i, 0, 0.5) for i in ids] != [is_validation(i, 1, 0.5) for i in ids]
