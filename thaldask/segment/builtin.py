"""Built-in segmenters: ``thalnet``, ``thalnet-multi`` and the ``mindglide`` adapter.

:data:`BUILTIN_SEGMENTERS` is what :mod:`thaldask.segment.registry` starts from. The model
itself (torch) lives in :mod:`thaldask.thalnet` and loads in :meth:`Segmenter.load`, so
importing this module stays light.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
import threading

import numpy as np

from thaldask.errors import MissingDependencyError, ModelWeightsError, ScanError, SegmenterError
from thaldask.segment.base import Prediction, Segmenter
from thaldask.thalnet.assets import SLOTS, weights_path

__all__ = ["BUILTIN_SEGMENTERS", "ThalNetSegmenter", "ThalNetMultiSegmenter", "MindGlideSegmenter"]

_LOCK = threading.Lock()


class ThalNetSegmenter(Segmenter):
    """The built-in model on one contrast of any kind (T1w, FLAIR, R1, ...).

    Options
    -------
    weights : path, optional
        Other weights (e.g. from ``thaldask train``); default: the shipped ones.
    tta : bool
        Average with the left-right mirrored prediction (default True).
    shift_tta : int, optional
        ROI boxes of the final pass, shifted by half voxels of the 1.5 mm ROI grid, averaged
        on the input grid (default: ``thaldask.thalnet.shift-tta``).
    threads : int, optional
        torch intra-op threads on CPU.
    """

    name = "thalnet"
    contrasts = None
    multi_channel = False

    @classmethod
    def unavailable(cls) -> str:
        if importlib.util.find_spec("torch") is None:
            return "the torch package is not installed (pip install torch)"
        if not weights_path().is_file():
            return f"its weights {weights_path()} are missing from the installation"
        return ""

    def load(self, device: str = "auto") -> None:
        import torch

        from thaldask.thalnet.inference import load_thalnet  # torch: loaded with the model

        threads = self.options.get("threads")
        if threads:
            torch.set_num_threads(int(threads))
        shift = self.options.get("shift_tta")
        self.model = load_thalnet(device, path=self.options.get("weights"), tta=self.options.get("tta", True),
                                  shift_tta=None if shift is None else int(shift))
        self.device = str(self.model.device)

    def _channels(self, image, parts):
        return [np.asarray(image)] + [None, None]

    def predict(self, image, affine, *, contrast: str = "T1w") -> Prediction:
        if getattr(self, "model", None) is None:
            raise SegmenterError(f"segmenter {self.name!r} used before load()")
        parts = self.check_contrast(contrast)
        channels = self._channels(image, parts)
        with _LOCK:  # one scan at a time per process: torch already uses every thread
            out = self.model.predict(channels, affine)
        return Prediction(out["labels"], out["prob"], out["volume_sd"])


class ThalNetMultiSegmenter(ThalNetSegmenter):
    """The built-in model on several co-registered contrasts at once.

    ``predict`` takes an array (C, X, Y, Z) whose channels are named by ``contrast``
    (e.g. ``"T1w+FLAIR+R1"``, ``"T1w+R1"``); each goes to its slot (T1w, FLAIR, R1), missing
    slots are zeroed. A single 3D image is accepted too (one channel).
    """

    name = "thalnet-multi"
    contrasts = ("T1w", "FLAIR", "R1")
    multi_channel = True

    def _channels(self, image, parts):
        arr = np.asarray(image)
        if arr.ndim == 3:
            arr = arr[None]
        if arr.ndim != 4 or arr.shape[0] != len(parts):
            raise ScanError(
                f"thalnet-multi: contrast {'+'.join(parts)!r} names {len(parts)} channels but the "
                f"image has shape {arr.shape}"
            )
        if len(set(parts)) != len(parts):
            raise SegmenterError(f"thalnet-multi: contrast {'+'.join(parts)!r} repeats a channel")
        channels = [None] * len(SLOTS)
        for p, a in zip(parts, arr, strict=False):
            channels[SLOTS.index(p)] = a
        return channels


def _split_sides(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Binary mask -> 1 left / 2 right: the two largest components by world x, else the
    mask's own mid-sagittal plane (its world-x centroid)."""
    from scipy import ndimage

    m = mask > 0
    out = np.zeros(m.shape, dtype=np.uint8)
    if not m.any():
        return out
    lab, n = ndimage.label(m)
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    ijk = np.argwhere(m)
    x = (ijk @ affine[:3, :3].T + affine[:3, 3])[:, 0]
    comp = lab[m]
    if n >= 2:
        a, b = np.argsort(sizes)[::-1][:2]
        if sizes[b] > 0.3 * sizes[a]:
            xa, xb = x[comp == a].mean(), x[comp == b].mean()
            left, right = (a, b) if xa < xb else (b, a)
            out[lab == left] = 1
            out[lab == right] = 2
            return out
    mid = x.mean()
    out[tuple(ijk.T)] = np.where(x > mid, 2, 1).astype(np.uint8)
    return out


class MindGlideSegmenter(Segmenter):

    """Adapter for MindGlide (``pip install mindglide``) with a local checkpoint.

    MindGlide's released labels include deep grey matter, not the thalamus, so the label ids
    to keep are required; they are split into left/right by position.

    Options
    -------
    checkpoint : path
        The ``.pt`` checkpoint (no download is attempted).
    label_ids : sequence of int or str like ``"3"`` / ``"3,19"``
        MindGlide output labels that make up the thalamus.
    sw_batch_size : int
        Sliding-window batch (MindGlide's default 4).
    random_weights : bool
        Use randomly initialised weights (benchmarks only: speed does not depend on them).
    """

    name = "mindglide"

    @classmethod
    def unavailable(cls) -> str:
        if importlib.util.find_spec("mindglide") is None:
            return "the mindglide package is not installed (pip install 'thaldask[mindglide]')"
        return ""

    contrasts = None

    def __init__(self, **options):
        super().__init__(**options)
        ids = options.get("label_ids")
        if isinstance(ids, str):
            ids = [int(v) for v in ids.replace(" ", "").split(",") if v]
        self.label_ids = tuple(int(v) for v in ids) if ids else ()

    def load(self, device: str = "auto") -> None:
        try:
            import mindglide  # noqa: F401
            from mindglide.network import get_network
        except ImportError:
            raise MissingDependencyError(
                "segmenter 'mindglide' needs the mindglide package: pip install 'thaldask[mindglide]'"
            ) from None
        from thaldask.thalnet.inference import resolve_device  # torch: loaded with the model

        if not self.label_ids:
            raise SegmenterError(
                "segmenter 'mindglide' needs label ids to keep (its labels have deep grey matter, "
                "not thalamus): pass label_ids, e.g. --option label_ids=3"
            )
        ckpt = self.options.get("checkpoint")
        random_weights = bool(self.options.get("random_weights", False))
        if not random_weights:
            if not ckpt:
                raise ModelWeightsError(
                    "segmenter 'mindglide' needs a local checkpoint: pass checkpoint=PATH "
                    "(--option checkpoint=PATH)"
                )
            if not os.path.isfile(ckpt):
                raise ModelWeightsError(f"{ckpt}: MindGlide checkpoint not found")
        dev = resolve_device(device)
        self.net = get_network(dev, checkpoint_path=None if random_weights else ckpt).eval()
        self.device = str(dev)

    def predict(self, image, affine, *, contrast: str = "T1w") -> Prediction:
        import nibabel as nib
        import torch
        from mindglide.consts import PATCH_SIZE, PROPERTIES
        from mindglide.transforms import get_transforms, recovery_prediction
        from monai.inferers import SlidingWindowInferer

        self.check_contrast(contrast)
        if getattr(self, "net", None) is None:
            raise SegmenterError("segmenter 'mindglide' used before load()")
        arr = np.asarray(image, dtype=np.float32)
        n_class = len(PROPERTIES["labels"])
        with tempfile.TemporaryDirectory(prefix="thaldask-mg-") as tmp:
            path = os.path.join(tmp, "scan.nii.gz")
            nib.save(nib.Nifti1Image(arr, np.asarray(affine, float)), path)
            d = get_transforms()({"image": path})
        inferer = SlidingWindowInferer(
            roi_size=PATCH_SIZE,
            sw_batch_size=int(self.options.get("sw_batch_size", 4)),
            overlap=0.5,
            mode="gaussian",
        )
        with torch.inference_mode():
            x = torch.as_tensor(np.asarray(d["image"]))[None].to(self.device)
            out = inferer(x, self.net)
            if isinstance(out, (list, tuple)):
                out = out[0]
            pred = out[0].argmax(0).cpu().numpy()
        if d["resample_flag"]:
            onehot = np.stack([pred == k for k in range(n_class)]).astype(np.uint8)
            pred = recovery_prediction(onehot, [n_class, *d["crop_shape"]], d["anisotropy_flag"]).argmax(0)
        full = np.zeros(tuple(d["original_shape"]), dtype=np.uint8)
        (h0, w0, d0), (h1, w1, d1) = d["bbox"]
        full[h0:h1, w0:w1, d0:d1] = np.isin(pred, self.label_ids)
        # back from MindGlide's RAS grid to the input grid
        ornt_in = nib.orientations.io_orientation(np.asarray(affine, float))
        ornt_ras = nib.orientations.axcodes2ornt(("R", "A", "S"))
        back = nib.orientations.ornt_transform(ornt_ras, ornt_in)
        full = nib.orientations.apply_orientation(full, back).astype(np.uint8)
        if full.shape != arr.shape:
            raise ScanError(f"mindglide output shape {full.shape} differs from the input {arr.shape}")
        return Prediction(_split_sides(full, np.asarray(affine, float)), None)


BUILTIN_SEGMENTERS = (ThalNetSegmenter, ThalNetMultiSegmenter, MindGlideSegmenter)
