"""Real anatomy for synthetic subjects: template label maps, smooth deformations, atrophy.

A template is one of the label maps shipped in ``thaldask/data/anatomy`` (see its
``ATTRIBUTION.md``): uint8, RAS, brain structures under their FreeSurfer ids (10/49 thalamus).
A synthetic subject is a random smooth deformation of one template; its thalamus is set to a
planted volume by moving the thalamic boundary along the template's signed distance map (a
thinner or thicker thalamus; the freed voxels take the label of the nearest neighbouring
structure, so the surrounding white matter and ventricles fill in). Because each scan's label
map is sampled directly on the scan's voxel grid, the ground-truth mask is exact.

Coordinates: ``scanner`` world (the NIfTI affine of a scan) -> ``head`` frame (pose: small
rigid motion per scan) -> template world (inverse scaling, rotation and a smooth displacement
field) -> template voxel.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

__all__ = [
    "ANATOMY_DIR",
    "THALAMUS",
    "WHITE_MATTER",
    "Template",
    "SubjectGeometry",
    "list_templates",
    "load_template",
    "make_geometry",
    "sample_labels",
]

ANATOMY_DIR = Path(__file__).resolve().parents[1] / "data" / "anatomy"
#: FreeSurfer ids of the left and right thalamus
THALAMUS = (10, 49)
WHITE_MATTER = (2, 41)
_BOX_MARGIN = 8  # voxels around the thalamus kept for its signed distance map
_OUTSIDE = 50.0  # signed distance (mm) used far from the thalamus


@dataclass
class Template:
    """One template label map with what the generator needs precomputed."""

    name: str
    labels: np.ndarray  # uint8 (X, Y, Z) RAS, thalamus filled by its neighbours
    affine: np.ndarray  # 4x4 RAS
    inv_affine: np.ndarray
    icv_mm3: float
    centre: np.ndarray  # world mm, midpoint of the two thalamic centroids
    box_lo: tuple  # ((3,) int, (3,) int) thalamus box origin per side (voxel)
    sdt: tuple  # per side float32 signed distance (mm, negative inside) in its box
    sorted_sdt: tuple  # per side sorted 2x-upsampled distances (volume-threshold curve)
    volume_mm3: tuple  # per side template thalamic volume (mm^3, continuous estimate)

    def threshold_for(self, side: int, fraction: float) -> float:
        """Signed-distance threshold (mm) that scales this side's volume by ``fraction``."""
        vals = self.sorted_sdt[side]
        n0 = np.searchsorted(vals, 0.0)
        k = float(np.clip(fraction * n0, 0, vals.size - 1))
        i = int(np.floor(k))
        j = min(i + 1, vals.size - 1)
        return float(vals[i] + (vals[j] - vals[i]) * (k - i))


def list_templates() -> list[str]:
    """Names of the shipped templates (``anatomy_01`` ...)."""
    return sorted(p.stem for p in ANATOMY_DIR.glob("anatomy_*.npz"))


def _signed_distance(mask: np.ndarray, spacing) -> np.ndarray:
    """Signed distance in mm to the boundary halfway between voxel centres (negative inside)."""
    half = 0.5 * float(np.min(spacing))
    out = ndi.distance_transform_edt(~mask, sampling=spacing) - half
    inside = ndi.distance_transform_edt(mask, sampling=spacing) - half
    out[mask] = -inside[mask]
    return out.astype(np.float32)


@functools.lru_cache(maxsize=8)
def load_template(index: int) -> Template:
    """Load template ``index`` (0-based, into :func:`list_templates`), cached per process."""
    names = list_templates()
    if not names:
        raise FileNotFoundError(f"no anatomy templates found in {ANATOMY_DIR}")
    name = names[index % len(names)]
    with np.load(ANATOMY_DIR / f"{name}.npz", allow_pickle=False) as z:
        labels = z["labels"].copy()
        affine = z["affine"].astype(np.float64)
        icv = float(z["icv_mm3"])
    spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    thal = np.isin(labels, THALAMUS)
    # fill the thalamus with the label of the nearest other structure (what atrophy exposes),
    # working in the thalamic bounding box only
    tijk = np.argwhere(thal)
    tlo = np.maximum(tijk.min(axis=0) - 4, 0)
    thi = np.minimum(tijk.max(axis=0) + 5, labels.shape)
    box = tuple(slice(a, b) for a, b in zip(tlo, thi, strict=True))
    idx = ndi.distance_transform_edt(thal[box], return_distances=False, return_indices=True)
    filled = labels.copy()
    filled[box] = labels[box][tuple(idx)]
    centroids, box_lo, sdts, sorted_sdts, vols = [], [], [], [], []
    for lab in THALAMUS:
        m = labels == lab
        ijk = np.argwhere(m)
        centroids.append(affine[:3, :3] @ ijk.mean(axis=0) + affine[:3, 3])
        lo = np.maximum(ijk.min(axis=0) - _BOX_MARGIN, 0)
        hi = np.minimum(ijk.max(axis=0) + _BOX_MARGIN + 1, labels.shape)
        sub = m[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
        # smoothing makes the volume a continuous function of the threshold
        sdt = ndi.gaussian_filter(_signed_distance(sub, spacing), 0.7)
        up = ndi.zoom(sdt, 2, order=1, mode="nearest", grid_mode=True)
        vals = np.sort(up.ravel())
        box_lo.append(lo)
        sdts.append(sdt)
        sorted_sdts.append(vals)
        vols.append(float(np.searchsorted(vals, 0.0)) / 8.0 * float(np.prod(spacing)))
    return Template(
        name=name,
        labels=filled,
        affine=affine,
        inv_affine=np.linalg.inv(affine),
        icv_mm3=icv,
        centre=(centroids[0] + centroids[1]) / 2.0,
        box_lo=tuple(box_lo),
        sdt=tuple(sdts),
        sorted_sdt=tuple(sorted_sdts),
        volume_mm3=tuple(vols),
    )


def rotation_matrix(angles_rad) -> np.ndarray:
    a, b, c = angles_rad
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


@dataclass
class SubjectGeometry:
    """A subject's anatomy: template, global scaling, rotation and smooth displacement field.

    ``head -> template world``: ``t = centre_t + R^T (h / scale) + u(h)`` where ``h`` is in the
    head frame (origin between the two thalami, RAS mm) and ``u`` a smooth displacement
    field (mm) on a coarse grid.
    """

    template: int
    scale: np.ndarray  # (3,) per-axis scale (subject size / template size)
    rotation: np.ndarray  # (3, 3)
    field: np.ndarray  # (3, n, n, n) displacement (mm) on the coarse grid
    field_spacing: float
    field_origin: float

    @property
    def volume_factor(self) -> float:
        """Global volume scaling of the template (ICV ratio, without the field)."""
        return float(np.prod(self.scale))

    def field_at(self, head_xyz: np.ndarray) -> np.ndarray:
        """Displacement (mm) at points (3, N) of the head frame, trilinear."""
        c = (head_xyz - self.field_origin) / self.field_spacing
        return np.stack([ndi.map_coordinates(f, c, order=1, mode="nearest") for f in self.field])

    def jacobian_at(self, head_xyz: np.ndarray, h: float = 4.0, radius: float = 6.0) -> float:
        """Local volume factor (subject / template) around a head-frame point.

        One over the Jacobian determinant of ``h -> R^T h / scale + u(h)`` (finite differences),
        averaged over the point and six neighbours ``radius`` mm away; includes the global scale.
        """
        p0 = np.asarray(head_xyz, dtype=np.float64).reshape(3)
        pts = [p0] + [p0 + s * radius * e for e in np.eye(3) for s in (-1, 1)]
        # every finite-difference sample in one call: (point, axis, sign)
        samples = np.array([p + s * h * e for p in pts for e in np.eye(3) for s in (1, -1)]).T
        u = self.field_at(samples).T.reshape(len(pts), 3, 2, 3)
        lin = self.rotation.T @ np.diag(1.0 / self.scale)
        dets = []
        for k in range(len(pts)):
            J = lin + ((u[k, :, 0] - u[k, :, 1]) / (2 * h)).T
            dets.append(1.0 / np.linalg.det(J))
        return float(np.mean(dets))

    def thalamus_centroid(self, side: int) -> np.ndarray:
        """Approximate head-frame position (mm) of a template thalamus centroid (0 left, 1 right)."""
        t = load_template(self.template)
        lo = t.box_lo[side]
        ijk = np.argwhere(t.sdt[side] < 0).mean(axis=0) + lo
        world = t.affine[:3, :3] @ ijk + t.affine[:3, 3]
        return self.scale * (self.rotation @ (world - t.centre))

    def to_template_voxel(self, head_xyz: np.ndarray) -> np.ndarray:
        """Template voxel coordinates (3, N) of head-frame points (3, N)."""
        t = load_template(self.template)
        world = (
            t.centre[:, None]
            + self.rotation.T @ (head_xyz / self.scale[:, None])
            + self.field_at(head_xyz)
        )
        return t.inv_affine[:3, :3] @ world + t.inv_affine[:3, 3:4]


def make_geometry(
    template: int,
    icv_scale: float,
    rng: np.random.Generator,
    *,
    field_mm: float = 1.5,
    field_smooth_mm: float = 24.0,
    shape_jitter: float = 0.03,
    rotation_deg: float = 4.0,
) -> SubjectGeometry:
    """Random smooth deformation of ``template`` whose volume is scaled by ``icv_scale``.

    Parameters
    ----------
    icv_scale : wanted ICV / template ICV (the product of the per-axis scales)
    field_mm : standard deviation of each displacement component (mm)
    field_smooth_mm : Gaussian smoothing of the displacement noise (mm); larger is smoother
    shape_jitter : standard deviation of the per-axis scale around the isotropic one
    rotation_deg : standard deviation of the rotation angles (degrees)
    """
    aniso = np.exp(rng.normal(0.0, shape_jitter, 3))
    aniso /= np.prod(aniso) ** (1 / 3)
    scale = aniso * icv_scale ** (1 / 3)
    rot = rotation_matrix(np.deg2rad(rng.normal(0.0, rotation_deg, 3)))
    spacing, half = 8.0, 136.0
    n = int(2 * half / spacing) + 1
    noise = rng.standard_normal((3, n, n, n))
    sig = field_smooth_mm / spacing
    field = np.stack([ndi.gaussian_filter(c, sig, mode="wrap") for c in noise])
    field *= field_mm / field.std()
    return SubjectGeometry(template, scale, rot, field.astype(np.float32), spacing, -half)


def sample_labels(
    geom: SubjectGeometry,
    affine: np.ndarray,
    shape,
    *,
    pose: np.ndarray,
    thalamus_thresholds=(0.0, 0.0),
    slab_voxels: int = 2_000_000,
) -> np.ndarray:
    """The subject's label map on a voxel grid (nearest neighbour; thalamus from its distance map).

    Parameters
    ----------
    affine, shape : the grid (4x4 scanner-world affine, 3 ints)
    pose : 4x4 rigid transform scanner world -> head frame of this scan
    thalamus_thresholds : per side (left, right) signed-distance threshold in template mm;
        0 keeps the template's thalamus, positive grows it, negative shrinks it
        (see :meth:`Template.threshold_for`)

    Returns
    -------
    numpy.ndarray uint8 of ``shape``: FreeSurfer brain ids, 90/100+ extra-cerebral classes.
    """
    t = load_template(geom.template)
    shape = tuple(int(s) for s in shape)
    out = np.zeros(shape, dtype=np.uint8)
    M = pose @ affine  # grid voxel -> head frame (affine)
    # template voxel = T @ head + Tinv3 @ u(head), with T the affine part of the chain
    Tinv3 = t.inv_affine[:3, :3]
    lin = Tinv3 @ geom.rotation.T @ np.diag(1.0 / geom.scale)
    A = lin @ M[:3, :3]
    b = lin @ M[:3, 3] + Tinv3 @ t.centre + t.inv_affine[:3, 3]
    # the displacement field, sampled on the grid by an affine resampling of the coarse field
    Fm = M[:3, :3] / geom.field_spacing
    nz_per_slab = max(1, slab_voxels // (shape[0] * shape[1]))
    ii, jj = np.meshgrid(
        np.arange(shape[0], dtype=np.float32), np.arange(shape[1], dtype=np.float32), indexing="ij"
    )
    for z0 in range(0, shape[2], nz_per_slab):
        z1 = min(shape[2], z0 + nz_per_slab)
        sshape = (shape[0], shape[1], z1 - z0)
        Fo = (
            M[:3, :3] @ np.array([0.0, 0.0, z0]) + M[:3, 3] - geom.field_origin
        ) / geom.field_spacing
        # the field is smooth (tens of mm): sample it on every 2nd voxel and repeat
        # (error below 0.1 mm), which costs an eighth of a per-voxel resampling
        half = tuple((n + 1) // 2 for n in sshape)
        u = [
            np.repeat(
                np.repeat(
                    np.repeat(
                        ndi.affine_transform(
                            f, 2 * Fm, offset=Fo, output_shape=half, order=1, mode="nearest"
                        ),
                        2,
                        0,
                    ),
                    2,
                    1,
                ),
                2,
                2,
            )[: sshape[0], : sshape[1], : sshape[2]]
            for f in geom.field
        ]
        kk = np.arange(z0, z1, dtype=np.float32)
        vox = np.empty((3,) + sshape, dtype=np.float32)
        for r in range(3):
            vox[r] = (A[r, 0] * ii)[..., None] + (A[r, 1] * jj)[..., None] + A[r, 2] * kk + b[r]
            vox[r] += Tinv3[r, 0] * u[0] + Tinv3[r, 1] * u[1] + Tinv3[r, 2] * u[2]
        vox = vox.reshape(3, -1)
        lab = ndi.map_coordinates(t.labels, vox, order=0, mode="constant", cval=0)
        for side, code in enumerate(THALAMUS):
            lo = t.box_lo[side]
            sdt = t.sdt[side]
            hi = np.array(sdt.shape, dtype=np.float32)
            inside_box = np.ones(vox.shape[1], dtype=bool)
            for r in range(3):
                c = vox[r] - lo[r]
                inside_box &= (c > -1) & (c < hi[r])
            if not inside_box.any():
                continue
            bc = vox[:, inside_box] - lo[:, None].astype(np.float32)
            d = ndi.map_coordinates(sdt, bc, order=1, mode="constant", cval=_OUTSIDE)
            sel = np.flatnonzero(inside_box)[d < thalamus_thresholds[side]]
            lab[sel] = code
        out[:, :, z0:z1] = lab.reshape(sshape)
    return out
