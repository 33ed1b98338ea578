"""The ``thaldask`` console script: a thin click layer over the public functions.

Each command wraps one public function. Errors derived from :class:`ThaldaskError` print one
line (``thaldask: error: ...``) and exit with status 2; a run in which some scans failed exits
with status 1 after finishing the rest of the cohort.
"""

from __future__ import annotations

import functools
import sys

import click

from thaldask.errors import ThaldaskError

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


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="thaldask")
def main():
    """Benchmark and scale thalamus segmentation for MS cohorts on Dask."""


# Commands are defined in the stage modules' ``commands`` and registered here, one block
# per stage, so that each stage keeps its command next to the function it wraps.
def _register():
    import importlib

    for mod in (
        "thaldask.cohort.commands",
        "thaldask.store.commands",
        "thaldask.synth.commands",
        "thaldask.metrics.commands",
        "thaldask.segment.commands",
        "thaldask.thalnet.commands",
        "thaldask.stats.commands",
        "thaldask.report.commands",
        "thaldask.cluster.commands",
        "thaldask.pipeline_commands",
    ):
        try:
            m = importlib.import_module(mod)
        except ModuleNotFoundError as exc:
            if exc.name == mod:
                continue
            raise
        for cmd in getattr(m, "COMMANDS", ()):
            main.add_command(cmd)


_register()

if __name__ == "__main__":  # pragma: no cover
    main()
