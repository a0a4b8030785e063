"""Tests for pipelines.evaluation.evaluate: the demo's pipelines and Lake's runs on vectors with known answers."""
from __future__ import annotations

import cv2
import numpy as np
import pandas as pd
import pytest

from oneshot.data.lake_runs import read_lake_runs
from oneshot.pipelines.evaluation.evaluate import evaluate, lake_run_errors

N_GROUPS, CLASSES_PER_GROUP, ITEMS = 2, 10, 8


def labelled_table() -> pd.DataFrame:
    groups = np.repeat([f"g{g}" for g in range(N_GROUPS)], CLASSES_PER_GROUP * ITEMS)
    classes = np.repeat(np.arange(N_GROUPS * CLASSES_PER_GROUP), ITEMS)
    labels = [f"{g}/c{c:02d}" for g, c in zip(groups, classes)]
    return pd.DataFrame({"id": np.arange(len(labels)), "path": [f"{i}.png" for i in range(len(labels))],
                         "label": labels, "group": groups})


def test_separated_classes_score_perfectly():
    table = labelled_table()
    rng = np.random.default_rng(0)
    n_classes = N_GROUPS * CLASSES_PER_GROUP
    centres = np.eye(n_classes, 32)  # one axis per class
    codes = pd.factorize(table["label"])[0]
    vectors = (centres[codes] + 0.05 * rng.standard_normal((len(table), 32))).astype(np.float32)
    scores = evaluate(vectors, table, "cosine", n_way=5, n_episodes=200, seed=1)
    assert set(scores) == {"oneshot", "knn", "verification", "clustering"}
    assert scores["oneshot"]["accuracy"] == pytest.approx(1.0)
    assert scores["oneshot"]["ci95"] == pytest.approx(0.0)
    assert scores["knn"]["accuracy"] == pytest.approx(1.0)
    assert scores["verification"]["accuracy"] == pytest.approx(1.0)
    clustering = scores["clustering"]
    assert clustering["ari"] == pytest.approx(1.0) and clustering["nmi"] == pytest.approx(1.0)
    assert len(clustering["per_group"]) == N_GROUPS


def test_random_vectors_score_near_chance():
    table = labelled_table()
    vectors = np.random.default_rng(1).standard_normal((len(table), 32)).astype(np.float32)
    scores = evaluate(vectors, table, "cosine", n_way=5, n_episodes=400, seed=2)
    assert abs(scores["oneshot"]["accuracy"] - 1 / 5) < 0.08  # 5-way chance, ~4 standard errors
    assert scores["knn"]["accuracy"] < 0.15  # 20 classes: chance 0.05
    assert abs(scores["verification"]["accuracy"] - 0.5) < 0.06  # balanced pairs
    assert abs(scores["clustering"]["ari"]) < 0.1
    assert scores["clustering"]["nmi"] < 0.5


def test_seeded_and_metric_names_accepted():
    table = labelled_table()
    vectors = np.random.default_rng(2).standard_normal((len(table), 16)).astype(np.float32)
    first = evaluate(vectors, table, "l2", n_way=5, n_episodes=100, seed=3)
    assert first == evaluate(vectors, table, "l2", n_way=5, n_episodes=100, seed=3)


def test_only_the_asked_tasks_run_and_unknown_ones_are_named():
    table = labelled_table()
    vectors = np.random.default_rng(2).standard_normal((len(table), 16)).astype(np.float32)
    assert set(evaluate(vectors, table, "cosine", tasks=("knn",))) == {"knn"}
    with pytest.raises(ValueError, match="clusterin"):
        evaluate(vectors, table, "cosine", tasks=("clusterin",))


# ---------------------------------------------------------------- Lake's runs


def write_runs(root, n_runs: int, n_way: int, wrong: bool = False):
    """Lake-style runs where test item i is an exact copy of training class answers[i].

    With ``wrong`` the class_labels.txt points every item at the next class instead.
    """
    rng = np.random.default_rng(7)
    expected = []
    for r in range(1, n_runs + 1):
        run = root / f"run{r:02d}"
        (run / "training").mkdir(parents=True)
        (run / "test").mkdir()
        images = [(rng.random((20, 20)) > 0.5).astype(np.uint8) * 255 for _ in range(n_way)]
        answers = rng.permutation(n_way)
        lines = []
        for c, image in enumerate(images):
            cv2.imwrite(str(run / "training" / f"class{c + 1:02d}.png"), image)
        for i, a in enumerate(answers):
            cv2.imwrite(str(run / "test" / f"item{i + 1:02d}.png"), images[a])
            named = (a + 1) % n_way if wrong else a
            lines.append(f"run{r:02d}/test/item{i + 1:02d}.png run{r:02d}/training/class{named + 1:02d}.png")
        (run / "class_labels.txt").write_text("\n".join(lines) + "\n")
        expected.append(answers)
    return expected


def pixels(images):
    """The fake encoder: each image's own pixels, so an exact copy is its own nearest neighbour."""
    return np.stack([im.astype(np.float32).ravel() / 255.0 - 0.5 for im in images])


def test_lake_run_errors_exact_copies_give_zero_error(tmp_path):
    expected = write_runs(tmp_path / "all_runs", n_runs=3, n_way=6)
    runs = read_lake_runs(tmp_path)
    assert [r.name for r in runs] == ["run01", "run02", "run03"]
    for run, answers in zip(runs, expected):
        np.testing.assert_array_equal(run.answers, answers)
    calls = []

    def encode_images(images):
        calls.append(len(images))
        return pixels(images)

    table = lake_run_errors(runs, encode_images, "cosine")
    assert calls == [6] * 6  # training then test images of each run, encoded once each
    assert list(table.columns) == ["run", "trials", "errors", "error_rate"]
    assert table["run"].tolist() == ["run01", "run02", "run03"]
    assert (table["trials"] == 6).all()
    assert (table["errors"] == 0).all() and (table["error_rate"] == 0.0).all()


def test_lake_run_errors_wrong_labels_give_full_error(tmp_path):
    write_runs(tmp_path / "all_runs", n_runs=2, n_way=5, wrong=True)
    table = lake_run_errors(read_lake_runs(tmp_path), pixels, "l2")
    assert (table["errors"] == 5).all() and (table["error_rate"] == 1.0).all()


def test_lake_run_errors_constant_encoder_ties_count_as_errors(tmp_path):
    write_runs(tmp_path / "all_runs", n_runs=1, n_way=4)
    table = lake_run_errors(read_lake_runs(tmp_path), lambda images: np.ones((len(images), 3), np.float32), "l2")
    assert table["error_rate"].tolist() == [1.0]


def test_pair_verification_separates_separated_classes_and_not_random_ones():
    from oneshot.pipelines.evaluation.evaluate import pair_verification

    table = labelled_table()
    rng = np.random.default_rng(2)
    codes = pd.factorize(table["label"])[0]
    separated = (np.eye(N_GROUPS * CLASSES_PER_GROUP, 32)[codes] + 0.05 * rng.standard_normal((len(table), 32)))
    report = pair_verification(separated.astype(np.float32), table, "cosine", n_pairs=400, seed=3)
    assert report["accuracy"] == pytest.approx(1.0) and report["roc_auc"] == pytest.approx(1.0)
    noise = rng.standard_normal((len(table), 32)).astype(np.float32)
    assert pair_verification(noise, table, "cosine", n_pairs=400, seed=3)["roc_auc"] < 0.65


def test_oneshot_accuracy_scores_the_episodes_oneshot_episodes_gives():
    from oneshot.pipelines.evaluation.evaluate import oneshot_accuracy, oneshot_episodes
    from oneshot.pipelines.evaluation.prototypes import evaluate_episodes

    table = labelled_table()
    vectors = np.random.default_rng(3).standard_normal((len(table), 16)).astype(np.float32)  # noisy: accuracy < 1
    episodes = oneshot_episodes(table, n_way=5, k_shot=1, n_episodes=300, within_group=True, seed=2)
    assert len(episodes) == 300
    assert all(len({table["group"][i] for i in np.ravel(e.support)}) == 1 for e in episodes)  # one alphabet each
    expected = evaluate_episodes(vectors, episodes, "cosine").accuracy
    assert 0 < expected < 1
    assert oneshot_accuracy(vectors, table, "cosine", 5, 1, 300, True, 2)["accuracy"] == expected
