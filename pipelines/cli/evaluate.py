"""``oneshot eval`` and ``oneshot report``: scores and the HTML report of a store."""
from __future__ import annotations

import json

import click

from oneshot.pipelines.cli.app import friendly, main
from oneshot.pipelines.cli.options import MODEL, RERANK_PRECISION_HELP, precision_option, rerank_options


@main.command("eval")
@click.argument("store", type=click.Path(exists=True))
@click.option("--way", type=click.IntRange(min=2), default=20, show_default=True)
@click.option("--shot", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--episodes", type=click.IntRange(min=1), default=1000, show_default=True)
@click.option("--within-group/--any-group", default=True, show_default=True, help="Draw each episode from one alphabet.")
@click.option("--knn-k", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--group", "groups", multiple=True, help="Only this group (alphabet); repeatable.")
@click.option("--threshold", default="auto", show_default=True,
              help="Verification threshold; 'auto' calibrates it on half the classes and reports on the other half.")
@click.option("--baseline/--no-baseline", default=True, show_default=True,
              help="Also score the store's images as raw pixels on the same episodes and pairs.")
@rerank_options("the store", "classes", "classes", ", from the store's images ('oneshot_reranked' in the JSON)")
@click.option("--images", type=click.Path(exists=True), default=None,
              help="Where the store's images are, for --rerank (default: the source it was embedded from).")
@click.option("--model", type=MODEL, default=None,
              help="The store's model, for --rerank-margin model (default: the shipped model it was embedded with).")
@precision_option(help=RERANK_PRECISION_HELP)
@friendly
def eval_command(store, way, shot, episodes, within_group, knn_k, seed, groups, threshold, baseline, rerank_model,
                 rerank_depth, rerank_margin, images, model, precision):
    """N-way k-shot, KNN and 1:1 verification accuracy of a Parquet store, beside raw pixels, as JSON.

    Forgery stores (writer/genuine|forged layout) also get genuine-vs-forgery verification. With
    --rerank, the N-way episodes are also scored with a second model answering the hesitant
    queries again, as `identify --rerank` does.

    \b
    Example:
      oneshot eval runs/eval.parquet --way 5 --shot 1
      oneshot eval runs/eval.parquet --rerank handwriting-ensemble
      oneshot eval runs/eval.parquet --rerank runs/matched/model.safetensors --precision bf16
    """
    from oneshot.pipelines.jobs import evaluate_store

    try:
        given = None if threshold == "auto" else float(threshold)
    except ValueError:
        raise click.UsageError(f"--threshold must be 'auto' or a number, got {threshold!r}") from None
    rerank = None
    if rerank_model is not None:
        from oneshot.pipelines.engines.rerank import Reranker, parse_margin, store_images_of

        rerank = Reranker(rerank_model, images if images is not None else store_images_of(store),
                          depth=rerank_depth, margin=parse_margin(rerank_margin), precision=precision)
    elif precision != "float32":
        raise click.UsageError("--precision applies to the --rerank model; give --rerank too")
    click.echo(json.dumps(evaluate_store(store, way, shot, episodes, within_group, knn_k, seed=seed, groups=list(groups),
                                         threshold=given, baseline=baseline, rerank=rerank, model=model), indent=2))


@main.command("report")
@click.argument("store", type=click.Path(exists=True))
@click.option("--out", type=click.Path(dir_okay=False), default="report.html", show_default=True)
@click.option("--model", type=MODEL, default=None,
              help="The model file (its history.csv and carried thresholds).")
@click.option("--history", type=click.Path(exists=True, dir_okay=False), default=None, help="A training history.csv.")
@click.option("--source", type=click.Path(exists=True), default=None,
              help="Where the images are (default: the store's source), for thumbnails.")
@click.option("--group", default=None, help="The group shown in the map and the cluster thumbnails (default: the first).")
@click.option("--episodes", type=click.IntRange(min=1), default=300, show_default=True, help="Episodes per accuracy point.")
@click.option("--seed", type=int, default=0, show_default=True)
@friendly
def report_command(store, out, model, history, source, group, episodes, seed):
    """One self-contained HTML report of STORE (figures embedded, readable offline).

    \b
    Example:
      oneshot report runs/eval.parquet --out runs/report.html
    """
    from oneshot.pipelines.reporting.report import write_report

    path = write_report(store, out, history=history, model=model, source=source, group=group, episodes=episodes, seed=seed)
    click.echo(f"wrote {path}")
