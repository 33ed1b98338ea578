"""``thaldask ingest`` and ``thaldask export``."""

from __future__ import annotations

import click

from thaldask._click import EXIT_SOME_FAILED, handle_errors, scheduler_option


@click.command("ingest")
@click.argument("manifest", type=click.Path(exists=True, dir_okay=False))
@click.option("--store", "store", required=True, help="Cohort store path or URL (STORE.zarr, s3://...).")
@click.option("--clinical", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Clinical table (CSV/TSV) to validate and keep in the store.")
@click.option("--overwrite", is_flag=True, help="Replace stored content that differs.")
@click.option("--split-binary", is_flag=True,
              help="Split binary masks into left/right at world x = 0 (default: 1 = thalamus).")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
@scheduler_option
@handle_errors
def ingest_command(manifest, store, clinical, overwrite, split_binary, no_progress, scheduler,
                   cluster_file):
    """NIfTI/MGZ files listed in MANIFEST into the Zarr cohort store."""
    import sys

    from thaldask.cluster import get_client
    from thaldask.cohort.clinical import validate_clinical
    from thaldask.cohort.manifest import validate
    from thaldask.store.create import check_store_target
    from thaldask.store.format import INGEST_REPORT
    from thaldask.store.ingest import ingest

    # the manifest itself is checked before any cluster starts: bad input fails in seconds;
    # its files are then checked on the cluster's workers (a bad file fails only its row)
    df = validate(manifest, on_file_error="flag", check_files=False)
    clin = validate_clinical(clinical, manifest=df) if clinical else None
    check_store_target(store)  # a new or empty folder, or a thaldask store
    with get_client(scheduler, quiet=True, cluster_config=cluster_file) as client:
        report = ingest(df, store, clinical=clin, overwrite=overwrite, client=client,
                        progress=not no_progress, split_binary=split_binary)
    counts = report["status"].value_counts()
    n_fail = int(counts.get("failed", 0))
    click.echo(
        f"{store}: {int(counts.get('written', 0))} written, {int(counts.get('skipped', 0))} "
        f"skipped, {n_fail} failed (report: {store.rstrip('/')}/{INGEST_REPORT})"
    )
    if n_fail:
        for r in report[report["status"] == "failed"].itertuples():
            click.echo(f"thaldask: row {r.row}: {r.path}: {r.reason}", err=True)
        sys.exit(EXIT_SOME_FAILED)


@click.command("export")
@click.argument("store")
@click.option("--method", default=None, help="Mask method (gt for ground truth); with --bids: all by default.")
@click.option("--contrast", default=None, help="Contrast the masks belong to (not with --bids).")
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Output folder.")
@click.option("--bids", "bids_root", type=click.Path(file_okay=False), default=None,
              help="BIDS dataset folder: write derivatives/<method>/sub-*/[ses-*/]anat/"
                   "*_desc-thalamus_dseg.nii.gz with label table and sidecars.")
@click.option("--labels", default=None, help="Write this label convention (e.g. freesurfer) instead of 0/1/2.")
@click.option("--overwrite", is_flag=True, help="Replace existing files that thaldask did not write.")
@handle_errors
def export_command(store, method, contrast, out, bids_root, labels, overwrite):
    """Masks of STORE back to NIfTI on each scan's original grid, one file per scan
    (--out DIR with --method and --contrast), or every mask as BIDS derivatives (--bids DIR)."""
    if bids_root is not None:
        if out is not None or contrast is not None or labels is not None:
            raise click.UsageError("--bids writes every contrast with labels 1/2; "
                                   "it takes no --out, --contrast or --labels")
        from thaldask.store.bids_export import export_bids

        paths = export_bids(store, bids_root, methods=[method] if method else None,
                            overwrite=overwrite)
        click.echo(f"{len(paths)} masks written to {bids_root}/derivatives")
        return
    if not (method and contrast and out):
        raise click.UsageError("give --method, --contrast and --out (or --bids DIR)")
    from thaldask.store.export import export_masks

    paths = export_masks(store, method, contrast, out, labels=labels, overwrite=overwrite)
    click.echo(f"{len(paths)} masks written to {out}")


@click.group("store")
def store_group():
    """Look after a cohort store."""


@store_group.command("verify")
@click.argument("store")
@handle_errors
def verify_command(store):
    """Check that every scan marked written has all its chunks and that they decode."""
    import sys

    from thaldask.store.verify import verify_store

    problems = verify_store(store)
    for r in problems.itertuples():
        click.echo(f"thaldask: {store}: {r.array}: {r.subject} {r.timepoint}: {r.problem}", err=True)
    if len(problems):
        click.echo(f"{store}: {len(problems)} stored scans are damaged")
        sys.exit(EXIT_SOME_FAILED)
    click.echo(f"{store}: every stored scan is whole")


@store_group.command("migrate")
@click.argument("store")
@handle_errors
def migrate_command(store):
    """Bring a store written by an older thaldask to the current layout, in place.

    Only the store's own tables move (into columns); images, masks and results stay as they
    are. A store already in the current layout is left alone."""
    from thaldask.store import open_store
    from thaldask.store.create import migrate_store
    from thaldask.store.lock import store_lock

    open_store(store)  # a one-line error, and no lock beside a folder that is not a store
    with store_lock(store, what="migrate"):
        before, after = migrate_store(store)
    if before == after:
        click.echo(f"{store}: already store format {after}; nothing to do")
    else:
        click.echo(f"{store}: store format {before} migrated to {after}")


COMMANDS = [ingest_command, export_command, store_group]
