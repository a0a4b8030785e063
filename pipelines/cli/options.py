"""Options shared by several commands: the reject policy, the engine, the rows to remove."""
from __future__ import annotations

from pathlib import Path

import click

from oneshot.embedder.precision import PRECISION_SPELLINGS


class ModelParam(click.ParamType):
    """``--model``: a model file (or a training run folder), or a shipped model's name (handwriting,
    handwriting-v2, handwriting-v1, handwriting-ensemble, handwriting-ensemble-v1, face)."""

    name = "model"

    def convert(self, value, param, ctx):
        if value is None or Path(value).exists():
            return value
        from oneshot.embedder.artifact import SHIPPED_MODELS

        if str(value) in SHIPPED_MODELS:
            return str(value)
        self.fail(f"{value!r} is neither a model file nor a shipped model ({', '.join(SHIPPED_MODELS)})", param, ctx)


MODEL = ModelParam()


def reject_options(command):
    """``--on-error`` and ``--max-rejects``, shared by every bulk command (issue 8)."""
    command = click.option("--max-rejects", default=None, metavar="N|P%",
                           help="Exit 1 (after writing the output) when more files than this are rejected: "
                                "a count (10) or a share (1%).")(command)
    return click.option("--on-error", type=click.Choice(["skip", "fail"]), default="skip", show_default=True,
                        help="skip: leave bad files out and list them (path, reason) in a CSV beside the output "
                             "(<out>.rejects.csv; OUT/rejects.csv for train); fail: stop at the first one, "
                             "writing nothing.")(command)


def rerank_options(first: str, unit: str, what: str, note: str = ""):
    """``--rerank``, ``--rerank-depth`` and ``--rerank-margin``, shared by ``identify`` and ``eval``:
    ``first`` names the first stage (the index, the store), ``unit`` what is re-scored per query
    (gallery rows, classes), ``what`` what the margin separates (identities, classes); ``note`` ends
    ``--rerank``'s help."""
    from oneshot.pipelines.engines.rerank import DEFAULT_DEPTH, DEFAULT_MARGIN, MODEL_MARGIN

    def decorate(command):
        command = click.option(
            "--rerank-margin", default=MODEL_MARGIN, show_default=True,
            help=f"Re-score only queries whose two best {what} are closer than this in {first}'s score; 'all': every "
                 f"query; 'model': the margin {first}'s model carries (chosen for it on validation data), else "
                 f"{DEFAULT_MARGIN}.")(command)
        command = click.option("--rerank-depth", type=click.IntRange(min=1), default=DEFAULT_DEPTH, show_default=True,
                               help=f"{unit.capitalize()} re-scored per query.")(command)
        return click.option("--rerank", "rerank_model", type=MODEL, default=None,
                            help=f"A second, stronger model (e.g. handwriting-ensemble) that re-scores the best {unit} "
                                 f"of each query {first} hesitates on{note}.")(command)
    return decorate


def rejects_for(on_error: str, max_rejects: str | None):
    from oneshot.errors import InvalidInputError
    from oneshot.pipelines.reading import RejectPolicy, Rejects

    try:
        return Rejects(RejectPolicy.parse(on_error, max_rejects))
    except InvalidInputError as error:
        raise click.UsageError(str(error)) from error


def engine_options(command):
    """``--engine local|ray`` and ``--ray-address`` (embed, index build, identify)."""
    command = click.option("--ray-address", default=None,
                           help="Ray cluster for --engine ray (auto, head:6379, ray://head:10001); "
                                "default: $RAY_ADDRESS, else Ray started on this machine.")(command)
    return click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
                        help="Run here, or spread the work over Ray (pip install 'oneshot[ray]').")(command)


PRECISION_HELP = ("Forward pass in bfloat16: 1.2-1.4x faster on CPUs with native bfloat16 (AVX512-BF16, AMX), "
                  "vectors within cosine 0.9999 of float32's; slower on CPUs without it. Recorded in the store; "
                  "--append keeps the store's precision. identify: the --rerank model's forward pass too.")
RERANK_PRECISION_HELP = ("The --rerank model's forward pass in bfloat16 (the store's vectors are already computed): "
                         "faster on CPUs with native bfloat16 (AVX512-BF16, AMX), slower on CPUs without it; a map "
                         "matcher's solve and the scores stay float32.")


def precision_option(command=None, *, help: str = PRECISION_HELP):
    """``--precision float32|bf16`` (embed, identify, eval; ``fp32`` and ``bfloat16`` too): the forward
    pass in float32 or bfloat16. Used bare (``@precision_option``) or with its own help
    (``@precision_option(help=...)``)."""
    def decorate(command):
        return click.option("--precision", type=click.Choice(list(PRECISION_SPELLINGS)), default="float32",
                            show_default=True, callback=lambda ctx, param, value: PRECISION_SPELLINGS[value],
                            help=help)(command)

    return decorate if command is None else decorate(command)


def removal_options(command):
    """``--id``, ``--label`` and ``--paths``: the rows ``store remove`` and ``index remove`` take out."""
    command = click.option("--paths", "paths_file", type=click.Path(exists=True, dir_okay=False), default=None,
                           help="Text file of image paths (as in the store's path column), one per line.")(command)
    command = click.option("--label", "labels", multiple=True,
                           help="Remove every row of this label (a person leaves); repeatable.")(command)
    return click.option("--id", "ids", type=int, multiple=True, help="Row id to remove; repeatable.")(command)


def read_paths_file(path: str | None) -> list[str] | None:
    """The image paths listed in a ``--paths`` file, one per line (blank lines skipped); None without one."""
    if not path:
        return None
    return [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
