"""Label conventions: every mask becomes 0 background, 1 left, 2 right thalamus.

A convention is a name from :data:`CONVENTIONS` or an explicit id list:

- ``"binary"``: any non-zero voxel is thalamus (1); sides are split only when asked
  (:func:`split_binary_by_midline`).
- ``"freesurfer"``, ``"synthseg"``, ``"first"``: 10 = left, 49 = right thalamus.
- ``"dbsegment"``: the whole thalamus is thalamus proper plus its VPL and VIM nuclei:
  left {24, 26, 30}, right {25, 27, 31}.
- ``"mindglide"``: released models carry no thalamus label, so ids must be given
  explicitly (``"mindglide:L:5;R:6"`` or plain ``"L:5;R:6"``).
- explicit ids: ``"L:10;R:49"`` (sides known), ``"10,49"`` (first id left, second right),
  ``"L:24,26,30;R:25,27,31"`` (several ids per side) or ``"7"`` (one id: binary thalamus).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from thaldask.errors import LabelConventionError

__all__ = [
    "CONVENTIONS",
    "LEFT",
    "RIGHT",
    "LabelConvention",
    "parse_labels",
    "to_sides",
    "from_sides",
    "detect_convention",
    "label_values",
    "check_sides",
    "MAX_MASK_LABELS",
    "split_binary_by_midline",
]

LEFT, RIGHT = 1, 2

#: built-in conventions: name -> (left ids, right ids); ``None`` means binary
CONVENTIONS: dict[str, tuple[tuple[int, ...], tuple[int, ...]] | None] = {
    "binary": None,
    "freesurfer": ((10,), (49,)),
    "synthseg": ((10,), (49,)),
    "first": ((10,), (49,)),
    "aseg": ((10,), (49,)),
    "dbsegment": ((24, 26, 30), (25, 27, 31)),
}

_NEEDS_IDS = {"mindglide"}

#: most distinct non-zero values a label mask may hold. Whole-brain label maps in use stay
#: well below it (FreeSurfer aseg ~45 labels, aparc+aseg ~110, aparc.a2009s+aseg ~190);
#: an MR intensity image, even an integer one, holds hundreds to thousands of values.
MAX_MASK_LABELS = 255


@dataclass(frozen=True)
class LabelConvention:
    """Which label ids mean left and right thalamus in a mask file.

    ``left``/``right`` are empty for binary conventions (``binary=True``), where every id
    in ``ids`` (or any non-zero voxel if ``ids`` is empty) is thalamus without side.
    """

    name: str
    left: tuple[int, ...] = ()
    right: tuple[int, ...] = ()
    binary: bool = False
    ids: tuple[int, ...] = ()

    @property
    def spec(self) -> str:
        """The string that parses back to this convention."""
        if self.name in CONVENTIONS:
            return self.name
        if self.binary:
            return ",".join(map(str, self.ids)) if self.ids else "binary"
        return f"L:{','.join(map(str, self.left))};R:{','.join(map(str, self.right))}"


def _ints(text: str, spec: str) -> tuple[int, ...]:
    try:
        out = tuple(int(t) for t in text.split(",") if t.strip() != "")
    except ValueError:
        raise LabelConventionError(
            f"label convention {spec!r}: {text!r} is not a comma-separated list of integer ids"
        ) from None
    if not out:
        raise LabelConventionError(f"label convention {spec!r}: no label ids given")
    if any(i <= 0 or i > 65535 for i in out):
        raise LabelConventionError(f"label convention {spec!r}: ids must be in 1..65535")
    return out


def parse_labels(spec: str | LabelConvention) -> LabelConvention:
    """Parse a manifest ``labels`` value.

    >>> parse_labels("freesurfer").left, parse_labels("freesurfer").right
    ((10,), (49,))
    >>> parse_labels("L:24,26,30;R:25,27,31").right
    (25, 27, 31)
    >>> parse_labels("10,49").left
    (10,)
    """
    if isinstance(spec, LabelConvention):
        return spec
    if spec is None or (isinstance(spec, float) and np.isnan(spec)):
        raise LabelConventionError("label convention is empty; give a name or explicit ids")
    s = str(spec).strip()
    low = s.lower()
    if low in CONVENTIONS:
        sides = CONVENTIONS[low]
        if sides is None:
            return LabelConvention("binary", binary=True)
        return LabelConvention(low, left=sides[0], right=sides[1])
    if low in _NEEDS_IDS:
        raise LabelConventionError(
            f"label convention {s!r} has no thalamus label in its released models; "
            f"give explicit ids, e.g. '{low}:L:5;R:6' or 'L:5;R:6'"
        )
    prefix, _, rest = s.partition(":")
    if prefix.lower() in _NEEDS_IDS and rest:
        inner = parse_labels(rest)
        return LabelConvention(prefix.lower() + ":" + inner.spec, inner.left, inner.right, inner.binary, inner.ids)
    m = re.fullmatch(r"\s*L\s*:\s*([\d,\s]+);\s*R\s*:\s*([\d,\s]+)\s*", s, flags=re.I)
    if m:
        left, right = _ints(m.group(1), s), _ints(m.group(2), s)
        if set(left) & set(right):
            raise LabelConventionError(f"label convention {s!r}: an id is both left and right")
        return LabelConvention(s, left=left, right=right)
    if re.fullmatch(r"[\d,\s]+", s):
        ids = _ints(s, s)
        if len(ids) == 1:
            return LabelConvention(s, binary=True, ids=ids)
        if len(ids) == 2:
            return LabelConvention(s, left=(ids[0],), right=(ids[1],))
        raise LabelConventionError(
            f"label convention {s!r}: a plain id list needs one id (binary) or two (left,right); "
            "for several ids per side write 'L:a,b;R:c,d'"
        )
    raise LabelConventionError(
        f"unknown label convention {s!r}; allowed: {', '.join(CONVENTIONS)}, 'mindglide:L:..;R:..', "
        "or explicit ids like 'L:10;R:49' or '10,49'"
    )


def to_sides(
    mask: np.ndarray, labels: str | LabelConvention, *, strict: bool = False, where: str = ""
) -> np.ndarray:
    """Map a mask in its own label convention to uint8 0/1/2 (binary: 0/1).

    Parameters
    ----------
    mask : array of integers (any shape)
    labels : convention name, id spec or :class:`LabelConvention`
    strict : if True, the mask must be a label mask (:func:`label_values`), a binary mask
        must contain only 0 and 1 (or its ids), and a sided convention must find both sides
        (:func:`check_sides`); ids of other structures (FreeSurfer/DBSegment files carry
        many labels) are simply dropped.
    where : prefix of error messages naming the file and row (with ``strict``)

    Returns
    -------
    numpy.ndarray of uint8, same shape, 0 background, 1 left, 2 right (binary: 1 thalamus).

    >>> to_sides(np.array([0, 10, 49, 17]), "freesurfer").tolist()
    [0, 1, 2, 0]
    >>> to_sides(np.array([0, 24, 27, 30]), "dbsegment").tolist()
    [0, 1, 2, 1]
    """
    conv = parse_labels(labels)
    m = np.asarray(mask)
    if strict:
        found = label_values(m, where=where)
        if not conv.binary or conv.ids:
            check_sides(found, conv, where=where)
    if m.dtype.kind == "f":
        if not np.all(np.isfinite(m)) or not np.all(m == np.round(m)):
            raise LabelConventionError(f"{where}mask holds non-integer values")
        m = m.astype(np.int64)
    if conv.binary:
        if conv.ids:
            return np.isin(m, conv.ids).astype(np.uint8)
        if strict:
            bad = [v for v in found if v not in (0, 1)]
            if bad:
                raise LabelConventionError(
                    f"{where}binary mask holds labels {bad[:5]}; allowed 0 and 1"
                )
        return (m != 0).astype(np.uint8)
    out = np.zeros(m.shape, dtype=np.uint8)
    out[np.isin(m, conv.left)] = LEFT
    out[np.isin(m, conv.right)] = RIGHT
    return out


def from_sides(sides: np.ndarray, labels: str | LabelConvention, *, dtype=None) -> np.ndarray:
    """Inverse of :func:`to_sides`: write 0/1/2 with a convention's first id per side.

    >>> from_sides(np.array([0, 1, 2]), "freesurfer").tolist()
    [0, 10, 49]
    """
    conv = parse_labels(labels)
    s = np.asarray(sides)
    if conv.binary:
        val = conv.ids[0] if conv.ids else 1
        return np.where(s > 0, val, 0).astype(dtype or (np.uint8 if val < 256 else np.uint16))
    hi = max(conv.left[0], conv.right[0])
    out = np.zeros(s.shape, dtype=dtype or (np.uint8 if hi < 256 else np.uint16))
    out[s == LEFT] = conv.left[0]
    out[s == RIGHT] = conv.right[0]
    return out


def label_values(mask: np.ndarray, *, where: str = "") -> list[int]:
    """The distinct label ids in ``mask`` (0 included when present), refusing intensity images.

    A label mask holds integers (a float array is accepted when every value is a whole
    number) and at most :data:`MAX_MASK_LABELS` distinct non-zero ids. Anything else is an
    intensity image, most likely given where a mask was meant.

    Parameters
    ----------
    mask : array of any shape
    where : prefix of messages, e.g. ``"manifest.csv row 7: 'x.nii.gz': "``

    Raises
    ------
    LabelConventionError
        ``"... looks like an intensity image (N distinct values), not a label mask"``.

    >>> label_values(np.array([0, 10, 49, 10]))
    [0, 10, 49]
    >>> label_values(np.array([0.0, 0.5, 1.0]))
    Traceback (most recent call last):
    ...
    thaldask.errors.LabelConventionError: looks like an intensity image (non-integer values such as 0.5), not a label mask
    """
    m = np.asarray(mask)
    if m.dtype.kind == "b":
        m = m.astype(np.uint8)
    if m.dtype.kind == "f":
        finite = np.isfinite(m)
        if not finite.all():
            raise LabelConventionError(f"{where}holds NaN or infinite values, not a label mask")
        frac = m != np.round(m)
        if frac.any():
            example = float(m[frac].flat[0])
            raise LabelConventionError(
                f"{where}looks like an intensity image (non-integer values such as {example:g}), "
                "not a label mask"
            )
    elif m.dtype.kind not in "iu":
        raise LabelConventionError(f"{where}has voxel type {m.dtype}; a label mask holds integers")
    vals = np.unique(m)
    n = int(np.count_nonzero(vals))
    if n > MAX_MASK_LABELS:
        raise LabelConventionError(
            f"{where}looks like an intensity image ({vals.size} distinct values), not a label mask "
            f"(at most {MAX_MASK_LABELS} labels)"
        )
    return [int(v) for v in vals]


def _ids(ids: tuple[int, ...]) -> str:
    return "/".join(map(str, ids))


def check_sides(
    labels_present,
    convention: str | LabelConvention,
    *,
    where: str = "",
    require_both: bool = True,
) -> None:
    """Check that a mask's labels fit its declared convention; raise naming what was found.

    A sided convention (``freesurfer``: 10 left, 49 right) must find at least one voxel of
    each side (``require_both``); a mask holding only 0/1 under a sided convention is
    reported as most likely ``binary``. A ``binary`` mask holding both 10 and 49 is reported
    as most likely ``freesurfer``. An empty mask (only 0) passes: empty predictions are
    scored by the metrics' empty-mask rule, not refused.

    Parameters
    ----------
    labels_present : the distinct values in the mask (:func:`label_values`)
    convention : convention name, id spec or :class:`LabelConvention`
    where : message prefix naming the file and row
    require_both : a side without voxels is an error (else only a mask without any
        thalamus id is)

    Raises
    ------
    LabelConventionError
        one line, e.g. ``"labels found [0, 1]; expected 10 (left) and 49 (right) for
        'freesurfer'; did you mean binary?"``.

    >>> check_sides([0, 10, 49], "freesurfer")
    >>> check_sides([0, 1], "freesurfer")
    Traceback (most recent call last):
    ...
    thaldask.errors.LabelConventionError: labels found [0, 1]; expected 10 (left) and 49 (right) for 'freesurfer'; did you mean binary?
    """
    conv = parse_labels(convention)
    found = sorted({int(v) for v in labels_present})
    nonzero = [v for v in found if v != 0]
    shown = found if len(found) <= 12 else found[:12] + ["..."]
    if not nonzero:
        return
    if conv.binary:
        if not conv.ids and {10, 49} <= set(nonzero):
            raise LabelConventionError(
                f"{where}labels found {shown}; declared {conv.spec!r} but 10 and 49 look like "
                "FreeSurfer left/right thalamus; did you mean freesurfer?"
            )
        if conv.ids and not set(conv.ids) & set(nonzero):
            raise LabelConventionError(
                f"{where}labels found {shown}; expected {_ids(conv.ids)} (thalamus) for {conv.spec!r}"
            )
        return
    expected = f"expected {_ids(conv.left)} (left) and {_ids(conv.right)} (right) for {conv.spec!r}"
    has_left = bool(set(conv.left) & set(nonzero))
    has_right = bool(set(conv.right) & set(nonzero))
    if not has_left and not has_right:
        hint = "; did you mean binary?" if set(nonzero) <= {1} else (
            "; did you mean 'L:1;R:2'?" if set(nonzero) <= {1, 2} else ""
        )
        raise LabelConventionError(f"{where}labels found {shown}; {expected}{hint}")
    if require_both and not (has_left and has_right):
        side = "left" if not has_left else "right"
        raise LabelConventionError(
            f"{where}no voxel of the {side} thalamus: labels found {shown}; {expected}"
        )


def detect_convention(mask: np.ndarray) -> LabelConvention:
    """Guess a mask's convention when it is unambiguous.

    0/1 only is binary; 0/1/2 is already sided (``L:1;R:2``); containing 10 and/or 49 among
    many FreeSurfer ids, or only {0, 10, 49}, is FreeSurfer-style; only {0, 24..31} is
    DBSegment. An intensity image (non-integer values, or more than
    :data:`MAX_MASK_LABELS` distinct ids, see :func:`label_values`) and anything else
    raise :class:`LabelConventionError` asking for explicit labels.

    >>> detect_convention(np.array([0, 1, 1])).name
    'binary'
    >>> detect_convention(np.array([0, 10, 49])).name
    'freesurfer'
    """
    vals = set(label_values(mask)) - {0}
    if vals <= {1}:
        return parse_labels("binary")
    if vals <= {1, 2}:
        return parse_labels("L:1;R:2")
    if vals and vals <= {24, 25, 26, 27, 30, 31}:
        return parse_labels("dbsegment")
    if vals & {10, 49} and (vals <= {10, 49} or len(vals) > 4):
        return parse_labels("freesurfer")
    raise LabelConventionError(
        f"cannot tell the label convention of a mask holding ids {sorted(vals)[:8]}; "
        "pass it explicitly (e.g. --pred-labels freesurfer or 'L:10;R:49')"
    )


def split_binary_by_midline(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Split a binary thalamus mask into left (1) and right (2) by world x = 0 (RAS).

    In RAS world coordinates +x points to the subject's right, so voxels with x > 0 are
    right thalamus and the others left. Use only when the image is roughly centred on the
    mid-sagittal plane (scanner coordinates usually are).
    """
    m = np.asarray(mask) > 0
    idx = np.nonzero(m)
    out = np.zeros(m.shape, dtype=np.uint8)
    if idx[0].size == 0:
        return out
    ijk = np.stack(idx + (np.ones_like(idx[0]),), axis=0).astype(np.float64)
    x = (np.asarray(affine, dtype=np.float64) @ ijk)[0]
    out[idx] = np.where(x > 0, RIGHT, LEFT).astype(np.uint8)
    return out
