"""What ``precision`` does to a training step's time: fp32 against bf16, same model, same batch.

For each training config: the model and loss it builds (:func:`oneshot.embedder.train.build_model`,
``build_loss``), a random batch of the config's size (``classes_per_batch`` x ``items_per_class``
images at its input size), and the loop's own forward and loss (:func:`oneshot.embedder.train.batch_loss`:
with the map matcher's for a config with ``match_dim``), backward and AdamW step, timed in both precisions. The two take turns, round after round, so a
machine that speeds up or slows down touches each alike; the best round of each is reported, with
every round kept. No data is read and no accuracy is measured: accuracy is the training runs' job.

Run from the repository root::

    python -m benchmarks.train_step_speed --configs benchmarks/configs/full_block_reflections_7200.json \\
        benchmarks/configs/resnet_reflections_1600.json --out benchmarks/results/train_step_speed.json
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time

import torch

from benchmarks import command_line, write_result
from oneshot.embedder.hardware import cpu_name, native_bfloat16
from oneshot.embedder.train import PRECISIONS, TrainConfig, batch_loss, build_loss, build_model, training_memory_format


def step_seconds(config: TrainConfig, precision: str, steps: int, warmup: int = 2) -> float:
    """Mean seconds of ``steps`` training steps (after ``warmup``) of ``config``'s model in ``precision``."""
    torch.manual_seed(config.seed)
    arithmetic = dataclasses.replace(config, precision=precision)
    device = torch.device("cpu")
    memory_format = training_memory_format(device)
    model = build_model(config).to(device, memory_format=memory_format).train()
    loss_fn = build_loss(config, model, config.classes_per_batch)
    optimizer = torch.optim.AdamW(list(model.parameters()) + list(loss_fn.parameters()), lr=config.lr)
    (height, width), channels = model.recipe.shape, model.recipe.channels
    images = torch.rand(config.classes_per_batch * config.items_per_class, channels, height, width)
    images = images.contiguous(memory_format=memory_format)
    labels = torch.arange(config.classes_per_batch).repeat_interleave(config.items_per_class)
    for step in range(warmup + steps):
        if step == warmup:
            started = time.perf_counter()
        _, loss = batch_loss(model, loss_fn, images, labels, arithmetic)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return (time.perf_counter() - started) / steps


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", required=True, help="training config files (JSON)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    result = {"command": command_line("train_step_speed", argv), "cpus": os.cpu_count(),
              "threads": torch.get_num_threads(), "cpu": cpu_name(),
              "native_bfloat16": native_bfloat16(torch.device("cpu")), "configs": {}}
    for path in args.configs:
        with open(path) as handle:
            config = TrainConfig.from_dict({**json.load(handle), "precision": "fp32"})
        rows = {precision: [] for precision in PRECISIONS}
        for _ in range(args.rounds):
            for precision in PRECISIONS:
                rows[precision].append(round(step_seconds(config, precision, args.steps), 4))
        best = {precision: min(seconds) for precision, seconds in rows.items()}
        result["configs"][path] = {"batch_images": config.classes_per_batch * config.items_per_class,
                                   "step_seconds": rows, "best_step_seconds": best,
                                   "bf16_speed_up": round(best["fp32"] / best["bf16"], 2)}
        print(f"{path}: fp32 {best['fp32']:.3f} s a step, bf16 {best['bf16']:.3f} s (x{best['fp32'] / best['bf16']:.2f})",
              flush=True)
    write_result(result, args.out)
    return result


if __name__ == "__main__":
    main()
