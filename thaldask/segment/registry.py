"""Segmenters by name: the built-ins, entry-point plugins and the per-process model cache.

Built-ins (``thalnet``, ``thalnet-multi``, ``mindglide``) come from
:mod:`thaldask.segment.builtin`; external tools (presets such as ``samseg``, ``freesurfer``,
and tools defined under ``thaldask.segment.tools``) from :mod:`thaldask.segment.presets`,
read from the configuration at each lookup; third-party segmenters through the entry-point group
``thaldask.segmenters`` (value: ``module:Class``), read on first use. A plugin that fails to
import emits :class:`~thaldask.errors.SegmenterImportWarning` and is skipped, never stopping
the pipeline. :func:`loaded_segmenter` loads a model once per process; on a cluster,
:class:`SegmenterPlugin` (a ``distributed.WorkerPlugin``) does it on every worker, so a model
never travels inside a task.
"""

from __future__ import annotations

import json
import threading
import warnings

from thaldask.errors import SegmenterError, SegmenterImportWarning
from thaldask.segment.base import Segmenter
from thaldask.segment.builtin import BUILTIN_SEGMENTERS
from thaldask.segment.external import tool_segmenter_class
from thaldask.segment.presets import tool_definitions

__all__ = [
    "ENTRY_POINT_GROUP",
    "SegmenterPlugin",
    "get_segmenter",
    "segmenter_class",
    "list_segmenters",
    "loaded_segmenter",
    "refresh_segmenters",
    "register_segmenter",
]

ENTRY_POINT_GROUP = "thaldask.segmenters"

_REGISTRY: dict[str, type[Segmenter]] = {cls.name: cls for cls in BUILTIN_SEGMENTERS}
_ENTRY_POINTS_LOADED = False
#: names registered from entry points (forgotten by :func:`refresh_segmenters`)
_FROM_ENTRY_POINTS: set[str] = set()


def register_segmenter(cls: type[Segmenter] | None = None, *, name: str | None = None, replace: bool = False):
    """Register a :class:`Segmenter` subclass (usable as a decorator).

    Raises
    ------
    TypeError
        ``cls`` is not a Segmenter subclass.
    ValueError
        it has no name, or another class is registered under that name and ``replace`` is
        False.
    """

    def deco(c):
        if not (isinstance(c, type) and issubclass(c, Segmenter)):
            raise TypeError(f"{c!r} is not a Segmenter subclass")
        key = name or c.name
        if not key:
            raise ValueError(f"{c.__name__} has no name")
        if key in _REGISTRY and _REGISTRY[key] is not c and not replace:
            raise ValueError(f"a segmenter named {key!r} is already registered ({_REGISTRY[key].__name__})")
        _REGISTRY[key] = c
        return c

    return deco(cls) if cls is not None else deco


def _load_entry_points() -> None:
    global _ENTRY_POINTS_LOADED
    if _ENTRY_POINTS_LOADED:
        return
    _ENTRY_POINTS_LOADED = True
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in _REGISTRY:
            continue
        try:
            cls = ep.load()
            register_segmenter(cls, name=ep.name)
            _FROM_ENTRY_POINTS.add(ep.name)
        except Exception as exc:  # noqa: BLE001 - a broken plugin must never stop the pipeline
            warnings.warn(
                f"segmenter plugin {ep.name!r} ({ep.value}) failed to load and was skipped: "
                f"{type(exc).__name__}: {exc}",
                SegmenterImportWarning,
                stacklevel=3,
            )


def refresh_segmenters() -> list[str]:
    """Forget the entry-point plugins read so far and read the group again (e.g. after
    installing a plugin into a running session); returns every registered name."""
    global _ENTRY_POINTS_LOADED
    for key in _FROM_ENTRY_POINTS:
        _REGISTRY.pop(key, None)
    _FROM_ENTRY_POINTS.clear()
    _ENTRY_POINTS_LOADED = False
    return list_segmenters()


def list_segmenters() -> list[str]:
    """Names of every registered segmenter (built-ins, entry-point plugins, external tools)."""
    _load_entry_points()
    return sorted(set(_REGISTRY) | set(tool_definitions()))


def segmenter_class(name: str) -> type[Segmenter]:
    """The class registered as ``name``.

    Raises
    ------
    SegmenterError
        no segmenter of that name.
    """
    if name not in _REGISTRY:
        _load_entry_points()
    if name not in _REGISTRY:
        if name in tool_definitions():
            return tool_segmenter_class(name)
        raise SegmenterError(f"unknown segmenter {name!r}; available: {', '.join(list_segmenters())}")
    return _REGISTRY[name]


def get_segmenter(name: str, **options) -> Segmenter:
    """A new (not yet loaded) instance of the segmenter ``name``.

    Raises
    ------
    SegmenterError
        no segmenter of that name.
    """
    return segmenter_class(name)(**options)


# ---------------------------------------------------------------- loaded models

_LOADED: dict[str, Segmenter] = {}
_LOAD_LOCK = threading.Lock()
#: how many times this process loaded a model (a worker should load each model once)
LOAD_COUNT = 0


def _key(model: str, options: dict, device: str) -> str:
    return json.dumps([model, options or {}, device], sort_keys=True, default=str)


def loaded_segmenter(model: str, options: dict | None = None, device: str = "auto") -> Segmenter:
    """The segmenter ``model`` loaded in this process (loaded on first use, then cached)."""
    k = _key(model, options or {}, device)
    with _LOAD_LOCK:
        seg = _LOADED.get(k)
        if seg is None:
            global LOAD_COUNT
            seg = get_segmenter(model, **(options or {}))
            seg.load(device)
            _LOADED[k] = seg
            LOAD_COUNT += 1
        return seg


try:
    from distributed.diagnostics.plugin import WorkerPlugin as _WorkerPluginBase
except ImportError:  # pragma: no cover - distributed is a core dependency
    _WorkerPluginBase = object


class SegmenterPlugin(_WorkerPluginBase):
    """Loads a segmenter once on every worker (present and future) of a cluster.

    A load failure is kept and raised again by the first task that needs the model, so the
    error reaches the user as a task error with its message.
    """

    def __init__(self, model: str, options: dict | None = None, device: str = "auto"):
        self.model = model
        self.options = dict(options or {})
        self.device = device
        self.name = "thaldask-segmenter-" + _key(model, self.options, device)

    def setup(self, worker=None):
        try:
            loaded_segmenter(self.model, self.options, self.device)
        except Exception:  # noqa: BLE001 - reported by the task that needs the model
            pass

    def teardown(self, worker=None):
        _LOADED.pop(_key(self.model, self.options, self.device), None)
