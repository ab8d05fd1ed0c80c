"""Polychromatic Beer–Lambert with beam hardening: a tungsten kVp spectrum over energy bins, a water/bone basis from HU.

The DRR of :mod:`.renderer` is monochromatic: ``I/I₀ = exp(−p)`` with ``p = ∫ μ dl`` and ``μ = μ_w·(1 + HU/1000)``.
A radiograph integrates a spectrum, and the low energies are absorbed first (beam hardening), so thick or bony paths
transmit relatively more than the monochromatic law says. This module models that, data side only (no gradients):

**Spectrum** (energy bins ``E_k`` of width ``ΔE``, keV). Kramers' thick-target bremsstrahlung law for the photon
fluence per keV, ``Φ(E) ∝ Z·(kVp − E)/E`` for ``E < kVp`` (Kramers 1923; the anode's Z cancels in the
normalisation), hardened by the tube's total aluminium filtration ``t_Al`` (mm), ``Φ(E)·exp(−μ_Al(E)·t_Al)``, and
weighted by the energy an ideal energy-integrating detector records, ``E·Φ(E)``:

    w_k = E_k·Φ(E_k)·exp(−μ_Al(E_k)·t_Al) / Σ_j (same)                 (Σ_k w_k = 1; dimensionless)

Omitted and documented: tungsten's characteristic K lines (59.3, 67.2 keV; a few % of the energy fluence at
100–125 kVp), anode self-absorption (heel effect), detector absorption efficiency (an ideal absorber).

**Materials from HU** (two-material basis, water and ICRU-44 cortical bone, at the effective energy ``E_CT`` at which
the CT numbers were measured; air is water of zero density: its attenuation is 1.1·10⁻³ of water's, HU −999).
With ``β = μ_bone(E_CT)/μ_w(E_CT)`` the cortical-bone basis has ``HU_b = 1000·(β − 1)`` (1936 HU at 60 keV):

    HU ≤ 0:  water density fraction ρ_w = max(0, 1 + HU/1000),  bone volume fraction f_b = 0
    HU > 0:  f_b = HU / HU_b,  ρ_w = 1 − f_b                         (linear beyond HU_b: denser than the basis)

so that ``ρ_w + β·f_b = 1 + HU/1000``: at ``E_CT`` the decomposition gives back the monochromatic μ exactly.
Water- and bone-equivalent path lengths (mm): ``L_w = ∫ ρ_w dl``, ``L_b = ∫ f_b dl``. The renderer gives the plain DRR
``p = μ_w·(L_w + β·L_b)`` and, through the same system matrix, the *bone line integral* ``q = μ_w·L_b``
(``μ_w`` the bundle's ``mu_water_per_mm``), so ``L_w`` needs no second projection: ``μ_w·L_w = p − β·q``.

**Polychromatic line integral.** Attenuation is expressed in units of the spectrum's thin-object effective water
attenuation ``μ̄_w = Σ_k w_k μ_w(E_k)``, i.e. ``a_k = μ_w(E_k)/μ̄_w`` and ``c_k = μ_bone(E_k)/μ̄_w``; then

    p_poly = −ln Σ_k w_k·exp(−(a_k·μ_w·L_w + c_k·μ_w·L_b)) = −ln Σ_k w_k·exp(−a_k·p − b_k·q),   b_k = c_k − a_k·β

(evaluated as a ``logsumexp``). The normalisation makes the monochromatic DRR the thin-object limit of the
polychromatic one (``Σ_k w_k a_k = 1``: a thin water path gives ``p_poly ≈ p``); what remains is beam hardening
(``p_poly < Σ_k w_k (a_k p + b_k q)`` by Jensen's inequality, growing with thickness) and the energy dependence of
bone relative to water. One bin at ``E_CT`` gives ``a = 1``, ``b = 0`` and ``p_poly = p`` bit for bit.

Attenuation data: ``xraydb`` (Elam, Ravel & Sieber 2002 tables; offline SQLite, MIT licence), mass fractions ×
density; ICRU Report 44 composition of cortical bone (as in NIST's material tables).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .intensity import _positive

__all__ = ["AIR", "CORTICAL_BONE", "WATER", "BeamHardening", "Material", "energy_bins", "kramers_spectrum"]


@dataclass(frozen=True)
class Material:
    """A basis material: ``density_g_cm3`` (g/cm³) and elemental ``mass_fractions`` (summing to 1)."""

    name: str
    density_g_cm3: float
    mass_fractions: Mapping[str, float]


WATER = Material("water", 1.0, {"H": 0.111894, "O": 0.888106})
#: ICRU Report 44 cortical bone (ICRP), 1.92 g/cm³.
CORTICAL_BONE = Material(
    "cortical bone (ICRU 44)",
    1.92,
    {"H": 0.034, "C": 0.155, "N": 0.042, "O": 0.435, "Na": 0.001, "Mg": 0.002, "P": 0.103, "S": 0.003, "Ca": 0.225},
)
#: Dry air near sea level, 1.205 mg/cm³ (treated as water of zero density by the decomposition; kept for reference).
AIR = Material("air (dry)", 0.001205, {"C": 0.000124, "N": 0.755268, "O": 0.231781, "Ar": 0.012827})
ALUMINIUM = Material("aluminium", 2.699, {"Al": 1.0})


def _xraydb():
    try:
        import xraydb
    except ImportError:
        raise ImportError(
            "the polychromatic X-ray model needs the attenuation tables of xraydb: pip install xraydb==4.5.8"
        ) from None
    return xraydb


@functools.lru_cache(maxsize=64)
def _mu_per_mm(fractions: tuple[tuple[str, float], ...], density: float, energies_kev: tuple[float, ...]) -> np.ndarray:
    """Linear attenuation (1/mm) of a mixture: ``ρ·Σ_i w_i (μ/ρ)_i(E)``, total cross-section incl. coherent."""
    xraydb = _xraydb()
    energies_ev = np.asarray(energies_kev, dtype=np.float64) * 1000.0
    mass = sum(w * np.asarray(xraydb.mu_elam(el, energies_ev), dtype=np.float64) for el, w in fractions)  # cm²/g
    return density * mass / 10.0  # 1/cm -> 1/mm


def linear_attenuation(material: Material, energies_kev: Sequence[float]) -> np.ndarray:
    """``μ(E)`` in 1/mm of ``material`` at ``energies_kev`` (keV), from xraydb's tables."""
    energies = tuple(float(e) for e in np.atleast_1d(energies_kev))
    if not all(math.isfinite(e) and 1.0 <= e <= 800.0 for e in energies):
        raise ValueError(f"energies_kev must lie in [1, 800] keV (xraydb's tables), got {energies_kev!r}.")
    return _mu_per_mm(tuple(sorted(material.mass_fractions.items())), float(material.density_g_cm3), energies)


def energy_bins(max_kvp: float, bin_kev: float = 2.0, min_kev: float = 15.0) -> np.ndarray:
    """Centres (keV) of bins of ``bin_kev`` from ``min_kev`` up to ``max_kvp`` (below 15 keV the filtration and the
    patient absorb everything that matters)."""
    _positive(bin_kev, "energy_bin_kev")
    if not 1.0 <= min_kev < max_kvp:
        raise ValueError(f"need 1 <= min_kev < max_kvp, got min_kev={min_kev!r}, max_kvp={max_kvp!r}.")
    count = max(1, int(math.floor((max_kvp - min_kev) / bin_kev)))
    return min_kev + bin_kev * (np.arange(count) + 0.5)


def kramers_spectrum(energies_kev: Sequence[float], kvp: float, filtration_mm_al: float = 2.5) -> np.ndarray:
    """Detector-weighted spectrum ``w_k`` (module docstring): Kramers' law × Al filtration × ``E``; sums to 1.

    Args:
        energies_kev: bin centres (keV), equally spaced.
        kvp: tube peak voltage (kV); bins at or above it get weight 0.
        filtration_mm_al: total filtration in mm of aluminium (≥ 2.5 mm above 70 kVp, IEC 60601-1-3).
    """
    energies = np.asarray(energies_kev, dtype=np.float64)
    _positive(kvp, "kvp")
    if not (math.isfinite(filtration_mm_al) and filtration_mm_al >= 0):
        raise ValueError(f"filtration_mm_al must be a non-negative thickness in mm, got {filtration_mm_al!r}.")
    if not (energies < kvp).any():
        raise ValueError(f"kvp {kvp!r} kV is below every energy bin (lowest {energies.min():g} keV).")
    kramers = np.clip(kvp - energies, 0.0, None) / energies  # photons per keV, Φ(E) ∝ (kVp − E)/E
    filtered = kramers * np.exp(-linear_attenuation(ALUMINIUM, energies) * filtration_mm_al)
    weights = energies * filtered  # energy-integrating detector
    return weights / weights.sum()


class BeamHardening:
    """The spectrum-weighted Beer–Lambert law over a water/bone basis (module docstring for the equations).

    Args:
        energies_kev: energy bin centres (keV) that spectra are given on.
        ct_energy_kev: effective energy (keV) of the CT numbers; sets the bone basis' HU (``bone_hu``). 60 keV
            matches the bundle's ``mu_water_per_mm`` (0.0206 /mm, water at 60 keV).
        water, bone: the basis materials.
    """

    def __init__(
        self,
        energies_kev: Sequence[float],
        ct_energy_kev: float = 60.0,
        water: Material = WATER,
        bone: Material = CORTICAL_BONE,
    ) -> None:
        self.energies_kev = np.asarray(energies_kev, dtype=np.float64).reshape(-1)
        if self.energies_kev.size == 0:
            raise ValueError("energies_kev: need at least one energy bin.")
        self.ct_energy_kev = _positive(ct_energy_kev, "ct_energy_kev")
        # One table call over the bins and E_CT, so that a bin at E_CT holds exactly the E_CT values (b = 0).
        grid = np.append(self.energies_kev, self.ct_energy_kev)
        mu_w, mu_b = linear_attenuation(water, grid), linear_attenuation(bone, grid)
        self.mu_water, self.mu_bone = mu_w[:-1], mu_b[:-1]  # (E,) 1/mm
        self.bone_ratio = float(mu_b[-1] / mu_w[-1])  # β = μ_bone(E_CT)/μ_w(E_CT)
        self.bone_hu = 1000.0 * (self.bone_ratio - 1.0)  # HU of the bone basis

    def bone_fraction(self, hu: torch.Tensor) -> torch.Tensor:
        """Volume fraction ``f_b`` of the bone basis per voxel: ``max(HU, 0)/HU_b`` (dimensionless)."""
        return torch.clamp(hu, min=0.0) / self.bone_hu

    def coefficients(self, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(log w, a, b)`` for spectra ``weights`` ``(..., E)``; zero-weight bins get ``log w = −inf``."""
        w = np.asarray(weights, dtype=np.float64)
        if w.shape[-1] != self.energies_kev.size or (w < 0).any():
            raise ValueError(f"weights must be non-negative, (..., {self.energies_kev.size}), got {w.shape}.")
        mu_eff = (w * self.mu_water).sum(-1, keepdims=True)  # thin-object effective water attenuation
        a = self.mu_water / mu_eff
        b = self.mu_bone / mu_eff - a * self.bone_ratio
        with np.errstate(divide="ignore"):
            return np.log(w), a, b

    def line_integral(self, p: torch.Tensor, q: torch.Tensor, weights: np.ndarray) -> torch.Tensor:
        """``p_poly = −ln Σ_k w_k exp(−a_k p − b_k q)``, batched over any leading dimensions.

        Args:
            p: ``(..., H, W)`` monochromatic DRRs, e.g. the renderer's ``(B, V, H, W)`` (dimensionless).
            q: bone line integrals ``μ_w·L_b``, the shape of ``p``.
            weights: ``(E,)`` one spectrum for all, or ``(..., E)`` one per image (the leading dims of ``p``).
        Returns:
            The polychromatic line integrals, the shape and dtype of ``p``.
        """
        lead = p.shape[:-2]
        w = np.broadcast_to(np.asarray(weights, dtype=np.float64), (*lead, self.energies_kev.size)).reshape(
            -1, self.energies_kev.size
        )
        log_w, a, b = (torch.as_tensor(x, dtype=p.dtype, device=p.device) for x in self.coefficients(w))  # (N, E)
        keep = torch.isfinite(log_w).any(0)  # bins with weight in some image
        log_w, a, b = log_w[:, keep, None, None], a[:, keep, None, None], b[:, keep, None, None]  # (N, E, 1, 1)
        p_flat, q_flat = p.reshape(-1, 1, *p.shape[-2:]), q.reshape(-1, 1, *q.shape[-2:])  # (N, 1, H, W)
        exponent = log_w - a * p_flat - b * q_flat  # (N, E, H, W)
        return -torch.logsumexp(exponent, dim=1).reshape(p.shape)  # (..., H, W)
