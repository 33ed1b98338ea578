"""``thaldask manifest ...``: build and check cohort manifests."""

from __future__ import annotations

import click

from thaldask._click import handle_errors


@click.group("manifest")
def manifest_group():
    """Build or check a cohort manifest."""


@manifest_group.command("from-bids")
@click.argument("root", type=click.Path(exists=True, file_okay=False))
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Manifest CSV to write.")
@click.option("--labels", "labels", multiple=True, metavar="METHOD=SPEC",
              help="Label convention of a derivatives method, e.g. manual=binary (repeatable).")
@click.option("--no-check", is_flag=True, help="Write without validating the files.")
@handle_errors
def from_bids_command(root, out, labels, no_check):
    """Manifest of a BIDS dataset ROOT (raw anat images and derivatives/<method>/ masks)."""
    from thaldask.cohort.bids import manifest_from_bids, write_manifest
    from thaldask.cohort.manifest import validate
    from thaldask.errors import ManifestError

    spec = {}
    for item in labels:
        k, sep, v = item.partition("=")
        if not sep or not k or not v:
            raise ManifestError(f"--labels {item!r}: expected METHOD=SPEC, e.g. manual=binary")
        spec[k.strip()] = v.strip()
    df = manifest_from_bids(root, labels=spec)
    path = write_manifest(df, out)
    n_img = int((df["kind"] == "image").sum())
    click.echo(f"{path}: {n_img} images, {len(df) - n_img} masks, "
               f"{df.groupby(['subject', 'timepoint']).ngroups} scans")
    if not no_check:
        validate(path)


@manifest_group.command("check")
@click.argument("manifest", type=click.Path(exists=True, dir_okay=False))
@click.option("--clinical", type=click.Path(exists=True, dir_okay=False), default=None)
@handle_errors
def check_command(manifest, clinical):
    """Validate MANIFEST (and a clinical table) and list every problem."""
    from thaldask.cohort.clinical import validate_clinical
    from thaldask.cohort.manifest import validate

    df = validate(manifest)
    if clinical:
        validate_clinical(clinical, manifest=df)
    click.echo(f"{manifest}: {len(df)} files, {df.groupby(['subject', 'timepoint']).ngroups} scans: ok")


COMMANDS = [manifest_group]
