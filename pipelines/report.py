"""One self-contained HTML report of a store: what people look at, with every figure embedded.

Figures are matplotlib PNGs saved into memory and embedded as base64 ``data:`` URIs, so the file
reads offline and needs nothing beside it. Sections (those needing labels are skipped, with a
note, on an unlabelled store): training curves (when a ``history.csv`` is given or found next to
the model), N-way accuracy against N and against shots, ROC with the EER and the threshold,
same/different score distributions, a 2-D PCA map coloured by class, thumbnails of clusters, the
nearest neighbours of right and wrong answers, the hardest confusions and a per-group table.
"""
from __future__ import annotations

import base64
import html
import io
import logging
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

from oneshot.atomic import atomic_path
from oneshot.errors import InvalidInputError, OneshotError
from oneshot.index.metric import Metric, get_metric
from oneshot.index.store import EmbeddingSet, read_embeddings
from oneshot.pipelines.cluster import Clustering, cluster_groups, is_labelled
from oneshot.pipelines.cluster_calibration import resolve_thresholds
from oneshot.pipelines.evaluate import has_groups, oneshot_accuracy
from oneshot.pipelines.verify import calibrate_threshold, equal_error_rate, pair_scores, sample_pairs

logger = logging.getLogger(__name__)

THUMB = 40  # thumbnail side in pixels


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def figure_png(fig) -> str:
    """A matplotlib figure as a base64 PNG ``data:`` URI (the figure is closed)."""
    plt = _pyplot()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _img(uri: str, alt: str) -> str:
    return f'<img src="{uri}" alt="{html.escape(alt)}">'


def _thumb(image: np.ndarray) -> np.ndarray:
    """A grayscale square thumbnail (THUMB x THUMB) of any uint8 image: the whole image, its
    aspect kept (a wide signature is not squashed), on the colour of its border."""
    import cv2

    from oneshot.embedder.preprocess import border_pixels

    image = np.asarray(image)
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    height, width = image.shape
    scale = THUMB / max(height, width)
    new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
    resized = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    paper = np.median(border_pixels(image))
    square = np.full((THUMB, THUMB), paper, dtype=np.uint8)
    top, left = (THUMB - new_h) // 2, (THUMB - new_w) // 2
    square[top : top + new_h, left : left + new_w] = resized
    return square


def thumbnail_grid(rows: list[list[np.ndarray]], row_titles: list[str], frames: list[list[str | None]] | None = None,
                   title: str = "") -> str:
    """Rows of thumbnails as one PNG; ``frames[r][c]`` colours the border of a thumbnail."""
    plt = _pyplot()
    n_cols = max((len(r) for r in rows), default=1) or 1
    fig, axes = plt.subplots(len(rows), n_cols, figsize=(0.75 * n_cols + 2.0, 0.8 * len(rows) + 0.4), squeeze=False)
    for r, images in enumerate(rows):
        for c in range(n_cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(images):
                ax.imshow(_thumb(images[c]), cmap="gray", vmin=0, vmax=255)
                colour = frames[r][c] if frames else None
                for spine in ax.spines.values():
                    spine.set_edgecolor(colour or "#bbbbbb")
                    spine.set_linewidth(3 if colour else 0.5)
            else:
                ax.axis("off")
        axes[r][0].set_ylabel(row_titles[r], rotation=0, ha="right", va="center", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return figure_png(fig)


def training_curves(history: pd.DataFrame) -> str:
    """Loss and validation accuracy against step."""
    plt = _pyplot()
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.2))
    ax_loss.plot(history["step"], history["loss"])
    ax_loss.set(xlabel="step", ylabel="training loss", title="Training loss")
    val = history.dropna(subset=["val_accuracy"]) if "val_accuracy" in history else history.iloc[:0]
    ax_acc.plot(val["step"], val["val_accuracy"], marker="o")
    ax_acc.set(xlabel="step", ylabel="validation accuracy", title="Validation one-shot accuracy")
    return figure_png(fig)


def accuracy_curves(embeddings: np.ndarray, table: pd.DataFrame, metric: Metric, episodes: int, seed: int) -> tuple[str, pd.DataFrame]:
    """N-way one-shot accuracy for N = 2..20 and 20-way (or fewer) accuracy for 1..5 shots."""
    plt = _pyplot()
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

    plt = _pyplot()
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

    plt = _pyplot()
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


def nearest_neighbours(embeddings: np.ndarray, table: pd.DataFrame, metric: Metric, k: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Leave-one-out neighbours within each group -> (rows (N, k) int64, similarities (N, k))."""
    import faiss

    x = metric.prepare(embeddings)
    rows = np.full((len(table), k), -1, dtype=np.int64)
    sims = np.full((len(table), k), -np.inf, dtype=np.float32)
    groups = table["group"].astype(str).to_numpy()
    for group in pd.unique(groups):
        members = np.flatnonzero(groups == group)
        if members.size < 2:
            continue
        index = faiss.IndexFlat(x.shape[1], metric.faiss_metric)
        index.add(x[members])
        kk = min(k + 1, members.size)
        raw, ids = index.search(x[members], kk)
        raw = metric.from_faiss(raw)
        for i, row in enumerate(members):
            found = [(members[j], s) for j, s in zip(ids[i], raw[i]) if j >= 0 and members[j] != row][:k]
            rows[row, :len(found)] = [f[0] for f in found]
            sims[row, :len(found)] = [f[1] for f in found]
    return rows, sims


def confusion_table(table: pd.DataFrame, neighbours: np.ndarray, top: int = 15) -> pd.DataFrame:
    """The class pairs most often confused by the leave-one-out nearest neighbour."""
    labels = table["label"].to_numpy()
    first = neighbours[:, 0]
    valid = first >= 0
    wrong = valid & (labels[np.where(valid, first, 0)] != labels)
    if not wrong.any():
        return pd.DataFrame(columns=["group", "drawing of", "nearest is", "times"])
    pairs = pd.DataFrame({"group": table["group"].to_numpy()[wrong], "drawing of": labels[wrong],
                          "nearest is": labels[first[wrong]]})
    return pairs.value_counts().rename("times").reset_index().head(top)


def cluster_thumbnails(clustering: Clustering, images_for, group: str, max_clusters: int = 60,
                       per_cluster: int = 12) -> str:
    """Thumbnails of one group's clusters, one row each (outliers framed red)."""
    a = clustering.assignments
    a = a[a["group"] == group]
    clusters = a["cluster"].value_counts().index[:max_clusters]
    rows, titles, frames, wanted = [], [], [], []
    for cluster in sorted(clusters):
        members = a[a["cluster"] == cluster].sort_values("distance").head(per_cluster)
        wanted.append(members)
        titles.append(f"cluster {cluster} ({int((a['cluster'] == cluster).sum())})")
        frames.append(["tab:red" if o else None for o in members["outlier"]])
    paths = [p for m in wanted for p in m["path"]]
    rows.extend(_split(images_for(paths), [len(members) for members in wanted]))
    return thumbnail_grid(rows, titles, frames)


def neighbour_thumbnails(table: pd.DataFrame, neighbours: np.ndarray, images_for, right: bool, count: int = 6,
                         seed: int = 0) -> str | None:
    """Queries (first column) and their nearest neighbours, framed green (same class) or red."""
    labels = table["label"].to_numpy()
    first = neighbours[:, 0]
    ok = (first >= 0) & (labels[np.where(first >= 0, first, 0)] == labels)
    candidates = np.flatnonzero(ok if right else (first >= 0) & ~ok)
    if candidates.size == 0:
        return None
    chosen = np.random.default_rng(seed).choice(candidates, min(count, candidates.size), replace=False)
    rows, titles, frames, paths = [], [], [], []
    for q in chosen:
        near = [int(j) for j in neighbours[q] if j >= 0]
        paths.extend([table["path"].iloc[q]] + [table["path"].iloc[j] for j in near])
        titles.append(str(labels[q])[-28:])
        frames.append(["black"] + ["tab:green" if labels[j] == labels[q] else "tab:red" for j in near])
    rows.extend(_split(images_for(paths), [len(f) for f in frames]))
    return thumbnail_grid(rows, titles, frames)


def _split(items: list, sizes: list[int]) -> list[list]:
    """``items`` cut into consecutive runs of the given sizes (one thumbnail row each)."""
    ends = np.cumsum(sizes).tolist()
    return [items[end - size:end] for size, end in zip(sizes, ends)]


def short_label(label: str, keep: int = 22) -> str:
    """The last part of a ``group/class`` label, cut to ``keep`` characters."""
    return str(label).rsplit("/", 1)[-1][-keep:]


def confusion_thumbnails(table: pd.DataFrame, confusions: pd.DataFrame, images_for, per_class: int = 4) -> str | None:
    """For each confused pair, a few drawings of each class side by side (the two separated by a gap)."""
    if len(confusions) == 0:
        return None
    rows, titles, paths = [], [], []
    for _, pair in confusions.iterrows():
        a = table.loc[table["label"] == pair["drawing of"], "path"].head(per_class).tolist()
        b = table.loc[table["label"] == pair["nearest is"], "path"].head(per_class).tolist()
        paths.extend(a + b)
        rows.append((len(a), len(b)))
        titles.append(f"{short_label(pair['drawing of'], 14)} vs {short_label(pair['nearest is'], 14)}")
    grid = _split(images_for(paths), [n_a + n_b for n_a, n_b in rows])
    frames = [["tab:blue"] * n_a + ["tab:orange"] * n_b for n_a, n_b in rows]
    return thumbnail_grid(grid, titles, frames)


def _table_html(frame: pd.DataFrame) -> str:
    return frame.to_html(index=False, float_format=lambda v: f"{v:.3f}", border=0, classes="grid", escape=True)


CSS = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:1em auto;padding:0 1em;color:#222}
h1{font-size:1.5em}h2{font-size:1.2em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
img{max-width:100%;height:auto;display:block;margin:.4em 0}.note{color:#666;font-size:.9em}
table.grid{border-collapse:collapse;font-size:.85em}table.grid td,table.grid th{padding:.2em .6em;border-bottom:1px solid #eee;text-align:right}
table.grid th{background:#f4f4f4}.row{display:flex;flex-wrap:wrap;gap:1em;align-items:flex-start}"""


def build_report(store: str | os.PathLike | EmbeddingSet, history: str | os.PathLike | pd.DataFrame | None = None,
                 model: str | os.PathLike | None = None, source=None, group: str | None = None,
                 episodes: int = 300, n_pairs: int = 2000, seed: int = 0, title: str | None = None) -> str:
    """The report's HTML text.

    Args:
        store: a Parquet store (labelled or not) or a loaded one.
        history: ``history.csv`` of the model's training (default: the one next to ``model``, if any).
        model: the model file (for its history and carried thresholds).
        source: where the images are (default: the store's ``source``); without them, no thumbnails.
        group: the group shown in the map and the cluster thumbnails (default: the first).
        episodes: episodes per point of the accuracy curves.
        n_pairs: verification pairs (and as many for the threshold).
    """
    from oneshot.pipelines.cluster_review import open_store_source

    started = time.perf_counter()
    stored = store if isinstance(store, EmbeddingSet) else read_embeddings(store)
    table, embeddings = stored.table.reset_index(drop=True), stored.embeddings
    if len(table) == 0:
        raise InvalidInputError(f"{store}: empty store, nothing to report")
    metric = get_metric(stored.metadata.get("metric", "cosine"))
    labelled = is_labelled(table)
    if history is None and model is not None:
        candidate = Path(model).parent / "history.csv" if Path(model).is_file() else Path(model) / "history.csv"
        history = candidate if candidate.is_file() else None
    if history is not None and not isinstance(history, pd.DataFrame):
        history = pd.read_csv(history)
    missing_images = ""
    try:
        reader = open_store_source(source or stored.metadata.get("source"))
        images_for = lambda paths: reader.read(list(paths))  # noqa: E731
    except OneshotError as error:  # thumbnails are optional: say why they are missing
        logger.warning("no thumbnails: %s", error)
        images_for, missing_images = None, str(error)
    group = group if group is not None else str(table["group"].iloc[0])
    if group not in set(table["group"].astype(str)):
        raise InvalidInputError(f"group {group!r} is not in the store")

    parts = [f"<h1>{html.escape(title or 'oneshot report')}</h1>"]
    name = str(store) if not isinstance(store, EmbeddingSet) else "(in memory)"
    facts = pd.DataFrame([{"store": name, "images": len(table), "classes": int(table["label"].nunique()) if labelled else "unlabelled",
                           "groups": int(table["group"].nunique()), "model": stored.metadata.get("model_fingerprint"),
                           "metric": metric.name, "source": stored.metadata.get("source")}])
    parts.append(_table_html(facts))

    parts.append("<h2>Training curves</h2>")
    if history is not None and len(history):
        parts.append(_img(training_curves(history), "training curves"))
    else:
        parts.append('<p class="note">No training history for this model (pass --history or --model with a '
                     "history.csv next to it).</p>")

    if labelled:
        uri, curves = accuracy_curves(embeddings, table, metric, episodes, seed)
        parts.append("<h2>N-way accuracy</h2>")
        parts.append(_img(uri, "N-way accuracy"))
        parts.append(f'<p class="note">{episodes} seeded episodes per point, one query per class, prototype of the '
                     "shots; episodes within one group when every group has enough classes; bars: 95% interval.</p>")
        roc, dist, stats = verification_figures(embeddings, table, metric, n_pairs, seed)
        parts.append("<h2>1:1 verification</h2>")
        parts.append(f'<div class="row">{_img(roc, "ROC")}{_img(dist, "score distributions")}</div>')
        parts.append(f'<p class="note">{stats["pairs"]} balanced pairs; threshold {stats["threshold"]:.3f} chosen on '
                     f'{n_pairs} other pairs of this store (accuracy {stats["accuracy"]:.3f}, FAR {stats["far"]:.3f}, '
                     f'FRR {stats["frr"]:.3f}); EER {stats["eer"]:.3f}.</p>')
        in_group = (table["group"].astype(str) == group).to_numpy()
        uri, caption = embedding_map(embeddings[in_group], table[in_group].reset_index(drop=True), metric, seed=seed)
        parts.append("<h2>Embedding map</h2>")
        parts.append(_img(uri, "embedding map"))
        parts.append(f'<p class="note">{html.escape(caption)}</p>')

    thresholds, threshold_source = resolve_thresholds(stored.metadata, model)
    clustering = cluster_groups(embeddings, table, metric, "auto", thresholds["cluster_distance"],
                                thresholds["cluster_radius"], seed=seed)
    parts.append("<h2>Clusters</h2>")
    parts.append(f'<p class="note">Spectral clustering of each group on its own, number of clusters estimated '
                 f"(eigengap); thresholds: {html.escape(threshold_source)}.</p>")
    if images_for is not None:
        n_clusters = int(clustering.assignments.loc[clustering.assignments["group"] == group, "cluster"].nunique())
        shown = f"all {n_clusters} clusters" if n_clusters <= 60 else f"the 60 largest of {n_clusters} clusters"
        parts.append(f'<p>Clusters of group <b>{html.escape(group or "(none)")}</b> ({shown}), one row each, up to '
                     "12 drawings closest to the centre first; red frame: outlier. Other groups: "
                     "<code>oneshot report STORE --group NAME</code>.</p>")
        parts.append(_img(cluster_thumbnails(clustering, images_for, group), "cluster thumbnails"))
    else:
        parts.append(f'<p class="note">No thumbnails: {html.escape(missing_images)}</p>')

    if labelled:
        neighbours, _ = nearest_neighbours(embeddings, table, metric)
        parts.append("<h2>Nearest neighbours</h2>")
        if images_for is not None:
            for right in (True, False):
                uri = neighbour_thumbnails(table, neighbours, images_for, right, seed=seed)
                if uri:
                    parts.append(f"<p>{'Right' if right else 'Wrong'} answers: the query (black frame) and its five "
                                 "nearest neighbours in its group (green: same class, red: another class).</p>")
                    parts.append(_img(uri, "right answers" if right else "wrong answers"))
        first = neighbours[:, 0]
        labels = table["label"].to_numpy()
        correct = (first >= 0) & (labels[np.where(first >= 0, first, 0)] == labels)
        parts.append(f'<p class="note">Leave-one-out nearest neighbour within the group: {correct.mean():.3f} right.</p>')
        parts.append("<h2>Hardest confusions</h2>")
        confusions = confusion_table(table, neighbours)
        parts.append(_table_html(confusions))
        uri = confusion_thumbnails(table, confusions.head(8), images_for) if images_for is not None else None
        if uri:
            parts.append("<p>The eight most confused pairs: drawings of the first class (blue) and of the class its "
                         "nearest neighbour came from (orange).</p>")
            parts.append(_img(uri, "confused pairs"))
        per_group = clustering.per_group.copy()
        nn_accuracy = pd.Series(correct).groupby(table["group"].astype(str).to_numpy()).mean()
        per_group.insert(2, "1-NN accuracy", per_group["group"].map(nn_accuracy))
        per_group = per_group.rename(columns={"accuracy": "cluster accuracy", "n_clusters": "clusters (est.)",
                                              "n_classes": "classes"})
        parts.append("<h2>Per group</h2>")
        parts.append(_table_html(per_group[["group", "n_images", "1-NN accuracy", "classes", "clusters (est.)",
                                            "cluster accuracy", "ari", "nmi", "outliers"]]))
    else:
        parts.append("<h2>Per group</h2>")
        parts.append('<p class="note">The store is unlabelled: accuracy sections are skipped.</p>')
        parts.append(_table_html(clustering.per_group))
    parts.append(f'<p class="note">Made by oneshot in {time.perf_counter() - started:.1f} s, seed {seed}.</p>')
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title or 'oneshot report')}</title><style>{CSS}</style></head><body>\n"
            + "\n".join(parts) + "\n</body></html>\n")


def write_report(store, out: str | os.PathLike, **options) -> Path:
    """Write :func:`build_report` to ``out`` (atomically) and return its path."""
    text = build_report(store, **options)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")
    return out
