"""Segmentation stage: the built-in thalnet models, segmenter plugins, and the Dask stage.

>>> from thaldask.segment import list_segmenters
>>> "thalnet" in list_segmenters()
True
"""

from thaldask.segment.api import segment_file, segment_image
from thaldask.segment.base import (
    Prediction,
    Segmenter,
    get_segmenter,
    list_segmenters,
    register_segmenter,
)
from thaldask.segment.stage import SegmenterPlugin, segment_store

__all__ = [
    "Prediction",
    "Segmenter",
    "SegmenterPlugin",
    "get_segmenter",
    "list_segmenters",
    "register_segmenter",
    "segment_file",
    "segment_image",
    "segment_store",
]
