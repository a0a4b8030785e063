"""One self-contained HTML report of a store: what people look at, with every figure embedded.

Figures are matplotlib PNGs saved into memory and embedded as base64 ``data:`` URIs, so the file
reads offline and needs nothing beside it. Sections (those needing labels are skipped, with a
note, on an unlabelled store): training curves (when a ``history.csv`` is given or found next to
the model), N-way accuracy against N and against shots, ROC with the EER and the threshold,
same/different score distributions, a 2-D PCA map coloured by class, thumbnails of clusters, the
nearest neighbours of right and wrong answers, the hardest confusions and a per-group table.
"""
from __future__ import annotations

import html
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
from oneshot.pipelines.evaluation.clustering import cluster_groups, is_labelled
from oneshot.pipelines.evaluation.thresholds import resolve_cluster_thresholds
from oneshot.pipelines.reading import Rejects, open_store_source, read_each
from oneshot.pipelines.reporting.figures import accuracy_curves, embedding_map, training_curves, verification_figures
from oneshot.pipelines.reporting.thumbnails import THUMB, cluster_thumbnails, confusion_thumbnails, neighbour_thumbnails

logger = logging.getLogger(__name__)

#: what a thumbnail whose file can no longer be read shows
MISSING_TILE = np.full((THUMB, THUMB), 160, dtype=np.uint8)


def _img(uri: str, alt: str) -> str:
    return f'<img src="{uri}" alt="{html.escape(alt)}">'


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
    unreadable = Rejects()  # thumbnails whose file can no longer be read: a grey tile, named below
    try:
        reader = open_store_source(source or stored.metadata.get("source"))
        images_for = lambda paths: [MISSING_TILE if image is None else image  # noqa: E731
                                    for image in read_each(reader, list(paths), unreadable)]
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

    thresholds, threshold_source = resolve_cluster_thresholds(stored.metadata, model)
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
    if len(unreadable):
        path, reason = unreadable.items[0]
        parts.append(f'<p class="note">{len(unreadable)} thumbnails could not be read and are grey tiles, e.g. '
                     f"{html.escape(path)}: {html.escape(reason)}.</p>")
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
