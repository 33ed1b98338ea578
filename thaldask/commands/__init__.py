"""The command-line layer: one module per stage, each holding the click commands that wrap
that stage's public functions (listed in its ``COMMANDS``).

These modules import their stage inside each command's body, so that ``thaldask --help``
imports neither dask, torch, zarr nor matplotlib; they are the only modules of thaldask
that import other thaldask modules inside functions. Nothing in thaldask imports them but
:mod:`thaldask.cli`.
"""
