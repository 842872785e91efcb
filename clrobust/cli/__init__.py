"""The ``clrobust`` command. It only parses options and calls the library.

One module per command group (``train``, ``compare``, ``zoo``, ``checkpoints``,
``analysis``, ``audit``), options shared through :mod:`clrobust.cli.options`,
every command registered here explicitly.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import traceback
from typing import Any, List, Optional

import click

import clrobust
from clrobust.cli import analysis, audit, checkpoints, compare, train, zoo
from clrobust.errors import ClrobustError
from clrobust.provenance import set_tf32

DEBUG_ENV = "CLROBUST_DEBUG"


def _debug_requested(argv: List[str]) -> bool:
    """--debug before the command name, or CLROBUST_DEBUG set to anything but 0/empty."""
    if os.environ.get(DEBUG_ENV, "").strip() not in ("", "0"):
        return True
    for arg in argv:
        if not arg.startswith("-"):
            return False  # the command name: later options belong to the command
        if arg == "--debug":
            return True
    return False


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(clrobust.__version__, prog_name="clrobust")
@click.option("--debug", is_flag=True, expose_value=False, is_eager=True,
              help=f"Show the full traceback of an error instead of one line (or set {DEBUG_ENV}=1).")
@click.option("--tf32/--no-tf32", default=False, expose_value=False,
              callback=lambda ctx, param, value: set_tf32(value),
              help="Let CUDA matrix products and convolutions use TF32 (faster, about 1e-3 relative error); "
                   "off by default, recorded in settings.json.")
@click.option("--threads", type=click.IntRange(min=1), default=None, expose_value=False,
              callback=lambda ctx, param, value: set_threads(value),
              help="CPU threads for torch [the machine's physical cores available to this process, divided among "
                   "the processes of a torchrun].")
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


def physical_cores() -> int:
    """Physical cores this process may run on: hyper-threads of one core share its floating-point units,
    so more torch threads than cores only adds contention."""
    logical = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        with open("/proc/cpuinfo") as fh:
            cores, physical, core = set(), "0", "0"
            for line in fh:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "physical id":
                    physical = value.strip()
                elif key == "core id":
                    core = value.strip()
                    cores.add((physical, core))
        per_core = max(1, (os.cpu_count() or 1) // max(1, len(cores))) if cores else 1
    except OSError:
        per_core = 1
    return max(1, logical // per_core)


def default_threads() -> int:
    """:func:`physical_cores`, shared among the processes torchrun starts on this machine (more threads than
    cores in all makes every process wait on the others: a 10x slower probe fit was measured)."""
    return max(1, physical_cores() // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)))


def set_threads(threads: Optional[int]) -> None:
    """torch's CPU threads: ``threads``, or :func:`default_threads` when None."""
    import torch

    torch.set_num_threads(threads or default_threads())


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _fail(message: str, code: int, debug: bool) -> None:
    """Print ``message`` on one line (after the traceback with --debug) and exit with ``code``."""
    if debug and sys.exc_info()[0] is not None:
        traceback.print_exc()
    click.echo(message, err=True)
    sys.exit(code)


def _unexpected(exc: BaseException) -> str:
    """The one line for an exception no check anticipated: what it was, and how to see more."""
    if isinstance(exc, MemoryError) or "out of memory" in str(exc).lower():
        return "error: out of memory; use a smaller --batch-size or fewer --n-samples."
    if isinstance(exc, OSError) and exc.errno is not None:
        where = f" ({exc.filename})" if exc.filename else ""
        return f"error: {_one_line(exc.strerror or exc)}{where}; check the path, its permissions and free space."
    detail = _one_line(exc) or "(no message)"
    return (f"error: unexpected {type(exc).__name__}: {detail[:300]}; run again with --debug "
            f"(or {DEBUG_ENV}=1) for the traceback, and report it if the input was valid.")


def _show_warning(message: Any, category: Any, filename: str, lineno: int, file: Any = None,
                  line: Optional[str] = None) -> None:
    """Warnings as one line each on stderr (``warning: ...``), not Python's two-line form with a source line."""
    click.echo(f"warning: {_one_line(message)}", err=True)


def _close_process_group() -> None:
    """Under torchrun: wait until every process is done, then close the group, so no process exits while another
    still talks to it (a process leaving early aborted in gloo's threads)."""
    if "torch" not in sys.modules:
        return
    import torch.distributed as td

    if td.is_available() and td.is_initialized():
        td.barrier()
        td.destroy_process_group()


def main(argv: Optional[List[str]] = None) -> None:
    """Entry point: every failure is one line on stderr. Bad input exits 2, a runtime failure 1,
    Ctrl-C 130, SIGTERM 143; ``--debug`` (or ``CLROBUST_DEBUG=1``) adds the traceback."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = _debug_requested(args)
    if not debug:
        import warnings

        warnings.showwarning = _show_warning
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        cli.main(args=args, prog_name="clrobust", standalone_mode=False)
        _close_process_group()
    except click.exceptions.Abort:  # click's form of Ctrl-C while it parses the command line
        _fail("interrupted: nothing was written to --out (a resumable job resumes when run again).", 130, debug)
    except click.UsageError as exc:
        command = exc.ctx.command_path if exc.ctx is not None else "clrobust"
        _fail(f"error: {_one_line(exc.format_message())} (see '{command} --help')", exc.exit_code, debug)
    except click.ClickException as exc:
        _fail(f"error: {_one_line(exc.format_message())}", exc.exit_code, debug)
    except ClrobustError as exc:
        _fail(f"error: {_one_line(exc)}", exc.exit_code, debug)
    except KeyboardInterrupt:
        _fail("interrupted: nothing was written to --out (a resumable job resumes when run again).", 130, debug)
    except Terminated:
        _fail("terminated: nothing was written to --out (a resumable job resumes when run again).", 143, debug)
    except Exception as exc:  # the last net: one line, never a bare traceback
        _fail(_unexpected(exc), 1, debug)


__all__ = ["cli", "main", "DEBUG_ENV"]
