"""``oneshot train``, ``oneshot calibrate`` and ``oneshot lake``: making and scoring models."""
from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import click

from oneshot.embedder.precision import PRECISION_SPELLINGS, training_precision
from oneshot.pipelines.cli.app import friendly, main
from oneshot.pipelines.cli.options import MODEL, reject_options, rejects_for
from oneshot.pipelines.engines.rerank import DEFAULT_DEPTH


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
@click.option("--recipe", type=click.Choice(["handwriting", "photo", "photo-colour", "face", "face-crop"]), default=None,
              help="Preprocessing; default: inferred from the images' pixels and printed.")
@click.option("--augment", type=click.Choice(["handwriting", "photo", "none"]), default=None,
              help="Augmentation preset; default: the recipe's.")
@click.option("--rotations/--no-rotations", default=None, help="90-degree rotations as new classes (handwriting only; off by default).")
@click.option("--reflections/--no-reflections", default=None,
              help="Mirror images as new classes, with rotations their rotations too (handwriting only; off by default).")
@click.option("--init", default=None, help="Start from 'default' (the shipped model), a model file (fine-tuning), or 'none' (from scratch). Default: the shipped model for handwriting galleries, else scratch.")
@click.option("--tune", type=click.Choice(["last-layer", "all"]), default=None,
              help="What fine-tuning trains: last-layer (the starting model's last layer, validated by folds over the "
                   "people; the default for face galleries) or all (every layer).")
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
@click.option("--precision", type=click.Choice(list(PRECISION_SPELLINGS)), default=None,
              callback=lambda ctx, param, value: value and training_precision(value),
              help="Training arithmetic: fp32 (default; float32 too) or bf16 (bfloat16) mixed precision (about twice as fast on "
                   "CPUs with AVX-512 BF16 and on recent GPUs; emulated on other CPUs, where a step ran 9x slower than fp32 "
                   "and a warning says so; the saved model is float32 either way).")
@click.option("--teacher", "teachers", multiple=True, type=click.Path(exists=True),
              help="A trained model to distill from (repeatable; prototypical objective; their vectors of the "
                   "unaugmented training images are soft targets). See embedder.distill.")
@click.option("--resume/--no-resume", default=True, show_default=True, help="Continue from OUT/checkpoint.pt.")
@reject_options
@friendly
def train_command(data, split, synthetic, val_groups, val_classes, val_split, recipe, augment, rotations, reflections,
                  init, tune, max_minutes, out, config_file, objective, mining, backbone, size, dim, steps, lr, seed, precision,
                  teachers, resume, on_error, max_rejects):
    """Train an embedder on any gallery; keeps the best model by validation accuracy and stores its
    verification and "unknown" thresholds, calibrated on the validation split. A gallery of face
    photos tunes the shipped face model's last layer, validated by folds over its people.

    \b
    Examples:
      oneshot train --data my_gallery/ --out runs/mine
      oneshot train --data people/ --out runs/faces
      oneshot train --data ../shared/data/mnist --val-split images --out runs/mnist
      oneshot train --data ../shared/data/omniglot --out runs/train
      oneshot train --synthetic --steps 300 --out runs/synth
      oneshot train --data ../shared/data/omniglot --objective triplet --mining semihard --out runs/triplet
      oneshot train --data ../shared/data/omniglot --teacher runs/a/model.safetensors --teacher runs/b/model.safetensors --out runs/student
    """
    from oneshot.pipelines.jobs.train import train_from_cli

    options = _read_config(config_file) if config_file else {}
    overrides = dict(objective=objective, mining=mining, backbone=backbone, dim=dim, steps=steps, lr=lr, seed=seed,
                     precision=precision)
    overrides.update(rotations=rotations, reflections=reflections, max_seconds=None if max_minutes is None else 60.0 * max_minutes)
    options.update({k: v for k, v in overrides.items() if v is not None})
    if teachers:
        options["teachers"] = list(teachers)
    if size is not None:
        options["recipe"] = {**options.get("recipe", {}), "size": size}
    command = _invoked_command()
    rejects = rejects_for(on_error, max_rejects)
    result = train_from_cli(out, options, data=data, split=split, synthetic=synthetic,
                            val_alphabets=val_groups.split(",") if val_groups else None,
                            val_classes=val_classes.split(",") if val_classes else None, val_split=val_split,
                            recipe=recipe, augment=augment, init=init, from_config_file=bool(config_file),
                            resume=resume, command=command, on_recipe=click.echo, rejects=rejects, tune=tune)
    click.echo(rejects.summary(rejects.kept, "read"), err=True)
    rejects.check(rejects.kept + len(rejects))
    way = result.model.info.get("train_config", {}).get("val_way", 20)
    noise, start = result.model.info.get("val_noise"), result.model.info.get("start_accuracy")
    against = (f" (the start: {start:.4f} +/- {noise:.4f}, 95% over episodes; a step replaces it only when its "
               "gain, paired over the held-out classes, exceeds 1.96 standard errors across them: val_noise in "
               "history.csv)") if noise is not None and start is not None else ""
    tuning = result.model.info.get("tuning", {}).get("summary")
    if tuning:
        click.echo(f"{tuning}; {result.seconds:.0f} s; model: {result.model_path}")
    else:
        click.echo(f"best validation {way}-way accuracy {result.best_accuracy:.4f} at step {result.best_step}{against}; "
                   f"{result.seconds:.0f} s; model: {result.model_path}")
    for kind, found in result.model.info.get("thresholds", {}).items():
        value = found.get("value", found.get("cluster_distance"))  # the cluster kind carries a distance
        click.echo(f"{kind} threshold " + (f"{value:.4f}" if value is not None else f"none ({found.get('not_calibrated')})")
                   + f", calibrated on {found.get('calibrated_on')}")


def _invoked_command() -> str:
    """The command line as run, for the model file's record."""
    return "oneshot " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def _read_config(path: str) -> dict:
    """A ``--config`` file: one JSON object of training options."""
    try:
        options = json.loads(Path(path).read_text())
    except json.JSONDecodeError as error:
        raise click.ClickException(f"{path}: not valid JSON ({error})") from error
    if not isinstance(options, dict):
        raise click.ClickException(f"{path}: expected a JSON object of training options, got {type(options).__name__}")
    return options


@main.command("calibrate")
@click.argument("model", type=click.Path(exists=True))
@click.option("--data", type=click.Path(exists=True), required=True,
              help="Labelled images the model never trained on and you will not report on.")
@click.option("--split", default=None, help="Omniglot or MNIST split of --data.")
@click.option("--val-groups", "--group", "groups", default=None, help="Comma-separated groups of --data to use.")
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Model file to write (default: in place).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--rerank", "rerank_model", type=MODEL, default=None,
              help="Also choose the margin below which this re-ranking model re-scores the model's answers in "
                   "`identify --rerank` (stored in the model file).")
@click.option("--rerank-depth", type=click.IntRange(min=1), default=DEFAULT_DEPTH, show_default=True,
              help="Classes re-scored per query while choosing it.")
@friendly
def calibrate_command(model, data, split, groups, out, seed, rerank_model, rerank_depth):
    """Calibrate a model's verification, "unknown" and clustering thresholds on held-out labelled data and store
    them in the model file (weights and fingerprint unchanged).

    With --rerank, also choose the re-ranking margin for this model's indexes on the same data.

    \b
    Example:
      oneshot calibrate runs/mine/model.safetensors --data held_out_gallery/
      oneshot calibrate runs/mine/model.safetensors --data held_out_gallery/ --rerank handwriting-ensemble
    """
    from oneshot.pipelines.jobs.calibrate import calibrate_model_file

    command = _invoked_command()
    rerank = None
    if rerank_model is not None:
        from oneshot.pipelines.engines.rerank import Reranker

        rerank = Reranker(rerank_model, data, depth=rerank_depth, margin=None)
    thresholds = calibrate_model_file(model, data, out, groups.split(",") if groups else None, split, seed, command,
                                      rerank)
    for kind, found in thresholds.items():
        if kind == "rerank_margin":
            shares = ", ".join(f"{r['margin'] if r['margin'] is not None else 'all'}: {r['accuracy']:.4f}"
                               for r in found["runs"])
            click.echo(f"rerank margin {found['value']} (the model alone {found['first_accuracy']:.4f}; {shares}; "
                       f"{found['rule']})")
        elif kind == "cluster" and "cluster_distance" in found:
            click.echo(f"cluster_distance {found['cluster_distance']:.4f}, cluster_radius {found['cluster_radius']:.4f} "
                       f"({found['classes']} classes, {found['images']} images)")
        else:
            click.echo(f"{kind} threshold {found.get('value')} ({found.get('rule', found.get('not_calibrated'))})")


@main.command("ensemble")
@click.argument("models", nargs=-1, required=True, type=MODEL)
@click.option("--out", type=click.Path(dir_okay=False), required=True, help="Model file to write (.safetensors).")
@friendly
def ensemble_command(models, out):
    """Join two or more trained cosine models into one model file: each image's vector is the members'
    unit vectors side by side (its cosine the mean of theirs), at the sum of their encoding costs.
    Its thresholds start as the mean of the members' calibrated ones; calibrate it for its own.

    \b
    Example:
      oneshot ensemble runs/a runs/b --out runs/ab.safetensors
      oneshot calibrate runs/ab.safetensors --data held_out_gallery/
    """
    from oneshot.embedder.artifact import save_model
    from oneshot.embedder.ensemble import ensemble_models, members_with_matchers

    if len(models) < 2:
        raise click.UsageError("an ensemble needs at least two models")
    model = ensemble_models(models)
    command = _invoked_command()
    path = save_model(model, out, info={**model.info, "command": command})
    click.echo(f"{len(models)} models, {model.dim}-d vectors; fingerprint {model.fingerprint}; model: {path}")
    matched = members_with_matchers(model)
    if matched:
        click.echo(f"members {', '.join(str(models[i]) for i in matched)} have map matchers: bulk jobs score by the "
                   "ensemble's vectors' cosine only; as a re-ranker (identify --rerank, eval --rerank) it scores by "
                   "the mean of its members' trained scores", err=True)
    own = (f"oneshot calibrate {shlex.quote(str(path))} --data HELD_OUT (labelled images none of its members "
           "trained on)")
    kinds = sorted(model.info.get("thresholds", {}))
    if kinds:
        click.echo(f"thresholds ({', '.join(kinds)}): the mean of its members' calibrated values; for its own: {own}",
                   err=True)
    else:
        click.echo(f"no thresholds yet (its members carry none to average): give it its own with {own}", err=True)


@main.command("lake")
@click.option("--data", type=click.Path(exists=True), default=None,
              help="all_runs.zip, its folder, or the Omniglot folder (default: $OMNIGLOT_DIR).")
@click.option("--model", type=MODEL, default=None, help="Model file (default: shipped).")
@click.option("--tta", is_flag=True, help="Average embeddings over shifted views.")
@friendly
def lake_command(data, model, tta):
    """Error on Lake's 20 official 20-way within-alphabet one-shot runs.

    \b
    Example:
      oneshot lake --data ../shared/data/omniglot
    """
    from oneshot.pipelines.jobs.train import lake_errors

    table = lake_errors(data, model, tta)
    click.echo(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    click.echo(f"mean error {table['error_rate'].mean():.4f} over {table['trials'].sum()} trials")


if __name__ == "__main__":
    main()
