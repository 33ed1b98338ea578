"""CLI: ``thaldask segment-file`` and ``thaldask segment`` (``thaldask train`` is in
:mod:`thaldask.commands.thalnet`)."""

from __future__ import annotations

import click

from thaldask._click import EXIT_SOME_FAILED, fail, handle_errors, scheduler_option

__all__ = ["COMMANDS"]

_GREEDY = ("--contrast", "--ensemble")


class _GreedyCommand(click.Command):
    """Lets ``--contrast T1w FLAIR R1`` take several values (rewritten to repeated options)."""

    def parse_args(self, ctx, args):
        out, current = [], None
        for a in args:
            if a in _GREEDY:
                current = a
                continue
            if a.startswith("-"):
                current = None
                out.append(a)
                continue
            if current is not None:
                out.extend([current, a])
            else:
                out.append(a)
        return super().parse_args(ctx, out)


def _options(pairs) -> dict:
    opts = {}
    for p in pairs:
        if "=" not in p:
            fail(f"--option {p!r}: expected KEY=VALUE")
        k, v = p.split("=", 1)
        opts[k.strip()] = v.strip()
    return opts


_device = click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "cuda"]),
    default=None,
    help="Where the model runs (default: the dask config's thaldask.segment.device, auto).",
)
_option = click.option(
    "--option",
    "option_pairs",
    multiple=True,
    metavar="KEY=VALUE",
    help="Segmenter option (e.g. checkpoint=PATH, label_ids=3 for mindglide); repeatable.",
)


@click.command("segment-file")
@click.argument("inp", metavar="IN", type=click.Path(dir_okay=False))
@click.argument("out", metavar="OUT", type=click.Path(dir_okay=False))
@click.option("--contrast", default="T1w", show_default=True, help="Image contrast (T1w, FLAIR, R1, ...).")
@click.option("--model", default="thalnet", show_default=True, help="Segmenter name.")
@_device
@click.option("--prob", "prob_out", type=click.Path(dir_okay=False), default=None,
              help="Also write left/right probabilities (X, Y, Z, 2) to this NIfTI.")
@_option
@handle_errors
def segment_file_command(inp, out, contrast, model, device, prob_out, option_pairs):
    """Segment left (1) and right (2) thalamus in IN; write the mask on IN's grid to OUT."""
    import time

    from thaldask.segment.api import segment_file

    t0 = time.perf_counter()
    path = segment_file(inp, out, contrast=contrast, device=device, model=model,
                        options=_options(option_pairs), prob_out=prob_out)
    click.echo(f"{path}  ({time.perf_counter() - t0:.1f} s)", err=True)


def _list_segmenters(ctx, _param, value):
    """``--list``: every segmenter, and whether it can run here (and if not, why)."""
    if not value or ctx.resilient_parsing:
        return
    from thaldask.segment.registry import list_segmenters, segmenter_class

    for name in list_segmenters():
        why = segmenter_class(name).unavailable()
        click.echo(f"{name:<20} {'can run here' if not why else 'cannot run here: ' + why}")
    ctx.exit(0)


def _check_runs_here(model, options) -> None:
    from thaldask.errors import SegmenterError
    from thaldask.segment.registry import get_segmenter

    seg = get_segmenter(model, **options)
    why = seg.unavailable_with() if hasattr(seg, "unavailable_with") else seg.unavailable()
    if why:
        raise SegmenterError(f"segmenter {model!r} cannot run here: {why}")


@click.command("segment", cls=_GreedyCommand)
@click.option("--list", "list_", is_flag=True, is_eager=True, expose_value=False,
              callback=_list_segmenters, help="List every segmenter and whether it can run here.")
@click.argument("store")
@click.option("--model", default="thalnet", show_default=True, help="Segmenter name (see --list).")
@click.option("--contrast", "contrasts", multiple=True,
              help="Contrasts to segment, e.g. --contrast T1w FLAIR R1 (multi-channel: T1w+R1).")
@click.option("--ensemble", "ensembles", multiple=True,
              help="Ensembles across contrasts, e.g. --ensemble T1w+FLAIR+R1 T1w+R1.")
@click.option("--ensemble-kind", "kinds", type=click.Choice(["mean", "vote", "both"]), default="both",
              show_default=True, help="Probability averaging (method MODEL), majority vote "
              "(method MODEL-vote) or both.")
@_device
@click.option("--batch-size", default=None, type=click.IntRange(1), help="Scans per task (default: "
              "the dask config's thaldask.segment.batch-size, 1).")
@click.option("--overwrite", is_flag=True, help="Recompute scans that already have a mask.")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
@click.option("--keep-work", is_flag=True, help="External tools: keep every scan's scratch folder "
              "(default: removed when the scan succeeds).")
@_option
@scheduler_option
@handle_errors
def segment_command(store, model, contrasts, ensembles, kinds, device, batch_size, overwrite,
                    no_progress, keep_work, option_pairs, scheduler, cluster_file):
    """Segment every scan of STORE with MODEL; masks and probabilities go into the store."""
    if not contrasts and not ensembles:
        contrasts = ("T1w",)
    from thaldask.cluster import get_client
    from thaldask.segment.stage import segment_store

    ek = ("mean", "vote") if kinds == "both" else (kinds,)
    options = _options(option_pairs)
    if not scheduler and not cluster_file:  # a missing tool: one line, before a cluster starts
        _check_runs_here(model, options)  # (on a cluster, the workers are asked)
    with get_client(scheduler, quiet=True, cluster_config=cluster_file) as client:
        df = segment_store(store, model, list(contrasts), list(ensembles), client=client, device=device,
                           options=options, ensemble_kinds=ek, batch_size=batch_size,
                           overwrite=overwrite, progress=not no_progress, keep_work=keep_work)
    if df.empty:
        click.echo("nothing to do: every requested mask is already in the store", err=True)
        return
    summary = df.groupby(["method", "contrast", "status"]).size().unstack(fill_value=0)
    click.echo(summary.to_string())
    failed = df[df.status == "failed"]
    for _, r in failed.iterrows():
        click.echo(f"thaldask: scan {r.scan} ({r.subject}, {r.timepoint}) {r.method}/{r.contrast}: {r.error}",
                   err=True)
    if len(failed):
        raise SystemExit(EXIT_SOME_FAILED)


COMMANDS = [segment_file_command, segment_command]
