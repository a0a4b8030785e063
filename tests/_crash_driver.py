"""Run a ``oneshot`` command and SIGKILL it at chosen points (used by tests/test_crash_safety.py).

Usage::

    python tests/_crash_driver.py WATCHED SNAPSHOTS POINT [POINT ...] -- oneshot-args...

Each POINT is ``target:n:when``: the process kills itself (SIGKILL, no clean-up of any kind) at the
n-th call of ``target``, ``before`` or ``after`` the call runs. The libraries are imported once;
each point runs in a forked child, so every kill hits a fresh run of the command. After each
child dies, the folder WATCHED is copied to ``SNAPSHOTS/<i>`` (what a user would find on disk);
``SNAPSHOTS/status.json`` records how each child ended.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import sys
from pathlib import Path

import faiss
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot  # noqa: E402,F401 - imported once here, not in every forked child
import pyarrow.parquet as pq
import safetensors.torch
import torch

import oneshot.atomic
import oneshot.embedder.artifact
import oneshot.embedder.train
import oneshot.pipelines.jobs
from oneshot.pipelines.cli import main

TARGETS = {
    "encode": (oneshot.pipelines.jobs, "encode"),
    "write_table": (pq.ParquetWriter, "write_table"),
    "replace": (oneshot.atomic.os, "replace"),
    "write_index": (faiss, "write_index"),
    "torch_save": (torch, "save"),
    "save_file": (oneshot.embedder.artifact, "save_file"),
    "train_step": (oneshot.embedder.train.torch.optim.AdamW, "step"),
}
_ = safetensors.torch


def arm(target: str, n: int, when: str) -> None:
    owner, name = TARGETS[target]
    original = getattr(owner, name)
    calls = {"n": 0}

    def wrapped(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == n and when == "before":
            os.kill(os.getpid(), signal.SIGKILL)
        result = original(*args, **kwargs)
        if calls["n"] == n and when == "after":
            os.kill(os.getpid(), signal.SIGKILL)
        return result

    setattr(owner, name, wrapped)


def run() -> None:
    split = sys.argv.index("--")
    watched, snapshots = Path(sys.argv[1]), Path(sys.argv[2])
    points, args = sys.argv[3:split], sys.argv[split + 1:]
    snapshots.mkdir(parents=True, exist_ok=True)
    status = []
    for i, point in enumerate(points):
        target, n, when = point.split(":")
        pid = os.fork()
        if pid == 0:
            arm(target, int(n), when)
            try:
                main(args, standalone_mode=False)
            finally:
                os._exit(0)
        _, code = os.waitpid(pid, 0)
        status.append({"point": point, "killed": os.WIFSIGNALED(code) and os.WTERMSIG(code) == signal.SIGKILL})
        shutil.copytree(watched, snapshots / str(i), symlinks=True)
    (snapshots / "status.json").write_text(json.dumps(status))


if __name__ == "__main__":
    torch.set_num_threads(1)
    run()
