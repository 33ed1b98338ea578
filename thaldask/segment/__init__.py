"""Segmentation runtime: segmenter plugins, their registry, the Dask stage, one-scan calls.

The built-in model and how it is made live in :mod:`thaldask.thalnet`; importing this
package does not import torch.

>>> from thaldask.segment import list_segmenters
>>> "thalnet" in list_segmenters()
True
"""

from thaldask.segment.api import segment_file, segment_image
from thaldask.segment.base import Prediction, Segmenter
from thaldask.segment.registry import (
    SegmenterPlugin,
    get_segmenter,
    list_segmenters,
    refresh_segmenters,
    register_segmenter,
)
from thaldask.segment.stage import segment_store

__all__ = [
    "Prediction",
    "Segmenter",
    "SegmenterPlugin",
    "get_segmenter",
    "list_segmenters",
    "refresh_segmenters",
    "register_segmenter",
    "segment_file",
    "segment_image",
    "segment_store",
]
