"""MONAI transforms that MONAI lacks: CT validation, body-centred field of view, on-the-fly X-ray rendering.

Everything else in the preprocessing chain is stock MONAI (see ``configs/train.yaml``): ``LoadImaged`` →
``ValidateCTd`` → ``Orientationd(RAS)`` → ``Spacingd`` → ``ThresholdIntensityd`` (scanner padding → air, HU clip)
→ ``CropOrPadToFieldOfViewd`` → ``RenderXrayd`` → ``ScaleIntensityRanged`` (fixed HU window → [−1, 1]).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.networks.layers import separable_filtering
from monai.transforms import Affine, BorderPad, MapTransform, Randomizable, Resize, SpatialCrop

from ..physics import RadiographComposer, line_integral_to_network

__all__ = ["CropOrPadToFieldOfViewd", "RenderXrayd", "StageResized", "ValidateCTd", "source_name", "voxel_spacing"]


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


class CropOrPadToFieldOfViewd(MapTransform):
    """Centre a cubic physical field of view on the body and crop or pad to it (padding is air).

    The body is every voxel above ``body_threshold_hu``; the field of view is centred on its bounding box (the
    volume centre if there is no body). The affine is updated, so the output keeps its place in patient space.

    Args:
        keys: image keys (channel-first, RAS, any spacing).
        fov_mm: edge length of the field of view in mm (one number or three).
        body_threshold_hu: HU above which a voxel belongs to the body.
        pad_value: HU written into padded voxels (air).
    """

    def __init__(
        self,
        keys: KeysCollection,
        fov_mm: float | Sequence[float] = 320.0,
        body_threshold_hu: float = -500.0,
        pad_value: float = -1000.0,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        fov = (float(fov_mm),) * 3 if isinstance(fov_mm, (int, float)) else tuple(map(float, fov_mm))
        if len(fov) != 3 or not all(math.isfinite(f) and f > 0 for f in fov):
            raise ValueError(f"fov_mm must be a positive length in mm (or three), got {fov_mm!r}.")
        self.fov_mm, self.body_threshold_hu, self.pad_value = fov, float(body_threshold_hu), float(pad_value)

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
            d[key] = SpatialCrop(roi_start=roi_start, roi_end=roi_end)(img)
        return d


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

    Args:
        keys: the CT key (one).
        composer: HU -> network-scale renderer (shared with the physics loss).
        output_key: where the views go.
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
            d[self.output_key] = line_integral_to_network(p, self.composer.max_line_integral).float()
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
