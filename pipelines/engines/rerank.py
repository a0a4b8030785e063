"""Re-ranking: a second, stronger model re-scores the index's top gallery rows of each query.

The index, built with a fast model, does the bulk work (encoding the gallery once, searching it);
a slower, more accurate model (e.g. ``handwriting-ensemble``) then scores only the ``depth`` best
rows of each query: the query's vector from the pixels the job already prepared, the gallery rows'
vectors from their images (read by the paths the index keeps, encoded once and cached). A query
whose two best identities the index already separates by ``margin`` or more keeps its answer, so
the second model only runs where the first one hesitates.

The margin is in the index model's cosine, so it belongs to that model: a model file may carry its
own (``info["rerank_margin"]``, written by ``python -m benchmarks.rerank --store-margin`` with the
rule and data it was chosen on), and ``margin="model"`` (the default) uses it, or ``DEFAULT_MARGIN``
for a model without one.

A re-scored query's ``score`` is the re-ranking model's cosine, its candidates are the ``depth``
rows in that order, and ``reranked`` is True; other queries keep the index's scores. A re-ranking
model trained with a map matcher (``match_dim``, :mod:`oneshot.embedder.matching`) scores by what it
was trained with: its cosine minus its learned match weight times the two images' map-match
distance (:meth:`MapMatcher.similarity`), which ranks as the trained combined distance does. An
ensemble (``oneshot ensemble``) with matched members scores by the mean of its members' scores,
each member's trained score (its cosine without a matcher): its cosine minus the mean of the
matched members' weighted match distances.
"""
from __future__ import annotations

import os
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from oneshot.embedder.precision import check_precision
from oneshot.errors import InvalidInputError

if TYPE_CHECKING:
    from oneshot.data.source import ImageSource
    from oneshot.index.search import SearchResult
    from oneshot.index.vector_index import VectorIndex

DEFAULT_DEPTH = 10
# Chosen on the 4 background validation alphabets (the index's model re-ranked by handwriting-ensemble,
# one drawing enrolled per character): the margin re-scoring the fewest queries that keeps >= 90% of the
# gain of re-scoring every query (`python -m benchmarks.rerank --store-margin`, benchmarks/results/rerank.json).
# The margin is in the index model's cosine, so each shipped handwriting model carries its own, chosen by
# that rule (the default and handwriting-v2: 0.05 with the current handwriting-ensemble); DEFAULT_MARGIN,
# the default's, is for index models that carry none.
DEFAULT_MARGIN = 0.05
MODEL_MARGIN = "model"  # Reranker(margin=MODEL_MARGIN): the index model's stored margin, else DEFAULT_MARGIN
DEFAULT_CACHE_ROWS = 200_000  # gallery vectors kept between batches (200,000 x 256 float32 = 205 MB)
# a row re-scored by a map matcher also keeps its map's Gram matrix and residual operator (2 x 64 x 64
# float32 = 32 KB): at most this many such rows are kept, about the same memory
MATCH_CACHE_ROWS = 6_000


@dataclass
class RerankStats:
    """What a job's re-ranking did: queries re-scored, gallery images encoded, and the time it took."""

    queries: int = 0
    reranked: int = 0
    gallery_encoded: int = 0
    gallery_unreadable: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {"queries": self.queries, "reranked": self.reranked, "gallery_encoded": self.gallery_encoded,
                "gallery_unreadable": self.gallery_unreadable, "seconds": round(self.seconds, 3)}


@dataclass
class Reranker:
    """A model that re-scores the ``depth`` best gallery rows of the queries the index hesitates on.

    Args:
        model: the re-ranking model (file, run folder, shipped name or :class:`Embedder`); cosine,
            with the index model's preprocessing (it reuses the query pixels the job prepared).
        gallery: the images the index's rows were embedded from (folder, zip, list: the source
            given to ``oneshot embed``); their ``path`` column must name files in it.
        depth: gallery rows re-scored per query (at least ``top * per_identity`` of the job).
        margin: re-score only queries whose best and second-best identities differ by less than
            this in the index's score; ``None`` re-scores every query; ``"model"`` (default): the
            margin the index's model carries (chosen for it on validation data), else
            ``DEFAULT_MARGIN``, resolved by :meth:`bind` (``margin_source`` says which).
        cache_rows: gallery vectors kept between batches (least recently used dropped first; with a
            map matcher at most ``MATCH_CACHE_ROWS``, since each row also keeps its map's summaries).
        precision: ``"float32"`` or ``"bfloat16"`` (any spelling of
            :data:`~oneshot.embedder.precision.PRECISION_SPELLINGS`): the re-ranking model's forward
            pass, as ``identify --precision`` runs the index's model; a map matcher's solve and the
            scores stay float32.
    """

    model: object
    gallery: ImageSource | str | os.PathLike
    depth: int = DEFAULT_DEPTH
    margin: float | str | None = MODEL_MARGIN
    cache_rows: int = DEFAULT_CACHE_ROWS
    device: str | None = None
    precision: str = "float32"
    stats: RerankStats = field(default_factory=RerankStats)

    def __post_init__(self):
        if self.depth < 1:
            raise InvalidInputError(f"rerank depth must be >= 1, got {self.depth}")
        self.margin = parse_margin(self.margin)
        self.margin_source = {MODEL_MARGIN: "the index's model's, read when bound", None: "every query re-scored"}.get(
            self.margin, "given")
        if self.cache_rows < 0:
            raise InvalidInputError(f"rerank cache_rows must be >= 0, got {self.cache_rows}")
        self.precision = check_precision(self.precision)
        from oneshot.embedder.artifact import as_model
        from oneshot.embedder.encode import default_device
        from oneshot.embedder.ensemble import reranks_by_trained_score, scoring_members
        from oneshot.embedder.inference import InferenceModel

        self.name = self.model if isinstance(self.model, (str, os.PathLike)) else "the re-ranking model"
        model = as_model(self.model)
        if model.metric != "cosine":
            raise InvalidInputError(f"{self.name}: a re-ranking model must give unit vectors (cosine metric), "
                                    f"not {model.metric!r}")
        self.fingerprint = getattr(model, "fingerprint", None)
        self.embedder = model.to(self.device or default_device())
        self.matched = reranks_by_trained_score(self.embedder)  # by a trained score, not a cosine
        # a matched model runs only the engine's eager copy (below), so no graph is traced for it
        self.engine = InferenceModel(self.embedder, mode="eager" if self.matched else "auto",
                                     precision=self.precision)
        # [the model], or an ensemble's members with matchers; matched ones run on the engine's
        # BatchNorm-folded, channels_last copy (the same scores, faster)
        self.members = scoring_members(self.engine.folded if self.matched else self.embedder)
        self.matchers = [member.matcher for member in self.members if member.matcher is not None]
        self._locations: list[int] = []  # each matcher's map locations (L), known once an image is encoded
        if self.matched:
            self.cache_rows = min(self.cache_rows, MATCH_CACHE_ROWS // len(self.matchers))
        self.source: ImageSource | None = None
        self._cache: OrderedDict[int, np.ndarray | None] = OrderedDict()

    def bind(self, base_model, index: VectorIndex) -> None:
        """Check the re-ranking model against ``base_model`` (the index's model, an :class:`Embedder`)
        and open the gallery's images; with ``margin="model"``, take the margin ``base_model`` carries.

        Raises:
            InvalidInputError: the two models preprocess images differently, or the index's rows
                carry no image paths.
        """
        self.check_base(base_model)
        self.resolve_margin(base_model)
        self.bind_rows(index.table, "the index")  # refuses face models: the two preprocess alike

    def check_base(self, base_model, whose: str = "the index's model") -> None:
        """Refuse a re-ranking model that preprocesses images other than ``base_model`` (an
        :class:`Embedder`; ``whose`` names it): identify re-scores the pixels that model prepared."""
        from oneshot.embedder.model import require_unit_vectors

        require_unit_vectors(self.embedder, self.name, base_model.recipe, whose, "a re-ranking model")

    def resolve_margin(self, base_model, whose: str = "the index's model") -> None:
        """With ``margin="model"``, take the margin ``base_model`` (the first model, an :class:`Embedder`,
        or None when it is not known; ``whose`` names it) carries, else ``DEFAULT_MARGIN``."""
        if self.margin == MODEL_MARGIN:
            self.margin, self.margin_source = stored_margin(base_model, whose)

    def bind_rows(self, table: pd.DataFrame, what: str = "the store", source: ImageSource | None = None) -> None:
        """Open the gallery's images for ``table``'s rows (``id`` and ``path`` columns: an index's or a
        store's), so :meth:`row_scores` and :meth:`rescore` can read them by id; ``source``: an
        already open source of those paths instead of ``gallery``."""
        if self.embedder.recipe.kind == "face":
            raise InvalidInputError("re-ranking reads images by path, and face stores keep a row per face of an "
                                    "image; it is not supported for face models")
        paths = table["path"].astype(str)
        if len(paths) and (paths == "").any():
            raise InvalidInputError(f"{what} has {int((paths == '').sum())} rows without an image path; "
                                    "re-ranking reads the gallery's images by path (use a store made by "
                                    "`oneshot embed`, or an index built from one)")
        self.source = source if source is not None else _open_gallery(self.gallery, paths.iloc[0] if len(paths) else "")
        self._paths = pd.Series(paths.to_numpy(), index=table["id"].to_numpy(dtype=np.int64))

    def search_depth(self, top: int, per_identity: int) -> int:
        """Rows the index must return per query."""
        return max(self.depth, top * per_identity)

    def _gallery_vectors(self, ids: np.ndarray) -> dict[int, np.ndarray | None]:
        """Vectors of gallery ``ids`` (None for an image that cannot be read), cached."""
        from oneshot.pipelines.engines.local import prepare_batch

        wanted = [int(i) for i in pd.unique(ids[ids >= 0])]
        missing = [i for i in wanted if i not in self._cache]
        if missing:
            batch = prepare_batch(self.source, pd.DataFrame({"id": missing, "path": self._paths.loc[missing].to_numpy()}),
                                  self.engine.recipe)
            for i in batch.rejected["id"]:
                self._cache[int(i)] = None
            self.stats.gallery_unreadable += len(batch.rejected)
            if len(batch.rows):
                for i, entry in zip(batch.rows["id"].tolist(), self.encode_pixels(batch.pixels)):
                    self._cache[int(i)] = entry
                self.stats.gallery_encoded += len(batch.rows)
        found = {}
        for i in wanted:
            self._cache.move_to_end(i)
            found[i] = self._cache[i]
        while len(self._cache) > max(self.cache_rows, len(wanted)):
            self._cache.popitem(last=False)
        return found

    def encode_pixels(self, pixels: np.ndarray) -> list:
        """float32 (N, C, H, W) -> one entry per image: its vector (D,), or with map matchers
        (vector (D,), each matcher's Gram matrix of the image's map (d*d,), each one's residual
        operator (d*d,)): what scoring needs, solved once per image."""
        step = self.engine.batch_size
        if not self.matched:
            return list(np.concatenate([self.engine(pixels[s : s + step]) for s in range(0, len(pixels), step)]))
        import torch

        from oneshot.embedder.ensemble import join_member_vectors
        from oneshot.embedder.model import embed_batch, embed_batch_with_local

        entries = []
        with torch.inference_mode(), self.engine.flushing_denormals():
            for s in range(0, len(pixels), step):
                images = self.engine.layout(torch.from_numpy(pixels[s : s + step]))
                vectors, grams, operators, self._locations = [], [], [], []
                for member in self.members:
                    if member.matcher is None:
                        vectors.append(embed_batch(member, images, self.precision))
                        continue
                    vector, local = embed_batch_with_local(member, images, self.precision)
                    gram, operator = member.matcher.summaries(local)
                    vectors.append(vector.float())
                    grams.append(gram.cpu().numpy())
                    operators.append(operator.cpu().numpy())
                    self._locations.append(local.shape[1])
                joined = join_member_vectors(vectors).cpu().numpy()  # one member: its own vector
                entries += [(joined[i], [g[i] for g in grams], [o[i] for o in operators]) for i in range(len(joined))]
        return entries

    def _scores(self, query, gallery: list) -> np.ndarray:
        """A query's entry against its gallery rows' entries -> (len(gallery),) float32 scores, higher closer."""
        return self.score_entries([query], gallery)[0]

    def score_entries(self, queries: list, gallery: list) -> np.ndarray:
        """:meth:`encode_pixels` entries of Q queries and G gallery rows -> (Q, G) float32 scores, higher
        closer: the cosine, less (with matchers) the mean over members of each matcher's weighted
        match distance (one member: :meth:`MapMatcher.similarity`)."""
        if not gallery or not queries:
            return np.zeros((len(queries), len(gallery)), np.float32)
        if not self.matched:
            return np.stack(queries) @ np.stack(gallery).T
        import torch

        cosine = np.stack([entry[0] for entry in queries]) @ np.stack([entry[0] for entry in gallery]).T
        penalty = torch.zeros(cosine.shape)
        with torch.inference_mode():
            for k, (matcher, locations) in enumerate(zip(self.matchers, self._locations)):
                distance = matcher.distances_between(_summaries(queries, k), _summaries(gallery, k), locations)
                penalty = penalty + matcher.match_weight * distance.float()
            return (torch.from_numpy(cosine) - penalty / len(self.members)).numpy().astype(np.float32)

    def row_scores(self, query_ids: np.ndarray, candidate_ids: np.ndarray) -> np.ndarray:
        """Re-ranking scores of bound rows against bound rows, all read by path (and cached).

        Args:
            query_ids: int64 (Q,) row ids; candidate_ids: int64 (Q, C), each query's rows to score.
        Returns:
            float32 (Q, C), higher closer (the model's cosine, or its trained score with a map
            matcher); NaN where either image cannot be read.
        """
        query_ids = np.asarray(query_ids, dtype=np.int64)
        candidate_ids = np.asarray(candidate_ids, dtype=np.int64)
        if candidate_ids.ndim != 2 or len(candidate_ids) != len(query_ids):
            raise InvalidInputError(f"expected query ids (Q,) and candidate ids (Q, C), got {query_ids.shape} and "
                                    f"{candidate_ids.shape}")
        found = self._gallery_vectors(np.concatenate([query_ids, candidate_ids.ravel()]))
        scores = np.full(candidate_ids.shape, np.nan, dtype=np.float32)
        for q, (query_id, row) in enumerate(zip(query_ids.tolist(), candidate_ids.tolist())):
            query = found.get(query_id)
            keep = [j for j, gid in enumerate(row) if found.get(gid) is not None]
            if query is not None and keep:
                scores[q, keep] = self._scores(query, [found[row[j]] for j in keep])
        return scores

    def hesitant(self, result: SearchResult) -> np.ndarray:
        """(Q,) bool: queries whose best two identities differ by less than ``margin`` (all without one)."""
        from oneshot.pipelines.engines.local import top_candidates

        if self.margin is None:
            return np.ones(len(result.scores), dtype=bool)
        best_two = top_candidates(result.scores, result.ids, result.labels, top=2, per_identity=1)
        gaps = np.array([c[0]["score"] - c[1]["score"] if len(c) == 2 else np.inf for c in best_two], dtype=np.float32)
        return gaps < self.margin

    def rescore(self, result: SearchResult, pixels: np.ndarray) -> tuple[SearchResult, np.ndarray]:
        """Re-score the hesitant queries' rows with the re-ranking model.

        Args:
            result: the index's (Q, K) answer, best first, K = :meth:`search_depth`.
            pixels: float32 (Q, C, H, W), the queries as the job prepared them.
        Returns:
            (the result with re-scored rows re-sorted, (Q,) bool: which queries were re-scored).
            Rows whose image cannot be read are dropped from a re-scored query's answer.
        """
        from oneshot.index.search import SearchResult

        started = time.perf_counter()
        chosen = self.hesitant(result)
        self.stats.queries += len(chosen)
        scores, ids, labels = result.scores.copy(), result.ids.copy(), result.labels.copy()
        rows = np.flatnonzero(chosen)
        if len(rows):
            queries = self.encode_pixels(np.ascontiguousarray(pixels[rows]))
            found = self._gallery_vectors(ids[rows])
            for q, query in zip(rows, queries):
                row_ids = ids[q]
                keep = [j for j, gid in enumerate(row_ids) if gid >= 0 and found.get(int(gid)) is not None]
                new = self._scores(query, [found[int(row_ids[j])] for j in keep])
                order = np.argsort(-new, kind="stable")
                count = len(keep)
                picked = [keep[j] for j in order]
                ids_q, labels_q = ids[q, picked].copy(), labels[q, picked].copy()
                scores[q, :] = -np.inf
                ids[q, :] = -1
                labels[q, :] = None
                scores[q, :count], ids[q, :count], labels[q, :count] = new[order], ids_q, labels_q
            self.stats.reranked += len(rows)
        self.stats.seconds += time.perf_counter() - started
        return SearchResult(scores, ids, labels), chosen


def _summaries(entries: list, k: int):
    """Matcher ``k``'s (Gram matrices (N, d*d), residual operators (N, d*d)) of N encoded entries, as tensors."""
    import torch

    return (torch.from_numpy(np.stack([entry[1][k] for entry in entries])),
            torch.from_numpy(np.stack([entry[2][k] for entry in entries])))


def stored_margin(model, whose: str = "the index's model") -> tuple[float, str]:
    """(margin, where it came from): the margin ``model`` (an :class:`Embedder` or None; ``whose``
    names it) carries in ``info["rerank_margin"]``, else ``DEFAULT_MARGIN``."""
    stored = (getattr(model, "info", None) or {}).get("rerank_margin")
    if isinstance(stored, dict) and isinstance(stored.get("value"), (int, float)) and stored["value"] >= 0:
        return float(stored["value"]), f"carried by {whose}, chosen on {stored.get('chosen_on', '?')}"
    return DEFAULT_MARGIN, f"the library default ({whose} carries no margin of its own)"


def store_margin(model_path: str | os.PathLike, margin: float, chosen_on: str, rule: str, reranker: str,
                 command: str | None = None) -> dict:
    """Write ``margin`` into the model file at ``model_path`` (``info["rerank_margin"]``, weights and
    fingerprint untouched, atomically) as the margin identify uses when that model's index is re-ranked."""
    from oneshot.embedder.artifact import load_model, rewrite_info

    value = parse_margin(margin)
    if not isinstance(value, float):
        raise InvalidInputError(f"a stored rerank margin must be a number >= 0, got {margin!r}")
    model = load_model(model_path)
    record = {"value": value, "chosen_on": chosen_on, "rule": rule, "reranker": reranker, "command": command}
    rewrite_info(model, model_path, {**model.info, "rerank_margin": record})
    return record


def parse_margin(text: str | float | None) -> float | str | None:
    """``"all"``/None -> None (every query), ``"model"`` -> ``MODEL_MARGIN``, else a margin >= 0."""
    if text is None or (isinstance(text, str) and text.strip().lower() == "all"):
        return None
    if isinstance(text, str) and text.strip().lower() == MODEL_MARGIN:
        return MODEL_MARGIN
    try:
        value = float(text)
    except ValueError:
        raise InvalidInputError(f"rerank margin must be a number >= 0, 'all' or 'model', got {text!r}") from None
    if not value >= 0:
        raise InvalidInputError(f"rerank margin must be a number >= 0, 'all' or 'model', got {text!r}")
    return value


def _open_gallery(gallery, sample_path: str) -> ImageSource:
    """The gallery's images as a source whose ``read`` takes the index's paths (an Omniglot folder
    opens the split the paths name)."""
    from oneshot.data.omniglot import SPLITS, OmniglotSplit
    from oneshot.pipelines.reading import open_store_source

    source = open_store_source(gallery)
    split = sample_path.split("/", 1)[0]
    if isinstance(source, OmniglotSplit) and source is not gallery and split in SPLITS:
        source = OmniglotSplit(gallery, split)
    return source


def gallery_images_of(index_metadata: Mapping[str, Any], given: str | os.PathLike | None) -> str:
    """Where an index's gallery images are: ``given``, else the single source its store (named in
    the index's ``metadata``, e.g. from ``index_file.read_index_metadata``) was embedded from."""
    if given is not None:
        return str(given)
    store = index_metadata.get("source")
    if not store or not Path(store).exists():
        where = f"its store {store} is not found from here" if store else "it records no store"
        raise InvalidInputError(f"re-ranking needs the gallery's images and the index does not say where they are "
                                f"({where}): pass --gallery-images (the folder or zip given to `oneshot embed`)")
    return store_images_of(store, "--gallery-images")


def store_images_of(store: str | os.PathLike, option: str = "--images") -> str:
    """The single source (folder, zip, list) the store at ``store`` was embedded from, appends
    included; raises, naming ``option``, when it has several or records none."""
    from oneshot.index.store import read_store_metadata

    metadata = read_store_metadata(Path(store))
    appended = [h.get("source") for h in metadata.get("history", []) if isinstance(h, dict)]
    sources = {str(s) for s in [metadata.get("source_path"), *appended] if s}
    if len(sources) != 1:
        raise InvalidInputError(f"the store {store} was embedded from {len(sources)} sources; pass {option} (the "
                                "folder or zip its paths are in)")
    return sources.pop()
