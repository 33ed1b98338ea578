"""``thaldask demo`` and ``thaldask run``."""

from __future__ import annotations

import click

from thaldask._click import handle_errors, scheduler_option


@click.command("demo")
@click.option("--out", default="thaldask-demo", show_default=True, type=click.Path(file_okay=False),
              help="Output folder (store, metrics.csv, README.txt).")
@click.option("--subjects", default=12, show_default=True, type=click.IntRange(2, 100000),
              help="Synthetic subjects (two timepoints each).")
@click.option("--full", is_flag=True, help="Whole-head 1 mm volumes (slower) instead of a small field of view.")
@click.option("--seed", default=0, show_default=True, help="Synthetic cohort seed.")
@click.option("--no-progress", is_flag=True, help="Hide progress bars and stage messages.")
@scheduler_option
@handle_errors
def demo_command(out, subjects, full, seed, no_progress, scheduler, cluster_file):
    """Synthetic cohort through the whole pipeline on a local Dask cluster; prints a summary."""
    from thaldask.pipeline import pipeline_client, print_summary, run_demo

    with pipeline_client(None, scheduler, cluster_config=cluster_file, progress=not no_progress) as client:
        # a very small demo cohort might draw no patient with manual ground truth
        gt_fraction = 1.0 if subjects <= 4 else None
        ctx = run_demo(out, subjects, full=full, client=client, progress=not no_progress, seed=seed,
                       gt_fraction=gt_fraction)
    print_summary(ctx)
    click.echo(f"outputs in {out}/ (README.txt says what each file is; the data are synthetic)")


@click.command("run")
@click.argument("config", type=click.Path(exists=True, dir_okay=False))
@click.option("--no-progress", is_flag=True, help="Hide progress bars and stage messages.")
@click.option("--scheduler", default=None, metavar="ADDRESS",
              help="Address of an existing Dask scheduler (overrides the config's cluster section).")
@click.option("--cluster", "cluster_file", default=None, type=click.Path(exists=True, dir_okay=False),
              help="YAML file with a cluster section (overrides the config's cluster section).")
@handle_errors
def run_command(config, no_progress, scheduler, cluster_file):
    """The configured pipeline stages for a real cohort (see the example config:
    `python -c "import thaldask, pathlib; print(pathlib.Path(thaldask.__file__).parent / 'data/example_config.yaml')"`)."""
    from thaldask.pipeline import print_summary, run_config

    ctx = run_config(config, scheduler=scheduler, cluster_file=cluster_file, progress=not no_progress)
    print_summary(ctx)
    for name, why in ctx.skipped.items():
        click.echo(f"{name}: skipped ({why})")


COMMANDS = [demo_command, run_command]
