"""Distillation: trained embedders (the teachers) give soft targets to a prototypical student.

Before step 0 each teacher encodes every training item once, unaugmented (each rotation copy is an
item of its own); its unit vectors are put side by side and divided by ``sqrt(teachers)``, so a dot
product of two items' targets is the mean of the teachers' cosines. On each episode the student
then also matches the teachers' distribution of every query over the episode's prototypes, at a
temperature (Hinton et al., 2015), while it sees the augmented images. The student keeps its own
size and speed; only training reads the teachers.
"""
from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from oneshot.embedder.artifact import load_model
from oneshot.embedder.dataset import LabelledImages
from oneshot.embedder.encode import embed_tensor
from oneshot.embedder.losses import PrototypicalLoss
from oneshot.embedder.model import require_unit_vectors
from oneshot.embedder.preprocess import Recipe
from oneshot.errors import InvalidInputError


def teacher_vectors(paths: Sequence[str | os.PathLike], train_set: LabelledImages, recipe: Recipe,
                    device: str | torch.device = "cpu", batch_size: int = 1024) -> tuple[torch.Tensor, list[dict]]:
    """The teachers' joined unit vectors of every virtual training item.

    Args:
        paths: teacher model files; each must use ``recipe`` (the student's preprocessing).
        train_set: the student's training items (rows ``0 .. copies * N - 1``, as the sampler draws).
    Returns:
        float32 (copies * N, sum of the teachers' dims) on ``device``, and one ``{"path",
        "fingerprint", "dim"}`` per teacher, for the student's model file.
    """
    if not paths:
        raise InvalidInputError("distillation needs at least one teacher model")
    rows = np.arange(train_set.copies * len(train_set.images))
    parts, described = [], []
    for path in paths:
        teacher = load_model(path, device=device)
        require_unit_vectors(teacher, path, recipe, "the student", "teachers and student")
        chunks = [F.normalize(embed_tensor(teacher, train_set.fetch(rows[start:start + batch_size]).to(device)), dim=1)
                  for start in range(0, len(rows), batch_size)]
        parts.append(torch.cat(chunks).float())
        described.append({"path": str(path), "fingerprint": getattr(teacher, "fingerprint", None), "dim": teacher.dim})
        del teacher
    joined = torch.cat(parts, dim=1) / len(parts) ** 0.5
    return joined.contiguous(), described


def distillation_loss(prototypical: PrototypicalLoss, student: torch.Tensor, teacher: torch.Tensor,
                      labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 KL(teacher || student)`` of each query's softmax over the episode's prototypes at ``T``.

    Args:
        prototypical: the run's loss (its support/query split and learned scale; the teachers'
            logits use the same scale, without gradient).
        student: (B, D) the student's vectors of the batch; teacher: (B, Dt) the teachers' targets
            of the same rows; labels: (B,).
    """
    scale = prototypical.log_scale.exp()
    student_logits, _ = prototypical.episode_logits(student, labels, scale)
    with torch.no_grad():
        teacher_logits, _ = prototypical.episode_logits(teacher, labels, scale.detach())
    return F.kl_div(F.log_softmax(student_logits / temperature, dim=1), F.softmax(teacher_logits / temperature, dim=1),
                    reduction="batchmean") * temperature ** 2
