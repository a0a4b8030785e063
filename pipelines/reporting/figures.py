"""The report's figures from vectors: training curves, N-way accuracy, ROC and score distributions, the
embedding map; each a base64 PNG ``data:`` URI (matplotlib, no network)."""
from __future__ import annotations

import base64
import io
import logging

import numpy as np
import pandas as pd

from oneshot.errors import InvalidInputError
from oneshot.index.metric import Metric
from oneshot.pipelines.evaluation.evaluate import has_groups, oneshot_accuracy
from oneshot.pipelines.evaluation.verification import calibrate_threshold, equal_error_rate, pair_scores, sample_pairs

logger = logging.getLogger(__name__)


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def figure_png(fig) -> str:
    """A matplotlib figure as a base64 PNG ``data:`` URI (the figure is closed)."""
    plt = pyplot()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def training_curves(history: pd.DataFrame) -> str:
    """Loss and validation accuracy against step."""
    plt = pyplot()
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.2))
    ax_loss.plot(history["step"], history["loss"])
    ax_loss.set(xlabel="step", ylabel="training loss", title="Training loss")
    val = history.dropna(subset=["val_accuracy"]) if "val_accuracy" in history else history.iloc[:0]
    ax_acc.plot(val["step"], val["val_accuracy"], marker="o")
    ax_acc.set(xlabel="step", ylabel="validation accuracy", title="Validation one-shot accuracy")
    return figure_png(fig)


def accuracy_curves(embeddings: np.ndarray, table: pd.DataFrame, metric: Metric, episodes: int, seed: int) -> tuple[str, pd.DataFrame]:
    """N-way one-shot accuracy for N = 2..20 and 20-way (or fewer) accuracy for 1..5 shots."""
    plt = pyplot()
    counts = table.groupby("label").size()
    n_classes = int(table["label"].nunique())
    rows = []

    def measure(kind, n_way, k_shot):
        for within in ((True, False) if has_groups(table) else (False,)):
            try:
                result = oneshot_accuracy(embeddings, table, metric, n_way, k_shot, episodes, within, seed)
            except InvalidInputError:
                continue
            rows.append({"curve": kind, "n_way": n_way, "k_shot": k_shot, "accuracy": result["accuracy"],
                         "ci95": result["ci95"], "within_group": within})
            return

    for n_way in range(2, min(20, n_classes) + 1):
        measure("way", n_way, 1)
    top_way = min(20, n_classes)
    for k_shot in range(1, 6):
        if int((counts >= k_shot + 1).sum()) >= top_way:
            measure("shot", top_way, k_shot)
    frame = pd.DataFrame(rows)
    fig, (ax_way, ax_shot) = plt.subplots(1, 2, figsize=(10, 3.2))
    for ax, kind, x, label in ((ax_way, "way", "n_way", "N (classes per episode), 1 shot"),
                               (ax_shot, "shot", "k_shot", f"shots per class, {top_way}-way")):
        part = frame[frame["curve"] == kind] if len(frame) else frame
        if len(part):
            ax.errorbar(part[x], part["accuracy"], yerr=part["ci95"], marker="o", capsize=3)
        ax.set(xlabel=label, ylabel="accuracy", ylim=(0, 1.02))
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
    ax_way.set_title("N-way one-shot accuracy")
    ax_shot.set_title("k-shot accuracy")
    return figure_png(fig), frame


def verification_figures(embeddings: np.ndarray, table: pd.DataFrame, metric: Metric, n_pairs: int,
                         seed: int) -> tuple[str, str, dict]:
    """ROC (EER and threshold marked) and same/different score histograms on fresh pairs.

    The threshold is calibrated on ``n_pairs`` other pairs of the same store (negatives from one
    group when there are groups).
    """
    from sklearn.metrics import roc_auc_score, roc_curve

    plt = pyplot()
    labels = table["label"].to_numpy(dtype=object)
    groups = table["group"].to_numpy(dtype=object) if has_groups(table) else None
    (ca, cb, cs), (a, b, same) = [sample_pairs(labels, n_pairs, seed + i, groups, groups is not None) for i in (0, 1)]
    threshold = calibrate_threshold(pair_scores(embeddings, ca, cb, metric), cs)
    scores = pair_scores(embeddings, a, b, metric)
    fpr, tpr, _ = roc_curve(same, scores)
    eer = equal_error_rate(scores, same)
    accepted = scores >= threshold
    far, tar = float(accepted[~same].mean()), float(accepted[same].mean())
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    ax.plot(fpr, tpr, label=f"ROC (AUC {roc_auc_score(same, scores):.3f})")
    ax.plot([0, 1], [0, 1], ls=":", c="grey")
    ax.plot([eer], [1 - eer], "o", c="tab:red", label=f"EER {eer:.3f}")
    ax.plot([far], [tar], "s", c="tab:green", label=f"threshold {threshold:.3f}")
    ax.set(xlabel="false accept rate", ylabel="true accept rate", title="1:1 verification ROC")
    ax.legend(loc="lower right", fontsize=8)
    roc = figure_png(fig)
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    bins = np.linspace(float(scores.min()), float(scores.max()), 50)
    ax.hist(scores[same], bins=bins, alpha=0.6, label="same class")
    ax.hist(scores[~same], bins=bins, alpha=0.6, label="different class" + (" (same group)" if groups is not None else ""))
    ax.axvline(threshold, c="k", ls="--", label=f"threshold {threshold:.3f}")
    ax.set(xlabel=f"{metric.name} similarity", ylabel="pairs", title="Score distributions")
    ax.legend(fontsize=8)
    stats = {"eer": eer, "threshold": float(threshold), "far": far, "frr": 1 - tar,
             "accuracy": float(np.mean(accepted == same)), "pairs": int(same.size)}
    return roc, figure_png(fig), stats


def embedding_map(embeddings: np.ndarray, table: pd.DataFrame, metric: Metric, max_classes: int = 20,
                  seed: int = 0) -> tuple[str, str]:
    """A 2-D t-SNE map of one group's embeddings (its first ``max_classes`` classes), coloured by class."""
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    plt = pyplot()
    group = table["group"].iloc[0]
    in_group = (table["group"] == group).to_numpy()
    classes = pd.unique(table.loc[in_group, "label"])[:max_classes]
    keep = in_group & table["label"].isin(classes).to_numpy()
    x = metric.prepare(embeddings[keep])
    if x.shape[0] > 5:
        perplexity = float(min(30.0, (x.shape[0] - 1) / 3.0))
        # One OpenMP thread: t-SNE's gradient loop slows ten-fold on a busy, shared machine otherwise.
        with threadpool_limits(1):
            points = TSNE(2, perplexity=perplexity, metric="cosine" if metric.normalizes else "euclidean",
                          init="pca", random_state=seed).fit_transform(x)
    else:
        points = np.zeros((x.shape[0], 2))
    fig, ax = plt.subplots(figsize=(6.5, 5))
    colours = plt.get_cmap("tab20")
    labels = table.loc[keep, "label"].to_numpy()
    for i, name in enumerate(classes):
        mine = labels == name
        ax.scatter(points[mine, 0], points[mine, 1], s=14, color=colours(i % 20), label=short_label(name))
    ax.set(xticks=[], yticks=[])
    ax.legend(fontsize=6, ncol=2, loc="center left", bbox_to_anchor=(1.0, 0.5))
    caption = f"group {group or '(none)'}: {len(classes)} classes, {int(keep.sum())} images"
    ax.set_title("Embeddings (t-SNE), coloured by class")
    return figure_png(fig), caption


def short_label(label: str, keep: int = 22) -> str:
    """The last part of a ``group/class`` label, cut to ``keep`` characters."""
    return str(label).rsplit("/", 1)[-1][-keep:]
