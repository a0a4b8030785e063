"""Metric-learning losses against naive Python-loop recomputations on small seeded batches."""
from __future__ import annotations

import math

import pytest
import torch

from oneshot.embedder.losses import (
    ContrastiveLoss,
    NormalizedSoftmaxLoss,
    PrototypicalLoss,
    SiameseBCELoss,
    TripletLoss,
    WithProxies,
    pairwise_distances,
)
from oneshot.embedder.model import SiameseHead

torch.set_num_threads(1)


def _batch(n_classes: int = 4, per_class: int = 3, dim: int = 5, seed: int = 0, shuffle: bool = True):
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n_classes).repeat_interleave(per_class)
    if shuffle:
        labels = labels[torch.randperm(len(labels), generator=generator)]
    embeddings = torch.randn(len(labels), dim, generator=generator, dtype=torch.float64)
    return embeddings, labels


def _d(x, i, j) -> float:
    return math.sqrt(sum((float(x[i, t]) - float(x[j, t])) ** 2 for t in range(x.shape[1])))


# ------------------------------------------------------------------------------- triplet


def _naive_triplet_all(x, y, margin):
    losses = []
    n = len(y)
    for a in range(n):
        for p in range(n):
            if p == a or y[p] != y[a]:
                continue
            for q in range(n):
                if y[q] == y[a]:
                    continue
                value = max(_d(x, a, p) - _d(x, a, q) + margin, 0.0)
                if value > 1e-8:
                    losses.append(value)
    return sum(losses) / len(losses), len(losses)


def _naive_triplet_hard(x, y, margin):
    losses = []
    n = len(y)
    for a in range(n):
        positives = [_d(x, a, p) for p in range(n) if p != a and y[p] == y[a]]
        negatives = [_d(x, a, q) for q in range(n) if y[q] != y[a]]
        if positives and negatives:
            losses.append(max(max(positives) - min(negatives) + margin, 0.0))
    return sum(losses) / len(losses)


def _naive_triplet_semihard(x, y, margin):
    """Per anchor-positive pair: the nearest negative farther than the positive, else the farthest."""
    losses = []
    n = len(y)
    for a in range(n):
        negatives = [_d(x, a, q) for q in range(n) if y[q] != y[a]]
        if not negatives:
            continue
        for p in range(n):
            if p == a or y[p] != y[a]:
                continue
            d_ap = _d(x, a, p)
            outside = [d for d in negatives if d > d_ap]
            chosen = min(outside) if outside else max(negatives)
            losses.append(max(d_ap - chosen + margin, 0.0))
    return sum(losses) / len(losses)


def test_pairwise_distances_match_loop():
    x, _ = _batch(seed=3)
    expected = torch.tensor([[_d(x, i, j) for j in range(len(x))] for i in range(len(x))], dtype=x.dtype)
    off_diagonal = ~torch.eye(len(x), dtype=torch.bool)
    torch.testing.assert_close(pairwise_distances(x)[off_diagonal], expected[off_diagonal])
    assert (pairwise_distances(x).diagonal() < 1e-5).all()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_triplet_all_matches_loop(seed):
    x, y = _batch(seed=seed)
    margin = 1.0  # large enough that many, but not all, triplets violate it
    expected, active = _naive_triplet_all(x, y.tolist(), margin)
    n_triplets = sum(1 for a in range(len(y)) for p in range(len(y)) for q in range(len(y))
                     if p != a and y[p] == y[a] and y[q] != y[a])
    assert 0 < active < n_triplets  # the average really is over the violating ones only
    loss = TripletLoss(margin=margin, mining="all")(x, y)
    assert loss.item() == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_triplet_hard_matches_loop(seed):
    x, y = _batch(seed=seed)
    loss = TripletLoss(margin=0.3, mining="hard")(x, y)
    assert loss.item() == pytest.approx(_naive_triplet_hard(x, y.tolist(), 0.3), rel=1e-9)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_triplet_semihard_matches_loop(seed):
    x, y = _batch(seed=seed)
    loss = TripletLoss(margin=0.5, mining="semihard")(x, y)
    assert loss.item() == pytest.approx(_naive_triplet_semihard(x, y.tolist(), 0.5), rel=1e-9)


def test_triplet_semihard_falls_back_to_farthest_negative():
    # anchor 0 and positive 1 are far apart; both negatives are nearer than the positive
    x = torch.tensor([[0.0], [10.0], [1.0], [2.0]], dtype=torch.float64)
    y = torch.tensor([0, 0, 1, 1])
    loss = TripletLoss(margin=0.5, mining="semihard")(x, y)
    assert loss.item() == pytest.approx(_naive_triplet_semihard(x, y.tolist(), 0.5))
    # anchor 0: d_ap = 10, farthest negative 2 -> 8.5; the other pairs computed the same way by hand
    # anchor 1: d_ap = 10, negatives at 9 and 8, none outside -> farthest 9 -> 1.5
    # anchor 2: d_ap = 1, negatives at 2 (x=0) and 8 -> nearest outside 2 -> max(1-2+.5, 0) = 0
    # anchor 3: d_ap = 1, negatives at 2 and 8 -> nearest outside 2 -> 0
    assert loss.item() == pytest.approx((8.5 + 1.5 + 0 + 0) / 4)


def test_triplet_hard_by_hand():
    # points on a line: the hardest positive and nearest negative are obvious
    x = torch.tensor([[0.0], [1.0], [3.0], [3.5]], dtype=torch.float64)
    y = torch.tensor([0, 0, 1, 1])
    # anchors: 0: hp 1, hn 3 -> 0;  1: hp 1, hn 2 -> 0;  2: hp .5, hn 2 -> 0;  3: hp .5, hn 2.5 -> 0
    assert TripletLoss(margin=0.2, mining="hard")(x, y).item() == pytest.approx(0.0, abs=1e-9)
    # with margin 2.5: 0: 1-3+2.5=.5; 1: 1-2+2.5=1.5; 2: .5-2+2.5=1; 3: .5-2.5+2.5=.5
    assert TripletLoss(margin=2.5, mining="hard")(x, y).item() == pytest.approx((0.5 + 1.5 + 1 + 0.5) / 4)


def test_triplet_all_no_violation_is_zero_with_gradient():
    x = torch.tensor([[0.0], [0.1], [10.0], [10.1]], requires_grad=True)
    loss = TripletLoss(margin=0.2, mining="all")(x, torch.tensor([0, 0, 1, 1]))
    assert loss.item() == 0.0
    loss.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_triplet_unknown_mining():
    with pytest.raises(ValueError, match="semihard"):
        TripletLoss(mining="easy")


# ------------------------------------------------------------------------------- pairs


def test_contrastive_matches_loop():
    x, _ = _batch(n_classes=3, per_class=4, seed=5)
    half = len(x) // 2
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 2, 1, 1, 0, 2])  # pairs (i, half+i): some same, some not
    margin = 2.5
    losses = []
    for i in range(half):
        d = _d(x, i, half + i)
        same = labels[i] == labels[half + i]
        losses.append(d * d if same else max(margin - d, 0.0) ** 2)
    assert 0 < sum(labels[i] == labels[half + i] for i in range(half)) < half
    loss = ContrastiveLoss(margin=margin)(x, labels)
    assert loss.item() == pytest.approx(sum(losses) / half, rel=1e-9)


def test_siamese_bce_matches_loop():
    torch.manual_seed(0)
    head = SiameseHead(feature_dim=6, dim=4)
    with torch.no_grad():
        head.raw_weight.copy_(torch.tensor([-1.0, 0.5, 0.0, 1.5]))
        head.bias.fill_(0.7)
    features = torch.randn(8, 6)
    embedded = head(features).detach().double()
    labels = torch.tensor([0, 1, 2, 3, 0, 5, 2, 6])  # pairs 0 and 2 are "same"
    losses = []
    for i in range(4):
        a, b = embedded[i], embedded[4 + i]
        logit = head.bias.item() - sum(abs(float(a[j]) - float(b[j])) for j in range(4))
        p = 1 / (1 + math.exp(-logit))
        y = 1.0 if labels[i] == labels[4 + i] else 0.0
        losses.append(-(y * math.log(p) + (1 - y) * math.log(1 - p)))
    loss = SiameseBCELoss(head.pair_logit)(embedded, labels)
    assert loss.item() == pytest.approx(sum(losses) / 4, rel=1e-6)


@pytest.mark.parametrize("loss_fn", [ContrastiveLoss(), SiameseBCELoss(lambda a, b: -(a - b).abs().sum(1))])
def test_pair_losses_need_even_batch(loss_fn):
    with pytest.raises(ValueError, match="even"):
        loss_fn(torch.randn(5, 3), torch.arange(5))


# ------------------------------------------------------------------------------- prototypical


def _naive_prototypical(x, y, k_shot, scale):
    classes = sorted(set(y))
    support = {c: [] for c in classes}
    queries = []
    for i, c in enumerate(y):  # the first k_shot rows of each class, in batch order, are support
        if len(support[c]) < k_shot:
            support[c].append(i)
        else:
            queries.append(i)
    dim = x.shape[1]
    prototypes = {c: [sum(float(x[i, t]) for i in support[c]) / k_shot for t in range(dim)] for c in classes}
    total = 0.0
    for q in queries:
        logits = [-scale * sum((float(x[q, t]) - prototypes[c][t]) ** 2 for t in range(dim)) for c in classes]
        top = max(logits)
        log_sum = top + math.log(sum(math.exp(v - top) for v in logits))
        total += log_sum - logits[classes.index(y[q])]
    return total / len(queries)


@pytest.mark.parametrize("k_shot,per_class", [(1, 2), (1, 3), (2, 3), (2, 4)])
def test_prototypical_matches_loop(k_shot, per_class):
    x, y = _batch(n_classes=4, per_class=per_class, seed=k_shot * 10 + per_class)
    y = y * 7 + 3  # arbitrary, non-contiguous label values
    scale = 0.8
    loss = PrototypicalLoss(k_shot=k_shot, scale=scale).double()(x, y)
    assert loss.item() == pytest.approx(_naive_prototypical(x, y.tolist(), k_shot, scale), rel=1e-6)


def test_prototypical_uses_batch_order_for_support():
    # classes interleaved: the first row of each class is its prototype (k_shot=1)
    x = torch.tensor([[0.0], [10.0], [0.5], [9.0]], dtype=torch.float64)
    y = torch.tensor([0, 1, 0, 1])
    loss = PrototypicalLoss(k_shot=1, scale=1.0).double()(x, y)
    assert loss.item() == pytest.approx(_naive_prototypical(x, y.tolist(), 1, 1.0), rel=1e-9)
    assert loss.item() < 1e-6  # each query is next to its own prototype


@pytest.mark.parametrize("k_shot,per_class", [(1, 2), (1, 4), (2, 3)])
def test_every_support_is_the_mean_over_each_cyclic_choice_of_support(k_shot, per_class):
    x, y = _batch(n_classes=3, per_class=per_class, seed=40 + k_shot * 10 + per_class)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(1))
    x, y = x[order], y[order]  # classes interleaved: "cyclic" is within each class, in batch order
    expected = []
    for shift in range(per_class):
        # roll each class's rows by ``shift`` so the naive loop's "first k_shot rows" are the support
        rows = [torch.nonzero(y == c).flatten() for c in y.unique()]
        rolled = torch.cat([r.roll(-shift) for r in rows])
        expected.append(_naive_prototypical(x[rolled], y[rolled].tolist(), k_shot, 0.8))
    loss = PrototypicalLoss(k_shot=k_shot, scale=0.8, every_support=True).double()(x, y)
    assert loss.item() == pytest.approx(sum(expected) / per_class, rel=1e-6)
    assert loss.item() != pytest.approx(expected[0], rel=1e-3)  # not the first-support episode alone


def test_every_support_gives_each_row_both_roles():
    # two rows per class, k_shot 1: the plain loss uses row 0 only as the prototype, row 1 only
    # as the query; with every_support both roles fall to both rows (the mean of the two episodes)
    x = torch.tensor([[0.0, 1.0], [0.2, 0.9], [1.0, 0.0], [0.8, 0.1]], requires_grad=True)
    y = torch.tensor([0, 0, 1, 1])
    plain = PrototypicalLoss(k_shot=1, scale=1.0)(x, y)
    every = PrototypicalLoss(k_shot=1, scale=1.0, every_support=True)(x, y)
    swapped = PrototypicalLoss(k_shot=1, scale=1.0)(x[[1, 0, 3, 2]], y)
    assert every.item() == pytest.approx((plain.item() + swapped.item()) / 2, rel=1e-6)


def test_prototypical_too_few_rows():
    with pytest.raises(ValueError, match="k_shot=2"):
        PrototypicalLoss(k_shot=2)(torch.randn(6, 3), torch.tensor([0, 0, 0, 1, 1, 2]))
    with pytest.raises(ValueError, match="k_shot"):
        PrototypicalLoss(k_shot=0)


# ------------------------------------------------------------------------------- normsoftmax


def test_normalized_softmax_matches_loop():
    torch.manual_seed(0)
    loss_fn = NormalizedSoftmaxLoss(num_classes=5, dim=4, scale=8.0, margin=0.2).double()
    with torch.no_grad():
        loss_fn.proxies.copy_(torch.randn(5, 4, dtype=torch.float64))
    x = torch.randn(7, 4, dtype=torch.float64)
    y = torch.tensor([0, 4, 2, 2, 1, 3, 0])

    def unit(v):
        norm = math.sqrt(sum(float(t) ** 2 for t in v))
        return [float(t) / norm for t in v]

    total = 0.0
    for i in range(len(y)):
        e = unit(x[i])
        logits = []
        for c in range(5):
            cosine = sum(a * b for a, b in zip(e, unit(loss_fn.proxies[c].detach())))
            logits.append(8.0 * (cosine - (0.2 if c == y[i] else 0.0)))
        total += math.log(sum(math.exp(v) for v in logits)) - logits[int(y[i])]
    assert loss_fn(x, y).item() == pytest.approx(total / len(y), rel=1e-9)


def test_with_proxies_adds_the_weighted_proxy_softmax_to_the_episodes():
    torch.manual_seed(0)
    episodic, proxies = PrototypicalLoss(k_shot=1, every_support=True), NormalizedSoftmaxLoss(num_classes=6, dim=4)
    both = WithProxies(episodic, proxies, weight=0.5)
    x, y = torch.randn(12, 4), torch.tensor([0, 1, 5, 0, 1, 5, 0, 1, 5, 0, 1, 5])
    assert both(x, y).item() == pytest.approx(episodic(x, y).item() + 0.5 * proxies(x, y).item(), rel=1e-6)
    # every proxy is a parameter the optimiser sees, and the checkpoint keeps
    assert any(p is proxies.proxies for p in both.parameters())
    assert set(both.state_dict()) == {"episodic.log_scale", "proxies.proxies"}
    both(x, y).backward()
    assert proxies.proxies.grad[2].abs().sum() > 0  # a class outside the batch is pushed away too


# ------------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("loss_fn", [TripletLoss(), ContrastiveLoss(), PrototypicalLoss(),
                                     NormalizedSoftmaxLoss(3, 4)])
def test_bad_shapes_raise(loss_fn):
    with pytest.raises(ValueError, match=r"expected embeddings \(B, D\)"):
        loss_fn(torch.randn(6), torch.arange(6))
    with pytest.raises(ValueError, match=r"expected embeddings \(B, D\)"):
        loss_fn(torch.randn(6, 4, 1), torch.arange(6))
    with pytest.raises(ValueError, match=r"expected labels \(6,\)"):
        loss_fn(torch.randn(6, 4), torch.tensor([0, 0, 1, 1, 2]))
    with pytest.raises(ValueError, match=r"expected labels \(6,\)"):
        loss_fn(torch.randn(6, 4), torch.zeros(6, 1, dtype=torch.long))


def test_labels_as_list_or_numpy():
    import numpy as np

    x, y = _batch(seed=4)
    a = TripletLoss(mining="hard")(x, y)
    assert TripletLoss(mining="hard")(x, y.tolist()).item() == a.item()
    assert TripletLoss(mining="hard")(x, np.asarray(y)).item() == a.item()


# ------------------------------------------------------------------------------- learning


def _losses_to_optimise():
    head = SiameseHead(feature_dim=8, dim=None)
    return {
        "triplet-all": (TripletLoss(0.5, "all"), "pk"),
        "triplet-hard": (TripletLoss(0.5, "hard"), "pk"),
        "triplet-semihard": (TripletLoss(0.5, "semihard"), "pk"),
        "contrastive": (ContrastiveLoss(1.0), "pairs"),
        "siamese": (SiameseBCELoss(head.pair_logit), "pairs"),
        "prototypical": (PrototypicalLoss(k_shot=1, scale=1.0), "pk"),
        "normsoftmax": (NormalizedSoftmaxLoss(4, 8), "pk"),
    }


@pytest.mark.parametrize("name", list(_losses_to_optimise()))
def test_loss_decreases_on_learnable_table(name):
    torch.manual_seed(0)
    loss_fn, layout = _losses_to_optimise()[name]
    if layout == "pk":
        labels = torch.arange(4).repeat(3)  # interleaved classes, 3 rows each
    else:
        labels = torch.tensor([0, 1, 2, 3, 0, 1, 0, 1, 2, 0, 1, 2])  # pairs (i, 6+i): half same
    table = torch.nn.Parameter(torch.randn(len(labels), 8) * 0.3)
    if name == "siamese":  # embeddings are sigmoid features: keep them in (0, 1) like the head does
        embed = lambda: torch.sigmoid(table)  # noqa: E731
    else:
        embed = lambda: table  # noqa: E731
    optimizer = torch.optim.Adam([table, *loss_fn.parameters()], lr=0.05)
    first = loss_fn(embed(), labels).item()
    for _ in range(60):
        optimizer.zero_grad()
        loss = loss_fn(embed(), labels)
        loss.backward()
        optimizer.step()
    last = loss_fn(embed(), labels).item()
    assert math.isfinite(first) and first > 0
    assert last < 0.5 * first, f"{name}: {first:.4f} -> {last:.4f}"
