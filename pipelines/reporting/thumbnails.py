"""The report's thumbnail grids: clusters, nearest neighbours of right and wrong answers, confused pairs.

Images come through ``images_for(paths)``, one image per path (the report reads them with the
reject policy and puts a grey tile where a file can no longer be read)."""
from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from oneshot.pipelines.evaluation.clustering import Clustering
from oneshot.pipelines.reporting.figures import figure_png, pyplot, short_label

logger = logging.getLogger(__name__)


THUMB = 40  # thumbnail side in pixels


def thumbnail(image: np.ndarray) -> np.ndarray:
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
    plt = pyplot()
    n_cols = max((len(r) for r in rows), default=1) or 1
    fig, axes = plt.subplots(len(rows), n_cols, figsize=(0.75 * n_cols + 2.0, 0.8 * len(rows) + 0.4), squeeze=False)
    for r, images in enumerate(rows):
        for c in range(n_cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(images):
                ax.imshow(thumbnail(images[c]), cmap="gray", vmin=0, vmax=255)
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
    rows.extend(split_sizes(images_for(paths), [len(members) for members in wanted]))
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
    rows.extend(split_sizes(images_for(paths), [len(f) for f in frames]))
    return thumbnail_grid(rows, titles, frames)


def split_sizes(items: list, sizes: list[int]) -> list[list]:
    """``items`` cut into consecutive runs of the given sizes (one thumbnail row each)."""
    ends = np.cumsum(sizes).tolist()
    return [items[end - size:end] for size, end in zip(sizes, ends)]


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
    grid = split_sizes(images_for(paths), [n_a + n_b for n_a, n_b in rows])
    frames = [["tab:blue"] * n_a + ["tab:orange"] * n_b for n_a, n_b in rows]
    return thumbnail_grid(grid, titles, frames)
