"""Radiograph-like training views: DRR line integrals -> what a chest CR/DR system would store (data side only).

A real radiograph is not a DRR: the beam is polychromatic and scattered, the detector blurs and adds noise, and the
system log-transforms and processes the image (unsharp masking, equalisation, a tone curve) before storing it, often
with collimator shutters at the borders. :class:`RadiographRealism` applies those steps to the views that
:class:`~scripts.data.RenderXrayd` renders, so that a model trained on CTs meets real radiographs in distribution.
Per view, each part with its own probability and randomised strength (``U`` uniform, ``logU`` log-uniform):

1. **Spectrum and beam hardening** (:mod:`scripts.physics.spectrum`): ``p_poly = −ln Σ_k w_k exp(−a_k p − b_k q)``,
   a Kramers spectrum at ``kvp`` (kV) with ``filtration_mm_al`` (mm Al) over ``energy_bin_kev`` bins, on a
   water/cortical-bone basis from HU; ``q`` (the bone line integral) is a second projection through the composer's
   renderer (same cached system matrix). Primary intensity ``I_p = exp(−p_poly)`` (relative to the open beam ``I₀``).
2. **Scatter**, additive in the intensity domain before the log (convolution model, Ohnesorge et al. 1999):
   ``S = k·(G_σ ∗ (I_p·p_poly))`` — the first-order scatter amplitude ``I·ln(I₀/I)`` spread by a wide Gaussian of
   ``scatter_sigma_mm`` (mm at the detector) — with ``k`` set so that the body-averaged scatter-to-primary ratio
   ``mean_body(S)/mean_body(I_p)`` is ``scatter_to_primary`` (0.2–1 and beyond for a chest PA without grid; body:
   pixels whose DRR exceeds ``body_line_integral``). ``I = I_p + S``.
3. **Detector** in the intensity domain, in the order of the signal chain: quantum noise
   ``I ← Poisson(N·I)/N`` with ``photon_count`` ``N`` quanta per pixel in the open beam; the point-spread function
   ``I ← G_psf ∗ I`` (``psf_sigma_px`` pixels; it correlates the quantum noise, as a scintillator does); electronic
   read-out noise ``I ← I + 𝒩(0, electronic_noise_std²)`` (fraction of the open-beam signal). Then the log,
   ``p = −ln max(I, 1/N)`` (one quantum is the floor).
4. **Processing** on the log image: unsharp masking ``p ← p + amount·(p − G_r ∗ p)`` (``unsharp_radius_px``,
   ``unsharp_amount``; small radii sharpen edges, large ones equalise the dynamic range), then a monotone tone curve
   on ``v = (p − min)/(max − min)``: ``T(v) = (1 − m)·v^γ + m·σ̂(v^γ)`` with ``σ̂`` a logistic of slope ``s`` and
   centre ``c`` rescaled to map [0, 1] onto [0, 1] (``tone_gamma``, ``tone_sigmoid_mix``, ``tone_sigmoid_slope``);
   the result is mapped back to ``[min, max]``.
5. **Collimator shutters**: rectangular borders (each side up to ``shutter_max_fraction`` of the image) set to the
   image minimum ("no attenuation": an electronic shutter that blacks the border) or, with
   ``shutter_saturated_prob``, its maximum (saturated: the collimator leaves that part of the detector unexposed).

**Normalisation.** ``normalization="anchored"`` (default): a processed, tone-mapped image has no physical scale, so
the result goes through exactly what a real radiograph gets at inference,
:func:`~scripts.data.radiograph.radiograph_to_network` — its 1st/99th percentiles anchored to the view's
``DEFAULT_LINE_INTEGRAL_RANGES`` — and then the fixed network scale ``2p/p_max − 1``. Training and inference then
share one intensity convention for radiographs, shutters and saturation included. ``"fixed"`` maps the result with
the fixed scale only (meaningful for the physical parts 1–3). With probability ``1 − prob`` a case keeps the clean
DRR on the fixed scale, the convention of CT-rendered inputs (evaluation, demos), so the model keeps both.

The DRR consistency loss must compare the network's CT with the *clean* DRR, not with these views:
:class:`~scripts.data.RenderXrayd` keeps the clean views under its ``clean_key`` (``xray_clean``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import Randomizable

from ..physics import RadiographComposer, line_integral_to_network
from ..physics.spectrum import BeamHardening, energy_bins, kramers_spectrum
from .radiograph import DEFAULT_LINE_INTEGRAL_RANGES, Radiograph, radiograph_to_network
from .transforms import _gaussian_blur

__all__ = [
    "NORMALIZATIONS",
    "RadiographRealism",
    "ViewParams",
    "apply_shutters",
    "detector_response",
    "low_pass",
    "scatter_field",
    "shutter_mask",
    "tone_curve",
    "unsharp_mask",
]

NORMALIZATIONS = ("anchored", "fixed")


def low_pass(image: torch.Tensor, sigma_px: float) -> torch.Tensor:
    """Gaussian low-pass ``G_σ ∗ x`` of a ``(H, W)`` image (edges replicated). Wide kernels (σ ≥ 6 px) run on an
    area-downsampled grid (factor ⌊σ/3⌋) and are upsampled bilinearly: the box and bilinear kernels add a variance
    of about (σ/3)²/4, under 3 % of σ², for a ~10× cheaper filter."""
    factor = max(1, int(sigma_px // 3)) if sigma_px >= 6 else 1
    if factor == 1:
        return _gaussian_blur(image[None], sigma_px)[0]
    h, w = image.shape
    small = F.interpolate(image[None, None], size=(max(1, h // factor), max(1, w // factor)), mode="area")[0]
    small = _gaussian_blur(small, sigma_px / factor)  # (1, h', w')
    return F.interpolate(small[None], size=(h, w), mode="bilinear", align_corners=False)[0, 0]


def scatter_field(
    primary: torch.Tensor, p_poly: torch.Tensor, body: torch.Tensor, spr: float, sigma_px: float
) -> torch.Tensor:
    """Scatter intensity ``(H, W)``: ``k·G_σ ∗ (I_p·p_poly)`` scaled to a body-averaged SPR of ``spr``."""
    source = low_pass(primary * p_poly, sigma_px)  # (H, W)
    if spr == 0 or not bool(body.any()) or float(source[body].mean()) <= 0:
        return torch.zeros_like(primary)
    return source * (spr * primary[body].mean() / source[body].mean())


def detector_response(
    intensity: torch.Tensor,
    photon_count: float | None,
    psf_sigma_px: float,
    electronic_noise_std: float,
    generator: torch.Generator,
) -> torch.Tensor:
    """Quantum noise -> PSF -> electronic noise on a ``(H, W)`` relative intensity ``I/I₀``."""
    if photon_count is not None:
        intensity = torch.poisson(photon_count * intensity.clamp(min=0.0), generator=generator) / photon_count
    if psf_sigma_px > 0:
        intensity = _gaussian_blur(intensity[None], psf_sigma_px)[0]
    if electronic_noise_std > 0:
        intensity = intensity + electronic_noise_std * torch.randn(intensity.shape, generator=generator)
    return intensity


def unsharp_mask(image: torch.Tensor, radius_px: float, amount: float) -> torch.Tensor:
    """``x + amount·(x − G_r ∗ x)`` on a ``(H, W)`` log image."""
    return image + amount * (image - low_pass(image, radius_px))


def tone_curve(image: torch.Tensor, gamma: float, sigmoid_mix: float, slope: float, centre: float) -> torch.Tensor:
    """The monotone tone curve ``T`` of the module docstring on ``(H, W)``; keeps the image's [min, max]."""
    lo, hi = image.min(), image.max()
    if not float(hi - lo) > 0:
        return image.clone()
    v = ((image - lo) / (hi - lo)).clamp(0.0, 1.0) ** gamma
    s0, s1 = torch.sigmoid(torch.tensor(-slope * centre)), torch.sigmoid(torch.tensor(slope * (1.0 - centre)))
    logistic = (torch.sigmoid(slope * (v - centre)) - s0) / (s1 - s0)
    return lo + ((1.0 - sigmoid_mix) * v + sigmoid_mix * logistic) * (hi - lo)


def shutter_mask(shape: Sequence[int], borders: Sequence[int]) -> torch.Tensor:
    """Boolean ``(H, W)`` mask of the collimated borders ``(top, bottom, left, right)`` in pixels."""
    h, w = shape
    top, bottom, left, right = (int(b) for b in borders)
    mask = torch.zeros(h, w, dtype=torch.bool)
    mask[:top] = True
    mask[:, :left] = True
    if bottom > 0:  # a slice from -0 would cover the whole image
        mask[h - bottom :] = True
    if right > 0:
        mask[:, w - right :] = True
    return mask


def apply_shutters(image: torch.Tensor, borders: Sequence[int], saturated: bool) -> torch.Tensor:
    """Set the collimated borders of a ``(H, W)`` image to its maximum (saturated) or minimum (no attenuation)."""
    mask = shutter_mask(image.shape, borders)
    out = image.clone()
    out[mask] = image.max() if saturated else image.min()
    return out


@dataclass
class ViewParams:
    """The random draws for one view; ``None`` for a part that does not apply."""

    kvp: float | None = None
    filtration_mm_al: float | None = None
    scatter_to_primary: float | None = None
    scatter_sigma_mm: float | None = None
    photon_count: float | None = None
    psf_sigma_px: float | None = None
    electronic_noise_std: float | None = None
    unsharp: tuple[float, float] | None = None  # (radius_px, amount)
    tone: tuple[float, float, float, float] | None = None  # (gamma, sigmoid_mix, slope, centre)
    shutter: tuple[tuple[int, int, int, int], bool] | None = None  # (borders, saturated)


def _range(value: float | Sequence[float], name: str, positive: bool = False) -> tuple[float, float]:
    """A ``(low, high)`` range from one number or two; checked."""
    lo, hi = (float(value), float(value)) if isinstance(value, (int, float)) else (float(value[0]), float(value[1]))
    if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi and (lo > 0 if positive else lo >= 0)):
        kind = "positive" if positive else "non-negative"
        raise ValueError(f"{name} must be a {kind} number or a (low, high) range with low <= high, got {value!r}.")
    return lo, hi


def _probability(value: float, name: str) -> float:
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}.")
    return float(value)


class RadiographRealism(Randomizable):
    """DRR line integrals of a case -> radiograph-like views on the network scale (module docstring: the chain).

    Called by :class:`~scripts.data.RenderXrayd` with the views it rendered, the (pose-jittered) HU volume and its
    spacing; draws its random numbers from its own state, which ``RenderXrayd`` reseeds from its own per case.

    Args:
        composer: the training composer (renderer, ``mu_water``, ``max_line_integral``, geometry).
        prob: probability that a case gets the chain at all (else: the clean DRR on the fixed scale).
        spectrum_prob, kvp (kV), filtration_mm_al (mm Al), energy_bin_kev, ct_energy_kev: part 1.
        scatter_prob, scatter_to_primary, scatter_sigma_mm (mm at the detector), body_line_integral: part 2.
        detector_prob, photon_count (quanta per pixel, open beam; log-uniform), psf_sigma_px,
            electronic_noise_std (fraction of the open-beam signal): part 3.
        unsharp_prob, unsharp_radius_px (log-uniform), unsharp_amount; tone_prob, tone_gamma (log-uniform),
            tone_sigmoid_mix, tone_sigmoid_slope, tone_sigmoid_centre: part 4.
        shutter_prob, shutter_max_fraction, shutter_saturated_prob: part 5.
        normalization: ``"anchored"`` (the radiograph reader's percentile anchoring) or ``"fixed"``.
        line_integral_ranges, percentiles: the anchors (default: the reader's, ``DEFAULT_LINE_INTEGRAL_RANGES``).
    Ranges are ``(low, high)`` or one number (fixed).
    """

    def __init__(
        self,
        composer: RadiographComposer,
        prob: float = 0.5,
        spectrum_prob: float = 1.0,
        kvp: float | Sequence[float] = (100.0, 125.0),
        filtration_mm_al: float | Sequence[float] = (2.5, 4.0),
        energy_bin_kev: float = 5.0,
        ct_energy_kev: float = 60.0,
        scatter_prob: float = 1.0,
        scatter_to_primary: float | Sequence[float] = (0.2, 1.0),
        scatter_sigma_mm: float | Sequence[float] = (40.0, 100.0),
        body_line_integral: float = 0.5,
        detector_prob: float = 1.0,
        photon_count: float | Sequence[float] = (3.0e4, 1.0e6),
        psf_sigma_px: float | Sequence[float] = (0.0, 1.0),
        electronic_noise_std: float | Sequence[float] = (0.0, 3.0e-4),
        unsharp_prob: float = 0.8,
        unsharp_radius_px: float | Sequence[float] = (1.0, 16.0),
        unsharp_amount: float | Sequence[float] = (0.0, 1.5),
        tone_prob: float = 0.8,
        tone_gamma: float | Sequence[float] = (0.6, 1.6),
        tone_sigmoid_mix: float | Sequence[float] = (0.0, 1.0),
        tone_sigmoid_slope: float | Sequence[float] = (4.0, 12.0),
        tone_sigmoid_centre: float | Sequence[float] = (0.35, 0.65),
        shutter_prob: float = 0.3,
        shutter_max_fraction: float = 0.15,
        shutter_saturated_prob: float = 0.5,
        normalization: str = "anchored",
        line_integral_ranges: Mapping[str, Sequence[float]] | None = None,
        percentiles: Sequence[float] = (1.0, 99.0),
    ) -> None:
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {list(NORMALIZATIONS)}, got {normalization!r}.")
        self.composer, self.normalization = composer, normalization
        self.geometry = composer.renderer.geometry
        names = [str(v) for v in self.geometry.views]
        self.ranges = dict(DEFAULT_LINE_INTEGRAL_RANGES if line_integral_ranges is None else line_integral_ranges)
        missing = [v for v in names if v not in self.ranges]
        if normalization == "anchored" and missing:
            raise ValueError(
                f"line_integral_ranges: no anchor range for the views {missing} (normalization: anchored)."
            )
        self.view_names, self.percentiles = names, tuple(float(p) for p in percentiles)
        self.prob = _probability(prob, "prob")
        self.spectrum_prob = _probability(spectrum_prob, "spectrum_prob")
        self.scatter_prob = _probability(scatter_prob, "scatter_prob")
        self.detector_prob = _probability(detector_prob, "detector_prob")
        self.unsharp_prob = _probability(unsharp_prob, "unsharp_prob")
        self.tone_prob = _probability(tone_prob, "tone_prob")
        self.shutter_prob = _probability(shutter_prob, "shutter_prob")
        self.shutter_saturated_prob = _probability(shutter_saturated_prob, "shutter_saturated_prob")
        self.kvp = _range(kvp, "kvp", positive=True)
        self.filtration_mm_al = _range(filtration_mm_al, "filtration_mm_al")
        self.scatter_to_primary = _range(scatter_to_primary, "scatter_to_primary")
        self.scatter_sigma_mm = _range(scatter_sigma_mm, "scatter_sigma_mm", positive=True)
        self.photon_count = _range(photon_count, "photon_count", positive=True)
        self.psf_sigma_px = _range(psf_sigma_px, "psf_sigma_px")
        self.electronic_noise_std = _range(electronic_noise_std, "electronic_noise_std")
        self.unsharp_radius_px = _range(unsharp_radius_px, "unsharp_radius_px", positive=True)
        self.unsharp_amount = _range(unsharp_amount, "unsharp_amount")
        self.tone_gamma = _range(tone_gamma, "tone_gamma", positive=True)
        self.tone_sigmoid_mix = _range(tone_sigmoid_mix, "tone_sigmoid_mix")
        self.tone_sigmoid_slope = _range(tone_sigmoid_slope, "tone_sigmoid_slope", positive=True)
        self.tone_sigmoid_centre = _range(tone_sigmoid_centre, "tone_sigmoid_centre")
        if self.tone_sigmoid_mix[1] > 1 or self.tone_sigmoid_centre[1] > 1:
            raise ValueError("tone_sigmoid_mix and tone_sigmoid_centre must lie in [0, 1].")
        if not 0.0 <= shutter_max_fraction < 0.5:
            raise ValueError(f"shutter_max_fraction must be in [0, 0.5), got {shutter_max_fraction!r}.")
        self.shutter_max_fraction = float(shutter_max_fraction)
        if not (math.isfinite(body_line_integral) and body_line_integral >= 0):
            raise ValueError(f"body_line_integral must be a non-negative line integral, got {body_line_integral!r}.")
        self.body_line_integral = float(body_line_integral)
        # Energy bins up to the highest kVp, once; a drawn kVp zeroes the bins above it.
        self.beam = (
            BeamHardening(energy_bins(self.kvp[1], energy_bin_kev), ct_energy_kev) if self.spectrum_prob > 0 else None
        )
        self._apply = False
        self.params: list[ViewParams] = []

    # ---- random draws --------------------------------------------------------------------------------------------
    def _uniform(self, bounds: tuple[float, float]) -> float:
        return float(self.R.uniform(*bounds))

    def _log_uniform(self, bounds: tuple[float, float]) -> float:
        return float(math.exp(self.R.uniform(math.log(bounds[0]), math.log(bounds[1]))))

    def randomize(self, data: Sequence[int] | None = None) -> None:
        """Draw whether the chain applies and every view's parameters; ``data``: the ``(H, W)`` detector shape."""
        h, w = self.geometry.detector_shape if data is None else data
        self._apply = self.R.rand() < self.prob
        self.params = []
        for _ in self.view_names:
            v = ViewParams()
            if self.R.rand() < self.spectrum_prob:
                v.kvp, v.filtration_mm_al = self._uniform(self.kvp), self._uniform(self.filtration_mm_al)
            if self.R.rand() < self.scatter_prob:
                v.scatter_to_primary = self._uniform(self.scatter_to_primary)
                v.scatter_sigma_mm = self._uniform(self.scatter_sigma_mm)
            if self.R.rand() < self.detector_prob:
                v.photon_count = self._log_uniform(self.photon_count)
                v.psf_sigma_px = self._uniform(self.psf_sigma_px)
                v.electronic_noise_std = self._uniform(self.electronic_noise_std)
            if self.R.rand() < self.unsharp_prob:
                v.unsharp = (self._log_uniform(self.unsharp_radius_px), self._uniform(self.unsharp_amount))
            if self.R.rand() < self.tone_prob:
                v.tone = (
                    self._log_uniform(self.tone_gamma),
                    self._uniform(self.tone_sigmoid_mix),
                    self._uniform(self.tone_sigmoid_slope),
                    self._uniform(self.tone_sigmoid_centre),
                )
            if self.R.rand() < self.shutter_prob:
                limit = (h, h, w, w)
                borders = tuple(int(self.R.randint(0, int(self.shutter_max_fraction * n) + 1)) for n in limit)
                v.shutter = (borders, bool(self.R.rand() < self.shutter_saturated_prob))
            self.params.append(v)

    # ---- the chain -----------------------------------------------------------------------------------------------
    def _to_network(self, p: torch.Tensor) -> torch.Tensor:
        """``(V, H, W)`` line-integral-like images -> network scale, by the configured normalisation."""
        if self.normalization == "fixed":
            return line_integral_to_network(p, self.composer.max_line_integral)
        return torch.stack(
            [
                radiograph_to_network(
                    Radiograph(p[i].numpy()),
                    self.geometry,
                    self.composer.max_line_integral,
                    self.ranges[name],
                    self.percentiles,
                )
                for i, name in enumerate(self.view_names)
            ]
        )

    def __call__(self, p: torch.Tensor, hu: torch.Tensor, spacing_mm: Sequence[float]) -> torch.Tensor:
        """Args: ``p (V, H, W)`` DRR line integrals, ``hu (1, X, Y, Z)`` the volume they were rendered from,
        ``spacing_mm`` its voxel size. Returns ``(V, H, W)`` float32 views on the network scale."""
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # ~30 small 2D operations: one thread beats a (shared) pool by 10-30x on CPU
        try:
            return self._chain(p, hu, spacing_mm)
        finally:
            torch.set_num_threads(threads)

    def _chain(self, p: torch.Tensor, hu: torch.Tensor, spacing_mm: Sequence[float]) -> torch.Tensor:
        self.randomize(tuple(p.shape[1:]))
        p = p.detach().float().cpu()
        if not self._apply:
            return line_integral_to_network(p, self.composer.max_line_integral).float()
        generator = torch.Generator().manual_seed(int(self.R.randint(0, 2**31 - 1)))
        q = None
        if self.beam is not None and any(v.kvp is not None for v in self.params):
            with torch.no_grad():  # the bone line integral q = μ_w·L_b through the same system matrix
                bone = self.composer.mu_water * self.beam.bone_fraction(torch.as_tensor(hu).float())
                q = self.composer.renderer(bone[None], spacing_mm)[0].cpu()  # (V, H, W)
        pixel_mm = float(np.mean(self.geometry.pixel_spacing_mm))
        out = []
        for i, v in enumerate(self.params):
            pv = p[i]  # (H, W)
            if v.kvp is not None:
                weights = kramers_spectrum(self.beam.energies_kev, v.kvp, v.filtration_mm_al)
                pv = self.beam.line_integral(pv[None], q[i : i + 1], weights)[0]
            if v.scatter_to_primary is not None or v.photon_count is not None:
                primary = torch.exp(-pv)  # I_p / I₀
                intensity = primary
                if v.scatter_to_primary is not None:
                    body = p[i] > self.body_line_integral
                    sigma_px = v.scatter_sigma_mm / pixel_mm
                    intensity = primary + scatter_field(primary, pv, body, v.scatter_to_primary, sigma_px)
                floor = 1e-6
                if v.photon_count is not None:
                    intensity = detector_response(
                        intensity, v.photon_count, v.psf_sigma_px, v.electronic_noise_std, generator
                    )
                    floor = 1.0 / v.photon_count
                pv = -torch.log(intensity.clamp(min=floor))
            if v.unsharp is not None:
                pv = unsharp_mask(pv, *v.unsharp)
            if v.tone is not None:
                pv = tone_curve(pv, *v.tone)
            if v.shutter is not None:
                pv = apply_shutters(pv, *v.shutter)
            out.append(pv)
        return self._to_network(torch.stack(out)).float()  # (V, H, W)
