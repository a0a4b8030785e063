"""The ``oneshot`` command line: a thin layer over the Python API.

Every command turns library errors into one line on stderr and a non-zero exit.
"""
from __future__ import annotations

import functools
import json
import logging
import shlex
import sys
from pathlib import Path

import click

from oneshot.errors import OneshotError

BUG_NOTE = ("oneshot: unexpected error (a bug, not bad input); please report it with the traceback above "
            "and the command you ran")


def _friendly(command):
    """Turn the library's own errors into one line and exit 1; anything else is a bug.

    ``OneshotError`` (bad input, missing data, corrupt file, model mismatch) and OS errors that name
    a file (permission denied, disk full) become ``click.ClickException``. Every other exception
    keeps its traceback, followed by a line saying it is a bug to report.
    """

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except click.ClickException:
            raise
        except OneshotError as error:
            raise click.ClickException(str(error)) from error
        except Exception as error:
            if isinstance(error, OSError) and error.filename is not None:
                raise click.ClickException(f"{error.filename}: {error.strerror or error}") from error
            import traceback

            traceback.print_exc()
            click.echo(BUG_NOTE, err=True)
            sys.exit(3)

    return wrapper


def _version() -> str:
    from oneshot.embedder.artifact import library_versions

    return library_versions()["oneshot"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="oneshot", message="%(prog)s %(version)s")
@click.option("-v", "--verbose", is_flag=True, help="Log progress details to stderr.")
def main(verbose: bool):
    """One-shot image recognition: train an embedder, index galleries, identify and cluster.

    \b
    Start with:  oneshot demo --out runs/demo
    """
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


@main.command()
@click.option("--out", type=click.Path(file_okay=False), default="runs/demo", show_default=True,
              help="Folder for everything the demo makes.")
@click.option("--data", type=click.Path(exists=True, file_okay=False), default=None,
              help="Omniglot folder (zips or extracted); default: the built-in synthetic alphabets.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--steps", type=click.IntRange(min=1), default=None, help="Training steps (default: 1000 synthetic, 800 Omniglot).")
@click.option("--episodes", type=click.IntRange(min=1), default=1000, show_default=True, help="One-shot episodes to score.")
@_friendly
def demo(out, data, seed, steps, episodes):
    """Train, embed, index and evaluate on alphabets the model never saw.

    \b
    Examples:
      oneshot demo --out runs/demo
      oneshot demo --data ../shared/data/omniglot --out runs/omniglot
    """
    from oneshot.pipelines.demo import format_summary, run_demo

    summary = run_demo(out, data, seed=seed, steps=steps, episodes=episodes)
    click.echo(format_summary(summary))
    click.echo(f"wrote {Path(out) / 'summary.json'}")


@main.command("train")
@click.option("--data", type=click.Path(exists=True), default=None,
              help="Omniglot folder, gallery folder, zip, list file or MNIST IDX file; default: $OMNIGLOT_DIR.")
@click.option("--split", default=None, type=click.Choice(["background", "small1", "small2", "train"]),
              help="Omniglot training split (default background) or MNIST 'train'.")
@click.option("--synthetic", is_flag=True, help="Train on the built-in synthetic alphabets.")
@click.option("--val-alphabets", default=None, help="Comma-separated alphabets held out for validation.")
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Run folder (model, checkpoint, curves).")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="JSON file of training options (see embedder.train.TrainConfig).")
@click.option("--objective", type=click.Choice(["siamese", "contrastive", "triplet", "prototypical", "normsoftmax"]), default=None)
@click.option("--mining", type=click.Choice(["all", "hard", "semihard"]), default=None, help="Triplet mining.")
@click.option("--backbone", default=None, help="conv4, conv, resnet-small or koch.")
@click.option("--size", type=click.IntRange(min=8), default=None, help="Input side in pixels.")
@click.option("--dim", type=click.IntRange(min=2), default=None, help="Embedding dimension.")
@click.option("--steps", type=click.IntRange(min=1), default=None)
@click.option("--lr", type=float, default=None)
@click.option("--seed", type=int, default=None)
@click.option("--resume/--no-resume", default=True, show_default=True, help="Continue from OUT/checkpoint.pt.")
@_friendly
def train_command(data, split, synthetic, val_alphabets, out, config_file, objective, mining, backbone, size,
                  dim, steps, lr, seed, resume):
    """Train an embedder on background alphabets; keeps the best model by validation accuracy.

    \b
    Examples:
      oneshot train --data ../shared/data/omniglot --out runs/train
      oneshot train --synthetic --steps 300 --out runs/synth
      oneshot train --data ../shared/data/omniglot --objective triplet --mining semihard --out runs/triplet
    """
    from oneshot.pipelines.training import train_from_cli

    options = _read_config(config_file) if config_file else {}
    overrides = dict(objective=objective, mining=mining, backbone=backbone, dim=dim, steps=steps, lr=lr, seed=seed)
    options.update({k: v for k, v in overrides.items() if v is not None})
    if size is not None:
        options["recipe"] = {**options.get("recipe", {}), "size": size}
    command = "oneshot " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    result = train_from_cli(out, options, data=data, split=split, synthetic=synthetic,
                            val_alphabets=val_alphabets.split(",") if val_alphabets else None,
                            resume=resume, command=command)
    way = result.model.info.get("train_config", {}).get("val_way", 20)
    click.echo(f"best validation {way}-way accuracy {result.best_accuracy:.4f} at step {result.best_step}; "
               f"{result.seconds:.0f} s; model: {result.model_path}")


def _read_config(path: str) -> dict:
    """A ``--config`` file: one JSON object of training options."""
    try:
        options = json.loads(Path(path).read_text())
    except json.JSONDecodeError as error:
        raise click.ClickException(f"{path}: not valid JSON ({error})") from error
    if not isinstance(options, dict):
        raise click.ClickException(f"{path}: expected a JSON object of training options, got {type(options).__name__}")
    return options


@main.command()
@click.argument("source", type=click.Path(exists=True))
@click.option("--out", type=click.Path(dir_okay=False), required=True, help="Parquet file to write.")
@click.option("--model", type=click.Path(exists=True), default=None, help="Model file (default: the shipped model).")
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--unlabelled", is_flag=True, help="Any folder depth; every label empty.")
@click.option("--tta", is_flag=True, help="Average embeddings over shifted views.")
@_friendly
def embed(source, out, model, batch_size, unlabelled, tta):
    """Encode every image of SOURCE (folder, zip or list file) into a Parquet store.

    \b
    SOURCE layouts: root/<class>/<image> or root/<group>/<class>/<image>; a .txt lists one image per line.
    Example:
      oneshot embed ../shared/data/omniglot/images_evaluation.zip --out runs/eval.parquet
    """
    from oneshot.pipelines.jobs import embed_gallery

    stored = embed_gallery(source, out, model, batch_size, labelled=not unlabelled, tta=tta)
    click.echo(f"wrote {len(stored)} embeddings (D={stored.dimension}) to {out}")


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
@_friendly
def index_build(store, out, kind, max_memory, recall, pca_dim, pca_variance, seed):
    """Build a FAISS index (PCA inside it, if asked) from a Parquet store.

    \b
    Examples:
      oneshot index build runs/eval.parquet --out runs/eval.faiss --pca-variance 0.95
      oneshot index build big.parquet --out big.faiss --kind auto --max-memory 600M
    """
    if pca_dim and pca_variance:
        raise click.UsageError("give --pca-dim or --pca-variance, not both")
    from oneshot.pipelines.jobs import build_index

    index = build_index(store, out, pca_dim, pca_variance, seed=seed, kind=kind, max_memory=max_memory,
                        recall=recall)
    click.echo(f"indexed {len(index)} vectors (D={index.dimension}, metric {index.metric.name}) in {out}")
    click.echo(f"kind {index.plan['kind']}: {index.plan['factory']}" +
               (f" ({index.plan['reason']})" if index.plan.get("reason") else ""))
    if index.tuning:
        t = index.tuning
        click.echo(f"search {t['parameter']}={t['value']}: recall@1 {t['recall']:.4f} on {t['sample']} held-out "
                   f"gallery queries (target {t['target']}{'' if t['met'] else ', NOT met'})")


@index_group.command("add")
@click.argument("index_path", metavar="INDEX", type=click.Path(exists=True, dir_okay=False))
@click.argument("store", type=click.Path(exists=True))
@click.option("--recall", type=click.FloatRange(0, 1, min_open=True), default=None,
              help="recall@1 target to re-check (default: the one the index was tuned to).")
@click.option("--recheck", is_flag=True, help="Re-check the recall target even if the index grew little.")
@_friendly
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
@click.option("--id", "ids", type=int, multiple=True, help="A gallery id (repeat the option for more).")
@click.option("--label", "labels", multiple=True, help="Remove every row with this label (repeatable).")
@click.option("--paths", "paths_file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="A text file listing image paths to remove, one per line.")
@_friendly
def index_remove(index_path, ids, labels, paths_file):
    """Remove rows from INDEX by id, label or path; a later `index add` skips them.

    \b
    Example:
      oneshot index remove runs/gallery.faiss --label person_17
    """
    if not (ids or labels or paths_file):
        raise click.UsageError("give --id, --label or --paths")
    from oneshot.pipelines.jobs import remove_from_index

    paths = None
    if paths_file:
        with open(paths_file) as handle:
            paths = [line.strip() for line in handle if line.strip()]
    removed, left = remove_from_index(index_path, list(ids), list(labels), paths)
    click.echo(f"removed {removed} vectors from {index_path}; {left} left")


@main.command("identify")
@click.argument("queries", type=click.Path(exists=True))
@click.option("--index", "index_path", type=click.Path(exists=True, dir_okay=False), required=True)
@click.option("--model", type=click.Path(exists=True), default=None, help="The model that built the index (default: shipped).")
@click.option("--threshold", type=float, default=None, help="Below this similarity the answer is 'unknown'.")
@click.option("-k", "--k", type=click.IntRange(min=1), default=1, show_default=True, help="Neighbours that vote.")
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Write JSON lines here instead of stdout.")
@_friendly
def identify_command(queries, index_path, model, threshold, k, out):
    """Name each image in QUERIES after its nearest gallery class, or 'unknown'.

    \b
    Example:
      oneshot identify new_images/ --index runs/eval.faiss --threshold 0.6
    """
    from oneshot.pipelines.jobs import identify_images

    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
    result = identify_images(queries, index_path, model, threshold, k)
    text = result.to_json(orient="records", lines=True)
    if out:
        from oneshot.atomic import atomic_path

        with atomic_path(out) as tmp:
            Path(tmp).write_text(text)
        click.echo(f"wrote {len(result)} answers to {out}")
    else:
        click.echo(text.rstrip("\n"))
    if "true_label" in result:
        accuracy = (result["label"] == result["true_label"]).mean()
        click.echo(f"accuracy against folder labels: {accuracy:.4f}", err=True)


@main.command("verify")
@click.argument("image_a", type=click.Path(exists=True, dir_okay=False))
@click.argument("image_b", type=click.Path(exists=True, dir_okay=False))
@click.option("--model", type=click.Path(exists=True), default=None, help="Model file (default: shipped).")
@click.option("--threshold", type=float, default=None, help="Answer same/different at this similarity.")
@_friendly
def verify_command(image_a, image_b, model, threshold):
    """1:1 verification: similarity of two images (and same/different with --threshold), as JSON.

    \b
    Example:
      oneshot verify a.png b.png --threshold 0.6
    """
    from oneshot.pipelines.jobs import verify_images

    click.echo(json.dumps(verify_images(image_a, image_b, model, threshold)))


@main.command("eval")
@click.argument("store", type=click.Path(exists=True, dir_okay=False))
@click.option("--way", type=click.IntRange(min=2), default=20, show_default=True)
@click.option("--shot", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--episodes", type=click.IntRange(min=1), default=1000, show_default=True)
@click.option("--within-group/--any-group", default=True, show_default=True, help="Draw each episode from one alphabet.")
@click.option("--knn-k", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--group", "groups", multiple=True, help="Only this group (alphabet); repeatable.")
@_friendly
def eval_command(store, way, shot, episodes, within_group, knn_k, seed, groups):
    """N-way k-shot, KNN and 1:1 verification accuracy of a Parquet store, as JSON.

    \b
    Example:
      oneshot eval runs/eval.parquet --way 5 --shot 1
    """
    from oneshot.pipelines.jobs import evaluate_store

    click.echo(json.dumps(evaluate_store(store, way, shot, episodes, within_group, knn_k, seed=seed, groups=list(groups)), indent=2))


@main.command("cluster")
@click.argument("store", type=click.Path(exists=True, dir_okay=False))
@click.option("--pca-variance", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=None)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--group", "groups", multiple=True, help="Only this group (alphabet); repeatable.")
@_friendly
def cluster_command(store, pca_variance, seed, groups):
    """KMeans per group (alphabet) with k = its number of classes; prints ARI and NMI.

    \b
    Example:
      oneshot cluster runs/eval.parquet --pca-variance 0.99
    """
    from oneshot.pipelines.jobs import cluster_store

    summary, per_group = cluster_store(store, pca_variance, seed, list(groups))
    click.echo(per_group.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    click.echo(f"mean ARI {summary['ari']:.3f}, mean NMI {summary['nmi']:.3f} over {summary['n_groups']} groups")


@main.command("lake")
@click.option("--data", type=click.Path(exists=True), default=None,
              help="all_runs.zip, its folder, or the Omniglot folder (default: $OMNIGLOT_DIR).")
@click.option("--model", type=click.Path(exists=True), default=None, help="Model file (default: shipped).")
@click.option("--tta", is_flag=True, help="Average embeddings over shifted views.")
@_friendly
def lake_command(data, model, tta):
    """Error on Lake's 20 official 20-way within-alphabet one-shot runs.

    \b
    Example:
      oneshot lake --data ../shared/data/omniglot
    """
    from oneshot.pipelines.training import lake_errors

    table = lake_errors(data, model, tta)
    click.echo(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    click.echo(f"mean error {table['error_rate'].mean():.4f} over {table['trials'].sum()} trials")


if __name__ == "__main__":
    main()
