"""The ``thaldask`` console script: a thin click layer over the public functions.

Each command wraps one public function and lives in the module of :mod:`thaldask.commands`
named after its stage; this module imports every one of them explicitly, so a command
module that fails to import fails ``thaldask`` loudly instead of dropping its commands.
Command modules import their stage inside the command body, so ``thaldask --help`` imports
neither dask nor torch. Errors derived from :class:`ThaldaskError` print one line
(``thaldask: error: ...``) and exit with status 2; a run in which some scans failed exits
with status 1 after finishing the rest of the cohort.
"""

from __future__ import annotations

import click

from thaldask import _click
from thaldask.commands import cluster as cluster_commands
from thaldask.commands import cohort as cohort_commands
from thaldask.commands import metrics as metrics_commands
from thaldask.commands import pipeline as pipeline_commands
from thaldask.commands import report as report_commands
from thaldask.commands import segment as segment_commands
from thaldask.commands import stats as stats_commands
from thaldask.commands import store as store_commands
from thaldask.commands import synth as synth_commands
from thaldask.commands import thalnet as thalnet_commands
from thaldask.commands import tools as tools_commands

# kept for scripts that imported them from here
EXIT_SOME_FAILED = _click.EXIT_SOME_FAILED
EXIT_BAD_INPUT = _click.EXIT_BAD_INPUT
fail = _click.fail
handle_errors = _click.handle_errors
scheduler_option = _click.scheduler_option

__all__ = ["main"]

COMMAND_MODULES = (
    cohort_commands,
    store_commands,
    synth_commands,
    metrics_commands,
    segment_commands,
    thalnet_commands,
    stats_commands,
    report_commands,
    cluster_commands,
    pipeline_commands,
    tools_commands,
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="thaldask")
def main():
    """Benchmark and scale thalamus segmentation for MS cohorts on Dask."""


for _module in COMMAND_MODULES:
    for _cmd in _module.COMMANDS:
        main.add_command(_cmd)

if __name__ == "__main__":  # pragma: no cover
    main()
