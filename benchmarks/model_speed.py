"""What a model costs a bulk job: models side by side on the same machine, in the same run.

For each model file: multiply-adds x 2 per image, the bare forward pass at the job's batch size
(frozen graph, :class:`~oneshot.embedder.inference.InferenceModel`) and a whole-process ``oneshot
embed`` of Omniglot's 13,180 evaluation images (start-up included). The models take turns, round
after round, so a machine that speeds up or slows down during the run touches each alike; the
best round of each is reported, with every round kept. Absolute figures move with the machine's
load: compare models within one run, not across runs.

Run from the repository root::

    python -m benchmarks.model_speed --models embedder/weights/default.safetensors \\
        runs/pyramid_s0/model.safetensors --out benchmarks/results/model_speed.json
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

from benchmarks import command_line, write_result
from benchmarks.gallery_scale import CLI, OMNIGLOT_EVAL, bare_forward, flops_per_image, timed_process


def embed_seconds(model_file: str, work: Path) -> float:
    """Wall seconds of one whole ``oneshot embed`` process of the Omniglot evaluation images."""
    out = work / "store.parquet"
    shutil.rmtree(out, ignore_errors=True)
    seconds = timed_process(CLI + ["embed", str(OMNIGLOT_EVAL), "--model", model_file, "--out", str(out)])["seconds"]
    shutil.rmtree(out, ignore_errors=True)
    return seconds


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", required=True, help="model files (or shipped names)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    from oneshot.data.source import open_source
    from oneshot.embedder.artifact import load_model

    source = open_source(OMNIGLOT_EVAL)
    images = len(source.table)
    models = {name: load_model(name) for name in args.models}
    rows = {name: {"fingerprint": model.fingerprint, "mflops_per_image": round(flops_per_image(model) / 1e6, 2),
                   "forward_img_per_s": [], "embed_seconds": []} for name, model in models.items()}
    with tempfile.TemporaryDirectory(prefix="model_speed_") as work:
        for round_number in range(args.rounds):
            for name, row in rows.items():
                row["forward_img_per_s"].append(bare_forward(source, name)["forward_img_per_s"])
                row["embed_seconds"].append(embed_seconds(name, Path(work)))
                print(f"round {round_number + 1} {name}: forward {row['forward_img_per_s'][-1]:.0f} img/s, "
                      f"embed {row['embed_seconds'][-1]:.2f} s", flush=True)
    first = rows[args.models[0]]
    for row in rows.values():
        row["best_forward_img_per_s"] = max(row["forward_img_per_s"])
        row["best_embed_seconds"] = min(row["embed_seconds"])
        row["best_embed_img_per_s"] = round(images / row["best_embed_seconds"], 1)
        row["embed_time_vs_first"] = round(row["best_embed_seconds"] / first["best_embed_seconds"], 3)
        row["forward_time_vs_first"] = round(first["best_forward_img_per_s"] / row["best_forward_img_per_s"], 3)
    result = {"command": command_line("model_speed", argv), "images": images, "source": str(OMNIGLOT_EVAL),
              "cpus": os.cpu_count(), "load_average_after": os.getloadavg(), "models": rows}
    for name, row in rows.items():
        print(f"{name}: {row['mflops_per_image']} MFLOP/image, forward {row['best_forward_img_per_s']:.0f} img/s "
              f"(x{row['forward_time_vs_first']} the time of the first), embed {row['best_embed_seconds']:.2f} s "
              f"(x{row['embed_time_vs_first']})")
    write_result(result, args.out)
    return result


if __name__ == "__main__":
    main()
