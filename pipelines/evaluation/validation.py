"""Validation for the training loop: N-way one-shot accuracy on held-out images.

The loop in :mod:`oneshot.embedder.train` takes any ``model -> score`` callable; this is the one the
product uses, so training stays below the pipelines that know about episodes.
"""
from __future__ import annotations

import numpy as np

from oneshot.embedder.dataset import LabelledImages
from oneshot.embedder.encode import encode
from oneshot.embedder.model import Embedder
from oneshot.errors import InvalidInputError
from oneshot.index.metric import get_metric
from oneshot.pipelines.evaluation.episodes import sample_episodes
from oneshot.pipelines.evaluation.prototypes import episode_correct, evaluate_episodes


class OneShotValidation:
    """Fixed, seeded N-way one-shot episodes (within a group) over preprocessed validation images.

    Args:
        images: the held-out set (its classes never trained on).
        n_way: classes per episode.
        n_episodes: episodes, drawn once so every validation scores the same trials.
        seed: seeds the episodes.
        within_group: draw each episode's classes from one group (``False`` for any group).
    """

    def __init__(self, images: LabelledImages | None, n_way: int = 20, n_episodes: int = 400, seed: int = 1,
                 within_group: bool = True, labels: np.ndarray | None = None, groups: np.ndarray | None = None):
        self.images = images
        self.n_way = n_way
        self.last_noise: float | None = None
        labels = images.labels if labels is None else np.asarray(labels)
        groups = images.groups if groups is None else np.asarray(groups)
        self.episodes = sample_episodes(labels, groups, n_way=n_way, k_shot=1, n_query=1,
                                        n_episodes=n_episodes, within_group=within_group, seed=seed)
        classes, codes = np.unique(labels, return_inverse=True)
        self.n_classes = len(classes)
        self._query_classes = [codes[np.asarray(e.query)] for e in self.episodes]
        self._queries_per_class = np.bincount(np.concatenate(self._query_classes),
                                              minlength=self.n_classes).astype(np.float64)
        self.last_per_class: np.ndarray | None = None

    @classmethod
    def on_labels(cls, labels: np.ndarray, n_way: int, n_episodes: int, seed: int = 1) -> "OneShotValidation":
        """Episodes over items known only by their labels (N,), any classes together: score vectors
        with :meth:`score` (the items' vectors computed elsewhere, e.g. from cached features)."""
        labels = np.asarray(labels)
        return cls(None, n_way, n_episodes, seed, within_group=False, labels=labels, groups=np.zeros(len(labels), int))

    @classmethod
    def from_config(cls, images: LabelledImages, config) -> "OneShotValidation":
        """The validation a :class:`~oneshot.embedder.train.TrainConfig` asks for (``val_way``, ``val_episodes``)."""
        return cls(images, config.val_way, config.val_episodes, config.seed + 1)

    def __call__(self, model: Embedder) -> float:
        """Accuracy of ``model`` on the episodes (puts the model in eval mode). Kept for the caller:
        ``last_noise`` (the 95% interval's half-width over episodes) and ``last_per_class`` (the
        accuracy of the queries of each held-out class, in a fixed class order)."""
        if self.images is None:
            raise InvalidInputError("these episodes have no images: score vectors with .score(vectors, metric)")
        return self.score(encode(model, self.images.images, batch_size=512, show_progress=False), model.metric)

    def score(self, vectors: np.ndarray, metric: str) -> float:
        """Accuracy of the episodes on the items' vectors (N, D); sets ``last_noise`` and ``last_per_class``."""
        metric = get_metric(metric)
        embeddings = metric.prepare(vectors)
        result = evaluate_episodes(embeddings, self.episodes, metric)
        hits = np.zeros(self.n_classes)
        for episode, labels in zip(self.episodes, self._query_classes):
            found = episode_correct(embeddings[np.asarray(episode.support)], embeddings[np.asarray(episode.query)],
                                    episode.query_target, metric)
            np.add.at(hits, labels, found)
        self.last_noise = float(result.ci95)
        self.last_per_class = hits / np.maximum(self._queries_per_class, 1)
        return float(result.accuracy)

    def paired_noise(self, reference: np.ndarray) -> float:
        """How much the last model must beat ``reference`` (an earlier ``last_per_class``) by to count:
        1.96 standard errors of the per-class difference over the held-out classes (people), at
        least the last episode interval. A gain that only some held-out people show is noise."""
        seen = self._queries_per_class > 0
        difference = (self.last_per_class - np.asarray(reference))[seen]
        spread = 1.96 * difference.std(ddof=1) / np.sqrt(difference.size) if difference.size > 1 else 1.0
        return float(max(spread, self.last_noise or 0.0))

    def paired_gain(self, reference: np.ndarray) -> float:
        """Mean over held-out classes of the last model's per-class accuracy minus ``reference``'s."""
        seen = self._queries_per_class > 0
        return float((self.last_per_class - np.asarray(reference))[seen].mean())
