"""Seeded batch samplers: determinism per (seed, step), batch structure, and argument errors."""
from __future__ import annotations

import numpy as np
import pytest

from oneshot.embedder.samplers import EpisodeSampler, PairSampler, PKSampler, TripletSampler

# 3 groups (alphabets) x 6 classes x 5 items; class c belongs to group c // 6.
N_GROUPS, CLASSES_PER_GROUP, ITEMS = 3, 6, 5
LABELS = np.repeat(np.arange(N_GROUPS * CLASSES_PER_GROUP), ITEMS)
GROUPS = LABELS // CLASSES_PER_GROUP
# shuffle the rows so that structure must come from the sampler, not from the row order
_PERM = np.random.default_rng(0).permutation(len(LABELS))
LABELS, GROUPS = LABELS[_PERM], GROUPS[_PERM]


def _samplers():
    return {
        "pk": lambda seed: PKSampler(LABELS, p=4, k=3, seed=seed),
        "episode": lambda seed: EpisodeSampler(LABELS, GROUPS, n_way=5, k_shot=1, n_query=2, seed=seed),
        "episode-any": lambda seed: EpisodeSampler(LABELS, GROUPS, n_way=8, k_shot=2, n_query=1,
                                                   within_group=False, seed=seed),
        "pair": lambda seed: PairSampler(LABELS, GROUPS, pairs=10, seed=seed),
        "triplet": lambda seed: TripletSampler(LABELS, GROUPS, triplets=7, seed=seed),
    }


@pytest.mark.parametrize("name", list(_samplers()))
def test_deterministic_per_seed_and_step(name):
    make = _samplers()[name]
    a, b = make(3), make(3)
    # the same (seed, step) gives the same rows, whatever was asked before
    later_first = b.batch(7)
    for step in range(10):
        assert np.array_equal(a.batch(step), b.batch(step))
    assert np.array_equal(a.batch(7), later_first)
    assert a.batch(5).dtype.kind == "i"


@pytest.mark.parametrize("name", list(_samplers()))
def test_different_steps_and_seeds_differ(name):
    make = _samplers()[name]
    sampler = make(0)
    batches = [tuple(sampler.batch(step)) for step in range(10)]
    assert len(set(batches)) == 10
    assert not np.array_equal(make(0).batch(0), make(1).batch(0))


def test_pk_structure():
    sampler = PKSampler(LABELS, p=4, k=3, seed=0)
    for step in range(20):
        rows = sampler.batch(step)
        assert rows.shape == (12,)
        assert len(set(rows.tolist())) == 12  # no row twice
        blocks = LABELS[rows].reshape(4, 3)  # class-major: [c0 x K, c1 x K, ...]
        assert (blocks == blocks[:, :1]).all()
        assert len(set(blocks[:, 0].tolist())) == 4


def test_pk_skips_small_classes():
    labels = np.array([0, 0, 0, 1, 1, 1, 2, 3, 3, 3])  # class 2 has one item
    sampler = PKSampler(labels, p=3, k=2, seed=0)
    seen = set()
    for step in range(30):
        seen |= set(labels[sampler.batch(step)].tolist())
    assert seen == {0, 1, 3}


def test_episode_within_group():
    sampler = EpisodeSampler(LABELS, GROUPS, n_way=5, k_shot=1, n_query=2, seed=0)
    used_groups = set()
    for step in range(30):
        rows = sampler.batch(step)
        assert rows.shape == (5 * 3,)
        assert len(set(rows.tolist())) == 15
        blocks = LABELS[rows].reshape(5, 3)
        assert (blocks == blocks[:, :1]).all()
        assert len(set(blocks[:, 0].tolist())) == 5
        groups = set(GROUPS[rows].tolist())
        assert len(groups) == 1  # all classes from one alphabet
        used_groups |= groups
    assert used_groups == set(range(N_GROUPS))


def test_episode_across_groups():
    sampler = EpisodeSampler(LABELS, GROUPS, n_way=8, k_shot=2, n_query=1, within_group=False, seed=0)
    rows = sampler.batch(0)
    blocks = LABELS[rows].reshape(8, 3)
    assert (blocks == blocks[:, :1]).all()
    assert len(set(blocks[:, 0].tolist())) == 8
    assert len(set(GROUPS[rows].tolist())) > 1  # 8 classes cannot fit in one 6-class group


def test_episode_skips_groups_with_too_few_classes():
    # group 9 has only two classes: 5-way within-group episodes never use it
    labels = np.concatenate([LABELS, np.repeat([100, 101], 4)])
    groups = np.concatenate([GROUPS, np.full(8, 9)])
    sampler = EpisodeSampler(labels, groups, n_way=5, k_shot=1, n_query=1, seed=0)
    for step in range(30):
        assert 9 not in set(groups[sampler.batch(step)].tolist())


def test_episode_classes_in_blocks_per_group():
    # 8-way episodes in blocks of 3 classes: groups of 3, 3 and 2 classes, three different groups
    sampler = EpisodeSampler(LABELS, GROUPS, n_way=8, k_shot=1, n_query=1, within_group=False,
                             classes_per_group=3, seed=0)
    used_groups = set()
    for step in range(30):
        rows = sampler.batch(step)
        blocks = LABELS[rows].reshape(8, 2)
        assert (blocks == blocks[:, :1]).all() and len(set(blocks[:, 0].tolist())) == 8
        class_groups = GROUPS[rows].reshape(8, 2)[:, 0]
        assert [len(set(class_groups[i:j].tolist())) for i, j in ((0, 3), (3, 6), (6, 8))] == [1, 1, 1]
        assert len({class_groups[0], class_groups[3], class_groups[6]}) == 3
        used_groups |= set(class_groups.tolist())
    assert used_groups == set(range(N_GROUPS))
    assert np.array_equal(sampler.batch(4), sampler.batch(4))


def test_episode_without_blocks_draws_as_before():
    # classes_per_group=0 keeps the draw that trained the shipped model: N classes at random, then items
    sampler = EpisodeSampler(LABELS, GROUPS, n_way=8, k_shot=2, n_query=1, within_group=False, seed=3)
    for step in (0, 7):
        rng = np.random.default_rng([3, step])
        classes = rng.choice(np.arange(18), 8, replace=False)
        rows_of = [np.flatnonzero(LABELS == c) for c in range(18)]
        expected = np.concatenate([rng.choice(rows_of[c], 3, replace=False) for c in classes])
        assert np.array_equal(sampler.batch(step), expected)


def test_episode_look_alike_block_joins_the_usual_draw():
    # 8-way in blocks of 3; with a table, 4 classes are a random class and its 3 nearest
    options = dict(n_way=8, k_shot=1, n_query=1, within_group=False, classes_per_group=3, seed=0)
    usual = EpisodeSampler(LABELS, GROUPS, **options)
    sampler = EpisodeSampler(LABELS, GROUPS, **options, look_alikes=4)
    assert np.array_equal(sampler.batch(5), usual.batch(5))  # no table yet: the usual draw
    table = np.array([[(c + j) % 18 for j in (1, 2, 3, 4, 5)] for c in range(18)])  # c's nearest: c+1, c+2, ...
    sampler.neighbours = table
    for step in range(30):
        classes = LABELS[sampler.batch(step)].reshape(8, 2)
        assert (classes == classes[:, :1]).all()
        classes = classes[:, 0]
        assert len(set(classes.tolist())) == 8
        anchor = classes[4]
        assert classes[4:].tolist() == [anchor, (anchor + 1) % 18, (anchor + 2) % 18, (anchor + 3) % 18]
        usual_classes = LABELS[usual.batch(step)].reshape(8, 2)[:, 0]
        kept = [c for c in usual_classes if c not in classes[4:]][:4]
        assert classes[:4].tolist() == kept  # the rest: the usual draw, in its order
    assert np.array_equal(sampler.batch(3), sampler.batch(3))
    with pytest.raises(ValueError, match="look_alikes must be 0"):
        EpisodeSampler(LABELS, GROUPS, **{**options, "look_alikes": 8})


def test_episode_blocks_skip_small_groups(caplog):
    # group 9 has two classes: blocks of 3 never come from it, and blocks of 6 need more groups than exist
    labels = np.concatenate([LABELS, np.repeat([100, 101], 4)])
    groups = np.concatenate([GROUPS, np.full(8, 9)])
    sampler = EpisodeSampler(labels, groups, n_way=9, k_shot=1, n_query=1, within_group=False,
                             classes_per_group=3, seed=0)
    for step in range(30):
        assert 9 not in set(groups[sampler.batch(step)].tolist())
    assert "1 of 4 groups (2 of 20 classes) have fewer than 3 classes with 2 items and are never drawn" in caplog.text
    with pytest.raises(ValueError, match="20 classes in blocks of 6 need 4 groups with 6 classes .* 3 found"):
        EpisodeSampler(labels, groups, n_way=20, k_shot=1, n_query=1, within_group=False, classes_per_group=6)
    with pytest.raises(ValueError, match="needs within_group off"):
        EpisodeSampler(LABELS, GROUPS, n_way=4, within_group=True, classes_per_group=2)
    with pytest.raises(ValueError, match="no group has 7 classes"):
        EpisodeSampler(LABELS, GROUPS, n_way=14, k_shot=1, n_query=1, within_group=False, classes_per_group=7)


def test_episode_blocks_with_small_groups_draw_every_group():
    # group 9 has two classes: with small_groups it gives a block of both, the other groups blocks of
    # up to 3, in random order until 9 classes
    labels = np.concatenate([LABELS, np.repeat([100, 101], 4)])
    groups = np.concatenate([GROUPS, np.full(8, 9)])
    sampler = EpisodeSampler(labels, groups, n_way=9, k_shot=1, n_query=1, within_group=False,
                             classes_per_group=3, small_groups=True, seed=0)
    used_groups, block_sizes = set(), set()
    for step in range(40):
        rows = sampler.batch(step)
        classes = labels[rows].reshape(9, 2)
        assert (classes == classes[:, :1]).all() and len(set(classes[:, 0].tolist())) == 9
        class_groups = groups[rows].reshape(9, 2)[:, 0]
        starts = [0] + [i for i in range(1, 9) if class_groups[i] != class_groups[i - 1]]
        sizes = np.diff(starts + [9])
        assert len(set(class_groups[starts].tolist())) == len(starts)  # one block per group
        for start, size in zip(starts, sizes):
            whole_group = 2 if class_groups[start] == 9 else 3
            assert size <= whole_group and (size == whole_group or start + size == 9)  # only the last block is cut
        used_groups |= set(class_groups.tolist())
        block_sizes |= set(sizes.tolist())
    assert used_groups == {0, 1, 2, 9} and 2 in block_sizes
    assert np.array_equal(sampler.batch(5), sampler.batch(5))
    with pytest.raises(ValueError, match="small_groups needs classes_per_group"):
        EpisodeSampler(labels, groups, n_way=9, within_group=False, small_groups=True)
    with pytest.raises(ValueError, match="n_way=21 but only 20 classes"):
        EpisodeSampler(labels, groups, n_way=21, k_shot=1, n_query=1, within_group=False, classes_per_group=3,
                       small_groups=True)


def test_pair_balance_and_same_group_negatives():
    sampler = PairSampler(LABELS, GROUPS, pairs=10, same_group_negatives=True, seed=0)
    for step in range(30):
        rows = sampler.batch(step)
        assert rows.shape == (20,)
        a, b = rows[:10], rows[10:]
        same = LABELS[a] == LABELS[b]
        assert same[:5].all() and not same[5:].any()  # first half "same", second half "different"
        assert (a[:5] != b[:5]).all()  # a "same" pair is two different drawings
        assert (GROUPS[a] == GROUPS[b]).all()  # negatives from the anchor's own alphabet


def test_pair_negatives_across_groups_when_not_asked():
    sampler = PairSampler(LABELS, GROUPS, pairs=20, same_group_negatives=False, seed=0)
    crossed = 0
    for step in range(10):
        rows = sampler.batch(step)
        a, b = rows[:20], rows[20:]
        assert not (LABELS[a[10:]] == LABELS[b[10:]]).any()
        crossed += int((GROUPS[a[10:]] != GROUPS[b[10:]]).sum())
    assert crossed > 0


def test_pair_odd_count_and_lonely_group():
    # group 1 holds a single class: its negatives must come from elsewhere
    labels = np.array([0, 0, 1, 1, 2, 2, 2])
    groups = np.array([0, 0, 0, 0, 1, 1, 1])
    sampler = PairSampler(labels, groups, pairs=5, seed=0)
    for step in range(20):
        rows = sampler.batch(step)
        a, b = rows[:5], rows[5:]
        assert (labels[a[:2]] == labels[b[:2]]).all()
        assert (labels[a[2:]] != labels[b[2:]]).all()


def test_triplet_structure():
    sampler = TripletSampler(LABELS, GROUPS, triplets=7, seed=0)
    for step in range(30):
        rows = sampler.batch(step)
        assert rows.shape == (21,)
        anchors, positives, negatives = rows[:7], rows[7:14], rows[14:]
        assert (LABELS[anchors] == LABELS[positives]).all()
        assert (anchors != positives).all()
        assert (LABELS[anchors] != LABELS[negatives]).all()
        assert (GROUPS[anchors] == GROUPS[negatives]).all()


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="p=40 classes asked but only 18 have 3 items"):
        PKSampler(LABELS, p=40, k=3)
    with pytest.raises(ValueError, match="no class has the 6 items"):
        PKSampler(LABELS, p=2, k=6)
    with pytest.raises(ValueError, match="p >= 2"):
        PKSampler(LABELS, p=1, k=2)
    with pytest.raises(ValueError, match="no group has 7 classes"):
        EpisodeSampler(LABELS, GROUPS, n_way=7, k_shot=1, n_query=1)
    with pytest.raises(ValueError, match="n_way=20 but only 18 classes"):
        EpisodeSampler(LABELS, GROUPS, n_way=20, within_group=False, n_query=1)
    with pytest.raises(ValueError, match="no class has the 9 items"):
        EpisodeSampler(LABELS, GROUPS, n_way=5, k_shot=4, n_query=5)
    with pytest.raises(ValueError, match="n_way >= 2"):
        EpisodeSampler(LABELS, GROUPS, n_way=1)
    with pytest.raises(ValueError, match="two classes"):
        PairSampler(np.array([0, 0, 0, 1]), pairs=4)
    with pytest.raises(ValueError, match="at least 2 pairs"):
        PairSampler(LABELS, pairs=1)
    with pytest.raises(ValueError, match="two classes"):
        TripletSampler(np.array([0, 0, 1]), triplets=4)
    with pytest.raises(ValueError, match="non-empty labels"):
        PKSampler(np.array([], dtype=np.int64), p=2, k=1)
    with pytest.raises(ValueError, match="does not match labels"):
        PairSampler(LABELS, GROUPS[:-1])
    with pytest.raises(ValueError, match="at least 1 triplet"):
        TripletSampler(LABELS, GROUPS, triplets=0)
