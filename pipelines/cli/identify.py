"""``oneshot identify`` (1:K, with "unknown") and ``oneshot verify`` (1:1)."""
from __future__ import annotations

import json
from pathlib import Path

import click

from oneshot.pipelines.cli.app import friendly, main
from oneshot.pipelines.cli.options import (
    MODEL,
    engine_options,
    precision_option,
    reject_options,
    rejects_for,
    rerank_options,
)


@main.command("identify")
@click.argument("queries", type=click.Path(exists=True))
@click.option("--index", "index_path", type=click.Path(exists=True, dir_okay=False), required=True)
@click.option("--model", type=MODEL, default=None, help="The model that built the index (default: shipped).")
@click.option("--threshold", default="model", show_default=True,
              help="Below this similarity the answer is 'unknown'; 'model': the model's calibrated threshold; 'none'.")
@click.option("-k", "--k", type=click.IntRange(min=1), default=1, show_default=True, help="Neighbours that vote.")
@click.option("--top", type=click.IntRange(min=1), default=1, show_default=True,
              help="Distinct identities listed per query, each with its best gallery ids and scores.")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Queries per batch (default: chosen for the machine).")
@click.option("--workers", type=click.IntRange(min=1), default=None, help="Threads reading query images.")
@click.option("--out", type=click.Path(), default=None,
              help="Folder of Parquet shards (resumable), or a .jsonl file; default: JSON lines on stdout.")
@rerank_options("the index", "gallery rows", "identities", "; it must preprocess images as --model does")
@click.option("--gallery-images", type=click.Path(exists=True), default=None,
              help="Where the gallery's images are, for --rerank (default: the source its store was embedded from).")
@precision_option
@reject_options
@engine_options
@friendly
def identify_command(queries, index_path, model, threshold, k, top, batch_size, workers, out, rerank_model,
                     rerank_depth, rerank_margin, gallery_images, precision, on_error, max_rejects, engine, ray_address):
    """Name each query after its nearest gallery identity, or 'unknown'.

    QUERIES: images (folder, zip, list, IDX file) or an embedding store (its vectors are used).
    Query files that cannot be read get no answer and are listed in OUT.rejects.csv (on stderr
    without --out).

    \b
    Example:
      oneshot identify new_images/ --index runs/eval.faiss --threshold 0.6 --top 5 --out runs/answers
    """
    from oneshot.pipelines.jobs.identify import identify_job, is_query_store  # not via jobs: lighter start-up

    def echo(answers):
        text = answers.to_json(orient="records", lines=True)
        if text:
            click.echo(text.rstrip("\n"))

    from oneshot.pipelines.engines.ray import executor_for

    rerank = None
    if rerank_model is not None:
        from oneshot.index.index_file import read_index_metadata
        from oneshot.pipelines.engines.rerank import Reranker, gallery_images_of, parse_margin

        gallery = gallery_images_of(read_index_metadata(index_path), gallery_images)
        rerank = Reranker(rerank_model, gallery, depth=rerank_depth, margin=parse_margin(rerank_margin),
                          precision=precision)
    rejects = rejects_for(on_error, max_rejects)
    with executor_for(engine, ray_address, on_error=on_error) as executor:
        if executor is not None and not is_query_store(Path(queries)):
            executor.prepare(model, precision=precision)  # the encode actors start while the job opens the index
        summary = identify_job(queries, index_path, out, model, threshold, k, top, batch_size=batch_size,
                               workers=workers, emit=None if out else echo, rejects=rejects, executor=executor,
                               rerank=rerank, precision=precision)
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
    if rerank is not None:
        stats = rerank.stats
        click.echo(f"re-ranked {stats.reranked} of {stats.queries} queries with {rerank_model} ({stats.gallery_encoded} "
                   f"gallery images encoded, {stats.seconds:.1f} s)"
                   + (f"; {stats.gallery_unreadable} gallery images unreadable" if stats.gallery_unreadable else ""),
                   err=True)
    rejects.check(summary.queries + len(rejects))


@main.command("verify")
@click.argument("image_a", type=click.Path(exists=True, dir_okay=False))
@click.argument("image_b", type=click.Path(exists=True, dir_okay=False))
@click.option("--model", type=MODEL, default=None, help="Model file (default: shipped).")
@click.option("--threshold", default="model", show_default=True,
              help="Answer same/different at this similarity; 'model': the model's calibrated threshold; 'none'.")
@friendly
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
