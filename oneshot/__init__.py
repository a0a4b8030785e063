"""oneshot: one-shot image recognition with metric-learning embedders and FAISS vector search.

The public API in one place::

    import oneshot

    model = oneshot.load_model()                              # the shipped model
    vectors = oneshot.encode(model, images)                   # uint8 (H, W) arrays -> float32 (N, D)
    store = oneshot.embed_gallery("gallery/", "gallery.parquet")
    index = oneshot.build_index("gallery.parquet", "gallery.faiss")
    answers = oneshot.identify_images("queries/", index)
    oneshot.verify_images("a.png", "b.png")
    oneshot.evaluate_store("gallery.parquet")
    clusters = oneshot.cluster_store("new.parquet", "auto", out="clusters.parquet", export="review/")
    oneshot.assign_images("more/", "clusters.parquet")       # new drawings -> existing clusters, or new
    oneshot.write_report("gallery.parquet", "report.html")

Subpackages, bottom layer first: ``oneshot.data`` (image sources), ``oneshot.embedder`` (models,
training, encoding) and ``oneshot.index`` (stores, vector search) side by side, then
``oneshot.pipelines`` (jobs, evaluations, engines, the report, the CLI). ``oneshot.errors`` and ``oneshot.atomic`` sit
below them all. Names are imported on first use, so ``import oneshot`` stays cheap.
"""
from __future__ import annotations

from oneshot.lazy import lazy_exports

__version__ = "0.1.0"

# public name -> module that defines it
_API = {
    "load_model": "oneshot.embedder.artifact",
    "save_model": "oneshot.embedder.artifact",
    "ensemble_models": "oneshot.embedder.ensemble",
    "Embedder": "oneshot.embedder.model",
    "Recipe": "oneshot.embedder.preprocess",
    "encode": "oneshot.embedder.encode",
    "encode_with_local": "oneshot.embedder.encode",
    "MapMatcher": "oneshot.embedder.matching",
    "TrainConfig": "oneshot.embedder.train",
    "train": "oneshot.embedder.train",
    "read_gallery": "oneshot.data.folders",
    "open_source": "oneshot.data.source",
    "ImageSource": "oneshot.data.source",
    "EmbeddingSet": "oneshot.index.store",
    "read_embeddings": "oneshot.index.store",
    "write_embeddings": "oneshot.index.store",
    "VectorIndex": "oneshot.index.vector_index",
    "get_metric": "oneshot.index.metric",
    "embed_gallery": "oneshot.pipelines.jobs.embed",
    "embed_to_store": "oneshot.pipelines.jobs.embed",
    "identify_job": "oneshot.pipelines.jobs.identify",
    "remove_from_store": "oneshot.pipelines.jobs.store",
    "DatasetStore": "oneshot.index.dataset_store",
    "migrate_store": "oneshot.index.dataset_store",
    "store_info": "oneshot.index.dataset_store",
    "InferenceModel": "oneshot.embedder.inference",
    "build_index": "oneshot.pipelines.jobs.index",
    "load_index": "oneshot.pipelines.jobs.index",
    "identify_images": "oneshot.pipelines.jobs.identify",
    "Reranker": "oneshot.pipelines.engines.rerank",
    "verify_images": "oneshot.pipelines.jobs.verify",
    "evaluate_store": "oneshot.pipelines.jobs.evaluate",
    "cluster_store": "oneshot.pipelines.jobs.cluster",
    "assign_images": "oneshot.pipelines.jobs.cluster",
    "write_report": "oneshot.pipelines.reporting.report",
    "evaluate": "oneshot.pipelines.evaluation.evaluate",
    "OneshotError": "oneshot.errors",
    "InvalidInputError": "oneshot.errors",
    "ImageReadError": "oneshot.errors",
    "MissingDataError": "oneshot.errors",
    "CorruptFileError": "oneshot.errors",
    "ModelMismatchError": "oneshot.errors",
}

__all__ = sorted(_API)


__getattr__, __dir__ = lazy_exports(__name__, _API)
