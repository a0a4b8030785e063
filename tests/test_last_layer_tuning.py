"""Last-layer tuning: features below the last layer reproduce the model's vectors, the fit learns
what the classes share, folds hold each person out as often as asked, and the kept-start rule
(cross-validated over people) keeps the start when tuning shows no real gain."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from oneshot.embedder.head_tuning import (
    fit_last_linear,
    last_layer_features,
    last_linear,
    layer_bias,
    vectors_from_features,
    with_last_linear,
)
from oneshot.embedder.model import Embedder
from oneshot.embedder.preprocess import Recipe
from oneshot.errors import InvalidInputError
from oneshot.pipelines.evaluation.validation import OneShotValidation
from oneshot.pipelines.jobs.last_layer import GalleryFeatures, LastLayerOptions, people_folds, tune_last_layer


@pytest.fixture(scope="module")
def model() -> Embedder:
    torch.manual_seed(0)
    return Embedder("conv4", dim=16).eval()


def test_features_below_the_last_layer_give_the_models_vectors(model):
    images = np.random.default_rng(0).random((10, 1, 28, 28), dtype=np.float32)
    features = last_layer_features(model, images, batch_size=4)
    assert features.shape == (10, last_linear(model).in_features) and features.dtype == np.float32
    weight = last_linear(model).weight.detach().numpy()
    with torch.no_grad():
        expected = model(torch.from_numpy(images)).numpy()
    np.testing.assert_allclose(vectors_from_features(features, weight, layer_bias(model)), expected, atol=1e-5)
    mirrored = last_layer_features(model, images, flip=True)
    np.testing.assert_allclose(mirrored, last_layer_features(model, images[..., ::-1].copy()), atol=1e-5)


def test_with_last_linear_copies_and_checks_the_shape(model):
    weight = last_linear(model).weight.detach().numpy()
    tuned = with_last_linear(model, np.zeros_like(weight))
    assert np.all(last_linear(tuned).weight.detach().numpy() == 0)
    assert np.array_equal(last_linear(model).weight.detach().numpy(), weight)  # the original is untouched
    with pytest.raises(InvalidInputError, match="does not fit"):
        with_last_linear(model, np.zeros((3, 3), np.float32))
    with pytest.raises(InvalidInputError, match="cosine"):
        last_linear(Embedder("conv4", dim=8, head="siamese"))


def _people(n_people: int, photos: int, nuisance: float, seed: int, width: int = 64, signal: int = 8):
    """Features of people: an identity in the first ``signal`` dimensions, plus a per-photo
    "lighting" of size ``nuisance`` along a few directions that every person shares."""
    rng = np.random.default_rng(seed)
    light = rng.normal(size=(3, width))  # first, so galleries of any size share it
    identity = rng.normal(size=(n_people, signal))
    rows, labels = [], []
    for person in range(n_people):
        for _ in range(photos):
            f = np.zeros(width)
            f[:signal] = identity[person] + 0.3 * rng.normal(size=signal)
            f += nuisance * rng.normal(size=3) @ light
            rows.append(f)
            labels.append(f"p{person:03d}")
    features = np.asarray(rows, np.float32)
    return GalleryFeatures(features, features.copy(), np.asarray(labels))


def test_the_fit_learns_to_ignore_what_every_class_shares():
    gallery = _people(20, 8, nuisance=3.0, seed=1)
    start = np.random.default_rng(2).normal(size=(16, 64)).astype(np.float32)
    fits = fit_last_linear(start, gallery.features, gallery.labels, [10, 200], lr=1e-2, seed=0)
    assert fits[200][1] < fits[10][1]
    again = fit_last_linear(start, gallery.features, gallery.labels, [200], lr=1e-2, seed=0)
    assert np.array_equal(again[200][0], fits[200][0])  # the same seed, the same weights
    sampled = fit_last_linear(start, gallery.features, gallery.labels, [50], lr=1e-2, seed=0, batch_rows=64)
    assert np.array_equal(sampled[50][0], fit_last_linear(start, gallery.features, gallery.labels, [50], lr=1e-2,
                                                          seed=0, batch_rows=64)[50][0])
    assert sampled[50][1] < fits[10][1]  # 64 of the 160 rows a step still learns
    bigger = _people(40, 8, nuisance=3.0, seed=1)  # the same lighting; people 20-39 never trained on
    other = GalleryFeatures(bigger.features[160:], bigger.mirrored[160:], bigger.labels[160:])
    episodes = OneShotValidation.on_labels(other.labels, 10, 500, seed=3)
    before = episodes.score(vectors_from_features(other.features, start), "cosine")
    after = episodes.score(vectors_from_features(other.features, fits[200][0]), "cosine")
    assert after > before + 0.1
    with pytest.raises(InvalidInputError, match="2 or more images"):
        fit_last_linear(start, gallery.features[:3], np.array(["a", "b", "c"]), [1])


def test_people_folds_hold_each_person_out_once_a_repeat():
    labels = np.repeat([f"p{i}" for i in range(11)], 3)
    held = people_folds(labels, folds=2, repeats=3, seed=0)
    assert len(held) == 6
    for repeat in range(3):
        first, second = held[2 * repeat], held[2 * repeat + 1]
        assert not set(first) & set(second) and len(set(first) | set(second)) == 11
    assert people_folds(labels, 2, 3, 0)[0].tolist() == held[0].tolist()
    with pytest.raises(InvalidInputError, match="needs 4 or more"):
        people_folds(labels[:9], folds=2, repeats=1, seed=0)


def _model_with(weight: np.ndarray) -> Embedder:
    model = Embedder("conv4", dim=weight.shape[0])
    layer = model.head.project
    model.head.project = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    with torch.no_grad():
        model.head.project.weight.copy_(torch.from_numpy(weight))
    assert layer is not model.head.project
    return model


def test_tuning_replaces_the_start_only_when_the_folds_show_a_gain():
    start = np.random.default_rng(2).normal(size=(16, 64)).astype(np.float32)
    options = LastLayerOptions(steps=(25, 100), lr=1e-2, val_episodes=300)
    lit = tune_last_layer(_model_with(start), _people(24, 6, nuisance=3.0, seed=4), options)
    assert lit.step in (25, 100) and lit.gain > lit.noise > 0 and lit.way == 12
    assert not np.array_equal(last_linear(lit.model).weight.detach().numpy(), start)
    assert "held out of a fold's fit" in lit.calibration[2]
    assert lit.history["step"].tolist() == [0, 25, 100]

    rng = np.random.default_rng(5)  # photos unrelated to who they show: nothing that transfers to new people
    noise = GalleryFeatures(rng.normal(size=(144, 64)).astype(np.float32), rng.normal(size=(144, 64)).astype(np.float32),
                            np.repeat([f"p{i:02d}" for i in range(24)], 6))
    kept = tune_last_layer(_model_with(start), noise, options)
    assert kept.step == 0 and kept.gain <= kept.noise
    assert np.array_equal(last_linear(kept.model).weight.detach().numpy(), start)
    assert kept.calibration[2].startswith("the 24 classes of the training gallery")


def test_scoring_vectors_matches_scoring_the_model(model):
    from oneshot.embedder.dataset import LabelledImages
    from oneshot.embedder.encode import encode

    images = np.random.default_rng(0).random((30, 1, 28, 28), dtype=np.float32)
    labels = np.repeat(np.arange(10), 3)
    validation = OneShotValidation(LabelledImages(images, labels, np.zeros(30, np.int64)), 5, 100, seed=1,
                                   within_group=False)
    by_model = validation(model)
    by_vectors = OneShotValidation.on_labels(labels, 5, 100, seed=1).score(encode(model, images, show_progress=False),
                                                                          "cosine")
    assert by_model == by_vectors


def test_a_tuned_model_reads_with_its_own_recipe():
    from oneshot.embedder.artifact import FACE_MODEL, read_model_config
    from oneshot.pipelines.jobs.train import _tuning_recipe

    face = Recipe.from_dict(read_model_config(FACE_MODEL)["model"]["recipe"])
    crops = Recipe.from_dict({**face.to_dict(), "faces": "whole"})
    objects = Recipe(kind="photo", size=32, channels=3)
    assert _tuning_recipe(face, crops) == crops  # face crops: the gallery's way of finding faces
    whole = _tuning_recipe(face, objects)  # other photos: the whole photo, at the face model's size and normalisation
    assert whole.kind == "photo" and whole.size == face.size and whole.mean == face.mean
    handwriting = Recipe()
    assert _tuning_recipe(handwriting, objects) == handwriting
