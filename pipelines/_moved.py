"""Deprecation aliases: the module names ``oneshot.pipelines`` had before its sub-packages, for one version.

``import oneshot.pipelines.embedding`` (say) still works and warns with :class:`DeprecationWarning`
naming the new module; the alias is a view of the new modules, looked up name by name. These
names go in the next version.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import types
import warnings
from typing import Any

#: old module -> the modules that hold its names now, first match first
MOVED: dict[str, tuple[str, ...]] = {
    "oneshot.pipelines.embedding": ("oneshot.pipelines.jobs.embed", "oneshot.pipelines.engines.local"),
    "oneshot.pipelines.identify_job": ("oneshot.pipelines.jobs.identify", "oneshot.pipelines.engines.local"),
    "oneshot.pipelines.store_jobs": ("oneshot.pipelines.jobs.store",),
    "oneshot.pipelines.evaluate_gallery": ("oneshot.pipelines.jobs.evaluate",),
    "oneshot.pipelines.cluster_review": ("oneshot.pipelines.jobs.cluster", "oneshot.pipelines.reading"),
    "oneshot.pipelines.training": ("oneshot.pipelines.jobs.train",),
    "oneshot.pipelines.calibrate": ("oneshot.pipelines.jobs.calibrate",),
    "oneshot.pipelines.demo": ("oneshot.pipelines.jobs.demo",),
    "oneshot.pipelines.episodes": ("oneshot.pipelines.evaluation.episodes",),
    "oneshot.pipelines.oneshot": ("oneshot.pipelines.evaluation.prototypes",),
    "oneshot.pipelines.knn": ("oneshot.pipelines.evaluation.knn",),
    "oneshot.pipelines.verify": ("oneshot.pipelines.evaluation.verification",),
    "oneshot.pipelines.identify": ("oneshot.pipelines.evaluation.open_set",),
    "oneshot.pipelines.metrics": ("oneshot.pipelines.evaluation.metrics",),
    "oneshot.pipelines.cluster": ("oneshot.pipelines.evaluation.clustering", "oneshot.pipelines.evaluation.kmeans"),
    "oneshot.pipelines.cluster_scores": ("oneshot.pipelines.evaluation.cluster_scores",),
    "oneshot.pipelines.cluster_calibration": ("oneshot.pipelines.evaluation.cluster_thresholds",
                                              "oneshot.pipelines.evaluation.thresholds"),
    "oneshot.pipelines.thresholds": ("oneshot.pipelines.evaluation.thresholds",),
    "oneshot.pipelines.evaluate": ("oneshot.pipelines.evaluation.evaluate",),
    "oneshot.pipelines.baseline": ("oneshot.pipelines.evaluation.baseline",),
    "oneshot.pipelines.forgeries": ("oneshot.pipelines.evaluation.forgeries",),
    "oneshot.pipelines.validation": ("oneshot.pipelines.evaluation.validation",),
    "oneshot.pipelines.rejects": ("oneshot.pipelines.reading",),
    "oneshot.pipelines.ray_engine": ("oneshot.pipelines.engines.ray",),
    "oneshot.pipelines.ray_decode": ("oneshot.pipelines.engines.ray_decode",),
    "oneshot.pipelines.ray_index": ("oneshot.pipelines.engines.ray_index",),
    "oneshot.pipelines.report": ("oneshot.pipelines.reporting.report", "oneshot.pipelines.reporting.figures",
                                 "oneshot.pipelines.reporting.thumbnails"),
}

#: names that were renamed on the way: (old module, old name) -> new name
RENAMED = {
    ("oneshot.pipelines.cluster_calibration", "resolve_thresholds"): "resolve_cluster_thresholds",
    ("oneshot.pipelines.embedding", "read_batch"): "read_rows",
}




class _MovedModule(types.ModuleType):
    """The old module: each name is read from the first new module that has it."""

    def __init__(self, name: str, targets: tuple[str, ...]):
        super().__init__(name, f"Moved to {', '.join(targets)} (deprecated alias).")
        self._targets = targets

    def __getattr__(self, name: str) -> Any:
        name = RENAMED.get((self.__name__, name), name)
        for target in self._targets:
            module = importlib.import_module(target)
            if hasattr(module, name):
                return getattr(module, name)
        raise AttributeError(f"module {self.__name__!r} (moved to {', '.join(self._targets)}) has no attribute {name!r}")

    def __dir__(self) -> list[str]:
        return sorted({n for t in self._targets for n in dir(importlib.import_module(t)) if not n.startswith("__")})


class _MovedLoader(importlib.abc.Loader):
    def create_module(self, spec):
        targets = MOVED[spec.name]
        warnings.warn(f"{spec.name} moved to {' and '.join(targets)}; the old name goes in the next version",
                      DeprecationWarning, stacklevel=2)
        return _MovedModule(spec.name, targets)

    def exec_module(self, module) -> None:
        pass


class _MovedFinder(importlib.abc.MetaPathFinder):
    """Finds the old names only (after every other finder has found no file for them)."""

    def find_spec(self, fullname: str, path=None, target=None):
        if fullname in MOVED:
            return importlib.util.spec_from_loader(fullname, _MovedLoader())
        return None


def install() -> None:
    """Put the finder at the end of ``sys.meta_path`` (once)."""
    if not any(isinstance(finder, _MovedFinder) for finder in sys.meta_path):
        sys.meta_path.append(_MovedFinder())
