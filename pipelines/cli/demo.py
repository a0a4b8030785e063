"""The ``oneshot demo`` command: the main job on the embedded default."""
from __future__ import annotations

from pathlib import Path

import click

from oneshot.pipelines.cli.app import friendly, main


@main.command()
@click.option("--out", type=click.Path(file_okay=False), default="runs/demo", show_default=True,
              help="Folder for everything the demo makes.")
@click.option("--data", type=click.Path(exists=True, file_okay=False), default=None,
              help="Omniglot folder (zips or extracted); default: the built-in synthetic alphabets.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--steps", type=click.IntRange(min=1), default=None, help="Training steps (default: 1000 synthetic, 800 Omniglot).")
@click.option("--episodes", type=click.IntRange(min=1), default=1000, show_default=True, help="One-shot episodes to score.")
@friendly
def demo(out, data, seed, steps, episodes):
    """Train, embed, index and evaluate on alphabets the model never saw.

    \b
    Examples:
      oneshot demo --out runs/demo
      oneshot demo --data ../shared/data/omniglot --out runs/omniglot
    """
    from oneshot.pipelines.jobs.demo import format_summary, run_demo

    summary = run_demo(out, data, seed=seed, steps=steps, episodes=episodes)
    click.echo(format_summary(summary))
    click.echo(f"wrote {Path(out) / 'summary.json'}")
