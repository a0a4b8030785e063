"""``oneshot embed`` and the ``oneshot store`` group: writing and keeping embedding stores."""
from __future__ import annotations

import json

import click

from oneshot.pipelines.cli.app import friendly, main
from oneshot.pipelines.cli.options import (
    MODEL,
    engine_options,
    precision_option,
    read_paths_file,
    reject_options,
    rejects_for,
    removal_options,
)


@main.command()
@click.argument("source", type=click.Path(exists=True))
@click.option("--out", type=click.Path(), required=True,
              help="Store folder of Parquet shards to write (a name ending in .parquet is fine).")
@click.option("--model", type=MODEL, default=None, help="Model file, or a shipped model: face, handwriting, handwriting-ensemble (slower, more accurate), handwriting-v2, handwriting-v1, handwriting-ensemble-v1 (default: the shipped model that suits the images).")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Images per forward pass (default: chosen for the machine).")
@click.option("--workers", type=click.IntRange(min=1), default=None, help="Threads reading and preprocessing images (default: cores, at most 4).")
@click.option("--append", is_flag=True, help="Add only new or changed images (by path and content hash) to an existing store.")
@click.option("--ids", type=click.Choice(["path", "source"]), default="path", show_default=True,
              help="Row ids: a 63-bit hash of the image path (stable), or the source's own id column.")
@click.option("--shard-rows", type=click.IntRange(min=1), default=65536, show_default=True, help="Rows per shard (the unit of resumption).")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default=None, help="Default: CUDA when present.")
@click.option("--unlabelled", is_flag=True, help="Any folder depth; every label empty.")
@click.option("--tta", is_flag=True, help="Average embeddings over shifted views.")
@click.option("--all-faces", is_flag=True,
              help="Face models: embed every face of a photo, each its own row (column face: 1 = largest), "
                   "instead of the largest alone.")
@precision_option
@reject_options
@engine_options
@friendly
def embed(source, out, model, batch_size, workers, append, ids, shard_rows, device, unlabelled, tta, all_faces, precision,
          on_error, max_rejects, engine, ray_address):
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
    from oneshot.pipelines.engines.ray import executor_for
    from oneshot.pipelines.jobs.embed import embed_to_store  # not via jobs: keeps sklearn out of start-up

    rejects = rejects_for(on_error, max_rejects)
    with executor_for(engine, ray_address, on_error=on_error) as executor:
        if executor is not None:
            executor.prepare(model, precision=precision)  # the encode actors start while the job lists SOURCE
        result = embed_to_store(source, out, model, batch_size, workers, labelled=not unlabelled, tta=tta,
                                append=append, shard_rows=shard_rows, ids=ids, device=device, rejects=rejects,
                                executor=executor, all_faces=all_faces, precision=precision)
    if result.model_choice:
        click.echo(f"model: {result.model_choice}")
    click.echo(f"wrote {len(result.store)} embeddings (D={result.store.dimension}) to {out} "
               f"({result.action}; {result.encoded} images encoded now)")
    click.echo(rejects.summary(result.encoded))
    rejects.check(result.encoded + len(rejects))


@main.group("store")
def store_group():
    """Inspect and maintain embedding stores (folders of Parquet shards)."""


@store_group.command("info")
@click.argument("store", type=click.Path(exists=True))
@friendly
def store_info_command(store):
    """Describe a store as JSON: rows, labels, shards, model, source, history."""
    from oneshot.index.dataset_store import store_info

    click.echo(json.dumps(store_info(store), indent=2, default=str))


@store_group.command("migrate")
@click.argument("store", type=click.Path(exists=True, dir_okay=False))
@click.option("--out", type=click.Path(), required=True, help="Store folder to write.")
@click.option("--shard-rows", type=click.IntRange(min=1), default=65536, show_default=True)
@friendly
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
@removal_options
@friendly
def store_remove_command(store, ids, labels, paths_file):
    """Delete rows by id, label or path; the shards holding them are rewritten at once.

    \b
    Example:
      oneshot store remove runs/gallery.parquet --label "Greek/character07"
    """
    from oneshot.pipelines.jobs.store import remove_from_store

    paths = read_paths_file(paths_file)
    if not (ids or labels or paths):
        raise click.UsageError("give --id, --label or --paths")
    removed = remove_from_store(store, ids=list(ids), labels=list(labels), paths=paths)
    click.echo(f"removed {removed} rows from {store}")


@store_group.command("compact")
@click.argument("store", type=click.Path(exists=True, file_okay=False))
@click.option("--shard-rows", type=click.IntRange(min=1), default=None, help="Rows per shard (default: the store's).")
@friendly
def store_compact_command(store, shard_rows):
    """Rewrite a store's shards full (after removals and appends), dropping superseded rows."""
    from oneshot.index.dataset_store import DatasetStore

    result = DatasetStore.open(store).compact(shard_rows)
    click.echo(f"compacted {result['rows']} rows: {result['shards_before']} shards -> {result['shards_after']}")
