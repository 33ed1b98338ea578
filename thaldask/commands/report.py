"""``thaldask report`` and ``thaldask qc``."""

from __future__ import annotations

import click

from thaldask._click import handle_errors


@click.command("report")
@click.argument("store")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False),
              help="Folder for index.html, its figures and the CSV tables.")
@click.option("--stats-dir", type=click.Path(file_okay=False), default=None,
              help="Folder of the statistics CSVs (default: the CSVs inside the store, else "
                   "the tables stored in the store by `thaldask stats`).")
@click.option("--side", type=click.Choice(["total", "left", "right"]), default="total",
              show_default=True, help="Thalamus side drawn in the figures.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the random visual-QC sample.")
@click.option("--qc-random", type=int, default=2, show_default=True,
              help="Random scans per method × contrast in visual QC (besides best/median/worst).")
@handle_errors
def report(store, out, stats_dir, side, seed, qc_random):
    """Write an offline HTML report of STORE (results, statistics, visual QC) to OUT/index.html."""
    from thaldask.report import write_report

    index = write_report(store, out, stats_dir=stats_dir, side=side, rng=seed, qc_random=qc_random)
    click.echo(f"report: {index}")


@click.command("qc")
@click.argument("store")
@click.option("--subject", required=True, help="Subject identifier.")
@click.option("--timepoint", default=None, help="Only this timepoint (default: all).")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False),
              help="Folder for the montages (one PNG per scan).")
@handle_errors
def qc(store, subject, timepoint, out):
    """Thalamus contours of every method over the image, three planes, one montage per scan."""
    from thaldask.report import write_qc

    for path in write_qc(store, subject, out, timepoint=timepoint):
        click.echo(str(path))


COMMANDS = [report, qc]
