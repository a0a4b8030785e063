"""The module names ``oneshot.pipelines`` had before its sub-packages still import, for one version, and warn."""
from __future__ import annotations

import importlib
import sys
import warnings

import pytest

from oneshot.pipelines import _moved

#: (old module, name) -> (new module, new name): a sample of what users imported
OLD_NAMES = [
    ("oneshot.pipelines.embedding", "embed_to_store", "oneshot.pipelines.jobs.embed", "embed_to_store"),
    ("oneshot.pipelines.embedding", "read_batch", "oneshot.pipelines.engines.local", "read_rows"),
    ("oneshot.pipelines.identify_job", "identify_job", "oneshot.pipelines.jobs.identify", "identify_job"),
    ("oneshot.pipelines.rejects", "Rejects", "oneshot.pipelines.reading", "Rejects"),
    ("oneshot.pipelines.rejects", "read_batch", "oneshot.pipelines.reading", "read_batch"),
    ("oneshot.pipelines.cluster_calibration", "resolve_thresholds",
     "oneshot.pipelines.evaluation.thresholds", "resolve_cluster_thresholds"),
    ("oneshot.pipelines.cluster", "cluster_groups", "oneshot.pipelines.evaluation.clustering", "cluster_groups"),
    ("oneshot.pipelines.oneshot", "prototypes", "oneshot.pipelines.evaluation.prototypes", "prototypes"),
    ("oneshot.pipelines.knn", "knn_classify", "oneshot.pipelines.evaluation.knn", "knn_classify"),
    ("oneshot.pipelines.ray_engine", "RayEngine", "oneshot.pipelines.engines.ray", "RayEngine"),
    ("oneshot.pipelines.report", "write_report", "oneshot.pipelines.reporting.report", "write_report"),
    ("oneshot.pipelines.report", "figure_png", "oneshot.pipelines.reporting.figures", "figure_png"),
    ("oneshot.pipelines.jobs", "embed_gallery", "oneshot.pipelines.jobs.embed", "embed_gallery"),
    ("oneshot.pipelines.jobs", "encode_source", "oneshot.pipelines.engines.local", "encode_source"),
    ("oneshot.pipelines.cli", "identify_command", "oneshot.pipelines.cli.identify", "identify_command"),
]


def _fresh_import(name: str):
    sys.modules.pop(name, None)
    return importlib.import_module(name)


@pytest.mark.parametrize("old", sorted(_moved.MOVED))
def test_every_old_module_imports_and_warns(old):
    with pytest.warns(DeprecationWarning, match="moved to"):
        module = _fresh_import(old)
    assert dir(module), f"{old} shows no names"


@pytest.mark.parametrize("old_module, old_name, new_module, new_name", OLD_NAMES)
def test_old_names_are_the_new_objects(old_module, old_name, new_module, new_name):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        old = getattr(importlib.import_module(old_module), old_name)
    assert old is getattr(importlib.import_module(new_module), new_name)


def test_a_name_that_never_existed_says_where_the_module_went():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        module = importlib.import_module("oneshot.pipelines.embedding")
    with pytest.raises(AttributeError, match="moved to oneshot.pipelines.jobs.embed"):
        module.no_such_function  # noqa: B018


def test_the_replaced_model_thresholds_reads_what_a_model_carries():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from oneshot.pipelines.cluster_calibration import model_thresholds
    config = {"info": {"thresholds": {"cluster": {"cluster_distance": 0.4, "cluster_radius": 0.3}}}}
    assert model_thresholds(config) == {"cluster_distance": 0.4, "cluster_radius": 0.3}
    assert model_thresholds({"thresholds": {"cluster_radius": 0.2}}) == {"cluster_radius": 0.2}  # older files
    assert model_thresholds(None) == {}
