"""The ``oneshot index`` group: build, add to and remove from a FAISS index."""
from __future__ import annotations

import click

from oneshot.pipelines.cli.app import friendly, main
from oneshot.pipelines.cli.options import engine_options, read_paths_file, reject_options, rejects_for, removal_options


@main.group("index")
def index_group():
    """Build FAISS indexes from Parquet stores, add to them and remove from them."""


@index_group.command("build")
@click.argument("store", type=click.Path(exists=True))
@click.option("--out", type=click.Path(dir_okay=False), required=True, help="Index file (a .meta.parquet sidecar is written beside it).")
@click.option("--kind", default="auto", show_default=True,
              help="auto, flat, hnsw, ivf, ivfpq, or a FAISS factory string such as 'OPQ16,IVF1024,PQ16'.")
@click.option("--max-memory", default=None, help="Index size budget for --kind auto, e.g. 600M or 4G (default 4G).")
@click.option("--recall", type=click.FloatRange(0, 1, min_open=True), default=0.99, show_default=True,
              help="recall@1 target that nprobe/efSearch are tuned to (approximate kinds).")
@click.option("--pca-dim", type=click.IntRange(min=1), default=None, help="Reduce to this many dimensions.")
@click.option("--pca-variance", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=None,
              help="Or keep this share of variance, e.g. 0.95.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the training and tuning samples.")
@reject_options
@engine_options
@friendly
def index_build(store, out, kind, max_memory, recall, pca_dim, pca_variance, seed, on_error, max_rejects, engine,
                ray_address):
    """Build a FAISS index (PCA inside it, if asked) from a store; rows with non-finite vectors are
    left out and listed in OUT.rejects.csv. With --engine ray and an IVF factory string as --kind
    (e.g. 'IVF4096,Flat'), the shards are added in parallel on Ray and merged; other kinds are
    built on this node.

    \b
    Examples:
      oneshot index build runs/eval.parquet --out runs/eval.faiss --pca-variance 0.95
      oneshot index build big.parquet --out big.faiss --kind auto --max-memory 600M
    """
    if pca_dim and pca_variance:
        raise click.UsageError("give --pca-dim or --pca-variance, not both")
    from oneshot.pipelines.engines.ray import executor_for
    from oneshot.pipelines.jobs import build_index


    rejects = rejects_for(on_error, max_rejects)
    with executor_for(engine, ray_address, on_error=on_error) as executor:
        index = build_index(store, out, pca_dim, pca_variance, seed=seed, kind=kind, max_memory=max_memory,
                            recall=recall, rejects=rejects, executor=executor)
    click.echo(f"indexed {len(index)} vectors (D={index.dimension}, metric {index.metric.name}) in {out}")
    click.echo(rejects.summary(len(index), "indexed"))
    if index.plan:
        click.echo(f"kind {index.plan['kind']}: {index.plan['factory']}" +
                   (f" ({index.plan['reason']})" if index.plan.get("reason") else ""))
    if index.tuning:
        t = index.tuning
        click.echo(f"search {t['parameter']}={t['value']}: recall@1 {t['recall']:.4f} on {t['sample']} held-out "
                   f"gallery queries (target {t['target']}{'' if t['met'] else ', NOT met'})")
    rejects.check(len(index) + len(rejects))


@index_group.command("add")
@click.argument("index_path", metavar="INDEX", type=click.Path(exists=True, dir_okay=False))
@click.argument("store", type=click.Path(exists=True))
@click.option("--recall", type=click.FloatRange(0, 1, min_open=True), default=None,
              help="recall@1 target to re-check (default: the one the index was tuned to).")
@click.option("--recheck", is_flag=True, help="Re-check the recall target even if the index grew little.")
@friendly
def index_add(index_path, store, recall, recheck):
    """Add the rows of STORE that INDEX does not hold yet (removed ids stay out).

    \b
    Example:
      oneshot index add runs/gallery.faiss runs/gallery.parquet
    """
    from oneshot.pipelines.jobs import add_to_index

    report = add_to_index(index_path, store, recall=recall, recheck=recheck)
    click.echo(f"added {report.added} vectors to {index_path} ({report.already_indexed} already indexed, "
               f"{report.skipped_removed} removed earlier); {report.count} in the index")
    growth = report.growth
    if growth.get("checked"):
        click.echo(f"recall re-checked: {growth['parameter']}={growth['value']} (was {growth['previous_value']}), "
                   f"recall@1 {growth['recall']:.4f} (target {growth['target']})")
    if report.rebuild_due:
        click.echo("rebuild due: " + "; ".join(growth["reasons"]) +
                   f" (run `oneshot index build {store} --out {index_path}`)")


@index_group.command("remove")
@click.argument("index_path", metavar="INDEX", type=click.Path(exists=True, dir_okay=False))
@removal_options
@friendly
def index_remove(index_path, ids, labels, paths_file):
    """Remove rows from INDEX by id, label or path; a later `index add` skips them.

    \b
    Example:
      oneshot index remove runs/gallery.faiss --label person_17
    """
    if not (ids or labels or paths_file):
        raise click.UsageError("give --id, --label or --paths")
    from oneshot.pipelines.jobs import remove_from_index

    paths = read_paths_file(paths_file)
    removed, left = remove_from_index(index_path, list(ids), list(labels), paths)
    click.echo(f"removed {removed} vectors from {index_path}; {left} left")
