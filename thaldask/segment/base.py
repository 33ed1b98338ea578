"""The segmenter base class: what every segmentation method (built-in or plugin) implements.

A segmenter is a class with a ``name``, ``load(device)`` (called once per process or Dask
worker) and ``predict(image, affine, *, contrast)`` returning labels 0/1/2 on the input grid
(and optionally left/right probabilities). :mod:`thaldask.segment.registry` finds them by
name.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from thaldask.errors import SegmenterError

__all__ = ["Prediction", "Segmenter", "split_contrast"]


def split_contrast(contrast: str) -> list[str]:
    """``"T1w+FLAIR+R1"`` -> ``["T1w", "FLAIR", "R1"]``."""
    parts = [p.strip() for p in str(contrast).split("+")]
    if not parts or any(not p for p in parts):
        raise SegmenterError(f"contrast {contrast!r} is malformed; expected e.g. 'T1w' or 'T1w+FLAIR+R1'")
    return parts


@dataclass
class Prediction:
    """Output of :meth:`Segmenter.predict`.

    labels : uint8 array (X, Y, Z), 0 background / 1 left / 2 right thalamus, input grid.
    prob : float32 array (2, X, Y, Z) of left/right probabilities, or None.
    volume_sd : float array (2,) or None
        The segmenter's own uncertainty of the left and right volume, in mm^3 (one standard
        deviation; for example the spread of test-time augmentations), or None when it has
        none. Stored with the mask; quality control flags scans with a large one.
    """

    labels: np.ndarray
    prob: np.ndarray | None = None
    volume_sd: np.ndarray | None = None


class Segmenter:
    """Base class of segmentation methods.

    Subclasses set ``name`` and implement :meth:`load` and :meth:`predict`. ``multi_channel``
    segmenters take several co-registered contrasts at once: ``predict`` then receives an
    array (C, X, Y, Z) and a contrast such as ``"T1w+R1"`` naming its channels in order.

    Attributes
    ----------
    name : str
        Registry name; also the method name under which masks are stored.
    contrasts : tuple of str or None
        Contrasts it accepts (None: any).
    multi_channel : bool
        Takes several contrasts at once.
    """

    name: str = ""
    contrasts: tuple[str, ...] | None = None
    multi_channel: bool = False

    def __init__(self, **options):
        self.options = options
        self.device = None

    @classmethod
    def unavailable(cls) -> str:
        """Why this segmenter cannot run on this machine ("" when it can), in one line:
        a package, program, image or licence file missing. Cheap: nothing is loaded."""
        return ""

    def load(self, device: str = "auto") -> None:
        """Load weights onto ``device`` (``"auto"``, ``"cpu"``, ``"cuda"``); called once."""
        raise NotImplementedError

    def predict(self, image: np.ndarray, affine: np.ndarray, *, contrast: str) -> Prediction:
        """Segment one scan; ``affine`` maps voxels to world (RAS mm) coordinates."""
        raise NotImplementedError

    def check_contrast(self, contrast: str) -> list[str]:
        """Validate ``contrast`` for this segmenter and return its parts."""
        parts = split_contrast(contrast)
        if len(parts) > 1 and not self.multi_channel:
            raise SegmenterError(
                f"segmenter {self.name!r} takes one contrast; got {contrast!r} "
                "(use an ensemble, or a multi-channel model such as 'thalnet-multi')"
            )
        if self.contrasts is not None:
            bad = [p for p in parts if p not in self.contrasts]
            if bad:
                raise SegmenterError(
                    f"segmenter {self.name!r} does not accept contrast {bad[0]!r}; "
                    f"allowed: {', '.join(self.contrasts)}"
                )
        return parts

    @property
    def uses_cuda(self) -> bool:
        return self.device is not None and str(self.device).startswith("cuda")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} device={self.device}>"
