"""The ``oneshot`` command line: a thin layer over the jobs (:mod:`oneshot.pipelines.jobs`).

One module per command group (``demo``, ``train``, ``embed``, ``index``, ``identify``, ``evaluate``,
``cluster``); :mod:`~oneshot.pipelines.cli.app` holds the group and the error layer: library
errors become one line on stderr and exit 1, wrong flags exit 2, anything else is a bug (exit 3,
with its traceback). Job modules are imported inside each command, so ``oneshot --help`` starts fast.
"""
from oneshot.pipelines.cli import cluster, demo, embed, evaluate, identify, index, train  # noqa: F401  (registers the commands)
from oneshot.pipelines.cli.app import BUG_NOTE, main

# the command objects, importable from here as they were from the single-file cli module
from oneshot.pipelines.cli.cluster import ClusterCount, assign_command, cluster_command
from oneshot.pipelines.cli.embed import (
    store_compact_command,
    store_group,
    store_info_command,
    store_migrate_command,
    store_remove_command,
)
from oneshot.pipelines.cli.evaluate import eval_command, report_command
from oneshot.pipelines.cli.identify import identify_command, verify_command
from oneshot.pipelines.cli.index import index_add, index_build, index_group, index_remove
from oneshot.pipelines.cli.train import calibrate_command, ensemble_command, lake_command, train_command

__all__ = ["main", "BUG_NOTE", "ClusterCount", "assign_command", "cluster_command", "store_compact_command",
           "store_group", "store_info_command", "store_migrate_command", "store_remove_command", "eval_command",
           "report_command", "identify_command", "verify_command", "index_add", "index_build", "index_group",
           "index_remove", "calibrate_command", "ensemble_command", "lake_command", "train_command"]
