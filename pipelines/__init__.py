"""The pipelines: what the product does with an embedder and an index, in five folders.

- :mod:`~oneshot.pipelines.reading`: the one reader of images for every command, with the
  bulk-job reject policy (skip and list bad files, or stop at the first).
- :mod:`~oneshot.pipelines.evaluation`: scores computed from vectors alone: N-way k-shot
  episodes, KNN, 1:1 verification, open-set identification, clustering and its scores, the
  thresholds (calibration and the one resolver), raw pixels as the baseline.
- :mod:`~oneshot.pipelines.engines`: where batch work runs: ``local`` (threads in this process)
  or ``ray`` (a Ray cluster); both offer the same ``encode_stream`` and ``answer_stream``.
- :mod:`~oneshot.pipelines.reporting`: the self-contained HTML report.
- :mod:`~oneshot.pipelines.jobs`: one module per job (embed, index, identify, verify, evaluate,
  cluster, store, train, calibrate, demo): the one path the Python API, the demo and the CLI call.
- :mod:`~oneshot.pipelines.cli`: the ``oneshot`` command line, one small module per command group.

Imports go one way, down this list's order of layers: reading, then evaluation and engines, then
reporting, then jobs, then the CLI (``tests/test_package_layout.py`` checks it).
"""
from oneshot.pipelines import _moved

_moved.install()
