"""DiffDRR configured with exactly the rays of a :class:`ProjectionGeometry` (reference for tests and benchmarks).

How the geometries are matched: DiffDRR's detector, with an identity frame change (``reorient``) and identity
pose, has its source at the origin, its detector plane at ``z = sdd``, image columns along camera ``+x`` and image
rows (top -> bottom) along camera ``-y``. For each of our views we pass the camera-to-world pose

    R = [column, -row, beam],  t = source,

so camera ``+z`` is our beam, camera ``+x`` our column direction and camera ``+y`` superior; the volume is given
to DiffDRR with our affine (RAS, voxel centres at ``(i − (N−1)/2)·s``, isocentre at the origin). Pixel ``(r, c)``
of DiffDRR is then the same ray as our pixel ``(r, c)``; :func:`ray_mismatch_mm` checks it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from scripts.physics import ProjectionGeometry, centred_affine


def poses(geometry: ProjectionGeometry) -> torch.Tensor:
    """Camera-to-world 4×4 poses ``(V, 4, 4)`` that reproduce each view's rays in DiffDRR."""
    f = geometry.frames()
    mats = torch.zeros(geometry.num_views, 4, 4, dtype=torch.float64)
    mats[:, :3, 0] = f["column"]
    mats[:, :3, 1] = -f["row"]
    mats[:, :3, 2] = f["beam"]
    mats[:, :3, 3] = f["source"]
    mats[:, 3, 3] = 1.0
    return mats.float()


def build(geometry: ProjectionGeometry, mu_xyz: torch.Tensor, spacing_mm: Sequence[float]):
    """A DiffDRR ``DRR`` module rendering ``mu_xyz`` (X, Y, Z; 1/mm, RAS, centred) with Siddon's method."""
    if geometry.parallel:
        raise ValueError("DiffDRR models a point source; only cone-beam geometries can be matched.")
    from diffdrr.drr import DRR
    from torchio import ScalarImage, Subject

    affine = centred_affine(mu_xyz.shape, spacing_mm)
    image = ScalarImage(tensor=mu_xyz[None].float(), affine=affine)
    subject = Subject(volume=image, density=image, reorient=torch.eye(4), mask=None)
    (h, w), (ph, pw) = geometry.detector_shape, geometry.pixel_spacing_mm
    return DRR(
        subject,
        sdd=geometry.source_to_detector_mm,
        height=h,
        width=w,
        delx=pw,
        dely=ph,
        reverse_x_axis=False,
        renderer="siddon",
    )


def render(drr, geometry: ProjectionGeometry) -> torch.Tensor:
    """DiffDRR images of all views, ``(V, H, W)``, in our pixel layout."""
    from diffdrr.pose import RigidTransform

    return drr(RigidTransform(poses(geometry)))[:, 0]


def ray_mismatch_mm(drr, geometry: ProjectionGeometry) -> float:
    """Largest distance (mm) between DiffDRR's and our ray end points (source and pixel centre) over all pixels."""
    from diffdrr.pose import RigidTransform

    src, tgt = drr.detector(RigidTransform(poses(geometry).to(drr.density.device)), None)  # (V, 1, 3), (V, H·W, 3)
    return endpoint_mismatch_mm(src, tgt, geometry)


def endpoint_mismatch_mm(src: torch.Tensor, tgt: torch.Tensor, geometry: ProjectionGeometry) -> float:
    """Largest distance (mm) of a peer's ray sources ``(V, 1 or H·W, 3)`` and pixel centres ``(V, H·W, 3)`` (world
    mm, any device) from ours, over all pixels."""
    rays = geometry.rays()
    ours_src = rays.origins.reshape(geometry.num_views, -1, 3)
    ours_tgt = ours_src + rays.directions.reshape_as(ours_src) * rays.lengths.reshape(geometry.num_views, -1, 1)
    d_src = (src.double().cpu() - ours_src).norm(dim=-1).max()
    d_tgt = (tgt.double().cpu() - ours_tgt).norm(dim=-1).max()
    return float(max(d_src, d_tgt))
