"""Import optional dependencies with an error that names the extra to install."""

from __future__ import annotations

import importlib
from types import ModuleType

from thaldask.errors import MissingDependencyError


def attempt_import(module: str, *, extra: str) -> ModuleType:
    """Import ``module`` or raise :class:`MissingDependencyError` naming ``extra``.

    >>> attempt_import("json", extra="test").__name__
    'json'
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(
            f"{module!r} is required for this feature; install it with "
            f"`pip install 'thaldask[{extra}]'` ({exc})"
        ) from None
