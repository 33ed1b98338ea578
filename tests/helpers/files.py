"""Small file writers used across the test directories."""

from __future__ import annotations

import os

import nibabel as nib
import numpy as np

# columns of a thaldask manifest, in order
HEADER = "subject,timepoint,site,kind,contrast,method,labels,path"


def write_nifti(path, data, affine=None, *, makedirs=False, **hdr_fields):
    """Save ``data`` as NIfTI-1 at ``path`` (``affine`` default identity); header fields
    given as keywords are set on the header. Returns ``str(path)``."""
    path = str(path)
    if makedirs:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    img = nib.Nifti1Image(data, np.eye(4) if affine is None else affine)
    for k, v in hdr_fields.items():
        img.header[k] = v
    nib.save(img, path)
    return path
