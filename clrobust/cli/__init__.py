"""The ``clrobust`` command. It only parses options and calls the library.

One module per command group (``train``, ``compare``, ``zoo``, ``checkpoints``,
``analysis``, ``audit``), options shared through :mod:`clrobust.cli.options`,
every command registered here explicitly.
"""

from __future__ import annotations

import signal
import sys
import threading
from typing import Any, List, Optional

import click

import clrobust
from clrobust.cli import analysis, audit, checkpoints, compare, train, zoo
from clrobust.errors import ClrobustError


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(clrobust.__version__, prog_name="clrobust")
def cli() -> None:
    """How adversarial training changes what an image encoder learns, layer by layer.

    Start with `clrobust compare-layers`: with no arguments it compares the embedded
    standard and adversarially trained SimCLR encoders on the embedded CIFAR-10
    subset under PGD 8/255 and writes CKA heatmaps, disparity curves and accuracies.
    """


for _command in (compare.compare_layers, train.train, zoo.zoo, checkpoints.inspect, checkpoints.convert,
                 analysis.probe_layers, analysis.figures, audit.audit):
    cli.add_command(_command)


class Terminated(Exception):
    """SIGTERM, raised where the process is, so that every output folder cleans up on the way out."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise Terminated()


def main(argv: Optional[List[str]] = None) -> None:
    """Entry point: bad input prints one line and exits with status 2; Ctrl-C exits 130, SIGTERM 143."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        cli.main(args=argv, prog_name="clrobust", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted.", err=True)
        sys.exit(130)
    except click.UsageError as exc:
        command = exc.ctx.command_path if exc.ctx is not None else "clrobust"
        message = " ".join(exc.format_message().split())
        click.echo(f"error: {message} (see '{command} --help')", err=True)
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        click.echo(f"error: {' '.join(exc.format_message().split())}", err=True)
        sys.exit(exc.exit_code)
    except ClrobustError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        click.echo("interrupted: nothing was written to --out (a resumable job resumes when run again).",
                   err=True)
        sys.exit(130)
    except Terminated:
        click.echo("terminated: nothing was written to --out (a resumable job resumes when run again).",
                   err=True)
        sys.exit(143)


__all__ = ["cli", "main"]
