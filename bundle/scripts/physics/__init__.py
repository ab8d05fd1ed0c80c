"""Projection physics shared by the data pipeline, the depth lifting and the DRR consistency loss.

geometry (frames, rays, point projection) -> renderer (exact line integrals, batched, differentiable) ->
intensity helpers (HU <-> μ, Beer–Lambert, network normalisation; a polychromatic spectrum with beam hardening for
radiograph-like training views) -> composer (HU -> network-scale images,
shared by the data transform and the physics loss).
"""

from .analytic import Ellipsoid, ellipsoid_line_integrals, voxelize_ellipsoids
from .composer import RadiographComposer
from .geometry import VIEW_ANGLES_DEG, ProjectionGeometry, Rays, centred_affine
from .intensity import (
    beer_lambert,
    ct_scale_to_hu,
    hu_to_ct_scale,
    hu_to_mu,
    line_integral_from_intensity,
    line_integral_to_network,
    mu_to_hu,
    network_to_line_integral,
)
from .projector import PROJECTORS, system_matrix
from .renderer import DRRRenderer
from .spectrum import AIR, CORTICAL_BONE, WATER, BeamHardening, Material, energy_bins, kramers_spectrum

__all__ = [
    "AIR",
    "BeamHardening",
    "CORTICAL_BONE",
    "DRRRenderer",
    "Material",
    "WATER",
    "energy_bins",
    "kramers_spectrum",
    "PROJECTORS",
    "Ellipsoid",
    "ProjectionGeometry",
    "RadiographComposer",
    "Rays",
    "VIEW_ANGLES_DEG",
    "beer_lambert",
    "centred_affine",
    "ct_scale_to_hu",
    "hu_to_ct_scale",
    "ellipsoid_line_integrals",
    "hu_to_mu",
    "line_integral_from_intensity",
    "line_integral_to_network",
    "mu_to_hu",
    "network_to_line_integral",
    "system_matrix",
    "voxelize_ellipsoids",
]
