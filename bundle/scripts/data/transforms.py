"""MONAI transforms that MONAI lacks: CT validation, couch removal, body-centred field of view, on-the-fly X-ray
rendering.

The CT chain (``configs/common.yaml#ct_preprocessing``): ``LoadCTd`` (``LoadImaged`` naming bad files, see ``io``)
→ ``ValidateCTd`` → ``ThresholdIntensityd`` (scanner padding → air; upper HU clip) → ``Orientationd(RAS)`` →
``RemoveCouchd`` → ``Spacingd(diagonal=True)`` → ``CropOrPadToFieldOfViewd``; training then adds ``RenderXrayd`` →
``ScaleIntensityRanged`` (fixed HU window → [−1, 1]). Problems worth a line in the inference report (partial coverage,
gantry tilt, a body cut by the field of view) collect in ``meta["ct_warnings"]``. A label map of the CT follows it
with :func:`label_on_grid` (evaluation).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.networks.layers import separable_filtering
from monai.transforms import Affine, BorderPad, MapTransform, Randomizable, ResampleToMatch, Resize, SpatialCrop
from monai.utils import str2bool
from scipy import ndimage
from scipy.spatial import ConvexHull

from ..physics import RadiographComposer, line_integral_to_network

if TYPE_CHECKING:
    from .realism import RadiographRealism

__all__ = [
    "RAS_AXIS_NAMES",
    "CropOrPadToFieldOfViewd",
    "RemoveCouchd",
    "RenderXrayd",
    "StageResized",
    "ValidateCTd",
    "add_ct_warning",
    "body_mask",
    "label_on_grid",
    "source_name",
    "voxel_spacing",
]


def source_name(img) -> str:
    """The file an image came from (for error messages), or a placeholder."""
    meta = getattr(img, "meta", None) or {}
    name = meta.get("filename_or_obj")
    return str(name) if name else "<in-memory image>"


def voxel_spacing(img: MetaTensor) -> tuple[float, float, float]:
    """Voxel size in mm from an image's affine (column norms of its 3×3 part)."""
    affine = torch.as_tensor(img.affine, dtype=torch.float64)
    return tuple(float(v) for v in affine[:3, :3].norm(dim=0))


class ValidateCTd(MapTransform):
    """Reject anything that cannot be a 3D CT volume, with an error that names the file.

    Checks: one channel and three spatial dimensions (2D and 4D images fail), finite voxels (no NaN/Inf), an
    invertible affine whose voxel sizes lie in ``[min_spacing_mm, max_spacing_mm]`` (a missing spacing reads as
    0 or 1 mm on most readers and fails or passes accordingly; see the docs), and values within plausible HU.

    Contrast-enhanced scans pass: iodine reads about +150…+600 HU in vessels and enhancing organs (up to ~+1000 HU in
    an arterial-phase aorta), well inside ``hu_range``. The preprocessing's upper clip at ``hu_window[1]`` (+2000 HU)
    leaves that contrast as it is; it flattens only undiluted contrast in the injection vein (which can exceed
    +2000 HU), dense cortical bone and metal, which then render a little less dense. Rendered with the one-energy
    HU → μ map, enhanced vessels and heart chambers look denser than in the (non-contrast) radiographs the model
    meets — a domain gap to keep in mind when training on contrast CTs.

    Args:
        keys: image keys (channel-first MetaTensors from ``LoadImaged(ensure_channel_first=True)``).
        min_spacing_mm, max_spacing_mm: accepted voxel size range.
        hu_range: accepted range of values; outside it the file is not in HU (e.g. raw detector counts).
    """

    def __init__(
        self,
        keys: KeysCollection,
        min_spacing_mm: float = 0.05,
        max_spacing_mm: float = 20.0,
        hu_range: Sequence[float] = (-32768.0, 40000.0),
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if not 0 < min_spacing_mm < max_spacing_mm:
            raise ValueError(
                f"min_spacing_mm/max_spacing_mm must satisfy 0 < min < max, got {min_spacing_mm}, {max_spacing_mm}."
            )
        self.min_spacing_mm, self.max_spacing_mm = float(min_spacing_mm), float(max_spacing_mm)
        self.hu_range = (float(hu_range[0]), float(hu_range[1]))

    def check(self, img) -> None:
        name = source_name(img)
        shape = tuple(img.shape)
        if len(shape) != 4 or shape[0] != 1 or min(shape[1:]) < 2:
            raise ValueError(f"{name}: expected a 3D CT volume (1 channel, X, Y, Z with X, Y, Z >= 2), got {shape}.")
        data = torch.as_tensor(img)
        if not bool(torch.isfinite(data).all()):
            bad = int((~torch.isfinite(data)).sum())
            raise ValueError(f"{name}: {bad} voxels are NaN or Inf; expected finite CT numbers (HU).")
        if not isinstance(img, MetaTensor):
            raise ValueError(f"{name}: expected a MetaTensor with an affine (load with LoadImaged).")
        affine = torch.as_tensor(img.affine, dtype=torch.float64)
        spacing = voxel_spacing(img)
        if not bool(torch.isfinite(affine).all()) or abs(float(torch.det(affine[:3, :3]))) < 1e-12:
            raise ValueError(f"{name}: missing or invalid orientation/spacing (singular affine {affine.tolist()}).")
        if not all(self.min_spacing_mm <= s <= self.max_spacing_mm for s in spacing):
            raise ValueError(
                f"{name}: voxel spacing {tuple(round(s, 4) for s in spacing)} mm is outside "
                f"[{self.min_spacing_mm}, {self.max_spacing_mm}] mm; the spacing metadata is missing or wrong."
            )
        lo, hi = float(data.min()), float(data.max())
        if lo < self.hu_range[0] or hi > self.hu_range[1]:
            raise ValueError(
                f"{name}: values span [{lo:g}, {hi:g}], outside the plausible CT range {self.hu_range} HU; "
                "expected a CT in Hounsfield units."
            )

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            self.check(d[key])
        return d


#: Names of the axes of a RAS grid, for messages.
RAS_AXIS_NAMES = ("left-right", "anterior-posterior", "superior-inferior")


def add_ct_warning(img, text: str) -> None:
    """Append one line to ``img.meta["ct_warnings"]``: one newline-separated string (lists of different lengths would
    not collate into a batch), read back by the inference report."""
    meta = getattr(img, "meta", None)
    if meta is None:
        return
    previous = meta.get("ct_warnings") or ""
    meta["ct_warnings"] = f"{previous}\n{text}" if previous else text


def _ellipsoid(radii_vox: Sequence[float]) -> np.ndarray:
    """Boolean ellipsoid structuring element with per-axis radii in voxels."""
    grids = np.ogrid[tuple(slice(-math.floor(r), math.floor(r) + 1) for r in radii_vox)]
    return sum((g / max(r, 1e-6)) ** 2 for g, r in zip(grids, radii_vox, strict=True)) <= 1.0


def _hull_in_plane(mask: np.ndarray) -> np.ndarray:
    """A 2D mask filled out to its convex hull (pixel centres within half a pixel of it)."""
    rows = np.flatnonzero(mask.any(1))
    if len(rows) < 2:
        return mask
    first = np.argmax(mask[rows], 1)
    last = mask.shape[1] - 1 - np.argmax(mask[rows, ::-1], 1)
    points = np.concatenate([np.c_[rows, first], np.c_[rows, last]])  # each row's ends span the hull
    if np.linalg.matrix_rank(points - points[0]) < 2:
        return mask
    a, b, c = ConvexHull(points).equations.T  # facets a·x + b·y + c <= 0 inside (unit normals)
    x = np.arange(mask.shape[0])[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        bound = (0.5 - c - a * x) / b  # (X, F): y limits of the row from each facet
    low = np.where(b < 0, bound, -np.inf).max(1)
    high = np.where(b > 0, bound, np.inf).min(1)
    beyond = (np.abs(b) < 1e-12) & (a * x + c > 0.5)  # facets parallel to y exclude whole rows
    y = np.arange(mask.shape[1])[None, :]
    hull = (y >= low[:, None]) & (y <= high[:, None]) & ~beyond.any(1)[:, None]
    return mask | hull


def body_mask(
    hu: np.ndarray,
    spacing: Sequence[float],
    threshold_hu: float = -500.0,
    opening_mm: float = 4.0,
    margin_mm: float = 5.0,
    coarse_mm: float = 3.0,
    min_component_fraction: float = 0.1,
    attach_mm: float = 10.0,
) -> tuple[np.ndarray, np.ndarray] | None:
    """The patient's body in an ``(X, Y, Z)`` RAS CT, and the axial slices where it reaches the in-plane edge.

    Computed on a coarse grid of about ``coarse_mm`` (blocks at least half above ``threshold_hu``): opened with an
    ellipsoid of radius ``opening_mm`` (cuts thin bridges to a blanket or the couch; the image edge continues the
    image); the connected components of at least ``min_component_fraction`` of the largest kept, and the smaller ones
    within ``attach_mm`` of them (a chin entering the scan from above, a hand); holes filled in each axial slice
    (lungs, airways, bowel gas); grown by ``margin_mm`` and brought back to the input grid. In a slice where the body
    reaches the in-plane edge (a field of view that cuts the patient), a lung cut by the edge is no hole: there the
    body's convex hull in that slice counts as body. ``None`` when nothing is above the threshold.

    Returns:
        ``(mask (X, Y, Z) bool, cut (Z,) bool)``: ``cut`` marks the slices where the body touches the in-plane edge.
    """
    factors = [max(1, int(coarse_mm // s)) for s in spacing]
    pad = [(-n) % f for n, f in zip(hu.shape, factors, strict=True)]
    above = hu > threshold_hu
    blocks = np.pad(above, [(0, p) for p in pad], mode="edge") if any(pad) else above
    cshape = [n // f for n, f in zip(blocks.shape, factors, strict=True)]
    count = blocks.reshape(cshape[0], factors[0], cshape[1], factors[1], cshape[2], factors[2]).sum(
        axis=(1, 3, 5), dtype=np.int32
    )
    coarse = count * 2 >= math.prod(factors)  # (x, y, z) at ~coarse_mm
    cspacing = [s * f for s, f in zip(spacing, factors, strict=True)]
    if opening_mm > 0:
        ball = _ellipsoid([opening_mm / c for c in cspacing])
        r = [n // 2 for n in ball.shape]
        padded = np.pad(coarse, [(k, k) for k in r], mode="edge")  # the edge continues the image
        inner = tuple(slice(k, k + n) for k, n in zip(r, cshape, strict=True))
        coarse = ndimage.binary_opening(padded, structure=ball)[inner]
    labels, n = ndimage.label(coarse)
    if n == 0:
        return None
    sizes = np.bincount(labels.ravel())[1:]
    large = sizes >= min_component_fraction * sizes.max()
    kept = np.isin(labels, np.flatnonzero(large) + 1)
    if attach_mm > 0 and not large.all():
        near = ndimage.binary_dilation(kept, structure=_ellipsoid([attach_mm / c for c in cspacing]))
        kept = np.isin(labels, np.unique(labels[near & (labels > 0)]))
    in_plane = np.zeros((3, 3, 3), dtype=bool)
    in_plane[:, :, 1] = ndimage.generate_binary_structure(2, 1)  # holes are filled slice by slice
    kept = ndimage.binary_fill_holes(kept, structure=in_plane)
    cut = kept[0].any(0) | kept[-1].any(0) | kept[:, 0].any(0) | kept[:, -1].any(0)  # (z,)
    for k in np.flatnonzero(cut):
        kept[:, :, k] = _hull_in_plane(kept[:, :, k])
    if margin_mm > 0:
        kept = ndimage.binary_dilation(kept, structure=_ellipsoid([margin_mm / c for c in cspacing]))
    mask = kept[np.ix_(*[np.arange(n) // f for n, f in zip(hu.shape, factors, strict=True)])]  # (X, Y, Z)
    return mask, cut[np.arange(hu.shape[2]) // factors[2]]


class RemoveCouchd(MapTransform):
    """Set everything outside the patient's body to air: the scanner couch (table), its mattress, blankets, cables and
    positioning aids, which a CT contains and a chest radiograph (taken standing) does not; rendered, they would add
    a couch shadow to every training view.

    The body is :func:`body_mask`: tissue above ``threshold_hu``, opened by ``opening_mm`` to cut thin contacts, its
    large connected components (the trunk; arms that the scan does not connect to it) and the small ones within
    ``attach_mm`` of them (a chin entering the scan from above), holes filled per axial slice so that the lungs and
    airways stay, grown by ``margin_mm``. Outside it every voxel becomes ``air_hu``. A CT without couch changes only
    in the air around the body (its noise becomes exactly ``air_hu``); a phantom does not change.

    Where the body reaches the in-plane edge of the image (a reconstruction field of view that cuts the patient), a
    lung cut by the edge is no hole: in those slices the body's convex hull is kept, and the slices are counted in
    ``meta["ct_warnings"]`` (anatomy beyond the edge is missing from the views).

    Input: channel-first HU in RAS (``Orientationd`` first: axial slices are the last axis), any spacing. Time on one
    core: ~0.2 s at 128³, ~0.6 s at 512×512×133, ~1.4 s at 512×512×300 (the morphology runs on a ``coarse_mm`` grid).

    Args:
        keys: CT keys.
        enabled: ``False`` returns the data unchanged (``remove_couch`` in ``configs/common.yaml``).
        threshold_hu: tissue above it is body (or couch); air, foam pads and lung are below.
        opening_mm: radius of the opening that cuts thin bridges (a blanket on the skin, the couch's top sheet).
        margin_mm: kept around the body (skin, the partial-volume rim).
        coarse_mm: voxel size of the grid the morphology runs on.
        min_component_fraction: components at least this fraction of the largest are body too.
        attach_mm: smaller components this close to those are body too (a couch lies farther, on its mattress).
        air_hu: the value written outside the body.
    """

    def __init__(
        self,
        keys: KeysCollection,
        enabled: bool = True,
        threshold_hu: float = -500.0,
        opening_mm: float = 4.0,
        margin_mm: float = 5.0,
        coarse_mm: float = 3.0,
        min_component_fraction: float = 0.1,
        attach_mm: float = 10.0,
        air_hu: float = -1000.0,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        # The command line gives `--remove_couch false` as a string; str2bool refuses anything but a yes/no word.
        enabled = enabled if isinstance(enabled, bool) else str2bool(str(enabled))
        for name, value in (("threshold_hu", threshold_hu), ("air_hu", air_hu)):
            if not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number of HU, got {value!r}.")
        for name, value in (("opening_mm", opening_mm), ("margin_mm", margin_mm), ("attach_mm", attach_mm)):
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a non-negative length in mm, got {value!r}.")
        if not (math.isfinite(coarse_mm) and coarse_mm > 0):
            raise ValueError(f"coarse_mm must be a positive length in mm, got {coarse_mm!r}.")
        if not 0 < min_component_fraction <= 1:
            raise ValueError(f"min_component_fraction must be in (0, 1], got {min_component_fraction!r}.")
        self.enabled = enabled
        self.threshold_hu, self.air_hu = float(threshold_hu), float(air_hu)
        self.opening_mm, self.margin_mm, self.coarse_mm = float(opening_mm), float(margin_mm), float(coarse_mm)
        self.min_component_fraction, self.attach_mm = float(min_component_fraction), float(attach_mm)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        if not self.enabled:
            return d
        for key in self.key_iterator(d):
            img = d[key]
            hu = torch.as_tensor(img)[0].detach().cpu().numpy()  # (X, Y, Z)
            found = body_mask(
                hu,
                voxel_spacing(img),
                self.threshold_hu,
                self.opening_mm,
                self.margin_mm,
                self.coarse_mm,
                self.min_component_fraction,
                self.attach_mm,
            )
            if found is None:  # no tissue at all: nothing to tell apart
                continue
            keep, cut = found
            out = img.clone()
            voxels = (out.as_tensor() if isinstance(out, MetaTensor) else out)[0]  # (X, Y, Z), out's own storage
            if voxels.device.type == "cpu":
                np.putmask(voxels.numpy(), ~keep, self.air_hu)
            else:
                voxels[torch.from_numpy(~keep).to(voxels.device)] = self.air_hu
            if cut.any():
                add_ct_warning(
                    out,
                    f"the body reaches the edge of the scan's field of view in {int(cut.sum())} of {cut.size} "
                    "axial slices; anatomy beyond it is missing",
                )
            d[key] = out
        return d


class CropOrPadToFieldOfViewd(MapTransform):
    """Centre a cubic physical field of view on the body and crop or pad to it (padding is air).

    The body is every voxel above ``body_threshold_hu``; the field of view is centred on its bounding box (the
    volume centre if there is no body). The affine is updated, so the output keeps its place in patient space.

    The crop is computed per key from that key's own voxels: list only CT keys. A label map (ids, not HU: every
    voxel would count as body) follows the CT with :func:`label_on_grid` instead.

    ``meta["fov_coverage_mm"]`` records, per RAS axis, how many mm of the field of view hold CT data (the rest is
    padded air); where that is below ``warn_coverage`` of the field of view, a line such as "the CT covers 150 mm of
    320 mm superior-inferior; the rest is air" goes to ``meta["ct_warnings"]`` for the inference report.

    Args:
        keys: image keys (channel-first, RAS, any spacing).
        fov_mm: edge length of the field of view in mm (one number or three).
        body_threshold_hu: HU above which a voxel belongs to the body.
        pad_value: HU written into padded voxels (air).
        warn_coverage: fraction of the field of view below which partial coverage is reported.
    """

    def __init__(
        self,
        keys: KeysCollection,
        fov_mm: float | Sequence[float] = 320.0,
        body_threshold_hu: float = -500.0,
        pad_value: float = -1000.0,
        warn_coverage: float = 0.95,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        fov = (float(fov_mm),) * 3 if isinstance(fov_mm, (int, float)) else tuple(map(float, fov_mm))
        if len(fov) != 3 or not all(math.isfinite(f) and f > 0 for f in fov):
            raise ValueError(f"fov_mm must be a positive length in mm (or three), got {fov_mm!r}.")
        if not 0 <= warn_coverage <= 1:
            raise ValueError(f"warn_coverage must be a fraction in [0, 1], got {warn_coverage!r}.")
        self.fov_mm, self.body_threshold_hu, self.pad_value = fov, float(body_threshold_hu), float(pad_value)
        self.warn_coverage = float(warn_coverage)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            spacing = voxel_spacing(img)
            size = [max(1, round(f / s)) for f, s in zip(self.fov_mm, spacing, strict=True)]
            body = torch.as_tensor(img[0]) > self.body_threshold_hu
            shape = img.shape[1:]
            if bool(body.any()):
                idx = torch.nonzero(body)
                centre = ((idx.min(0).values + idx.max(0).values).double() / 2.0).tolist()
            else:
                centre = [(n - 1) / 2.0 for n in shape]
            start = [int(math.floor(c - (s - 1) / 2.0 + 0.5)) for c, s in zip(centre, size, strict=True)]
            before = [max(0, -a) for a in start]
            after = [max(0, a + s - n) for a, s, n in zip(start, size, shape, strict=True)]
            if any(before) or any(after):
                border = [v for pair in zip(before, after, strict=True) for v in pair]
                img = BorderPad(spatial_border=border, mode="constant", value=self.pad_value)(img)
            roi_start = [a + b for a, b in zip(start, before, strict=True)]
            roi_end = [a + s for a, s in zip(roi_start, size, strict=True)]
            out = SpatialCrop(roi_start=roi_start, roi_end=roi_end)(img)
            # Voxels of the field of view that come from the CT (not padding), per axis, in mm.
            covered = [
                min(f, max(0, min(n, a + s) - max(0, a)) * sp)
                for a, s, n, sp, f in zip(start, size, shape, spacing, self.fov_mm, strict=True)
            ]
            if isinstance(out, MetaTensor):
                out.meta["fov_coverage_mm"] = [round(c, 1) for c in covered]
                for c, f, axis in zip(covered, self.fov_mm, RAS_AXIS_NAMES, strict=True):
                    if c < self.warn_coverage * f:
                        add_ct_warning(out, f"the CT covers {c:.0f} mm of {f:.0f} mm {axis}; the rest is air")
            d[key] = out
        return d


def label_on_grid(label: MetaTensor, reference: MetaTensor) -> MetaTensor:
    """A label map ``(1, X', Y', Z')`` (integer ids) on the grid of a preprocessed CT ``reference`` ``(1, X, Y, Z)``.

    Nearest neighbour through both affines (voxel -> patient mm, RAS): each CT voxel gets the id found at its centre,
    ids outside the label map's extent are 0 (background). Running the label through the CT chain would need a
    nearest-neighbour twin of each geometric step and the CT's own crop (``CropOrPadToFieldOfViewd`` centres on the
    body found in the key's own voxels); every one of those steps records itself in the CT's affine and shape, so one
    resampling to that final grid is the same map and follows any chain. The chain's intensity steps (HU clips,
    ``RemoveCouchd``) never touch the ids. Both files must be read the same way (``LoadImage``: RAS mm affines).

    Returns:
        float32 MetaTensor of integer ids with the reference's affine.
    """
    out = ResampleToMatch(mode="nearest", padding_mode="zeros", dtype=torch.float32)(label, img_dst=reference)
    return out.round()  # nearest neighbour copies ids; round() only guards against float noise


class RenderXrayd(Randomizable, MapTransform):
    """Render radiographs of a CT on the fly with the shared composer, with optional realism augmentations.

    The CT (HU, channel-first, RAS, centred on the isocentre) stays as it is; the views are written to
    ``output_key`` as a ``(V, H, W)`` float32 tensor on the networks' fixed scale ``2·p/p_max − 1``.

    Augmentations, each applied with probability ``prob`` (all off by default):

    * pose jitter: the patient is rotated (uniform in ``±pose_jitter_deg`` about each axis) and shifted
      (``±pose_jitter_mm``) for rendering only — a positioning error between the X-ray and the CT target; done by
      resampling the volume so that the renderer's cached geometry is reused;
    * quantum noise: ``photon_count`` photons per unabsorbed pixel, ``I ~ Poisson(N·exp(−p))``, ``p = −ln(I/N)``;
    * detector blur: Gaussian point-spread function, ``blur_sigma_px`` pixels (edges replicated);
    * electronic noise: Gaussian, standard deviation ``gaussian_noise_std`` in line-integral units, added last.

    Pose jitter needs isotropic voxels (it runs after ``Spacingd`` in the configs).

    ``realism`` (a :class:`~scripts.data.realism.RadiographRealism`, ``None``: off) turns the views into
    radiograph-like ones (spectrum, scatter, detector, processing, shutters; ``xray_augmentation#realism``); the
    views it started from stay under ``clean_key``, the reference of the DRR consistency loss. Off, nothing changes.

    Args:
        keys: the CT key (one).
        composer: HU -> network-scale renderer (shared with the physics loss).
        output_key: where the views go.
        realism: the radiograph-like view transform, or ``None``.
        clean_key: where the clean views go when ``realism`` is set.
    """

    def __init__(
        self,
        keys: KeysCollection,
        composer: RadiographComposer,
        output_key: str = "xray",
        prob: float = 1.0,
        pose_jitter_deg: float = 0.0,
        pose_jitter_mm: float = 0.0,
        photon_count: float | None = None,
        gaussian_noise_std: float = 0.0,
        blur_sigma_px: float = 0.0,
        realism: RadiographRealism | None = None,
        clean_key: str = "xray_clean",
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        if len(self.keys) != 1:
            raise ValueError(f"keys: RenderXrayd renders one CT key, got {self.keys}.")
        for name, value in (
            ("pose_jitter_deg", pose_jitter_deg),
            ("pose_jitter_mm", pose_jitter_mm),
            ("gaussian_noise_std", gaussian_noise_std),
            ("blur_sigma_px", blur_sigma_px),
        ):
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a non-negative number, got {value!r}.")
        if photon_count is not None and not (math.isfinite(photon_count) and photon_count > 0):
            raise ValueError(f"photon_count must be a positive number of photons or None, got {photon_count!r}.")
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"prob must be in [0, 1], got {prob!r}.")
        self.composer = composer
        self.output_key = output_key
        self.prob = float(prob)
        self.pose_jitter_deg, self.pose_jitter_mm = float(pose_jitter_deg), float(pose_jitter_mm)
        self.photon_count = None if photon_count is None else float(photon_count)
        self.gaussian_noise_std, self.blur_sigma_px = float(gaussian_noise_std), float(blur_sigma_px)
        self.realism, self.clean_key = realism, clean_key
        self._augment = False
        self._rotation = np.zeros(3)
        self._shift_mm = np.zeros(3)

    def randomize(self, data=None) -> None:
        self._augment = self.R.rand() < self.prob
        self._rotation = np.deg2rad(self.R.uniform(-self.pose_jitter_deg, self.pose_jitter_deg, 3))
        self._shift_mm = self.R.uniform(-self.pose_jitter_mm, self.pose_jitter_mm, 3)

    def _jitter(self, hu: torch.Tensor, spacing: tuple[float, float, float]) -> torch.Tensor:
        """Rigidly move the patient about the isocentre, resampling on the same grid (air outside)."""
        if not self._augment or (self.pose_jitter_deg == 0 and self.pose_jitter_mm == 0):
            return hu
        if max(spacing) - min(spacing) > 1e-3 * max(spacing):
            # Rotations are applied in voxel units: only a rigid motion on an isotropic grid.
            raise ValueError(f"pose jitter needs isotropic voxels (resample first with Spacingd), got {spacing} mm.")
        shift_vox = [m / s for m, s in zip(self._shift_mm, spacing, strict=True)]
        moved = Affine(
            rotate_params=self._rotation.tolist(), translate_params=shift_vox, padding_mode="zeros", image_only=True
        )(hu + 1000.0)  # air is the padding value after the shift
        moved = moved.as_tensor() if isinstance(moved, MetaTensor) else moved
        return moved - 1000.0

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        self.randomize()
        for key in self.key_iterator(d):
            img = d[key]
            spacing = voxel_spacing(img)
            hu = img.as_tensor() if isinstance(img, MetaTensor) else torch.as_tensor(img)
            hu = self._jitter(hu.float(), spacing)  # (1, X, Y, Z)
            with torch.no_grad():
                p = self.composer.line_integrals(hu[None], spacing)[0]  # (V, H, W)
            # Detector chain order: quantum noise at detection, spread by the detector's point-spread function,
            # then electronic noise added by the read-out (not blurred).
            if self._augment and self.photon_count is not None:
                counts = torch.poisson(self.photon_count * torch.exp(-p), generator=self._torch_generator())
                p = -torch.log(torch.clamp(counts, min=1.0) / self.photon_count)
            if self._augment and self.blur_sigma_px > 0:
                p = _gaussian_blur(p, self.blur_sigma_px)
            if self._augment and self.gaussian_noise_std > 0:
                noise = torch.randn(p.shape, generator=self._torch_generator()) * self.gaussian_noise_std
                p = p + noise
            views = line_integral_to_network(p, self.composer.max_line_integral).float()
            if self.realism is not None:
                # Its own stream, reseeded from this transform's per case (reproducible, resumable).
                self.realism.set_random_state(seed=int(self.R.randint(0, 2**31 - 1)))
                d[self.clean_key] = views
                views = self.realism(p, hu, spacing)
            d[self.output_key] = views
        return d

    def _torch_generator(self) -> torch.Generator:
        """A torch generator seeded from this transform's numpy state (reproducible under set_random_state)."""
        return torch.Generator().manual_seed(int(self.R.randint(0, 2**31 - 1)))


def _gaussian_blur(image: torch.Tensor, sigma_px: float) -> torch.Tensor:
    """Separable Gaussian blur of ``(V, H, W)`` images with edge replication (no dark rim from zero padding)."""
    radius = max(1, int(math.ceil(3.0 * sigma_px)))
    x = torch.arange(-radius, radius + 1, dtype=image.dtype)
    kernel = torch.exp(-0.5 * (x / sigma_px) ** 2)
    return separable_filtering(image[:, None], [kernel / kernel.sum()] * 2, mode="replicate")[:, 0]  # (V, H, W)


class StageResized(MapTransform):
    """Add one copy of each key per cascade stage, resized to that stage's cubic grid: ``{key}_{size}``.

    The field of view is unchanged, so a stage of ``size`` voxels has spacing ``fov / size``; the affine follows.
    Downsampling uses area averaging (no aliasing of thin bone), upsampling trilinear interpolation.
    """

    def __init__(self, keys: KeysCollection, sizes: Sequence[int], allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        if not sizes or any(int(s) < 1 for s in sizes):
            raise ValueError(f"sizes must list positive stage grid sizes, got {sizes!r}.")
        self.sizes = [int(s) for s in sizes]

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            for size in self.sizes:
                mode = "area" if size <= min(d[key].shape[1:]) else "trilinear"
                d[f"{key}_{size}"] = Resize(spatial_size=(size,) * 3, mode=mode)(d[key])
        return d
