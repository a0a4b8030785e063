"""Tests for pipelines.evaluation.open_set: 1:K identification with an unknown answer."""
import numpy as np
import pandas as pd
import pytest

from oneshot.index.vector_index import VectorIndex
from oneshot.pipelines.evaluation.open_set import calibrate_unknown_threshold, identify, open_set_report


@pytest.fixture
def world():
    rng = np.random.default_rng(0)
    d = 16
    centers = rng.standard_normal((10, d)) * 4
    known, unknown = centers[:6], centers[6:]

    def draw(c, n):
        return (c + 0.1 * rng.standard_normal((n, d))).astype(np.float32)

    gallery = np.concatenate([draw(c, 3) for c in known])
    labels = np.repeat([f"k{i}" for i in range(6)], 3)
    index = VectorIndex.build(
        gallery, pd.DataFrame({"id": np.arange(len(labels)), "label": labels}), "cosine"
    )
    known_queries = np.concatenate([draw(c, 4) for c in known])
    known_labels = np.repeat([f"k{i}" for i in range(6)], 4)
    unknown_queries = np.concatenate([draw(c, 4) for c in unknown])
    return index, known_queries, known_labels, unknown_queries


def test_identify_known_and_unknown(world):
    index, kq, kl, uq = world
    out = identify(index, np.concatenate([kq, uq]), threshold=0.9)
    assert list(out.columns) == ["label", "score", "known", "candidate"]
    assert out["score"].dtype == np.float32
    assert out["label"].iloc[: len(kq)].tolist() == kl.tolist()
    assert out["known"].iloc[: len(kq)].all()
    assert (out["label"].iloc[len(kq) :] == "unknown").all()
    assert not out["known"].iloc[len(kq) :].any()
    assert out["candidate"].iloc[len(kq) :].str.startswith("k").all()


def test_no_threshold_and_custom_unknown_label(world):
    index, kq, kl, uq = world
    assert identify(index, uq, threshold=None)["known"].all()
    out = identify(index, uq, threshold=0.99, unknown_label=None)
    assert out["label"].isna().all()


def test_knn_identification(world):
    index, kq, kl, _ = world
    out = identify(index, kq, threshold=0.5, k=3)
    assert out["label"].tolist() == kl.tolist()


@pytest.mark.parametrize("target", ["accuracy", "balanced"])
def test_calibrated_threshold_separates(world, target):
    index, kq, kl, uq = world
    t = calibrate_unknown_threshold(index, kq, kl, uq, target=target)
    report = open_set_report(index, kq, kl, uq, threshold=t)
    assert report["known_accuracy"] == 1.0 and report["unknown_rejection_rate"] == 1.0
    assert report["overall_accuracy"] == 1.0 and report["balanced_accuracy"] == 1.0
    assert report["threshold"] == t and report["n_known"] == 24 and report["n_unknown"] == 16
    out = identify(index, np.concatenate([kq, uq]), threshold=t)
    assert out["known"].tolist() == [True] * 24 + [False] * 16


def test_open_set_report_without_threshold(world):
    index, kq, kl, uq = world
    report = open_set_report(index, kq, kl, uq, threshold=None)
    assert report["closed_set_accuracy"] == 1.0
    assert report["unknown_rejection_rate"] == 0.0 and report["known_rejection_rate"] == 0.0
    assert report["overall_accuracy"] == pytest.approx(24 / 40)


def test_bad_arguments(world):
    index, kq, kl, uq = world
    with pytest.raises(ValueError, match="target"):
        calibrate_unknown_threshold(index, kq, kl, uq, target="f1")
    with pytest.raises(ValueError, match="known_labels"):
        calibrate_unknown_threshold(index, kq, kl[:3], uq)
    with pytest.raises(ValueError, match="dimension"):
        identify(index, kq[:, :3], threshold=0.5)
