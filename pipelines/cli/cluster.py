"""``oneshot cluster`` and ``oneshot assign``: grouping unlabelled images, placing new ones."""
from __future__ import annotations

import json
from pathlib import Path

import click

from oneshot.pipelines.cli.app import friendly, main
from oneshot.pipelines.cli.options import MODEL


class ClusterCount(click.ParamType):
    """``auto``, ``truth`` or a positive int."""

    name = "auto|truth|N"

    def convert(self, value, param, ctx):
        if isinstance(value, int) or value in ("auto", "truth"):
            return value
        try:
            number = int(value)
        except ValueError:
            self.fail(f"expected auto, truth or a positive number, got {value!r}", param, ctx)
        if number < 1:
            self.fail(f"expected a positive number of clusters, got {number}", param, ctx)
        return number


@main.command("cluster")
@click.argument("store", type=click.Path(exists=True))
@click.option("--clusters", type=ClusterCount(), default="auto", show_default=True,
              help="auto: estimate per group; truth: each group's number of labels; N: this many per group.")
@click.option("--method", type=click.Choice(["spectral", "kmeans"]), default="spectral", show_default=True)
@click.option("--affinity", type=click.Choice(["knn", "shared"]), default="knn", show_default=True,
              help="The spectral graph: knn (0/1 neighbours) or shared (shared-neighbour weights after "
                   "centring the group; better on Omniglot's validation alphabets, worse on synthetic ones and MNIST).")
@click.option("--group", "groups", multiple=True, help="Only this group (alphabet); repeatable.")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="Parquet: id, path, label, group, cluster, distance, outlier (+ embeddings, for `oneshot assign`).")
@click.option("--export", "export_dir", type=click.Path(file_okay=False), default=None,
              help="Write each cluster as a folder of its images here, to check and rename.")
@click.option("--model", type=MODEL, default=None,
              help="Read the clustering thresholds this model carries (default: the shipped model's, if it made the store).")
@click.option("--cluster-distance", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Override the calibrated same-character distance.")
@click.option("--cluster-radius", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Override the calibrated outlier radius.")
@click.option("--pca-variance", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=None)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the scores as JSON.")
@friendly
def cluster_command(store, clusters, method, affinity, groups, out, export_dir, model, cluster_distance, cluster_radius,
                    pca_variance, seed, as_json):
    """Cluster each group (alphabet) of STORE on its own; with labels, score it.

    Works on unlabelled stores (`oneshot embed --unlabelled`). Scores, when every row has a label:
    one-to-one (Hungarian) accuracy, ARI, NMI, estimated vs true number of clusters.

    \b
    Examples:
      oneshot cluster runs/new_alphabet.parquet --out runs/clusters.parquet --export runs/clusters/
      oneshot cluster runs/eval.parquet --clusters truth --group "Old_Church_Slavonic_(Cyrillic)"
    """
    from oneshot.pipelines.jobs import cluster_store

    result = cluster_store(store, clusters, list(groups), method, pca_variance, seed, model, cluster_distance,
                           cluster_radius, out, export_dir, affinity=affinity)
    click.echo(f"thresholds: {result.settings['threshold_source']}", err=True)
    if as_json:
        click.echo(json.dumps({"summary": result.summary, "settings": result.settings,
                               "per_group": result.per_group.to_dict(orient="records")}, indent=2))
    else:
        click.echo(result.per_group.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
        s = result.summary
        line = f"{s['n_clusters']} clusters of {s['n_images']} images in {s['n_groups']} groups"
        if "accuracy" in s:
            line += (f"; mean accuracy {s['accuracy']:.3f}, ARI {s['ari']:.3f}, NMI {s['nmi']:.3f}, "
                     f"{s['n_clusters']} clusters for {s['n_classes']} classes (mean relative error "
                     f"{s['k_relative_error']:.3f})")
        click.echo(line)
    if out:
        click.echo(f"wrote {out}", err=True)
    if export_dir:
        click.echo(f"exported the clusters to {export_dir}", err=True)


@main.command("assign")
@click.argument("images", type=click.Path(exists=True))
@click.option("--clusters", "clusters_path", type=click.Path(exists=True, dir_okay=False), required=True,
              help="The Parquet file of `oneshot cluster --out`.")
@click.option("--model", type=MODEL, default=None, help="The model that made the store (default: shipped).")
@click.option("--cluster-radius", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Farther than this from every centre is 'new' (default: the clustering's).")
@click.option("--group", "groups", multiple=True, help="Only the clusters of this group; repeatable.")
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Write JSON lines here instead of stdout.")
@friendly
def assign_command(images, clusters_path, model, cluster_radius, groups, out):
    """Assign new drawings to existing clusters (nearest centre), or flag them new, without re-clustering.

    \b
    Example:
      oneshot assign more_drawings/ --clusters runs/clusters.parquet
    """
    from oneshot.pipelines.jobs import assign_images

    answers, source = assign_images(images, clusters_path, model, cluster_radius, list(groups))
    click.echo(f"threshold: {source}", err=True)
    text = answers.to_json(orient="records", lines=True)
    if out:
        from oneshot.atomic import atomic_path

        Path(out).parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(out) as tmp:
            Path(tmp).write_text(text)
        click.echo(f"wrote {len(answers)} answers to {out} ({int(answers['new'].sum())} new)")
    else:
        click.echo(text.rstrip("\n"))
