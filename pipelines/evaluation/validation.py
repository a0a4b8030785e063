"""Validation for the training loop: N-way one-shot accuracy on held-out images.

The loop in :mod:`oneshot.embedder.train` takes any ``model -> score`` callable; this is the one the
product uses, so training stays below the pipelines that know about episodes.
"""
from __future__ import annotations

from oneshot.embedder.dataset import LabelledImages
from oneshot.embedder.encode import encode
from oneshot.embedder.model import Embedder
from oneshot.index.metric import get_metric
from oneshot.pipelines.evaluation.episodes import sample_episodes
from oneshot.pipelines.evaluation.prototypes import evaluate_episodes


class OneShotValidation:
    """Fixed, seeded N-way one-shot episodes (within a group) over preprocessed validation images.

    Args:
        images: the held-out set (its classes never trained on).
        n_way: classes per episode.
        n_episodes: episodes, drawn once so every validation scores the same trials.
        seed: seeds the episodes.
        within_group: draw each episode's classes from one group (``False`` for any group).
    """

    def __init__(self, images: LabelledImages, n_way: int = 20, n_episodes: int = 400, seed: int = 1,
                 within_group: bool = True):
        self.images = images
        self.n_way = n_way
        self.episodes = sample_episodes(images.labels, images.groups, n_way=n_way, k_shot=1, n_query=1,
                                        n_episodes=n_episodes, within_group=within_group, seed=seed)

    @classmethod
    def from_config(cls, images: LabelledImages, config) -> "OneShotValidation":
        """The validation a :class:`~oneshot.embedder.train.TrainConfig` asks for (``val_way``, ``val_episodes``)."""
        return cls(images, config.val_way, config.val_episodes, config.seed + 1)

    def __call__(self, model: Embedder) -> float:
        """Accuracy of ``model`` on the episodes (puts the model in eval mode)."""
        embeddings = encode(model, self.images.images, batch_size=512, show_progress=False)
        return float(evaluate_episodes(embeddings, self.episodes, get_metric(model.metric)).accuracy)
