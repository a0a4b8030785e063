"""Helpers of issue 19's benchmarks: greedy ensemble selection (``benchmarks.ensemble_selection``) and
test-time centring (``benchmarks.centring``), per-alphabet accuracy (``benchmarks.per_alphabet``), and what
they record of each model."""
from __future__ import annotations

import numpy as np
import pytest

from benchmarks.ensemble_selection import COSINE, chosen_size, greedy_selection, joined


def test_joined_unit_vectors_have_the_mean_of_the_members_cosines():
    rng = np.random.default_rng(0)
    a, b = COSINE.prepare(rng.normal(size=(5, 8))), COSINE.prepare(rng.normal(size=(5, 3)))
    both = joined([a, b])
    assert both.dtype == np.float32 and both.flags.c_contiguous and both.shape == (5, 11)
    np.testing.assert_allclose(both @ both.T, (a @ a.T + b @ b.T) / 2, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(both, axis=1), 1, atol=1e-6)


def test_greedy_selection_adds_the_member_that_helps_most_given_those_chosen():
    # "a" is best alone; with "a", "c" helps more than "b" (which repeats what "a" knows).
    value = {"a": 0.90, "b": 0.89, "c": 0.85}
    def score(members):
        s = max(value[m] for m in members)
        return s + (0.03 if {"a", "c"} <= set(members) else 0) + (0.001 if {"a", "b"} <= set(members) else 0)
    path = greedy_selection(score, ["b", "c", "a"], max_members=5)
    assert [step["added"] for step in path] == ["a", "c", "b"]
    assert path[-1]["members"] == ["a", "c", "b"] and len(path) == 3
    assert path[1]["score"] == 0.93


def test_chosen_size_is_the_last_step_that_gained_enough():
    path = [{"size": 1, "score": 0.90}, {"size": 2, "score": 0.91}, {"size": 3, "score": 0.9105},
            {"size": 4, "score": 0.912}, {"size": 5, "score": 0.9121}]
    assert chosen_size(path, 0.001) == 4
    assert chosen_size(path, 0.05) == 1


def test_centred_accuracy_counts_queries_nearest_their_own_support_after_moving_the_origin():
    from benchmarks.centring import centred_accuracy, unit

    # Two classes that differ only slightly from a shared direction; query 0 leans to class 0, query 1 to class 1.
    support = unit(np.array([[[10.0, 1.0, 0.0], [10.0, 0.0, 1.0]]]))
    query = unit(np.array([[[10.0, 0.6, 0.5], [10.0, 0.2, 0.9]]]))
    target = np.array([[0, 1]])
    assert centred_accuracy(support, query, target, np.zeros(3)) == 1.0
    assert centred_accuracy(support, query, np.array([[1, 0]]), np.zeros(3)) == 0.0
    # Subtracting the supports' mean leaves only what tells them apart: the answers stay right.
    assert centred_accuracy(support, query, target, support.mean(axis=1, keepdims=True)) == 1.0


def test_provenance_names_the_model_by_fingerprint_so_a_path_that_changes_model_stays_traceable():
    from benchmarks.ensemble import provenance
    from oneshot.embedder.artifact import load_model

    v2, default = load_model("handwriting-v2"), load_model()
    assert provenance(v2)["fingerprint"] == v2.fingerprint != provenance(default)["fingerprint"]
    assert provenance(default)["train_command"].startswith("oneshot train ")


def test_train_step_speed_times_both_precisions_of_a_configs_real_training_step(tmp_path):
    import json

    from benchmarks.train_step_speed import main

    config = tmp_path / "tiny.json"
    config.write_text(json.dumps({"backbone": "conv", "backbone_options": {"channels": 4, "blocks": 2}, "dim": 8,
                                  "recipe": {"size": 16}, "classes_per_batch": 4, "items_per_class": 2}))
    result = main(["--configs", str(config), "--steps", "2", "--rounds", "2", "--out", str(tmp_path / "r.json")])
    row = result["configs"][str(config)]
    assert row["batch_images"] == 8 and set(row["step_seconds"]) == {"fp32", "bf16"}
    assert all(len(times) == 2 and all(t > 0 for t in times) for times in row["step_seconds"].values())
    assert row["best_step_seconds"]["bf16"] == min(row["step_seconds"]["bf16"])
    assert row["bf16_speed_up"] == round(row["best_step_seconds"]["fp32"] / row["best_step_seconds"]["bf16"], 2)
    assert json.loads((tmp_path / "r.json").read_text()) == result
    assert "cpu" in result and result["native_bfloat16"] in (True, False, None)


def test_train_step_speed_times_a_matched_configs_matcher_too(tmp_path, monkeypatch):
    import json

    import oneshot.embedder.train as train_module
    from benchmarks.train_step_speed import main

    calls = []
    real = train_module.match_loss
    monkeypatch.setattr(train_module, "match_loss", lambda *a, **k: calls.append(1) or real(*a, **k))
    config = tmp_path / "matched.json"
    config.write_text(json.dumps({"backbone": "conv4", "backbone_options": {"widths": [2, 2, 3, 3]}, "dim": 4,
                                  "recipe": {"size": 28}, "classes_per_batch": 3, "items_per_class": 2,
                                  "every_support": True, "match_dim": 3}))
    main(["--configs", str(config), "--steps", "1", "--rounds", "1"])
    assert len(calls) == 2 * 3  # each precision: 2 warm-up steps and 1 timed, every one with the matcher's loss


def test_accuracy_by_group_scores_each_group_on_its_own_classes():
    import pandas as pd

    from benchmarks.per_alphabet import accuracy_by_group

    rng = np.random.default_rng(0)
    # "clear": 20 classes, 3 drawings each, near their own class direction; "noise": 20 classes of
    # random vectors; "small": 5 classes, too few for 20-way episodes, so left out.
    rows, vectors = [], []
    for group, classes in (("clear", 20), ("noise", 20), ("small", 5)):
        centres = rng.normal(size=(classes, 16))
        for c in range(classes):
            for _ in range(3):
                rows.append({"label": f"{group}{c}", "group": group})
                vectors.append(centres[c] + 0.05 * rng.normal(size=16) if group != "noise" else rng.normal(size=16))
    table = pd.DataFrame(rows)
    vectors = np.asarray(vectors, dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    found = accuracy_by_group(vectors, table, n_way=20, episodes=50, seed=0)
    assert set(found) == {"clear", "noise"}
    assert found["clear"]["accuracy"] == 1.0 and found["clear"]["classes"] == 20
    assert found["noise"]["accuracy"] < 0.2  # chance is 1 in 20
    again = accuracy_by_group(vectors, table, n_way=20, episodes=50, seed=0)
    assert again == found  # seeded


def test_map_matching_scores_members_by_their_trained_scores_and_counts_episodes():
    import torch

    from benchmarks.map_matching import Encoded, episode_correct, episode_scores
    from oneshot.embedder.model import Embedder
    from oneshot.embedder.preprocess import Recipe
    from oneshot.pipelines.evaluation.episodes import sample_episodes

    torch.manual_seed(0)
    matched = Embedder("conv4", dim=4, recipe=Recipe(size=28), backbone_options={"widths": [2, 2, 3, 3]}, match_dim=3)
    plain = Embedder("conv4", dim=4, recipe=Recipe(size=28), backbone_options={"widths": [2, 2, 3, 3]})
    rng = np.random.default_rng(0)

    def unit(shape):
        x = rng.normal(size=shape)
        return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)

    a, b = Encoded(matched, unit((12, 4)), unit((12, 5, 3))), Encoded(plain, unit((12, 4)), None)
    queries, supports = np.array([0, 1, 2]), np.array([3, 4, 5, 6])
    scores = episode_scores([a, b], queries, supports)
    np.testing.assert_allclose(scores["global"], a.vectors[queries] @ a.vectors[supports].T
                               + b.vectors[queries] @ b.vectors[supports].T, atol=1e-6)
    with torch.no_grad():
        distance = matched.matcher.distances(torch.from_numpy(a.local[queries]), torch.from_numpy(a.local[supports]))
        trained = matched.matcher.similarity(torch.from_numpy(a.vectors[queries] @ a.vectors[supports].T), distance)
    np.testing.assert_allclose(scores["global"] - scores["penalty"],
                               trained.numpy() + b.vectors[queries] @ b.vectors[supports].T, atol=1e-5)
    np.testing.assert_allclose(scores["match"], -distance.numpy(), atol=1e-6)
    labels = np.repeat(np.arange(6), 2)
    episodes = sample_episodes(labels, n_way=3, k_shot=1, n_query=1, n_episodes=4, seed=0)
    correct = episode_correct([b], episodes)
    expected = np.concatenate([(b.vectors[e.query] @ b.vectors[e.support[:, 0]].T).argmax(1) == e.query_target
                               for e in episodes])
    assert correct["global"].tolist() == expected.tolist() == correct["combined"].tolist()  # no matcher: no penalty


def test_map_matching_breaks_validation_down_by_the_alphabet_of_each_episode():
    import pandas as pd

    from benchmarks.map_matching import by_alphabet
    from oneshot.pipelines.evaluation.evaluate import oneshot_episodes

    # Two alphabets of 3 classes x 2 drawings; every query of alphabet "a" answered right, none of "b".
    table = pd.DataFrame({"label": [f"{g}{c}" for g in "ab" for c in range(3) for _ in range(2)],
                          "group": [g for g in "ab" for _ in range(6)]})
    episodes = oneshot_episodes(table, n_way=3, k_shot=1, n_episodes=8, within_group=True, seed=0)
    alphabet = [table["group"].iat[int(e.query[0])] for e in episodes]
    assert set(alphabet) == {"a", "b"}
    correct = np.concatenate([np.full(3, group == "a") for group in alphabet])
    assert by_alphabet(correct, episodes, table) == {"a": 1.0, "b": 0.0}


def test_wide_validation_split_is_the_documented_seeded_draw(omniglot_dir):
    from benchmarks import WIDE_VALIDATION_ALPHABETS, validation_alphabets, validation_groups
    from oneshot.data.omniglot import OmniglotSplit

    standard = validation_groups("background")
    others = sorted(set(OmniglotSplit(omniglot_dir, "background").table["group"]) - set(standard))
    assert len(others) == 26
    drawn = sorted(others[i] for i in np.random.default_rng(0).choice(len(others), 4, replace=False))
    assert WIDE_VALIDATION_ALPHABETS == (*standard, *drawn)
    _, table = validation_alphabets(omniglot_dir, "wide")
    assert set(table["group"]) == set(WIDE_VALIDATION_ALPHABETS) and table["label"].nunique() == 310
    with pytest.raises(ValueError, match="unknown validation split"):
        validation_groups("narrow")


def test_open_set_rerank_enrols_half_of_each_alphabet_and_scores_both_kinds_of_query(tmp_path):
    import numpy as np
    import pandas as pd

    from benchmarks.open_set_rerank import open_set_figures, write_open_set

    class Split:  # 2 alphabets x 4 characters x 3 drawers of blank 8 x 8 drawings
        table = pd.DataFrame([{"alphabet": a, "character": f"c{c}", "group": a, "label": f"{a}/c{c}",
                               "path": f"{a}/c{c}/{d}.png"} for a in ("A", "B") for c in range(4) for d in range(3)])

        def read(self, paths):
            return [np.full((8, 8), 255, np.uint8) for _ in paths]

    gallery, queries = write_open_set(Split(), Split.table, tmp_path, seed=0)
    enrolled = sorted(f"{p.parent.parent.name}/{p.parent.name}" for p in gallery.rglob("*.png"))
    assert len(enrolled) == len(set(enrolled)) == 4 and sorted({e[0] for e in enrolled}) == ["A", "B"]
    assert len(list(queries.rglob("*.png"))) == 24 - 4  # the enrolled characters' other drawings, and the rest
    answers = pd.DataFrame({"true_label": ["A/c0", "A/c0", "A/c1", "B/c3"], "label": ["A/c0", "A/c2", "unknown", "B/c0"],
                            "known": [True, True, False, True]})
    found = open_set_figures(answers, {"A/c0"})
    assert found == {"open_set_accuracy": 0.5, "known_accuracy": 0.5, "unknown_rejected": 0.5, "known_queries": 2,
                     "unknown_queries": 2}
