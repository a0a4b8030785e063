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
            raise click.ClickException(_printable(str(error))) from error
        except Exception as error:
            if isinstance(error, OSError) and error.filename is not None:
                raise click.ClickException(_printable(f"{error.filename}: {error.strerror or error}")) from error
            import traceback

            traceback.print_exc()
            click.echo(BUG_NOTE, err=True)
            sys.exit(3)

    return wrapper


def _printable(message: str) -> str:
    """A message with file names that are not valid UTF-8 escaped (``\\xNN``), so it can always be printed."""
    from oneshot.data.archive import escape_name

    return escape_name(message)


def _reject_options(command):
    """``--on-error`` and ``--max-rejects``, shared by every bulk command (issue 8)."""
    command = click.option("--max-rejects", default=None, metavar="N|P%",
                           help="Exit 1 (after writing the output) when more files than this are rejected: "
                                "a count (10) or a share (1%).")(command)
    return click.option("--on-error", type=click.Choice(["skip", "fail"]), default="skip", show_default=True,
                        help="skip: leave bad files out and list them (path, reason) in a CSV beside the output "
                             "(<out>.rejects.csv; OUT/rejects.csv for train); fail: stop at the first one, "
                             "writing nothing.")(command)


def _rejects(on_error: str, max_rejects: str | None):
    from oneshot.errors import InvalidInputError
    from oneshot.pipelines.rejects import RejectPolicy, Rejects

    try:
        return Rejects(RejectPolicy.parse(on_error, max_rejects))
    except InvalidInputError as error:
        raise click.UsageError(str(error)) from error


def _engine_options(command):
    """``--engine local|ray`` and ``--ray-address`` (embed, index build, identify)."""
    command = click.option("--ray-address", default=None,
                           help="Ray cluster for --engine ray (auto, head:6379, ray://head:10001); "
                                "default: $RAY_ADDRESS, else Ray started on this machine.")(command)
    return click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
                        help="Run here, or spread the work over Ray (pip install 'oneshot[ray]').")(command)


def _removal_options(command):
    """``--id``, ``--label`` and ``--paths``: the rows ``store remove`` and ``index remove`` take out."""
    command = click.option("--paths", "paths_file", type=click.Path(exists=True, dir_okay=False), default=None,
                           help="Text file of image paths (as in the store's path column), one per line.")(command)
    command = click.option("--label", "labels", multiple=True,
                           help="Remove every row of this label (a person leaves); repeatable.")(command)
    return click.option("--id", "ids", type=int, multiple=True, help="Row id to remove; repeatable.")(command)


def _read_paths_file(path: str | None) -> list[str] | None:
    """The image paths listed in a ``--paths`` file, one per line (blank lines skipped); None without one."""
    if not path:
        return None
    return [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]


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
@click.option("--val-groups", "--val-alphabets", "val_groups", default=None,
              help="Comma-separated groups (alphabets) held out for validation.")
@click.option("--val-classes", default=None,
              help="Comma-separated classes held out for validation, or a number of classes drawn with the seed.")
@click.option("--val-split", type=click.Choice(["classes", "images"]), default="classes", show_default=True,
              help="Hold out whole classes/groups (one-shot on new classes) or images of every class (closed set).")
@click.option("--recipe", type=click.Choice(["handwriting", "photo", "photo-colour"]), default=None,
              help="Preprocessing; default: inferred from the images' pixels and printed.")
@click.option("--augment", type=click.Choice(["handwriting", "photo", "none"]), default=None,
              help="Augmentation preset; default: the recipe's.")
@click.option("--rotations/--no-rotations", default=None, help="90-degree rotations as new classes (handwriting only; off by default).")
@click.option("--init", default=None, help="Start from 'default' (the shipped model), a model file (fine-tuning), or 'none' (from scratch). Default: the shipped model for handwriting galleries, else scratch.")
@click.option("--max-minutes", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Stop after this much training time (galleries default to 8).")
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
@_reject_options
@_friendly
def train_command(data, split, synthetic, val_groups, val_classes, val_split, recipe, augment, rotations, init,
                  max_minutes, out, config_file, objective, mining, backbone, size, dim, steps, lr, seed, resume,
                  on_error, max_rejects):
    """Train an embedder on any gallery; keeps the best model by validation accuracy and stores its
    verification and "unknown" thresholds, calibrated on the validation split.

    \b
    Examples:
      oneshot train --data my_gallery/ --out runs/mine
      oneshot train --data ../shared/data/mnist --val-split images --out runs/mnist
      oneshot train --data ../shared/data/omniglot --out runs/train
      oneshot train --synthetic --steps 300 --out runs/synth
      oneshot train --data ../shared/data/omniglot --objective triplet --mining semihard --out runs/triplet
    """
    from oneshot.pipelines.training import train_from_cli

    options = _read_config(config_file) if config_file else {}
    overrides = dict(objective=objective, mining=mining, backbone=backbone, dim=dim, steps=steps, lr=lr, seed=seed)
    overrides.update(rotations=rotations, max_seconds=None if max_minutes is None else 60.0 * max_minutes)
    options.update({k: v for k, v in overrides.items() if v is not None})
    if size is not None:
        options["recipe"] = {**options.get("recipe", {}), "size": size}
    command = "oneshot " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    rejects = _rejects(on_error, max_rejects)
    result = train_from_cli(out, options, data=data, split=split, synthetic=synthetic,
                            val_alphabets=val_groups.split(",") if val_groups else None,
                            val_classes=val_classes.split(",") if val_classes else None, val_split=val_split,
                            recipe=recipe, augment=augment, init=init, from_config_file=bool(config_file),
                            resume=resume, command=command, on_recipe=click.echo, rejects=rejects)
    click.echo(rejects.summary(rejects.kept, "read"), err=True)
    rejects.check(rejects.kept + len(rejects))
    way = result.model.info.get("train_config", {}).get("val_way", 20)
    click.echo(f"best validation {way}-way accuracy {result.best_accuracy:.4f} at step {result.best_step}; "
               f"{result.seconds:.0f} s; model: {result.model_path}")
    for kind, found in result.model.info.get("thresholds", {}).items():
        value = found.get("value")
        click.echo(f"{kind} threshold " + (f"{value:.4f}" if value is not None else f"none ({found.get('not_calibrated')})")
                   + f", calibrated on {found.get('calibrated_on')}")


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
@_reject_options
@_engine_options
@_friendly
def embed(source, out, model, batch_size, workers, append, ids, shard_rows, device, unlabelled, tta, on_error,
          max_rejects, engine, ray_address):
    """Encode every image of SOURCE (folder, zip, list file, MNIST IDX file or Omniglot folder) into a store folder.

    Streams: images are read in worker threads while the model encodes, and a Parquet shard is
    committed every --shard-rows images. Run the same command again after an interruption to
    continue it; use --append to add new or changed images to a finished store. Files that cannot
    be read are left out and listed in OUT.rejects.csv (--on-error fail stops at the first).

    \b
    SOURCE layouts: root/<class>/<image> or root/<group>/<class>/<image>; a .txt lists one image per line;
    root/<writer>/genuine|forged/<image> is read as signatures with skilled forgeries.
    Example:
      oneshot embed ../shared/data/omniglot/images_evaluation.zip --out runs/eval.parquet
      oneshot embed new_people/ --out runs/eval.parquet --append
      oneshot embed big_gallery.zip --out /shared/gallery.parquet --engine ray --ray-address auto
    """
    from oneshot.pipelines.embedding import embed_to_store  # not via jobs: keeps sklearn out of start-up
    from oneshot.pipelines.ray_engine import executor_for

    rejects = _rejects(on_error, max_rejects)
    with executor_for(engine, ray_address, on_error=on_error) as executor:
        if executor is not None:
            executor.prepare(model)  # the encode actors start while the job lists SOURCE
        result = embed_to_store(source, out, model, batch_size, workers, labelled=not unlabelled, tta=tta,
                                append=append, shard_rows=shard_rows, ids=ids, device=device, rejects=rejects,
                                executor=executor)
    click.echo(f"wrote {len(result.store)} embeddings (D={result.store.dimension}) to {out} "
               f"({result.action}; {result.encoded} images encoded now)")
    click.echo(rejects.summary(result.encoded))
    rejects.check(result.encoded + len(rejects))


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
@_removal_options
@_friendly
def store_remove_command(store, ids, labels, paths_file):
    """Delete rows by id, label or path; the shards holding them are rewritten at once.

    \b
    Example:
      oneshot store remove runs/gallery.parquet --label "Greek/character07"
    """
    from oneshot.pipelines.store_jobs import remove_from_store

    paths = _read_paths_file(paths_file)
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
@_reject_options
@_engine_options
@_friendly
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
    from oneshot.pipelines.jobs import build_index
    from oneshot.pipelines.ray_engine import executor_for


    rejects = _rejects(on_error, max_rejects)
    with executor_for(engine, ray_address, on_error=on_error) as executor:
        if executor is not None and "IVF" in kind:
            index = executor.build_index(store, out, pca_dim, pca_variance, seed=seed, index=kind)
        else:
            index = build_index(store, out, pca_dim, pca_variance, seed=seed, kind=kind, max_memory=max_memory,
                                recall=recall, rejects=rejects)
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
@_removal_options
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

    paths = _read_paths_file(paths_file)
    removed, left = remove_from_index(index_path, list(ids), list(labels), paths)
    click.echo(f"removed {removed} vectors from {index_path}; {left} left")


@main.command("identify")
@click.argument("queries", type=click.Path(exists=True))
@click.option("--index", "index_path", type=click.Path(exists=True, dir_okay=False), required=True)
@click.option("--model", type=click.Path(exists=True), default=None, help="The model that built the index (default: shipped).")
@click.option("--threshold", default="model", show_default=True,
              help="Below this similarity the answer is 'unknown'; 'model': the model's calibrated threshold; 'none'.")
@click.option("-k", "--k", type=click.IntRange(min=1), default=1, show_default=True, help="Neighbours that vote.")
@click.option("--top", type=click.IntRange(min=1), default=1, show_default=True,
              help="Distinct identities listed per query, each with its best gallery ids and scores.")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Queries per batch (default: chosen for the machine).")
@click.option("--workers", type=click.IntRange(min=1), default=None, help="Threads reading query images.")
@click.option("--out", type=click.Path(), default=None,
              help="Folder of Parquet shards (resumable), or a .jsonl file; default: JSON lines on stdout.")
@_reject_options
@_engine_options
@_friendly
def identify_command(queries, index_path, model, threshold, k, top, batch_size, workers, out, on_error, max_rejects,
                     engine, ray_address):
    """Name each query after its nearest gallery identity, or 'unknown'.

    QUERIES: images (folder, zip, list, IDX file) or an embedding store (its vectors are used).
    Query files that cannot be read get no answer and are listed in OUT.rejects.csv (on stderr
    without --out).

    \b
    Example:
      oneshot identify new_images/ --index runs/eval.faiss --threshold 0.6 --top 5 --out runs/answers
    """
    from oneshot.pipelines.identify_job import identify_job, is_query_store  # not via jobs: lighter start-up

    def echo(answers):
        text = answers.to_json(orient="records", lines=True)
        if text:
            click.echo(text.rstrip("\n"))

    from oneshot.pipelines.ray_engine import executor_for

    rejects = _rejects(on_error, max_rejects)
    with executor_for(engine, ray_address, on_error=on_error) as executor:
        if executor is not None and not is_query_store(Path(queries)):
            executor.prepare(model)  # the encode actors start while the job opens the index
        summary = identify_job(queries, index_path, out, model, threshold, k, top, batch_size=batch_size,
                               workers=workers, emit=None if out else echo, rejects=rejects, executor=executor)
    click.echo(f"threshold: {summary.threshold_text}", err=True)
    if out:
        click.echo(f"wrote {summary.queries} answers to {out}"
                   + (f" (continued after {summary.resumed_from})" if summary.resumed_from else ""))
    else:
        for path, reason in rejects.items:
            click.echo(f"rejected {path}: {reason}", err=True)
    click.echo(rejects.summary(summary.queries, "identified"), err=True)
    if summary.accuracy is not None:
        click.echo(f"accuracy against folder labels: {summary.accuracy:.4f}", err=True)
    rejects.check(summary.queries + len(rejects))


@main.command("verify")
@click.argument("image_a", type=click.Path(exists=True, dir_okay=False))
@click.argument("image_b", type=click.Path(exists=True, dir_okay=False))
@click.option("--model", type=click.Path(exists=True), default=None, help="Model file (default: shipped).")
@click.option("--threshold", default="model", show_default=True,
              help="Answer same/different at this similarity; 'model': the model's calibrated threshold; 'none'.")
@_friendly
def verify_command(image_a, image_b, model, threshold):
    """1:1 verification: similarity of two images and same/different, as JSON (with the threshold
    used and where it came from).

    \b
    Example:
      oneshot verify a.png b.png
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
@click.option("--threshold", default="auto", show_default=True,
              help="Verification threshold; 'auto' calibrates it on half the classes and reports on the other half.")
@click.option("--baseline/--no-baseline", default=True, show_default=True,
              help="Also score the store's images as raw pixels on the same episodes and pairs.")
@_friendly
def eval_command(store, way, shot, episodes, within_group, knn_k, seed, groups, threshold, baseline):
    """N-way k-shot, KNN and 1:1 verification accuracy of a Parquet store, beside raw pixels, as JSON.

    Forgery stores (writer/genuine|forged layout) also get genuine-vs-forgery verification.

    \b
    Example:
      oneshot eval runs/eval.parquet --way 5 --shot 1
    """
    from oneshot.pipelines.jobs import evaluate_store

    try:
        given = None if threshold == "auto" else float(threshold)
    except ValueError:
        raise click.UsageError(f"--threshold must be 'auto' or a number, got {threshold!r}") from None
    click.echo(json.dumps(evaluate_store(store, way, shot, episodes, within_group, knn_k, seed=seed, groups=list(groups),
                                         threshold=given, baseline=baseline), indent=2))


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
@click.option("--group", "groups", multiple=True, help="Only this group (alphabet); repeatable.")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="Parquet: id, path, label, group, cluster, distance, outlier (+ embeddings, for `oneshot assign`).")
@click.option("--export", "export_dir", type=click.Path(file_okay=False), default=None,
              help="Write each cluster as a folder of its images here, to check and rename.")
@click.option("--model", type=click.Path(exists=True), default=None,
              help="Read the clustering thresholds this model carries (default: the shipped model's, if it made the store).")
@click.option("--cluster-distance", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Override the calibrated same-character distance.")
@click.option("--cluster-radius", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Override the calibrated outlier radius.")
@click.option("--pca-variance", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=None)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the scores as JSON.")
@_friendly
def cluster_command(store, clusters, method, groups, out, export_dir, model, cluster_distance, cluster_radius,
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
                           cluster_radius, out, export_dir)
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
@click.option("--model", type=click.Path(exists=True), default=None, help="The model that made the store (default: shipped).")
@click.option("--cluster-radius", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Farther than this from every centre is 'new' (default: the clustering's).")
@click.option("--group", "groups", multiple=True, help="Only the clusters of this group; repeatable.")
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Write JSON lines here instead of stdout.")
@_friendly
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


@main.command("report")
@click.argument("store", type=click.Path(exists=True))
@click.option("--out", type=click.Path(dir_okay=False), default="report.html", show_default=True)
@click.option("--model", type=click.Path(exists=True), default=None,
              help="The model file (its history.csv and carried thresholds).")
@click.option("--history", type=click.Path(exists=True, dir_okay=False), default=None, help="A training history.csv.")
@click.option("--source", type=click.Path(exists=True), default=None,
              help="Where the images are (default: the store's source), for thumbnails.")
@click.option("--group", default=None, help="The group shown in the map and the cluster thumbnails (default: the first).")
@click.option("--episodes", type=click.IntRange(min=1), default=300, show_default=True, help="Episodes per accuracy point.")
@click.option("--seed", type=int, default=0, show_default=True)
@_friendly
def report_command(store, out, model, history, source, group, episodes, seed):
    """One self-contained HTML report of STORE (figures embedded, readable offline).

    \b
    Example:
      oneshot report runs/eval.parquet --out runs/report.html
    """
    from oneshot.pipelines.report import write_report

    path = write_report(store, out, history=history, model=model, source=source, group=group, episodes=episodes, seed=seed)
    click.echo(f"wrote {path}")


@main.command("calibrate")
@click.argument("model", type=click.Path(exists=True))
@click.option("--data", type=click.Path(exists=True), required=True,
              help="Labelled images the model never trained on and you will not report on.")
@click.option("--split", default=None, help="Omniglot or MNIST split of --data.")
@click.option("--val-groups", "--group", "groups", default=None, help="Comma-separated groups of --data to use.")
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Model file to write (default: in place).")
@click.option("--seed", type=int, default=0, show_default=True)
@_friendly
def calibrate_command(model, data, split, groups, out, seed):
    """Calibrate a model's verification, "unknown" and clustering thresholds on held-out labelled data and store
    them in the model file (weights and fingerprint unchanged).

    \b
    Example:
      oneshot calibrate runs/mine/model.safetensors --data held_out_gallery/
    """
    from oneshot.pipelines.calibrate import calibrate_model_file

    command = "oneshot " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    thresholds = calibrate_model_file(model, data, out, groups.split(",") if groups else None, split, seed, command)
    for kind, found in thresholds.items():
        if kind == "cluster" and "cluster_distance" in found:
            click.echo(f"cluster_distance {found['cluster_distance']:.4f}, cluster_radius {found['cluster_radius']:.4f} "
                       f"({found['classes']} classes, {found['images']} images)")
        else:
            click.echo(f"{kind} threshold {found.get('value')} ({found.get('rule', found.get('not_calibrated'))})")


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
