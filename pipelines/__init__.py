"""Evaluations over stored embeddings: one-shot episodes, KNN, verification, identification, clustering."""
