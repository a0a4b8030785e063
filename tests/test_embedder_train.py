"""The training loop on tiny synthetic alphabets: outputs, exact resume, every objective, learning."""
from __future__ import annotations

import json
import logging
import math

import numpy as np
import pandas as pd
import pytest
import torch

import oneshot.embedder.train as train_module
from oneshot.data.synthetic import make_alphabets
from oneshot.embedder import hardware
from oneshot.embedder.artifact import load_model, model_fingerprint, read_model_config, save_model
from oneshot.embedder.dataset import LabelledImages
from oneshot.embedder.encode import encode
from oneshot.embedder.preprocess import Recipe
from oneshot.embedder.train import OBJECTIVES, TrainConfig, build_model, train
from oneshot.pipelines.evaluation.episodes import sample_episodes
from oneshot.pipelines.evaluation.prototypes import evaluate_episodes
from oneshot.pipelines.evaluation.validation import OneShotValidation

torch.set_num_threads(1)
RECIPE = Recipe(size=16)


@pytest.fixture(scope="module")
def data(tiny_training_sets) -> tuple[LabelledImages, LabelledImages]:
    """Train: 2 alphabets x 5 characters x 4 drawers, with rotations (40 virtual classes); val: 1 alphabet."""
    return tiny_training_sets  # at RECIPE's 16 px


def _config(**changes) -> TrainConfig:
    options = dict(objective="prototypical", backbone="conv", backbone_options={"channels": 8, "blocks": 2}, dim=16,
                   recipe=RECIPE.to_dict(), steps=30, warmup_steps=5, classes_per_batch=8, items_per_class=2,
                   pairs=8, val_every=10, val_way=5, val_episodes=20, checkpoint_every=10, seed=0)
    options.update(changes)
    return TrainConfig(**options)


def _run(config, data, out_dir, **kwargs):
    train_set, val_set = data
    validate = OneShotValidation.from_config(val_set, config)
    return train(config, train_set, validate, out_dir, device="cpu", show_progress=False, **kwargs)


def test_short_run_writes_everything(data, tmp_path):
    config = _config()
    result = _run(config, data, tmp_path)
    names = {p.name for p in tmp_path.iterdir()}
    assert names == {"model.safetensors", "model.json", "history.csv", "curves.png", "checkpoint.pt", "config.json"}
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    history = pd.read_csv(tmp_path / "history.csv")
    assert history["step"].tolist() == [10, 20, 30]
    assert history["val_accuracy"].between(0, 1).all() and history["val_accuracy"].notna().all()
    assert np.isfinite(history["loss"]).all()
    assert history["lr"].iloc[-1] == pytest.approx(0.0, abs=1e-12)  # cosine schedule ends at zero
    pd.testing.assert_frame_equal(result.history.reset_index(drop=True), history, check_dtype=False, atol=1e-6)
    # the kept model is the best validation step's
    best = history.loc[history["val_accuracy"].idxmax()]
    assert result.best_accuracy == pytest.approx(best["val_accuracy"])
    assert result.best_step == int(best["step"])
    info = read_model_config(tmp_path / "model.safetensors")["info"]
    assert info["step"] == result.best_step and info["val_accuracy"] == pytest.approx(result.best_accuracy)
    assert info["train_config"] == config.to_dict()
    assert result.model_path == tmp_path / "model.safetensors"
    assert result.model.fingerprint == model_fingerprint(result.model)
    assert not result.model.training
    assert TrainConfig.from_dict(json.loads((tmp_path / "config.json").read_text())) == config
    checkpoint = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert checkpoint["state"]["step"] == 30 and checkpoint["config"] == config.to_dict()


def _kill_during_step(monkeypatch, step: int) -> None:
    """Make the training loop's ``step``-th augment call (1-based: during that step, before its
    update) raise KeyboardInterrupt, as a kill would."""
    real_augment = train_module.augment
    calls = []

    def killed_augment(*args, **kwargs):
        calls.append(1)
        if len(calls) == step:
            raise KeyboardInterrupt("killed")
        return real_augment(*args, **kwargs)

    monkeypatch.setattr(train_module, "augment", killed_augment)


def _final_state(out_dir):
    """The last checkpoint: weights, loss and optimizer state at the final step."""
    return torch.load(out_dir / "checkpoint.pt", weights_only=True)


@pytest.mark.parametrize("checkpoint_every,kill_at,resume_from,ema_decay,distilled,look_alikes",
                         [(6, 8, 6, 0.0, False, 0), (4, 7, 4, 0.0, False, 0), (4, 7, 4, 0.9, False, 0),
                          (4, 7, 4, 0.0, True, 0), (4, 7, 4, 0.0, False, 4)])
def test_exact_resume_after_a_kill(data, tmp_path, monkeypatch, checkpoint_every, kill_at, resume_from, ema_decay,
                                   distilled, look_alikes):
    # checkpoint_every=4 with val_every=6: the kill lands after a validation the checkpoint has not seen,
    # and the resumed run restarts in the middle of a validation interval; with look-alike classes
    # refreshed every 3 steps, the resumed run reads step 3's table from the checkpoint
    teachers = []
    if distilled:  # the teachers' targets are computed again on resume
        teachers = [str(tmp_path / "teacher.safetensors")]
        save_model(build_model(_config(dim=12)), teachers[0], {})
    config = _config(steps=12, val_every=6, checkpoint_every=checkpoint_every, warmup_steps=3, ema_decay=ema_decay,
                     teachers=teachers, look_alike_classes=look_alikes, look_alike_every=3)
    full = _run(config, data, tmp_path / "full")

    # the same run killed during step `kill_at` (1-based), after the last checkpoint ...
    real_augment = train_module.augment
    _kill_during_step(monkeypatch, kill_at)
    with pytest.raises(KeyboardInterrupt):
        _run(config, data, tmp_path / "killed")
    assert torch.load(tmp_path / "killed" / "checkpoint.pt", weights_only=True)["state"]["step"] == resume_from

    # ... then resumed with the same config: it runs the remaining steps only
    calls = []

    def counted_augment(*args, **kwargs):
        calls.append(1)
        return real_augment(*args, **kwargs)

    monkeypatch.setattr(train_module, "augment", counted_augment)
    resumed = _run(config, data, tmp_path / "killed")
    assert len(calls) == 12 - resume_from

    a, b = _final_state(tmp_path / "full"), _final_state(tmp_path / "killed")
    assert a["model"].keys() == b["model"].keys()
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name
    for name in a["loss"]:
        assert torch.equal(a["loss"][name], b["loss"][name]), name
    for key, state in a["optimizer"]["state"].items():
        for name, value in state.items():
            assert torch.equal(value, b["optimizer"]["state"][key][name]), (key, name)
    assert a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"] == 12
    if ema_decay:
        for name in a["averaged"]:
            assert torch.equal(a["averaged"][name], b["averaged"][name]), name
    columns = ["step", "loss", "val_accuracy", "lr"]
    pd.testing.assert_frame_equal(full.history[columns], resumed.history[columns])
    assert (full.best_step, full.best_accuracy) == (resumed.best_step, resumed.best_accuracy)
    assert full.model.fingerprint == resumed.model.fingerprint


def test_resume_of_a_finished_run_does_nothing(data, tmp_path, monkeypatch):
    config = _config(steps=4, val_every=2, checkpoint_every=2, warmup_steps=1)
    first = _run(config, data, tmp_path)
    monkeypatch.setattr(train_module, "augment", lambda *a, **k: pytest.fail("trained again"))
    again = _run(config, data, tmp_path)
    assert again.model.fingerprint == first.model.fingerprint
    assert again.history.equals(first.history)


def test_weight_average_ramps_its_decay_and_averages_batchnorm_statistics():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    averaged = train_module.weight_average(model, decay=0.99)
    values = []
    for value in (1.0, 3.0, 7.0):
        with torch.no_grad():
            model[0].weight.fill_(value)
            model[1].running_mean.fill_(value)
        averaged.update_parameters(model)
        values.append(value)
    # first update copies; then weight (1 + n) / (10 + n) on the average: 2/11, then 3/12
    expected = (1.0 * 2 / 11 + 3.0 * 9 / 11) * 3 / 12 + 7.0 * 9 / 12
    assert averaged.module[0].weight.detach().numpy() == pytest.approx(np.full((2, 2), expected))
    assert averaged.module[1].running_mean.numpy() == pytest.approx(np.full(2, expected))
    with pytest.raises(ValueError, match="ema_decay"):
        _config(ema_decay=1.0)


def test_weight_averaged_run_keeps_the_average_and_shows_the_raw_score(data, tmp_path):
    config = _config(steps=6, val_every=6, checkpoint_every=6, warmup_steps=1, ema_decay=0.5)
    result = _run(config, data, tmp_path)
    assert result.history.columns.tolist()[-1] == "val_accuracy_raw"
    assert result.history["val_accuracy_raw"].between(0, 1).all()
    checkpoint = _final_state(tmp_path)
    average = {name.removeprefix("module."): value for name, value in checkpoint["averaged"].items()
               if name.startswith("module.")}
    kept = result.model.state_dict()
    assert kept.keys() == average.keys()
    for name in kept:
        assert torch.allclose(kept[name].float(), average[name].float()), name
    assert any(not torch.equal(kept[name], checkpoint["model"][name]) for name in kept)  # not the raw weights


def test_checkpoint_from_before_an_option_existed_still_resumes(data, tmp_path, monkeypatch):
    config = _config(steps=4, val_every=2, checkpoint_every=2, warmup_steps=1)
    first = _run(config, data, tmp_path)
    checkpoint = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    del checkpoint["config"]["ema_decay"]  # as written before weight averaging existed
    del checkpoint["config"]["every_support"]  # ... and before every_support
    del checkpoint["config"]["classes_per_group"]  # ... and before classes_per_group
    del checkpoint["config"]["small_groups"]  # ... and before small_groups
    for key in ("elastic", "elastic_cells", "stroke"):
        del checkpoint["config"]["augment"][key]
    torch.save(checkpoint, tmp_path / "checkpoint.pt")
    monkeypatch.setattr(train_module, "augment", lambda *a, **k: pytest.fail("trained again"))
    assert _run(config, data, tmp_path).model.fingerprint == first.model.fingerprint


def test_partial_augment_options_resume(data, tmp_path, monkeypatch):
    # a --config file may name only the augmentation keys it changes; the rest are the defaults
    config = _config(steps=4, val_every=2, checkpoint_every=2, warmup_steps=1, augment={"stroke": 0.5})
    assert config.augment == {**train_module.AugmentConfig().to_dict(), "stroke": 0.5}
    first = _run(config, data, tmp_path)
    monkeypatch.setattr(train_module, "augment", lambda *a, **k: pytest.fail("trained again"))
    again = _run(_config(steps=4, val_every=2, checkpoint_every=2, warmup_steps=1, augment={"stroke": 0.5}), data,
                 tmp_path)
    assert again.model.fingerprint == first.model.fingerprint


def test_resume_with_a_different_config_raises(data, tmp_path):
    _run(_config(steps=2, val_every=2, checkpoint_every=2, warmup_steps=1), data, tmp_path)
    with pytest.raises(ValueError, match="different training config"):
        _run(_config(steps=2, val_every=2, checkpoint_every=2, warmup_steps=1, lr=1e-3), data, tmp_path)
    # starting afresh is allowed
    result = _run(_config(steps=2, val_every=2, checkpoint_every=2, warmup_steps=1, lr=1e-3), data, tmp_path,
                  resume=False)
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["config"]["lr"] == 1e-3
    assert result.history["step"].tolist() == [2]


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_each_objective_runs(data, tmp_path, objective):
    config = _config(objective=objective, steps=3, val_every=3, checkpoint_every=3, warmup_steps=1)
    result = _run(config, data, tmp_path)
    assert len(result.history) == 1
    assert math.isfinite(result.history["loss"].iloc[0]) and result.history["loss"].iloc[0] > 0
    assert 0 <= result.best_accuracy <= 1
    assert result.model.metric == ("l1" if objective == "siamese" else "cosine")
    assert result.model.dim == 16
    vectors = encode(result.model, data[1].images[:4])
    assert vectors.shape == (4, 16) and np.isfinite(vectors).all()


def test_every_support_run_is_reproducible_and_recorded(data, tmp_path):
    options = dict(steps=4, val_every=2, checkpoint_every=2, warmup_steps=1, items_per_class=3)
    first = _run(_config(**options, every_support=True), data, tmp_path / "a")
    again = _run(_config(**options, every_support=True), data, tmp_path / "b")
    plain = _run(_config(**options), data, tmp_path / "c")
    assert first.model.fingerprint == again.model.fingerprint != plain.model.fingerprint
    assert read_model_config(first.model_path)["info"]["train_config"]["every_support"] is True
    assert np.isfinite(first.history["loss"]).all()


def test_classes_per_group_run_is_reproducible_and_recorded(data, tmp_path):
    # 8 classes a batch in blocks of 4 from one alphabet-rotation group each (the groups hold 5 classes)
    options = dict(steps=4, val_every=2, checkpoint_every=2, warmup_steps=1)
    first = _run(_config(**options, classes_per_group=4), data, tmp_path / "a")
    again = _run(_config(**options, classes_per_group=4), data, tmp_path / "b")
    plain = _run(_config(**options), data, tmp_path / "c")
    assert first.model.fingerprint == again.model.fingerprint != plain.model.fingerprint
    assert read_model_config(first.model_path)["info"]["train_config"]["classes_per_group"] == 4
    with_small = _run(_config(**options, classes_per_group=4, small_groups=True), data, tmp_path / "d")
    assert with_small.model.fingerprint not in (first.model.fingerprint, plain.model.fingerprint)
    assert read_model_config(with_small.model_path)["info"]["train_config"]["small_groups"] is True


def test_look_alike_classes_come_from_the_current_weights_and_are_recorded(data, tmp_path, monkeypatch):
    tables = []
    real = train_module.nearest_classes

    def recorded(*args, **kwargs):
        tables.append(real(*args, **kwargs))
        return tables[-1]

    monkeypatch.setattr(train_module, "nearest_classes", recorded)
    options = dict(steps=8, val_every=4, checkpoint_every=4, warmup_steps=1)
    first = _run(_config(**options, look_alike_classes=4, look_alike_every=3), data, tmp_path / "a")
    assert len(tables) == 2 and all(t.shape == (40, 3) for t in tables)  # refreshed at steps 3 and 6
    assert not np.array_equal(tables[0], tables[1])  # the weights moved between the refreshes
    for table in tables:
        assert not (table == np.arange(40)[:, None]).any()  # a class is never its own look-alike
    again = _run(_config(**options, look_alike_classes=4, look_alike_every=3), data, tmp_path / "b")
    plain = _run(_config(**options), data, tmp_path / "c")
    assert np.array_equal(tables[0], tables[2]) and np.array_equal(tables[1], tables[3])
    assert first.model.fingerprint == again.model.fingerprint != plain.model.fingerprint
    assert read_model_config(first.model_path)["info"]["train_config"]["look_alike_classes"] == 4
    checkpoint = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)
    assert checkpoint["state"]["look_alikes_step"] == 6
    assert np.array_equal(checkpoint["state"]["look_alikes"].numpy(), tables[1])


def test_without_validation_keeps_the_last_model(data, tmp_path):
    config = _config(steps=4, val_every=2, checkpoint_every=2, warmup_steps=1)
    result = train(config, data[0], None, tmp_path, device="cpu", show_progress=False)
    assert result.history["val_accuracy"].isna().all()
    assert read_model_config(result.model_path)["info"]["step"] == 4
    checkpoint = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    for name, tensor in result.model.state_dict().items():
        assert torch.equal(tensor, checkpoint["model"][name]), name


def test_early_stopping(data, tmp_path, monkeypatch):
    config = _config(steps=20, val_every=2, checkpoint_every=2, patience=2, warmup_steps=1)
    result = train(config, data[0], lambda model: 0.5, tmp_path, device="cpu", show_progress=False)  # never improves
    assert result.history["step"].tolist() == [2, 4, 6]
    assert result.best_step == 2 and result.best_accuracy == 0.5
    assert read_model_config(result.model_path)["info"]["step"] == 2


def test_config_checks():
    with pytest.raises(ValueError, match="unknown objective"):
        TrainConfig(objective="magic")
    with pytest.raises(ValueError, match="unknown training options"):
        TrainConfig.from_dict({"stepz": 3})
    with pytest.raises(ValueError, match="positive"):
        TrainConfig(steps=0)
    with pytest.raises(ValueError, match="unknown recipe keys"):
        TrainConfig(recipe={"sise": 3})
    with pytest.raises(ValueError, match="unknown augmentation keys"):
        TrainConfig(augment={"rotate": 3})
    with pytest.raises(ValueError, match="every_support must be true or false"):
        TrainConfig(every_support="yes")
    with pytest.raises(ValueError, match="every_support needs the prototypical objective"):
        TrainConfig(objective="triplet", every_support=True)
    for name in ("rotations", "reflections", "within_group", "same_group_negatives", "small_groups"):
        with pytest.raises(ValueError, match=f"{name} must be true or false"):
            TrainConfig(**{name: 1})
    with pytest.raises(ValueError, match="classes_per_group must be an integer"):
        TrainConfig(classes_per_group=2.5)
    with pytest.raises(ValueError, match="classes_per_group must be >= 0"):
        TrainConfig(classes_per_group=-1)
    with pytest.raises(ValueError, match="needs within_group off"):
        TrainConfig(classes_per_group=20, within_group=True)
    with pytest.raises(ValueError, match="classes_per_group needs the prototypical objective"):
        TrainConfig(objective="triplet", classes_per_group=20)
    with pytest.raises(ValueError, match="small_groups needs classes_per_group"):
        TrainConfig(small_groups=True)
    with pytest.raises(ValueError, match="precision must be one of fp32, bf16"):
        TrainConfig(precision="fp16")
    assert TrainConfig(precision="bfloat16").precision == "bf16"  # inference's spellings are taken too
    assert TrainConfig.from_dict({"precision": "float32"}).precision == "fp32"
    with pytest.raises(ValueError, match="precision must be one of fp32, bf16"):
        TrainConfig(precision=["bf16"])
    for bad in (1, 60, -2):
        with pytest.raises(ValueError, match="look_alike_classes must be 0 .off. or in .2, classes_per_batch."):
            TrainConfig(look_alike_classes=bad)
    with pytest.raises(ValueError, match="look_alike_classes needs the prototypical objective"):
        TrainConfig(objective="triplet", look_alike_classes=20)
    with pytest.raises(ValueError, match="look_alike_every must be positive"):
        TrainConfig(look_alike_classes=20, look_alike_every=0)
    with pytest.raises(ValueError, match="look_alike_every must be an integer"):
        TrainConfig(look_alike_every=2.5)
    with pytest.raises(ValueError, match="proxy_weight must be a non-negative number"):
        TrainConfig(proxy_weight=-1.0)
    with pytest.raises(ValueError, match="proxy_weight needs the prototypical objective"):
        TrainConfig(objective="triplet", proxy_weight=1.0)
    config = _config()
    assert TrainConfig.from_dict(config.to_dict()) == config


def test_learns_better_than_raw_pixels(tmp_path):
    """100 prototypical steps on 6 alphabets beat raw pixels at 5-way one-shot on 2 held-out alphabets."""
    recipe = Recipe(size=28)
    train_raw = make_alphabets(6, 10, drawers=5, seed=0, size=28)
    held_raw = make_alphabets(2, 10, drawers=5, seed=0, size=28, prefix="held")
    train_set = LabelledImages.from_table(train_raw.table, train_raw.read, recipe, rotations=True)
    held = LabelledImages.from_table(held_raw.table, held_raw.read, recipe)
    config = TrainConfig(objective="prototypical", backbone="conv", backbone_options={"channels": 16, "blocks": 3},
                         dim=32, recipe=recipe.to_dict(), steps=100, warmup_steps=10, classes_per_batch=20,
                         items_per_class=2, val_every=100, checkpoint_every=100, seed=0)
    result = train(config, train_set, None, tmp_path, device="cpu", show_progress=False)
    episodes = sample_episodes(held.labels, held.groups, n_way=5, k_shot=1, n_query=1, n_episodes=400,
                               within_group=True, seed=1)
    raw = evaluate_episodes(held.images.reshape(len(held.images), -1), episodes, "cosine").accuracy
    learned = evaluate_episodes(encode(result.model, held.images), episodes, result.model.metric).accuracy
    assert raw > 0.4  # the baseline is far above chance (0.2): the comparison means something
    assert learned > raw + 0.1, (learned, raw)


def test_the_clock_never_moves_the_learning_rate(data, tmp_path, monkeypatch):
    """A run the step count ends is the same on a slow machine: the time limit only stops a run."""
    steady = _run(_config(steps=6, val_every=3, warmup_steps=1), data, tmp_path / "steady")
    ticks = iter(range(0, 10**9, 10**5))  # every clock reading 100,000 s after the last
    monkeypatch.setattr(train_module.time, "perf_counter", lambda: float(next(ticks)))
    slow = _run(_config(steps=6, val_every=3, warmup_steps=1, max_seconds=1e9), data, tmp_path / "slow")
    assert slow.history["lr"].tolist() == steady.history["lr"].tolist()
    assert slow.model.fingerprint == steady.model.fingerprint


def test_a_resumed_fine_tuning_run_does_not_recalibrate_again(data, tmp_path, monkeypatch):
    config = _config(steps=4, val_every=2, checkpoint_every=2, warmup_steps=1)
    start = _run(config, data, tmp_path / "start").model  # any model of this architecture
    real, calls = train_module.recalibrate_batchnorm, []
    monkeypatch.setattr(train_module, "recalibrate_batchnorm", lambda *a, **k: calls.append(1) or real(*a, **k))
    full = _run(config, data, tmp_path / "full", init=start)
    assert len(calls) == 1 and "AdaBN" in full.model.info["batchnorm_recalibrated_on"]
    real_augment, steps = train_module.augment, []

    def killed_augment(*args, **kwargs):
        steps.append(1)
        if len(steps) == 3:
            raise KeyboardInterrupt("killed")
        return real_augment(*args, **kwargs)

    monkeypatch.setattr(train_module, "augment", killed_augment)
    with pytest.raises(KeyboardInterrupt):
        _run(config, data, tmp_path / "killed", init=start)
    monkeypatch.setattr(train_module, "augment", real_augment)
    resumed = _run(config, data, tmp_path / "killed", init=start)
    assert len(calls) == 2  # the killed run's fresh start only; the resume reads the checkpoint
    assert resumed.model.fingerprint == full.model.fingerprint
    assert resumed.model.info["batchnorm_recalibrated_on"] == full.model.info["batchnorm_recalibrated_on"]


class _Scripted:
    """A validation that answers a fixed sequence of accuracies, each with a noise of 0.02."""

    def __init__(self, accuracies):
        self.accuracies = iter(accuracies)
        self.last_noise = None

    def __call__(self, model):
        self.last_noise = 0.02
        return next(self.accuracies)


@pytest.mark.parametrize("later, best_step", [((0.81, 0.815, 0.80), 0),  # within the noise: the start is kept
                                              ((0.81, 0.85, 0.83), 20)])  # beats it by more: that step
def test_fine_tuning_keeps_the_start_unless_a_step_beats_it_by_the_noise(data, tmp_path, later, best_step):
    config = _config(steps=30, val_every=10)
    train_set, _ = data
    start = train(config, train_set, None, tmp_path / "start", device="cpu", show_progress=False).model
    result = train(config, train_set, _Scripted((0.80,) + later), tmp_path / "tuned", device="cpu",
                   show_progress=False, init=start)
    assert result.best_step == best_step
    assert result.model.info["val_noise"] == 0.02 and result.model.info["start_accuracy"] == 0.80
    history = pd.read_csv(tmp_path / "tuned" / "history.csv")
    assert history["val_noise"].tolist() == [0.02] * 4


def test_paired_validation_noise_is_the_spread_across_held_out_classes(data, tmp_path):
    _, val_set = data
    validate = OneShotValidation(val_set, n_way=5, n_episodes=200, seed=1, within_group=False)
    model = train(_config(steps=2, val_every=2), data[0], None, tmp_path, device="cpu",
                  show_progress=False).model
    accuracy = validate(model)
    start = validate.last_per_class.copy()
    assert start.shape == (validate.n_classes,) and 0 <= accuracy <= 1
    assert validate.paired_gain(start) == 0.0
    assert validate.paired_noise(start) == validate.last_noise  # no spread: the episode interval is the floor
    even = start + 0.05  # every held-out class 5 points better: a real gain
    validate.last_per_class = even
    assert validate.paired_gain(start) == pytest.approx(0.05) and validate.paired_noise(start) < 0.05
    uneven = start.copy()
    uneven[0] += 0.05 * validate.n_classes  # the same mean gain from one class alone: noise
    validate.last_per_class = uneven
    assert validate.paired_gain(start) == pytest.approx(0.05) and validate.paired_noise(start) > 0.05


def test_warm_restarts_restart_the_rate_and_save_a_snapshot_per_cycle(data, tmp_path):
    config = _config(steps=12, cycles=3, warmup_steps=2, val_every=4, checkpoint_every=4)
    assert train_module.cycle_ends(config) == [4, 8, 12]
    factor = train_module._schedule(config)
    rates = [factor(step) for step in range(12)]
    assert rates[0] == pytest.approx(0.5) and rates[1] == pytest.approx(1.0)  # warm-up, then the first cycle
    assert rates[4] == pytest.approx(1.0) and rates[8] == pytest.approx(1.0)  # each later cycle restarts at full rate
    assert rates[3] < rates[2] == pytest.approx(1.0) and rates[7] < rates[6] < rates[5] < 1 and rates[11] < rates[10] < rates[9] < 1
    result = _run(config, data, tmp_path)
    for cycle, step in enumerate([4, 8, 12], start=1):
        info = read_model_config(tmp_path / f"snapshot{cycle}.safetensors")["info"]
        assert info["step"] == step and info["snapshot"] == f"end of learning-rate cycle {cycle} of 3"
    assert result.history["lr"].tolist() == pytest.approx([0.002, 0.002, 0.0])  # the next step's rate: restarts
    with pytest.raises(ValueError, match="cycles"):
        _config(steps=4, cycles=5)
    assert train_module._schedule(_config(steps=30))(29) == pytest.approx(_old_cosine(29, 30, 5))


def _old_cosine(step: int, steps: int, warmup: int) -> float:
    """The one-cycle schedule as written before warm restarts: cycles=1 must not change it."""
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, steps - warmup))))


def test_channels_last_training_is_the_same_arithmetic(data, tmp_path, monkeypatch):
    """The CPU trains in channels_last for speed; the layout must not change what is learned."""
    assert train_module.training_memory_format(torch.device("cpu")) == torch.channels_last
    config = _config(steps=10, val_every=5, checkpoint_every=5)
    fast = _run(config, data, tmp_path / "channels_last")
    monkeypatch.setattr(train_module, "training_memory_format", lambda device: torch.contiguous_format)
    plain = _run(config, data, tmp_path / "contiguous")
    assert fast.history["loss"].tolist() == pytest.approx(plain.history["loss"].tolist(), rel=1e-3)
    a = load_model(tmp_path / "channels_last" / "model.safetensors").state_dict()
    b = load_model(tmp_path / "contiguous" / "model.safetensors").state_dict()
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-3) for k in a)


def test_bf16_training_follows_fp32_and_saves_a_float32_model(data, tmp_path):
    """bf16 mixed precision is an arithmetic choice, not another recipe: the same run's losses stay
    near fp32's, the vectors for the loss are float32 unit vectors, and the saved model is float32."""
    config = _config(steps=10, val_every=5, checkpoint_every=5)
    full = _run(config, data, tmp_path / "fp32")
    half = _run(_config(steps=10, val_every=5, checkpoint_every=5, precision="bf16"), data, tmp_path / "bf16")
    assert half.history["loss"].tolist() == pytest.approx(full.history["loss"].tolist(), rel=0.05)
    assert half.model.fingerprint != full.model.fingerprint  # the arithmetic did change
    saved = load_model(tmp_path / "bf16" / "model.safetensors")
    assert all(value.dtype == torch.float32 for value in saved.state_dict().values() if value.is_floating_point())
    assert read_model_config(tmp_path / "bf16" / "model.safetensors")["info"]["train_config"]["precision"] == "bf16"
    model = build_model(config).train()
    images = torch.rand(6, 1, 16, 16)
    vectors = train_module.embed_batch(model, images, "bf16")
    assert vectors.dtype == torch.float32 and vectors.norm(dim=1).tolist() == pytest.approx([1.0] * 6, abs=1e-5)
    assert torch.nn.functional.cosine_similarity(vectors, train_module.embed_batch(model, images, "fp32")).min() > 0.99
    again = _run(_config(steps=10, val_every=5, checkpoint_every=5, precision="bf16"), data, tmp_path / "bf16_again")
    assert again.model.fingerprint == half.model.fingerprint  # same seed, same numbers


def test_training_in_bf16_warns_where_the_device_only_emulates_it(data, tmp_path, monkeypatch, caplog):
    """On a CPU without AVX512-BF16 or AMX, bfloat16 autocast is emulated and many times slower than
    float32: the run still trains as asked, and says so at its start."""
    monkeypatch.setattr(hardware, "native_bfloat16", lambda device: False)
    with caplog.at_level(logging.WARNING, logger=train_module.log.name):
        run = _run(_config(steps=2, val_every=2, checkpoint_every=2, precision="bf16"), data, tmp_path / "emulated")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("no native bfloat16" in m and "--precision fp32" in m for m in warnings), warnings
    info = read_model_config(run.model_path)["info"]
    assert info["train_config"]["precision"] == "bf16"  # not switched behind the user
    assert info["machine"]["native_bfloat16"] is False and info["machine"]["device"] == "cpu"  # the file says why it was slow
    cpu = torch.device("cpu")
    assert train_module.warn_if_bfloat16_is_emulated("bf16", False, cpu)
    assert not train_module.warn_if_bfloat16_is_emulated("fp32", False, cpu)
    assert not train_module.warn_if_bfloat16_is_emulated("bf16", None, cpu)  # flags unreadable: no claim either way
    assert not train_module.warn_if_bfloat16_is_emulated("bf16", True, cpu)


def _killed_at_step_5_and_resumed(config, data, out_dir, monkeypatch):
    """The run of ``config`` killed during step 5 (after the step-3 checkpoint), then resumed to its end."""
    real_augment = train_module.augment
    _kill_during_step(monkeypatch, 5)
    with pytest.raises(KeyboardInterrupt):
        _run(config, data, out_dir)
    monkeypatch.setattr(train_module, "augment", real_augment)
    return _run(config, data, out_dir)


def test_a_run_with_a_map_matcher_trains_it_and_resumes_exactly(data, tmp_path, monkeypatch):
    config = _config(steps=6, val_every=3, checkpoint_every=3, warmup_steps=1, items_per_class=3, every_support=True,
                     match_dim=4)
    full = _run(config, data, tmp_path / "full")
    assert full.model.matcher is not None and np.isfinite(full.history["loss"]).all()
    assert read_model_config(full.model_path)["model"]["match_dim"] == 4
    start = build_model(config).matcher
    assert not torch.equal(full.model.matcher.project.weight, start.project.weight)
    assert full.model.matcher.log_scale_match.item() != start.log_scale_match.item()

    resumed = _killed_at_step_5_and_resumed(config, data, tmp_path / "killed", monkeypatch)
    assert resumed.model.fingerprint == full.model.fingerprint
    plain = _run(_config(steps=6, val_every=3, checkpoint_every=3, warmup_steps=1, items_per_class=3,
                         every_support=True), data, tmp_path / "plain")
    # the match's cross-entropy is added to the prototypical loss, not put in its place
    assert plain.model.matcher is None and plain.history["loss"].iloc[-1] < full.history["loss"].iloc[-1]


def test_a_run_with_stochastic_depth_resumes_exactly(data, tmp_path, monkeypatch):
    options = dict(steps=6, val_every=3, checkpoint_every=3, warmup_steps=1, backbone="resnet-small")
    config = _config(**options, backbone_options={"widths": [4, 8], "drop_path": 0.5})
    full = _run(config, data, tmp_path / "full")
    resumed = _killed_at_step_5_and_resumed(config, data, tmp_path / "killed", monkeypatch)
    assert resumed.model.fingerprint == full.model.fingerprint  # the drops are a function of seed and step
    plain = _run(_config(**options, backbone_options={"widths": [4, 8]}), data, tmp_path / "plain")
    assert plain.model.fingerprint != full.model.fingerprint  # branches were dropped


def test_a_run_with_class_proxies_trains_them_and_resumes_exactly(data, tmp_path, monkeypatch):
    teacher = str(tmp_path / "teacher.safetensors")  # distillation reads the episodes inside the sum
    save_model(build_model(_config(dim=12)), teacher, {})
    config = _config(steps=6, val_every=3, checkpoint_every=3, warmup_steps=1, proxy_weight=1.0, teachers=[teacher])
    full = _run(config, data, tmp_path / "full")
    proxies = _final_state(tmp_path / "full")["loss"]["proxies.proxies"]
    assert proxies.shape == (40, 16)  # one a training class: 2 alphabets x 5 characters x 4 rotations
    torch.manual_seed(config.seed)
    start = train_module.build_loss(config, build_model(config), 40).proxies.proxies
    assert not torch.equal(proxies, start) and np.isfinite(full.history["loss"]).all()

    resumed = _killed_at_step_5_and_resumed(config, data, tmp_path / "killed", monkeypatch)
    assert resumed.model.fingerprint == full.model.fingerprint
    assert torch.equal(_final_state(tmp_path / "killed")["loss"]["proxies.proxies"], proxies)
    plain = _run(_config(steps=6, val_every=3, checkpoint_every=3, warmup_steps=1, teachers=[teacher]), data,
                 tmp_path / "plain")
    assert plain.model.fingerprint != full.model.fingerprint  # the proxies' gradient reaches the net
