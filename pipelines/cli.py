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


def _engine_options(command):
    """``--engine local|ray`` and ``--ray-address`` (embed, index build, identify)."""
    command = click.option("--ray-address", default=None,
                           help="Ray cluster for --engine ray (auto, head:6379, ray://head:10001); "
                                "default: $RAY_ADDRESS, else Ray started on this machine.")(command)
    return click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
                        help="Run here, or spread the work over Ray (pip install 'oneshot[ray]').")(command)


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
@click.option("--out", type=click.Path(), required=True,
              help="Store folder of Parquet shards to write (a name ending in .parquet is fine).")
@click.option("--model", type=click.Path(exists=True), default=None, help="Model file (default: the shipped model).")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Images per forward pass (default: chosen for the machine).")
@click.option("--workers", type=click.IntRange(min=1), default=None, help="Threads reading and preprocessing images (default: cores, at most 4).")
@click.option("--append", is_flag=True, help="Add only new or changed images (by path and content hash) to an existing store.")
@click.option("--ids", type=click.Choice(["path", "source"]), default="path", show_default=True,
              help="Row ids: a 63-bit hash of the image path (stable), or the source's own id column.")
@click.option("--shard-rows", type=click.IntRange(min=1), default=65536, show_default=True, help="Rows per shard (the unit of resumption).")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default=None, help="Default: CUDA when present.")
@click.option("--unlabelled", is_flag=True, help="Any folder depth; every label empty.")
@click.option("--tta", is_flag=True, help="Average embeddings over shifted views.")
@_engine_options
@_friendly
def embed(source, out, model, batch_size, workers, append, ids, shard_rows, device, unlabelled, tta, engine,
          ray_address):
    """Encode every image of SOURCE (folder, zip, list file or MNIST IDX file) into a store folder.

    Streams: images are read in worker threads while the model encodes, and a Parquet shard is
    committed every --shard-rows images. Run the same command again after an interruption to
    continue it; use --append to add new or changed images to a finished store.

    \b
    SOURCE layouts: root/<class>/<image> or root/<group>/<class>/<image>; a .txt lists one image per line.
    Example:
      oneshot embed ../shared/data/omniglot/images_evaluation.zip --out runs/eval.parquet
      oneshot embed new_people/ --out runs/eval.parquet --append
      oneshot embed big_gallery.zip --out /shared/gallery.parquet --engine ray --ray-address auto
    """
    from oneshot.pipelines.embedding import embed_to_store
    from oneshot.pipelines.ray_engine import executor_for

    with executor_for(engine, ray_address) as executor:
        result = embed_to_store(source, out, model, batch_size, workers, labelled=not unlabelled, tta=tta,
                                append=append, shard_rows=shard_rows, ids=ids, device=device, executor=executor)
    click.echo(f"wrote {len(result.store)} embeddings (D={result.store.dimension}) to {out} "
               f"({result.action}; {result.encoded} images encoded now)")


@main.group("store")
def store_group():
    """Inspect and maintain embedding stores (folders of Parquet shards)."""


@store_group.command("info")
@click.argument("store", type=click.Path(exists=True))
@_friendly
def store_info_command(store):
    """Describe a store as JSON: rows, labels, shards, model, source, history."""
    from oneshot.index.dataset_store import store_info

    click.echo(json.dumps(store_info(store), indent=2, default=str))


@store_group.command("migrate")
@click.argument("store", type=click.Path(exists=True, dir_okay=False))
@click.option("--out", type=click.Path(), required=True, help="Store folder to write.")
@click.option("--shard-rows", type=click.IntRange(min=1), default=65536, show_default=True)
@_friendly
def store_migrate_command(store, out, shard_rows):
    """Rewrite a single-file store (older oneshot) as a store folder; ids and vectors are kept.

    \b
    Example:
      oneshot store migrate runs/old.parquet --out runs/gallery.parquet.d
    """
    from oneshot.index.dataset_store import migrate_store

    migrated = migrate_store(store, out, shard_rows)
    click.echo(f"migrated {len(migrated)} rows into {len(migrated.manifest['shards'])} shards in {out}")


@store_group.command("remove")
@click.argument("store", type=click.Path(exists=True, file_okay=False))
@click.option("--id", "ids", type=int, multiple=True, help="Row id to delete; repeatable.")
@click.option("--label", "labels", multiple=True, help="Delete every row of this label (a person leaves); repeatable.")
@click.option("--paths", "paths_file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Text file of image paths (as in the store's path column), one per line.")
@_friendly
def store_remove_command(store, ids, labels, paths_file):
    """Delete rows by id, label or path; the shards holding them are rewritten at once.

    \b
    Example:
      oneshot store remove runs/gallery.parquet --label "Greek/character07"
    """
    from oneshot.pipelines.store_jobs import remove_from_store

    paths = None
    if paths_file:
        paths = [line.strip() for line in Path(paths_file).read_text().splitlines() if line.strip()]
    if not (ids or labels or paths):
        raise click.UsageError("give --id, --label or --paths")
    removed = remove_from_store(store, ids=list(ids), labels=list(labels), paths=paths)
    click.echo(f"removed {removed} rows from {store}")


@store_group.command("compact")
@click.argument("store", type=click.Path(exists=True, file_okay=False))
@click.option("--shard-rows", type=click.IntRange(min=1), default=None, help="Rows per shard (default: the store's).")
@_friendly
def store_compact_command(store, shard_rows):
    """Rewrite a store's shards full (after removals and appends), dropping superseded rows."""
    from oneshot.index.dataset_store import DatasetStore

    result = DatasetStore.open(store).compact(shard_rows)
    click.echo(f"compacted {result['rows']} rows: {result['shards_before']} shards -> {result['shards_after']}")


@main.group("index")
def index_group():
    """Build FAISS indexes from Parquet stores."""


@index_group.command("build")
@click.argument("store", type=click.Path(exists=True))
@click.option("--out", type=click.Path(dir_okay=False), required=True, help="Index file (a .meta.parquet sidecar is written beside it).")
@click.option("--pca-dim", type=click.IntRange(min=1), default=None, help="Reduce to this many dimensions.")
@click.option("--pca-variance", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=None,
              help="Or keep this share of variance, e.g. 0.95.")
@_engine_options
@_friendly
def index_build(store, out, pca_dim, pca_variance, engine, ray_address):
    """Build a flat FAISS index (PCA inside it, if asked) from a Parquet store.

    \b
    Example:
      oneshot index build runs/eval.parquet --out runs/eval.faiss --pca-variance 0.95
    """
    if pca_dim and pca_variance:
        raise click.UsageError("give --pca-dim or --pca-variance, not both")
    from oneshot.pipelines.jobs import build_index
    from oneshot.pipelines.ray_engine import executor_for

    with executor_for(engine, ray_address) as executor:
        if executor is None:
            index = build_index(store, out, pca_dim, pca_variance)
        else:
            index = executor.build_index(store, out, pca_dim, pca_variance)
    click.echo(f"indexed {len(index)} vectors (D={index.dimension}, metric {index.metric.name}) in {out}")


@main.command("identify")
@click.argument("queries", type=click.Path(exists=True))
@click.option("--index", "index_path", type=click.Path(exists=True, dir_okay=False), required=True)
@click.option("--model", type=click.Path(exists=True), default=None, help="The model that built the index (default: shipped).")
@click.option("--threshold", type=float, default=None, help="Below this similarity the answer is 'unknown'.")
@click.option("-k", "--k", type=click.IntRange(min=1), default=1, show_default=True, help="Neighbours that vote.")
@click.option("--top", type=click.IntRange(min=1), default=1, show_default=True,
              help="Distinct identities listed per query, each with its best gallery ids and scores.")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Queries per batch (default: chosen for the machine).")
@click.option("--workers", type=click.IntRange(min=1), default=None, help="Threads reading query images.")
@click.option("--out", type=click.Path(), default=None,
              help="Folder of Parquet shards (resumable), or a .jsonl file; default: JSON lines on stdout.")
@_engine_options
@_friendly
def identify_command(queries, index_path, model, threshold, k, top, batch_size, workers, out, engine, ray_address):
    """Name each query after its nearest gallery identity, or 'unknown'.

    QUERIES: images (folder, zip, list, IDX file) or an embedding store (its vectors are used).

    \b
    Example:
      oneshot identify new_images/ --index runs/eval.faiss --threshold 0.6 --top 5 --out runs/answers
    """
    from oneshot.pipelines.identify_job import identify_job

    def echo(answers):
        text = answers.to_json(orient="records", lines=True)
        if text:
            click.echo(text.rstrip("\n"))

    from oneshot.pipelines.ray_engine import executor_for

    with executor_for(engine, ray_address) as executor:
        summary = identify_job(queries, index_path, out, model, threshold, k, top, batch_size=batch_size,
                               workers=workers, emit=None if out else echo, executor=executor)
    if out:
        click.echo(f"wrote {summary.queries} answers to {out}"
                   + (f" (continued after {summary.resumed_from})" if summary.resumed_from else ""))
    if summary.accuracy is not None:
        click.echo(f"accuracy against folder labels: {summary.accuracy:.4f}", err=True)


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
@click.argument("store", type=click.Path(exists=True))
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
@click.argument("store", type=click.Path(exists=True))
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
