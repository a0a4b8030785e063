"""Evaluations over stored embeddings: episodes, one-shot, KNN, verify, identify, cluster."""
