"""What every command shares: one-line errors, exit codes, the ``--scheduler``/``--cluster``
options. Command modules import this, never :mod:`thaldask.cli` (which imports them)."""

from __future__ import annotations

import functools
import sys

import click

from thaldask.errors import ThaldaskError

__all__ = ["EXIT_SOME_FAILED", "EXIT_BAD_INPUT", "fail", "handle_errors", "scheduler_option"]

EXIT_SOME_FAILED = 1
EXIT_BAD_INPUT = 2


def fail(message: str, code: int = EXIT_BAD_INPUT):
    """Print a one-line error and exit."""
    click.echo(f"thaldask: error: {message}", err=True)
    sys.exit(code)


def handle_errors(func):
    """Turn thaldask errors into one-line messages and a non-zero exit code."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except ThaldaskError as exc:
            problems = getattr(exc, "problems", None)
            if problems and len(problems) > 1:
                for p in problems:
                    click.echo(f"thaldask: error: {p}", err=True)
                sys.exit(EXIT_BAD_INPUT)
            fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        except KeyboardInterrupt:
            fail("interrupted; completed scans are kept and a re-run resumes", 130)

    return wrapper


def scheduler_option(func):
    """``--scheduler ADDRESS`` and ``--cluster FILE``, shared by every command that computes."""
    func = click.option(
        "--cluster",
        "cluster_file",
        type=click.Path(dir_okay=False),
        default=None,
        help="YAML file with a cluster section (local, address, kubernetes, slurm).",
    )(func)
    func = click.option(
        "--scheduler",
        default=None,
        metavar="ADDRESS",
        help="Address of an existing Dask scheduler (tcp:// or tls://); default: a local cluster.",
    )(func)
    return func
