"""N-way k-shot episode sampling from labels alone."""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from oneshot.errors import InvalidInputError
from oneshot.pipelines.evaluation.metrics import label_arrays

logger = logging.getLogger(__name__)


@dataclass
class Episode:
    """One N-way k-shot task, as row indices into the embedding table.

    Attributes:
        support: int64 (n_way, k_shot); row ``i`` holds the support items of ``classes[i]``.
        query: int64 (n_way * n_query,) query rows, in shuffled order.
        query_target: int64 (n_way * n_query,) position in ``support`` of each query's class.
        classes: the n_way labels, in support order (shuffled).
    """

    support: np.ndarray
    query: np.ndarray
    query_target: np.ndarray
    classes: list

    @property
    def n_way(self) -> int:
        return int(self.support.shape[0])

    @property
    def k_shot(self) -> int:
        return int(self.support.shape[1])


def _check_positive_int(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InvalidInputError(f"{name} must be an int >= 1, got {value!r}")
    return int(value)


def _describe(items: list, limit: int = 5) -> str:
    shown = ", ".join(str(i) for i in items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def sample_episodes(
    labels: np.ndarray,
    groups: np.ndarray | None = None,
    n_way: int = 20,
    k_shot: int = 1,
    n_query: int = 1,
    n_episodes: int = 100,
    within_group: bool = False,
    seed: int = 0,
) -> list[Episode]:
    """Sample N-way k-shot episodes.

    For each episode: draw ``n_way`` distinct classes (all from one group when
    ``within_group``, e.g. one Omniglot alphabet), shuffle their order, and draw
    ``k_shot + n_query`` distinct items of each class without replacement: the first ``k_shot``
    are the support, the rest the queries.

    Args:
        labels: (N,) class of each row.
        groups: (N,) group of each row (e.g. alphabet); required when ``within_group``.
        n_way: classes per episode (>= 2).
        k_shot: support items per class.
        n_query: query items per class.
        n_episodes: number of episodes.
        within_group: draw each episode's classes from a single group; groups with fewer than
            ``n_way`` classes are skipped.
        seed: seed of ``np.random.default_rng``.

    Returns:
        ``n_episodes`` :class:`Episode` objects; the same seed gives the same episodes.

    Raises:
        ValueError: bad arguments; a class with fewer than ``k_shot + n_query`` items (named);
            fewer than ``n_way`` classes (or no group with ``n_way`` classes).
    """
    n_way = _check_positive_int("n_way", n_way)
    k_shot = _check_positive_int("k_shot", k_shot)
    n_query = _check_positive_int("n_query", n_query)
    n_episodes = _check_positive_int("n_episodes", n_episodes)
    if n_way < 2:
        raise InvalidInputError(f"n_way must be >= 2, got {n_way}")
    labels, groups = label_arrays(labels, groups)
    if within_group and groups is None:
        raise InvalidInputError("within_group=True needs groups")

    classes, first, inverse = np.unique(
        labels.astype(str), return_index=True, return_inverse=True
    )
    class_labels = [labels[i] for i in first]
    order = np.argsort(inverse, kind="stable")
    counts = np.bincount(inverse, minlength=len(classes))
    members = np.split(order, np.cumsum(counts)[:-1])

    need = k_shot + n_query
    short = [f"{class_labels[c]!r} ({counts[c]})" for c in np.flatnonzero(counts < need)]
    if short:
        raise InvalidInputError(
            f"{len(short)} class(es) have fewer than k_shot + n_query = {need} items: "
            + _describe(short)
        )

    if within_group:
        class_group = []
        for c, rows in enumerate(members):
            found = np.unique(groups[rows].astype(str))
            if len(found) != 1:
                raise InvalidInputError(f"class {class_labels[c]!r} spans groups {list(found)}")
            class_group.append(found[0])
        class_group = np.asarray(class_group, dtype=object)
        pools = []
        skipped = []
        for g in np.unique(class_group.astype(str)):
            pool = np.flatnonzero(class_group == g)
            if len(pool) >= n_way:
                pools.append(pool)
            else:
                skipped.append(f"{str(g)!r} ({len(pool)})")
        if skipped:
            logger.info(
                "skipping %d group(s) with fewer than %d classes: %s",
                len(skipped),
                n_way,
                _describe(skipped),
            )
        if not pools:
            raise InvalidInputError(
                f"no group has n_way = {n_way} classes; groups (classes): {_describe(skipped)}"
            )
    else:
        if len(classes) < n_way:
            raise InvalidInputError(f"n_way = {n_way} but only {len(classes)} classes")
        pools = [np.arange(len(classes))]

    rng = np.random.default_rng(seed)
    episodes = []
    for _ in range(n_episodes):
        pool = pools[rng.integers(len(pools))]
        chosen = rng.choice(pool, size=n_way, replace=False)  # random order = shuffled support
        support = np.empty((n_way, k_shot), dtype=np.int64)
        query = np.empty((n_way, n_query), dtype=np.int64)
        for position, c in enumerate(chosen):
            items = rng.choice(members[c], size=need, replace=False)
            support[position] = items[:k_shot]
            query[position] = items[k_shot:]
        target = np.repeat(np.arange(n_way, dtype=np.int64), n_query)
        shuffle = rng.permutation(n_way * n_query)
        episodes.append(
            Episode(
                support=support,
                query=np.ascontiguousarray(query.reshape(-1)[shuffle]),
                query_target=np.ascontiguousarray(target[shuffle]),
                classes=[class_labels[c] for c in chosen],
            )
        )
    return episodes
