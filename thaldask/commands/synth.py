"""``thaldask synth``: write a synthetic cohort."""

from __future__ import annotations

import click

from thaldask._click import handle_errors, scheduler_option


@click.command("synth")
@click.option(
    "--out",
    "out",
    required=True,
    type=click.Path(file_okay=False),
    help="Folder to write the cohort into (created).",
)
@click.option(
    "--subjects",
    "n_subjects",
    default=20,
    show_default=True,
    type=click.IntRange(1),
    help="Number of subjects.",
)
@click.option(
    "--timepoints",
    "n_timepoints",
    default=2,
    show_default=True,
    type=click.IntRange(1),
    help="Visits per subject (baseline, m12, m24, ...).",
)
@click.option(
    "--sites",
    "n_sites",
    default=2,
    show_default=True,
    type=click.IntRange(1),
    help="Acquisition sites (each with its own voxel size, scale, bias, noise).",
)
@click.option(
    "--seed",
    default=0,
    show_default=True,
    type=click.IntRange(0),
    help="Random seed; the same seed writes the same bytes.",
)
@click.option(
    "--shape",
    type=click.Choice(["small", "full", "tiny"]),
    default="small",
    show_default=True,
    help="small: 72x80x64 mm around the deep grey matter; full: whole 1 mm heads; "
    "tiny: the thalami only (tests).",
)
@click.option(
    "--gt-fraction",
    type=click.FloatRange(0, 1),
    default=0.5,
    show_default=True,
    help="Share of patients with manual ground truth at baseline.",
)
@click.option(
    "--rescan-fraction",
    type=click.FloatRange(0, 1),
    default=0.0,
    show_default=True,
    help="Share of subjects given a same-day scan-rescan repeat of each visit in "
    "--rescan-timepoints (timepoint '<visit>-rescan', clinical column repeat_of).",
)
@click.option(
    "--rescan-timepoints",
    default="baseline",
    show_default=True,
    help="Comma-separated visits that are repeated.",
)
@click.option(
    "--rescan-other-site",
    type=click.FloatRange(0, 1),
    default=0.0,
    show_default=True,
    help="Share of repeats acquired with another site's scanner settings.",
)
@click.option("--local", is_flag=True, help="Render in this process instead of on a Dask cluster.")
@scheduler_option
@handle_errors
def synth(
    out, n_subjects, n_timepoints, n_sites, seed, shape, gt_fraction, rescan_fraction,
    rescan_timepoints, rescan_other_site, local, scheduler, cluster_file
):
    """Write a synthetic cohort with planted truths: NIfTI/MGZ, manifest, clinical table, truth.json."""
    from thaldask.synth import make_cohort

    kwargs = dict(
        n_subjects=n_subjects,
        n_timepoints=n_timepoints,
        n_sites=n_sites,
        seed=seed,
        shape=shape,
        gt_fraction=gt_fraction,
    )
    if rescan_fraction > 0:
        kwargs["params"] = {"repeats": {
            "fraction": rescan_fraction,
            "timepoints": [t.strip() for t in rescan_timepoints.split(",") if t.strip()],
            "other_site_fraction": rescan_other_site,
        }}
    if local:
        res = make_cohort(out, **kwargs)
    else:
        from thaldask.cluster import get_client

        with get_client(scheduler, quiet=True) as client:
            res = make_cohort(out, client=client, **kwargs)
    click.echo(
        f"wrote {res.n_scans} scans of {n_subjects} subjects to {res.out} "
        f"(manifest {res.manifest.name}, clinical {res.clinical.name}, truth {res.truth.name})"
    )


COMMANDS = [synth]
