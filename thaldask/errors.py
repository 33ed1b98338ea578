"""Every exception and warning that thaldask raises.

One base class, :class:`ThaldaskError`; each subclass also inherits the builtin a caller
would naturally catch, so ``except FileNotFoundError`` keeps working around thaldask calls.
Messages say what was wrong, what was received, what is allowed, and name the file (and the
manifest row where there is one).
"""

from __future__ import annotations

__all__ = [
    "ThaldaskError",
    "ManifestError",
    "ClinicalTableError",
    "LabelConventionError",
    "ScanError",
    "GridMismatchError",
    "StoreError",
    "StoreNotFoundError",
    "StoreConflictError",
    "StoreBusyError",
    "NotAStoreError",
    "SegmenterError",
    "ExternalToolError",
    "ModelWeightsError",
    "MissingDependencyError",
    "ConfigError",
    "OutputError",
    "OutputExistsError",
    "StatsError",
    "SkipStage",
    "StatsStageWarning",
    "ThaldaskWarning",
    "SmallSiteWarning",
    "ConvergenceWarning",
    "SegmenterImportWarning",
]


class ThaldaskError(Exception):
    """Base class of every error raised by thaldask."""


class ManifestError(ThaldaskError, ValueError):
    """The cohort manifest is malformed.

    ``problems`` holds every problem found (one line each), so a user sees all of them at once.
    """

    def __init__(self, message: str, problems: list[str] | None = None):
        super().__init__(message)
        self.problems = list(problems or [message])


class ClinicalTableError(ThaldaskError, ValueError):
    """The clinical table is malformed (``problems`` lists every problem found)."""

    def __init__(self, message: str, problems: list[str] | None = None):
        super().__init__(message)
        self.problems = list(problems or [message])


class LabelConventionError(ThaldaskError, ValueError):
    """A label convention is unknown, or a mask holds labels its convention does not allow."""


class ScanError(ThaldaskError, ValueError):
    """One scan cannot be used (unreadable, wrong dimensionality, NaN-filled, ...)."""


class GridMismatchError(ScanError):
    """A mask and its image do not share (or do not overlap) a voxel grid."""


class StoreError(ThaldaskError, OSError):
    """The cohort store is malformed or cannot be written."""


class StoreNotFoundError(StoreError, FileNotFoundError):
    """No cohort store exists at the given path."""


class StoreConflictError(StoreError, FileExistsError):
    """Writing would overwrite different content already in the store."""


class NotAStoreError(StoreError, FileExistsError):
    """The target path exists and holds something other than a thaldask store.

    thaldask creates a store only in a new or empty folder, and writes only inside a folder
    that carries its own store marker: it never deletes or overwrites anything else."""


class StoreBusyError(StoreError, BlockingIOError):
    """Another process is writing the store (it holds the store's lock)."""


class SegmenterError(ThaldaskError, RuntimeError):
    """A segmentation method cannot be loaded or run."""


class ExternalToolError(SegmenterError):
    """An external segmentation tool failed on one scan (exit status, timeout, output)."""


class ModelWeightsError(SegmenterError):
    """Model weights are missing or fail their hash check."""


class MissingDependencyError(ThaldaskError, ImportError):
    """An optional package is needed; the message names the extra to install."""


class ConfigError(ThaldaskError, ValueError):
    """A configuration file or section is invalid."""


class OutputError(ThaldaskError, OSError):
    """An output path cannot be written (missing or read-only folder, a file in the way)."""


class OutputExistsError(OutputError, FileExistsError):
    """Writing would replace a file that thaldask did not write."""


class StatsError(ThaldaskError, ValueError):
    """A statistical model cannot be fitted on the data given."""


class SkipStage(ThaldaskError):
    """A pipeline stage has nothing to do; its reason is printed and the run goes on."""


class ThaldaskWarning(UserWarning):
    """Base class of every warning emitted by thaldask."""


class StatsStageWarning(ThaldaskWarning):
    """One analysis of the statistical stage could not run; its table says why."""


class SmallSiteWarning(ThaldaskWarning):
    """A site has too few subjects for a stable harmonisation estimate."""


class ConvergenceWarning(ThaldaskWarning):
    """A statistical model did not converge; its row is flagged in the output table."""


class SegmenterImportWarning(ThaldaskWarning):
    """A third-party segmenter plugin failed to import and was skipped."""
