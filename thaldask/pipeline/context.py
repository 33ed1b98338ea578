"""What the stages of one pipeline run share, and the loop that runs them in order."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable

from rich.console import Console
from rich.markup import escape

from thaldask.cluster.client import get_client
from thaldask.errors import SkipStage

__all__ = ["Context", "Stage", "run_stage_list", "print_stage_summaries", "pipeline_client"]


@dataclasses.dataclass
class Context:
    """What the stages share during one pipeline run."""

    out: str  # folder for the outputs (store, tables, README)
    store: str  # cohort store path or URL
    client: object = None  # distributed.Client
    config: dict = dataclasses.field(default_factory=dict)  # per-stage sections (validated)
    manifest: str | None = None
    clinical: str | None = None
    synthetic: bool = False
    progress: bool = True
    outputs: dict = dataclasses.field(default_factory=dict)  # stage name -> what it produced
    timings: dict = dataclasses.field(default_factory=dict)  # stage name -> seconds
    skipped: dict = dataclasses.field(default_factory=dict)  # stage name -> reason

    def section(self, name: str) -> dict:
        """This stage's config section ({} if absent); ``enabled: false`` switches it off."""
        sec = self.config.get(name)
        return dict(sec) if isinstance(sec, dict) else {}

    def enabled(self, name: str, default: bool = True) -> bool:
        sec = self.config.get(name)
        if sec is False:
            return False
        if isinstance(sec, dict):
            return bool(sec.get("enabled", default))
        return default

    def warn(self, message: str) -> None:
        """A warning for the run's summary."""
        self.outputs.setdefault("warnings", []).append(message)


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[[Context], None]
    summary: Callable[[Context, object], None] | None = None  # (ctx, rich console)


def _console():
    return Console(stderr=True)


def run_stage_list(ctx: Context, stages, *, only: list[str] | None = None) -> Context:
    """Run ``stages`` in order (or those named in ``only``) on ``ctx``."""
    console = _console()
    for stage in stages:
        if only is not None and stage.name not in only:
            continue
        if not ctx.enabled(stage.name):
            ctx.skipped[stage.name] = "disabled in the config"
            continue
        t0 = time.perf_counter()
        try:
            if ctx.progress:
                console.print(f"[bold]{stage.name}[/bold] …")
            stage.run(ctx)
        except SkipStage as exc:
            ctx.skipped[stage.name] = str(exc)
            if ctx.progress:
                console.print(f"  {stage.name} skipped: {escape(str(exc))}")
            continue
        ctx.timings[stage.name] = time.perf_counter() - t0
    return ctx


def print_stage_summaries(ctx: Context, stages, console=None) -> None:
    """Each stage's summary section, then the warnings and timings."""
    if console is None:
        console = Console()
        if not console.is_terminal:
            console = Console(width=120)
    for stage in stages:
        if stage.summary is not None and stage.name in ctx.outputs:
            stage.summary(ctx, console)
    for w in ctx.outputs.get("warnings", []):
        console.print(f"warning: {escape(w)}")  # a message is text, not rich markup
    t = ", ".join(f"{k} {v:.1f} s" for k, v in ctx.timings.items())
    console.print(f"stages: {t}")


@contextlib.contextmanager
def pipeline_client(client=None, scheduler=None, cluster_config=None, progress=True):
    """``client`` itself, or a client of :func:`thaldask.cluster.get_client` for the run."""
    if client is not None:
        yield client
        return
    kw = {"cluster_config": cluster_config} if cluster_config is not None else {}
    with get_client(scheduler, quiet=True, **kw) as c:
        if progress:
            _console().print(f"Dask dashboard: {c.dashboard_link}")
        yield c
