"""The evaluation job (``oneshot eval``) on any store: the model, raw pixels beside it, forgeries when the
store has them, and a second model re-scoring the episodes' hesitant queries when one is given
(:func:`evaluate_store`; the scores themselves are :mod:`oneshot.pipelines.evaluation`)."""
from __future__ import annotations

import logging
import os

import numpy as np

from oneshot.errors import InvalidInputError
from oneshot.index.store import EmbeddingSet
from oneshot.pipelines.evaluation.baseline import raw_pixel_vectors
from oneshot.pipelines.evaluation.evaluate import evaluate, has_groups, oneshot_episodes
from oneshot.pipelines.evaluation.forgeries import forgery_verification
from oneshot.pipelines.evaluation.reranked import rerank_episodes
from oneshot.pipelines.jobs.store import load_store

log = logging.getLogger(__name__)
TASKS = ("oneshot", "knn", "verification")


def feasible_way(table, n_way: int, within_group: bool) -> tuple[int, bool]:
    """The N-way the store allows: N, or fewer when it has fewer classes (in its largest group, for
    within-group episodes) with 2 images each."""
    counts = table.groupby("label").size()
    usable = table[table["label"].isin(counts[counts >= 2].index)]
    total = usable["label"].nunique()
    if total < 2:
        raise InvalidInputError("the store needs 2 classes with 2 images each to be evaluated")
    if within_group and has_groups(table):
        per_group = int(usable.groupby("group")["label"].nunique().max())
        if per_group >= 2:
            return min(n_way, per_group), True
    return min(n_way, total), False


def evaluate_gallery_store(stored: EmbeddingSet, n_way: int = 20, k_shot: int = 1, episodes: int = 1000,
                           within_group: bool = True, knn_k: int = 3, gallery_fraction: float = 0.3, seed: int = 0,
                           threshold: float | None = None, baseline: bool = True, rerank=None,
                           model=None) -> dict:
    """See :func:`oneshot.pipelines.jobs.evaluate_store`."""
    table, embeddings = stored.table, stored.embeddings
    genuine = ~table["forged"].astype(bool).to_numpy() if "forged" in table else np.ones(len(table), bool)
    scored = table[genuine].reset_index(drop=True)
    way, within = feasible_way(scored, n_way, within_group)
    if way < n_way:
        log.warning("the store has fewer classes than %d-way episodes need: scoring %d-way", n_way, way)
    metric = stored.metadata["metric"]

    def run(vectors: np.ndarray, metric_name: str, given: float | None) -> dict:
        out = evaluate(np.ascontiguousarray(vectors[genuine]), scored, metric_name, TASKS, way, k_shot, episodes,
                       within, knn_k, gallery_fraction, seed=seed, threshold=given)
        if not genuine.all():
            out["forgery"] = forgery_verification(vectors, table, metric_name, seed=seed)
        return out

    results = run(embeddings, metric, threshold)
    if way < n_way:
        results["oneshot"]["note"] = f"{n_way}-way asked; the store allows {way}-way"
    if rerank is not None:
        bind_reranker(rerank, stored, model, scored)
        chosen = oneshot_episodes(scored, way, k_shot, episodes, within, seed)
        reranked = rerank_episodes(embeddings[genuine], chosen, metric, scored["id"].to_numpy(), rerank)
        results["oneshot_reranked"] = {
            **reranked, "n_way": way, "k_shot": k_shot, "episodes": episodes, "model": str(rerank.name),
            "model_fingerprint": rerank.fingerprint, "depth": rerank.depth, "margin": rerank.margin,
            "margin_source": rerank.margin_source, "precision": rerank.precision,
            "images_encoded": rerank.stats.gallery_encoded,
            "images_unreadable": rerank.stats.gallery_unreadable,
            "note": "the same episodes as 'oneshot'; knn and verification are the store's model alone"}
    if baseline:
        pixels, where = raw_pixel_vectors(table, stored.metadata)
        if pixels is None:
            results["raw_pixels"] = {"unavailable": where}
        else:
            results["raw_pixels"] = {**run(pixels, "cosine", None), "images": where, "metric": "cosine"}
    return results


def bind_reranker(rerank, stored: EmbeddingSet, model, table) -> None:
    """Open the images of ``table`` (rows of ``stored``) for ``rerank`` and, with its margin
    ``"model"``, take the margin of the store's model: ``model`` (checked against the store's
    fingerprint), else the shipped model with that fingerprint, else the library default."""
    from oneshot.embedder.artifact import as_model, shipped_model_with
    from oneshot.embedder.preprocess import Recipe

    recipe = stored.metadata.get("recipe")
    if isinstance(recipe, dict) and Recipe.from_dict(recipe).kind == "face":
        raise InvalidInputError("re-ranking reads images by path, and face stores keep a row per face of an "
                                "image; it is not supported for face stores")
    fingerprint = stored.metadata.get("model_fingerprint")
    if model is not None:
        base = as_model(model)
        if fingerprint and getattr(base, "fingerprint", None) != fingerprint:
            raise InvalidInputError(f"{model} (fingerprint {getattr(base, 'fingerprint', None)}) is not the model "
                                    f"the store was embedded with ({fingerprint})")
    else:
        shipped = shipped_model_with(fingerprint)
        base = as_model(shipped) if shipped is not None else None
    rerank.resolve_margin(base, "the store's model")
    rerank.bind_rows(table, "the store")


def evaluate_store(store: str | os.PathLike | EmbeddingSet, n_way: int = 20, k_shot: int = 1,
                   episodes: int = 1000, within_group: bool = True, knn_k: int = 3,
                   gallery_fraction: float = 0.3, seed: int = 0, groups: list[str] | None = None,
                   threshold: float | None = None, baseline: bool = True, rerank=None, model=None) -> dict:
    """N-way k-shot, KNN and 1:1 verification accuracy of a Parquet store (of ``groups`` only, if given).

    Beside the model, ``raw_pixels`` scores the store's own images as raw pixels on the same
    episodes and pairs (``baseline``). Forgery stores (a ``forged`` column) are scored on genuine
    images for writer identification, plus genuine-vs-forgery verification (``forgery``).
    ``threshold``: the verification threshold; ``None`` calibrates it on classes disjoint from
    those reported on.

    ``rerank``: a :class:`~oneshot.pipelines.engines.rerank.Reranker` whose ``gallery`` holds the
    store's images; ``oneshot_reranked`` then scores the same episodes with it answering the
    hesitant queries again (:func:`~oneshot.pipelines.evaluation.reranked.rerank_episodes`). Its
    margin ``"model"`` is the store's model's (``model``, else the shipped one the store was
    embedded with, else the library default).
    """
    return evaluate_gallery_store(load_store(store, groups), n_way, k_shot, episodes, within_group, knn_k,
                                  gallery_fraction, seed, threshold, baseline, rerank, model)
