"""CLI: ``thaldask tools install NAME``: build an external tool's own environment."""

from __future__ import annotations

import click

from thaldask._click import handle_errors

__all__ = ["COMMANDS", "tools"]


@click.group()
def tools():
    """External segmentation tools (see `thaldask segment --list`)."""


@tools.command("install")
@click.argument("name")
@click.option("--prefix", type=click.Path(file_okay=False), default=None,
              help="Folder of the environment (default: the tools folder, "
              "~/.local/share/thaldask/tools/NAME or $THALDASK_TOOLS/NAME).")
@click.option("--python", "python", default=None, help="Interpreter of the environment "
              "(default: python3.11, else python3.10).")
@click.option("--timeout", default=1800.0, show_default=True, type=click.FloatRange(1),
              help="Seconds before the build is stopped.")
@handle_errors
def install(name, prefix, python, timeout):
    """Build tool NAME's environment (samseg: a Python 3.11 venv with samseg and numpy<2)."""
    from thaldask.segment.install import install_tool

    exe = install_tool(name, prefix, python=python, timeout=timeout, echo=lambda m: click.echo(m, err=True))
    click.echo(str(exe))


COMMANDS = [tools]
