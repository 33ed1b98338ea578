"""``thaldask evaluate`` and ``thaldask compare``."""

from __future__ import annotations

import json
import sys

import click

from thaldask._click import handle_errors, scheduler_option


def client_context(scheduler=None, cluster_file=None, **kwargs):
    """``get_client`` with ``--scheduler``/``--cluster`` as given on the command line."""
    from thaldask.cluster import get_client

    if cluster_file:
        kwargs["cluster_config"] = cluster_file
    return get_client(scheduler, **kwargs)


def _echo_table(table):
    from rich.console import Console

    console = Console()
    if not console.is_terminal:
        console = Console(width=120)
    console.print(table)


@click.command("evaluate")
@click.argument("store")
@click.option("--no-surface", is_flag=True, help="Skip HD95/ASSD (overlap and volumes only).")
@click.option("--name", default="results", show_default=True, help="Results dataset name in the store.")
@click.option("--csv", "csv_path", default=None, help="Tidy table path (default: metrics.csv inside the store).")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
@scheduler_option
@handle_errors
def evaluate_command(store, no_surface, name, csv_path, no_progress, scheduler, cluster_file):
    """Metrics of every stored mask against ground truth: results dataset + metrics.csv."""
    from thaldask.metrics.evaluate import evaluate
    from thaldask.metrics.summary import summary_table

    with client_context(scheduler, cluster_file, quiet=True) as client:
        if not no_progress:
            click.echo(f"dashboard: {client.dashboard_link}", err=True)
        ds = evaluate(store, client=client, progress=not no_progress, surface=not no_surface,
                      name=name, csv_path=csv_path)
    _echo_table(summary_table(ds))
    click.echo(
        f"{store}: results '{name}' written ({ds.attrs['n_computed']} rows computed, "
        f"{ds.attrs['n_reused']} reused); table: {ds.attrs.get('metrics_csv', '-')}"
    )
    if ds.attrs.get("n_failed"):
        click.echo(f"thaldask: {ds.attrs['n_failed']} rows failed (unreadable masks; see the log); "
                   "a re-run retries them", err=True)
        sys.exit(1)


@click.command("compare")
@click.option("--gt", "gt", required=True, type=click.Path(exists=True, dir_okay=False), help="Ground-truth mask file.")
@click.option("--pred", "pred", required=True, type=click.Path(exists=True, dir_okay=False), help="Predicted mask file.")
@click.option("--gt-labels", default=None, help="Label convention of --gt (default: detected).")
@click.option("--pred-labels", default=None, help="Label convention of --pred (default: detected).")
@click.option("--no-surface", is_flag=True, help="Skip HD95/ASSD.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@handle_errors
def compare_command(gt, pred, gt_labels, pred_labels, no_surface, as_json):
    """Metrics for one pair of mask files (any supported label convention)."""
    from thaldask.metrics.compare import compare_files

    res = compare_files(gt, pred, gt_labels=gt_labels, pred_labels=pred_labels, surface=not no_surface)
    if as_json:
        json.dump(res, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return
    from rich.table import Table

    t = Table(title=f"{pred} vs {gt}")
    cols = ("dice", "jaccard", "sensitivity", "precision", "volume_mm3", "gt_volume_mm3",
            "volume_diff_pct", "hd95_mm", "assd_mm")
    t.add_column("side")
    for c in cols:
        t.add_column(c, justify="right")
    for side, m in res["metrics"].items():
        t.add_row(side, *("-" if m[c] is None else f"{m[c]:.4g}" for c in cols))
    _echo_table(t)
    note = f"labels: gt {res['gt_labels']}, pred {res['pred_labels']}"
    if res["resampled"]:
        note += "; prediction resampled (nearest) onto the ground-truth grid"
    click.echo(note)


COMMANDS = [evaluate_command, compare_command]
