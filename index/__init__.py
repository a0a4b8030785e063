"""Stored embeddings and vector search: the metric, the Parquet store, the FAISS index, GPU helpers."""
