"""``thaldask stats``."""

from __future__ import annotations

import click

from thaldask._click import handle_errors
from thaldask.errors import ThaldaskWarning


@click.command("stats")
@click.argument("store")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
              help="stats.yaml with options (side, outcomes, covariates, head_size, edss_cut, "
                   "harmonise, combat, bootstrap, ...).")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Folder for the CSV tables (default: inside STORE).")
@click.option("--quiet", is_flag=True, help="Do not print the headline findings.")
@handle_errors
def stats_command(store, config_file, out, quiet):
    """Agreement, method comparison, clinical and longitudinal models, harmonisation.

    Reads STORE's results dataset, writes agreement.csv, method_comparison.csv,
    clinical_cross.csv, longitudinal.csv and harmonisation.csv, and a ``stats`` dataset
    into STORE.
    """
    import warnings

    import pandas as pd

    from thaldask.stats.run import headline_findings, write_stats

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        paths = write_stats(store, out=out, config=config_file)
    for w in caught:
        if issubclass(w.category, ThaldaskWarning):
            click.echo(f"thaldask: warning: {w.message}", err=True)
    for name, p in paths.items():
        click.echo(f"{name}: {p}")
    if not quiet:
        tables = {k: pd.read_csv(p) for k, p in paths.items()}
        for line in headline_findings(tables):
            click.echo(f"  {line}")


COMMANDS = [stats_command]
