"""Stored embeddings and vector search: metric, Parquet store, FAISS index, GPU helpers."""
