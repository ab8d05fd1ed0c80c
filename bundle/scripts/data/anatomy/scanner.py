"""What a CT scanner adds to the anatomy: the reconstruction kernel's blur, correlated noise and, rarely, streaks.

* **Kernel blur** — a soft-tissue (``standard``) filtered-backprojection kernel has an in-plane point-spread FWHM of
  about 0.7–1.0 mm and the slice-sensitivity profile a FWHM near the slice thickness (1–2.5 mm): applied as a
  separable Gaussian in mm, it also gives partial-volume edges where organs meet.
* **Correlated noise** — FBP noise is not white: its in-plane power spectrum rises linearly with spatial frequency
  (the ramp filter) and is rolled off by the kernel's apodisation, peaking near 0.3–0.4 cycles/mm for a standard
  kernel (Boedeker & McNitt-Gray 2007; AAPM TG-233). White noise is shaped by ``|f|·exp(−(f/f_c)²)`` in-plane
  and the slice profile along z, then scaled to the patient's noise level (σ ≈ 8–25 HU in soft tissue at chest
  doses, higher for larger patients — noise grows roughly with exp(μ·d/2) of the body's water-equivalent diameter).
* **Streaks** — photon starvation across the shoulders: in a few axial slices through the shoulder girdle, a dark
  band between the two densest bones with thin bright edges, in a small share of scans.

Noise is added inside the body only: outside it the grid stays exactly air, as the couch-removal step leaves it.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy import ndimage

__all__ = ["ScannerModel", "apply_scanner"]


class ScannerModel(dict):
    """The drawn acquisition: ``kernel_fwhm_mm`` (in-plane), ``slice_fwhm_mm``, ``noise_hu``, ``nps_peak_per_mm``,
    ``streaks`` (bool). A dict so it is written to the phantom's findings file as it is."""


def draw_scanner(rng: np.random.Generator, body_diameter_mm: float, noise_hu: float | None) -> ScannerModel:
    """The scanner settings of one phantom; ``noise_hu`` overrides the size-dependent noise level."""
    if noise_hu is None:
        # ~12 HU for a 300 mm (water-equivalent) chest, growing by exp(μ·Δd/2) with μ ≈ 0.019/mm for larger ones.
        level = 12.0 * math.exp(0.0095 * (body_diameter_mm - 300.0)) * rng.uniform(0.8, 1.25)
        noise_hu = float(np.clip(level, 5.0, 40.0))
    return ScannerModel(
        kernel_fwhm_mm=float(rng.uniform(0.7, 1.1)),
        slice_fwhm_mm=float(rng.choice([1.0, 1.25, 2.0, 2.5])),
        noise_hu=float(noise_hu),
        nps_peak_per_mm=float(rng.uniform(0.25, 0.4)),
        streaks=bool(rng.random() < 0.1),
    )


def _correlated_noise(rng: np.random.Generator, shape, spacing, model: ScannerModel) -> np.ndarray:
    """Noise of standard deviation ``noise_hu`` with the FBP power spectrum (in-plane ramp × apodisation, slice
    profile along z)."""
    white = torch.from_numpy(rng.standard_normal(shape).astype(np.float32))
    spectrum = torch.fft.rfftn(white)
    fx = torch.fft.fftfreq(shape[0], d=spacing[0])[:, None, None]
    fy = torch.fft.fftfreq(shape[1], d=spacing[1])[None, :, None]
    fz = torch.fft.rfftfreq(shape[2], d=spacing[2])[None, None, :]
    f_xy = torch.sqrt(fx**2 + fy**2)
    f_c = model["nps_peak_per_mm"] * math.sqrt(2.0)  # |f|·exp(−(f/f_c)²) peaks at f_c/√2
    sigma_z = model["slice_fwhm_mm"] / 2.355
    # Amplitude = sqrt(NPS): NPS ∝ |f| exp(−2(f/f_c)²) in-plane × Gaussian slice profile² along z.
    amplitude = torch.sqrt(f_xy) * torch.exp(-((f_xy / f_c) ** 2)) * torch.exp(-2.0 * (math.pi * sigma_z * fz) ** 2)
    noise = torch.fft.irfftn(spectrum * amplitude, s=shape).numpy()
    std = float(noise.std()) or 1.0
    return noise * np.float32(model["noise_hu"] / std)


def apply_scanner(
    hu: np.ndarray, body: np.ndarray, spacing, rng: np.random.Generator, model: ScannerModel
) -> np.ndarray:
    """Blur by the kernel, add shaped noise inside ``body`` and (if drawn) shoulder streaks; returns float32 HU."""
    sigma = [
        fwhm / 2.355 / s
        for fwhm, s in zip((model["kernel_fwhm_mm"],) * 2 + (model["slice_fwhm_mm"],), spacing, strict=True)
    ]
    out = ndimage.gaussian_filter(hu, sigma, mode="nearest", truncate=3.0).astype(np.float32)
    if model["streaks"]:
        _shoulder_streaks(out, spacing, rng)
    if model["noise_hu"] > 0:
        out += _correlated_noise(rng, hu.shape, spacing, model) * body
    out[~body] = -1000.0
    # Air is the floor: noise below −1000 HU in the airways and lungs is clipped, as the training pipeline would map
    # it to air anyway (scanners store down to −1024, which the preprocessing treats as air).
    return np.maximum(out, np.float32(-1000.0), out=out)


def _shoulder_streaks(hu: np.ndarray, spacing, rng: np.random.Generator) -> None:
    """Dark bands between the two densest bone clusters of the top axial slices (photon starvation)."""
    xs = (np.arange(hu.shape[0]) - (hu.shape[0] - 1) / 2.0)[:, None] * spacing[0]
    ys = (np.arange(hu.shape[1]) - (hu.shape[1] - 1) / 2.0)[None, :] * spacing[1]
    strength = rng.uniform(40.0, 120.0)
    n = max(1, int(round(rng.uniform(8.0, 20.0) / spacing[2])))
    applied = 0
    for k in range(hu.shape[2] - 1, -1, -1):
        if applied >= n:
            break
        dense = hu[:, :, k] > 500.0
        left, right = dense & (xs < -40.0), dense & (xs > 40.0)
        if left.sum() < 3 or right.sum() < 3:
            continue
        a = np.array([xs[left.nonzero()[0], 0].mean(), ys[0, left.nonzero()[1]].mean()])
        b = np.array([xs[right.nonzero()[0], 0].mean(), ys[0, right.nonzero()[1]].mean()])
        d = b - a
        t = np.clip(((xs - a[0]) * d[0] + (ys - a[1]) * d[1]) / float(d @ d), 0.0, 1.0)
        dist = np.hypot(xs - a[0] - t * d[0], ys - a[1] - t * d[1])
        width = rng.uniform(3.0, 6.0)
        band = -strength * np.exp(-((dist / width) ** 2)) + 0.4 * strength * np.exp(
            -(((dist - 2 * width) / width) ** 2)
        )
        hu[:, :, k] += band.astype(np.float32) * (hu[:, :, k] > -900.0)
        applied += 1
