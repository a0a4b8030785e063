"""Distillation: teachers' targets of the training items and the soft-target loss."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from oneshot.embedder.artifact import read_model_config, save_model
from oneshot.embedder.dataset import LabelledImages
from oneshot.embedder.distill import distillation_loss, teacher_vectors
from oneshot.embedder.encode import encode
from oneshot.embedder.losses import PrototypicalLoss
from oneshot.embedder.model import Embedder
from oneshot.embedder.preprocess import Recipe
from oneshot.embedder.train import TrainConfig, train
from oneshot.errors import InvalidInputError
from oneshot.pipelines.evaluation.validation import OneShotValidation

torch.set_num_threads(1)
RECIPE = Recipe(size=16)


@pytest.fixture(scope="module")
def data(tiny_training_sets) -> tuple[LabelledImages, LabelledImages]:
    return tiny_training_sets  # at RECIPE's 16 px


def _teacher(path, seed: int, dim: int = 16, recipe: Recipe = RECIPE):
    torch.manual_seed(seed)
    model = Embedder("conv", dim, "normalized", recipe, {"channels": 8, "blocks": 2}).eval()
    save_model(model, path, {})
    return model


def test_teacher_vectors_join_unit_vectors_so_a_dot_product_is_the_mean_cosine(data, tmp_path):
    train_set, _ = data
    first, second = _teacher(tmp_path / "a.safetensors", 1), _teacher(tmp_path / "b.safetensors", 2, dim=12)
    joined, described = teacher_vectors([tmp_path / "a.safetensors", tmp_path / "b.safetensors"], train_set, RECIPE,
                                        batch_size=7)  # batches that do not divide the items
    rows = np.arange(train_set.copies * len(train_set.images))
    assert joined.shape == (len(rows), 28) and joined.dtype == torch.float32 and joined.is_contiguous()
    images = train_set.fetch(rows).numpy()
    a, b = encode(first, images), encode(second, images)  # rotated copies included, in the sampler's row order
    mean_cosine = (a[:40] @ a[40:80].T + b[:40] @ b[40:80].T) / 2
    np.testing.assert_allclose(joined[:40].numpy() @ joined[40:80].numpy().T, mean_cosine, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(joined.numpy(), axis=1), 1.0, atol=1e-5)
    assert [d["dim"] for d in described] == [16, 12] and described[0]["fingerprint"]


def test_a_teacher_with_other_preprocessing_is_refused_by_name(data, tmp_path):
    _teacher(tmp_path / "big.safetensors", 1, recipe=Recipe(size=20))
    with pytest.raises(InvalidInputError, match="big.safetensors.*must match"):
        teacher_vectors([tmp_path / "big.safetensors"], data[0], RECIPE)


def test_distillation_loss_is_zero_on_the_teachers_own_vectors_and_moves_only_the_student():
    torch.manual_seed(0)
    labels = torch.arange(6).repeat_interleave(3)
    teacher = F.normalize(torch.randn(18, 8), dim=1)
    prototypical = PrototypicalLoss(k_shot=1)
    assert distillation_loss(prototypical, teacher.clone(), teacher, labels, 4.0).item() == pytest.approx(0, abs=1e-6)
    student = F.normalize(torch.randn(18, 8), dim=1).requires_grad_()
    loss = distillation_loss(prototypical, student, teacher, labels, 4.0)
    assert loss.item() > 0.01
    loss.backward()
    assert student.grad.abs().sum() > 0
    # the teachers' logits use the learned scale without gradient: only the student's side moves it
    assert prototypical.log_scale.grad is not None
    # its value: T^2 KL of the softmaxes over the prototypes (support = each class's first row)
    support, query = torch.arange(18) % 3 == 0, torch.arange(18) % 3 != 0
    scale = prototypical.log_scale.exp().item()

    def logits(vectors):
        return -scale * torch.cdist(vectors[query], vectors[support]).pow(2) / 4.0

    expected = 16 * F.kl_div(F.log_softmax(logits(student.detach()), 1), F.softmax(logits(teacher), 1),
                             reduction="batchmean")
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def _config(**changes) -> TrainConfig:
    options = dict(objective="prototypical", backbone="conv", backbone_options={"channels": 8, "blocks": 2}, dim=16,
                   recipe=RECIPE.to_dict(), steps=24, warmup_steps=3, classes_per_batch=8, items_per_class=3,
                   val_every=12, val_way=5, val_episodes=20, checkpoint_every=12, seed=0)
    options.update(changes)
    return TrainConfig(**options)


def _student_teacher_gap(model, teacher_targets, train_set):
    """Mean KL of each item's softmax over all items, student against teachers (low: the student mimics)."""
    vectors = torch.from_numpy(encode(model, train_set.fetch(np.arange(len(teacher_targets))).numpy()))
    student, teacher = vectors @ vectors.T * 10, teacher_targets @ teacher_targets.T * 10
    return F.kl_div(F.log_softmax(student, 1), F.softmax(teacher, 1), reduction="batchmean").item()


def test_a_distilled_student_comes_closer_to_its_teachers_than_one_trained_alone(data, tmp_path):
    train_set, val_set = data
    teachers = [str(tmp_path / "t1.safetensors"), str(tmp_path / "t2.safetensors")]
    for seed, path in enumerate(teachers):
        _teacher(path, 10 + seed)
    targets, _ = teacher_vectors(teachers, train_set, RECIPE)
    results = {}
    for name, extra in (("alone", {}), ("distilled", dict(teachers=teachers, distill_weight=1.0))):
        config = _config(**extra)
        validate = OneShotValidation.from_config(val_set, config)
        results[name] = train(config, train_set, validate, tmp_path / name, device="cpu", show_progress=False)
    gap = {name: _student_teacher_gap(result.model, targets, train_set) for name, result in results.items()}
    assert gap["distilled"] < 0.5 * gap["alone"], gap
    info = read_model_config(tmp_path / "distilled" / "model.safetensors")["info"]
    assert [d["path"] for d in info["distilled_from"]] == teachers
    assert info["distillation"] == {"weight": 1.0, "temperature": 4.0}
    assert "distilled_from" not in read_model_config(tmp_path / "alone" / "model.safetensors")["info"]


def test_distillation_options_are_checked():
    with pytest.raises(InvalidInputError, match="prototypical"):
        _config(objective="triplet", teachers=["a.safetensors"])
    with pytest.raises(InvalidInputError, match="teachers"):
        _config(teachers="a.safetensors")
    with pytest.raises(InvalidInputError, match="distill_weight"):
        _config(distill_weight=1.5)
    with pytest.raises(InvalidInputError, match="distill_temperature"):
        _config(distill_temperature=0)
