"""Metric-learning embedders: backbones, losses, samplers, training, encoding and model files."""
