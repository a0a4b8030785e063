"""The jobs: one module per job, each the one path that the Python API, the demo and the CLI call.

=================  ==========================================================================
module             job
=================  ==========================================================================
``embed``          images -> a store folder of Parquet shards (streaming, resumable, appendable);
                   ``embed_gallery`` is the same job read back whole
``index``          store -> FAISS index; add a store's new rows; remove rows; load
``identify``       query images or a store -> top candidates and "unknown" (streaming, resumable);
                   ``identify_images`` is the same job collected into a DataFrame
``verify``         1:1 verification of two image files
``evaluate``       ``oneshot eval``: one-shot, KNN, verification, raw pixels and forgeries of a store
``cluster``        cluster a store's groups, export clusters for review, assign new images
``store``          read a store (some groups of it), remove rows
``train``          ``oneshot train`` and Lake's official runs
``calibrate``      a model file's thresholds on held-out labelled data
``demo``           the main job on the embedded synthetic alphabets (or Omniglot)
=================  ==========================================================================

The names below are imported from their job module on first use, so importing one job (as the
CLI does) does not import the others and their dependencies (scikit-learn, matplotlib).
"""
from __future__ import annotations

from oneshot.lazy import lazy_exports

_JOBS = {
    "embed_to_store": "embed", "embed_gallery": "embed", "encode_gallery": "embed", "EmbedResult": "embed",
    "build_index": "index", "add_to_index": "index", "remove_from_index": "index", "load_index": "index",
    "identify_job": "identify", "identify_images": "identify", "IdentifySummary": "identify",
    "verify_images": "verify",
    "evaluate_store": "evaluate",
    "cluster_store": "cluster", "assign_images": "cluster", "export_clusters": "cluster",
    "load_store": "store", "remove_from_store": "store",
    "train_from_cli": "train", "lake_errors": "train",
    "calibrate_model_file": "calibrate",
    "run_demo": "demo",
    # kept where the old single-file ``jobs`` module had it, for one version
    "encode_source": "oneshot.pipelines.engines.local",
}

__all__ = sorted(_JOBS)


__getattr__, __dir__ = lazy_exports(__name__, {name: module if "." in module else f"{__name__}.{module}"
                                               for name, module in _JOBS.items()})
