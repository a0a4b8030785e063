"""Ensembles: several trained cosine embedders as one model file.

``ensemble_models([a, b])`` returns an :class:`~oneshot.embedder.model.Embedder` whose backbone is
the members side by side: an image's vector is every member's unit vector concatenated and divided
by ``sqrt(M)``, so it is a unit vector too and the cosine of two images is the mean of the members'
cosines. Saved with ``save_model`` it is one ordinary model file (``--model`` everywhere: embed,
index, identify, eval, cluster, lake), at the sum of the members' encoding costs; its thresholds
start as the mean of the members' calibrated thresholds (:func:`mean_member_thresholds`) until
``oneshot calibrate`` gives it its own. Members must share the preprocessing recipe and give unit
vectors (the ``normalized`` head).
"""
from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch import nn

from oneshot.embedder.backbones import register_backbone
from oneshot.embedder.model import Embedder, require_unit_vectors
from oneshot.errors import InvalidInputError

#: What the ensemble's file repeats of each member's training record.
MEMBER_FACTS = ("command", "seed", "train_seconds", "data")
#: How a threshold taken from the members is described (``rule``).
MEAN_RULE = ("the mean of its members' calibrated values (an ensemble's cosine is the mean of theirs); "
             "`oneshot calibrate` gives it its own")
#: The score an ensemble with matched members re-ranks by (:func:`scoring_members`), and how its
#: ``unknown_reranked`` threshold is taken from the members.
TRAINED_MEAN = "the mean of its members' trained scores (a member without a map matcher: its cosine)"
TRAINED_MEAN_RULE = ("the mean of its matched members' unknown_reranked and its other members' unknown thresholds "
                     "(its re-ranking score is the mean of theirs); `oneshot calibrate` gives it its own")


class MemberStack(nn.Module):
    """Member embedders side by side: images (N, C, S, S) -> (N, sum of the members' D) / sqrt(M).

    Args:
        members: each member's ``Embedder.config()`` (the ensemble's weights hold theirs).
    """

    def __init__(self, members: Sequence[dict] | None = None, in_channels: int | None = None):
        super().__init__()
        if members is None:
            raise InvalidInputError("the ensemble backbone is made from trained models by `oneshot ensemble` "
                                    "(oneshot.ensemble_models), not trained from scratch")
        if isinstance(members, (str, bytes, dict)) or len(members) < 2:
            raise InvalidInputError(f"an ensemble needs at least two member configs, got {members!r}")
        self.members = nn.ModuleList([Embedder.from_config(config) for config in members])
        for member in self.members:
            if member.metric != "cosine":
                raise InvalidInputError(f"ensemble members must give unit vectors (cosine), not {member.metric!r}")
            if in_channels is not None and member.recipe.channels != in_channels:
                raise InvalidInputError(f"an ensemble member takes {member.recipe.channels} channels, the ensemble "
                                        f"{in_channels}")
        self.feature_dim = sum(member.dim for member in self.members)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return join_member_vectors([member(images) for member in self.members])


def join_member_vectors(vectors: Sequence[torch.Tensor]) -> torch.Tensor:
    """M members' unit vectors, each (N, D_m) -> the ensemble's (N, sum D_m): side by side over
    sqrt(M), so the joined vector is unit length and its cosine is the mean of the members'."""
    return torch.cat(list(vectors), dim=1) / len(vectors) ** 0.5


register_backbone("ensemble")(MemberStack)


def ensemble_models(models: Sequence[Embedder | str | os.PathLike]) -> Embedder:
    """One model from two or more trained cosine models (files, run folders, shipped names or loaded).

    Returns:
        An eval-mode ``Embedder`` (backbone ``"ensemble"``, no projection) with the members' weights;
        its ``info["members"]`` names each member's file (when given one) and fingerprint. A
        member's map matcher (``match_dim``) stays in its weights: bulk jobs use the joined vectors'
        cosine only, and re-ranking with the ensemble scores by its members' trained scores
        (:func:`scoring_members`).
    Raises:
        InvalidInputError: fewer than two models, a member that is not cosine, or recipes that differ.
    """
    from oneshot.embedder.artifact import load_model  # artifact imports the model module, not this one

    if len(models) < 2:
        raise InvalidInputError(f"an ensemble needs at least two models, got {len(models)}")
    loaded = [model if isinstance(model, Embedder) else load_model(model) for model in models]
    names = [getattr(model, "fingerprint", None) if isinstance(model, Embedder) else str(model) for model in models]
    for name, member in zip(names, loaded):
        require_unit_vectors(member, name, loaded[0].recipe, names[0], "ensemble members")
    ensemble = Embedder("ensemble", dim=None, recipe=loaded[0].recipe,
                        backbone_options={"members": [member.config() for member in loaded]})
    for target, member in zip(ensemble.backbone.members, loaded):
        target.load_state_dict(member.state_dict())
    ensemble.info = {"members": [{"model": str(model) if not isinstance(model, Embedder) else None,
                                  "fingerprint": getattr(member, "fingerprint", None), "dim": member.dim,
                                  **{key: value for key, value in getattr(member, "info", {}).items()
                                     if key in MEMBER_FACTS}}
                                 for model, member in zip(models, loaded)]}
    thresholds = mean_member_thresholds([getattr(member, "info", None) for member in loaded],
                                        [member.matcher is not None for member in loaded])
    if thresholds:
        ensemble.info["thresholds"] = thresholds
    return ensemble.to(next(loaded[0].parameters()).device).eval()


def members_with_matchers(ensemble: Embedder) -> list[int]:
    """Positions of ``ensemble``'s members trained with a map matcher. Its vectors' cosine (what
    bulk jobs use) ignores them; re-ranking uses them (:func:`scoring_members`)."""
    members = ensemble.backbone_options.get("members", []) if ensemble.backbone_name == "ensemble" else []
    return [i for i, config in enumerate(members) if config.get("match_dim")]


def scoring_members(model: Embedder) -> list[Embedder]:
    """The models whose scores, averaged, make ``model``'s re-ranking score: an ensemble's members
    when any of them has a map matcher (each scores by its trained score, or its cosine without a
    matcher; with none matched the mean is the joined vectors' cosine, so nothing changes), else
    ``model`` itself."""
    if members_with_matchers(model):
        return list(model.backbone.members)
    return [model]


def reranks_by_trained_score(model: Embedder) -> bool:
    """Whether ``model`` re-ranks by a trained score (it, or one of its members, has a map matcher)."""
    return any(member.matcher is not None for member in scoring_members(model))


def mean_member_thresholds(members_info: Sequence[dict | None], matched: Sequence[bool] | None = None) -> dict:
    """``info["thresholds"]`` for an ensemble: each threshold that every member carries, averaged.

    An ensemble's cosine is the mean of its members' cosines, so the mean of their thresholds
    (each calibrated on the member's own held-out data) stands in for the ensemble's own until
    ``oneshot calibrate`` measures those. Kinds some member lacks are left out; the ``unknown``
    thresholds keep their per-database-size values when every member was calibrated at the same sizes.
    With ``matched`` (which members have a map matcher; any), ``unknown_reranked`` too: the
    ensemble re-scores by the mean of its members' scores, so it is the mean of the matched
    members' ``unknown_reranked`` and the others' ``unknown``.
    """
    carried = [(info or {}).get("thresholds") or {} for info in members_info]
    if not carried:
        return {}
    thresholds = {}
    kinds = ["verification", "unknown", "cluster"] + (["unknown_reranked"] if matched and any(matched) else [])
    for kind in kinds:
        if kind == "unknown_reranked":
            records = [member.get(kind if is_matched else "unknown") or {} for member, is_matched in zip(carried, matched)]
        else:
            records = [member.get(kind) or {} for member in carried]
        keys = ("cluster_distance", "cluster_radius") if kind == "cluster" else ("value",)
        if not all(isinstance(record.get(key), (int, float)) for record in records for key in keys):
            continue
        where = "; ".join(sorted({str(record["calibrated_on"]) for record in records if record.get("calibrated_on")}))
        mean = {key: float(sum(record[key] for record in records) / len(records)) for key in keys}
        rule = TRAINED_MEAN_RULE if kind == "unknown_reranked" else MEAN_RULE
        thresholds[kind] = {**mean, "calibrated_on": f"its members' held-out data ({where or 'not recorded'}), averaged",
                            "rule": rule, "members": len(records)}
        if kind != "cluster":
            thresholds[kind]["metric"] = "cosine" if kind != "unknown_reranked" else TRAINED_MEAN
        by_size = [record.get("by_enrolled") or {} for record in records]
        same_sizes = all(size.get("enrolled") == by_size[0].get("enrolled") and size.get("values") for size in by_size)
        if kind.startswith("unknown") and same_sizes:
            values = [float(sum(column) / len(column)) for column in zip(*(size["values"] for size in by_size))]
            thresholds[kind]["by_enrolled"] = {"enrolled": list(by_size[0]["enrolled"]), "values": values,
                                               "rule": f"{by_size[0].get('rule', 'by database size')}; {rule}"}
    return thresholds
