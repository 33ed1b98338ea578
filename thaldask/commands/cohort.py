"""``thaldask manifest ...``: build and check cohort manifests."""

from __future__ import annotations

import sys

import click

from thaldask._click import EXIT_BAD_INPUT, handle_errors


@click.group("manifest")
def manifest_group():
    """Build or check a cohort manifest."""


def _report_files(df) -> int:
    """Print each flagged row of a validated manifest (one line each); return the problem count."""
    for w in df["warning"]:
        if w:
            click.echo(f"thaldask: warning: {w}", err=True)
    problems = [p for p in df["problem"] if p]
    for p in problems:
        click.echo(f"thaldask: error: {p}", err=True)
    return len(problems)


@manifest_group.command("from-bids")
@click.argument("root", type=click.Path(exists=True, file_okay=False))
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Manifest CSV to write.")
@click.option("--labels", "labels", multiple=True, metavar="METHOD=SPEC",
              help="Label convention of a derivatives method, e.g. manual=binary (repeatable).")
@click.option("--no-check", is_flag=True, help="Write without validating the files.")
@click.option("--overwrite", is_flag=True,
              help="Replace OUT even if it is not a manifest thaldask wrote.")
@handle_errors
def from_bids_command(root, out, labels, no_check, overwrite):
    """Manifest of a BIDS dataset ROOT (raw anat images and derivatives/<method>/ masks)."""
    from thaldask._shared.paths import check_may_write
    from thaldask.cohort.bids import manifest_from_bids, write_manifest
    from thaldask.cohort.manifest import validate
    from thaldask.errors import ManifestError

    spec = {}
    for item in labels:
        k, sep, v = item.partition("=")
        if not sep or not k or not v:
            raise ManifestError(f"--labels {item!r}: expected METHOD=SPEC, e.g. manual=binary")
        spec[k.strip()] = v.strip()
    check_may_write(out, overwrite=overwrite)  # before scanning
    df = manifest_from_bids(root, labels=spec)
    path = write_manifest(df, out, overwrite=overwrite)
    n_img = int((df["kind"] == "image").sum())
    click.echo(f"{path}: {n_img} images, {len(df) - n_img} masks, "
               f"{df.groupby(['subject', 'timepoint']).ngroups} scans")
    if not no_check and _report_files(validate(path, on_file_error="flag")):
        sys.exit(EXIT_BAD_INPUT)


@manifest_group.command("check")
@click.argument("manifest", type=click.Path(exists=True, dir_okay=False))
@click.option("--clinical", type=click.Path(exists=True, dir_okay=False), default=None)
@handle_errors
def check_command(manifest, clinical):
    """Validate MANIFEST (and a clinical table) and list every problem, one line each.

    Problems of the manifest itself are listed first and stop the check; then every file
    is checked and each bad one listed. Exit status 2 if there is any problem.
    """
    from thaldask.cohort.clinical import validate_clinical
    from thaldask.cohort.manifest import validate

    df = validate(manifest, on_file_error="flag")
    n_bad = _report_files(df)
    if clinical:
        validate_clinical(clinical, manifest=df)
    n_scans = df.groupby(["subject", "timepoint"]).ngroups
    if n_bad:
        click.echo(f"{manifest}: {len(df)} files, {n_scans} scans: {n_bad} file(s) with problems")
        sys.exit(EXIT_BAD_INPUT)
    click.echo(f"{manifest}: {len(df)} files, {n_scans} scans: ok")


COMMANDS = [manifest_group]
