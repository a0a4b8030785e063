"""The ``oneshot`` group and the error layer every command goes through (:func:`friendly`)."""
from __future__ import annotations

import functools
import logging
import sys

import click

from oneshot.errors import OneshotError

BUG_NOTE = ("oneshot: unexpected error (a bug, not bad input); please report it with the traceback above "
            "and the command you ran")


def friendly(command):
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
            raise click.ClickException(printable(str(error))) from error
        except Exception as error:
            if isinstance(error, OSError) and error.filename is not None:
                raise click.ClickException(printable(f"{error.filename}: {error.strerror or error}")) from error
            import traceback

            traceback.print_exc()
            click.echo(BUG_NOTE, err=True)
            sys.exit(3)

    return wrapper


def printable(message: str) -> str:
    """A message with file names that are not valid UTF-8 escaped (``\\xNN``), so it can always be printed."""
    from oneshot.data.archive import escape_name

    return escape_name(message)


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
