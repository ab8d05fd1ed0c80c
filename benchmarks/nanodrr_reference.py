"""nanodrr configured with exactly the rays of a :class:`ProjectionGeometry` (a peer for tests and benchmarks).

How the geometries are matched: nanodrr's camera (``DRR.from_carm_intrinsics`` with no principal-point offset)
has its source at the origin and pixel ``(r, c)``'s centre at ``((c + ½ − W/2)·Δx, (r + ½ − H/2)·Δy, sdd)``, so
camera ``+x`` runs along image columns, ``+y`` down the image rows and ``+z`` along the beam. Its pose
``rt_inv`` maps camera to world points; for each of our views we pass

    rt_inv = [[column, row, beam, source], [0, 0, 0, 1]],

whose pixel centres are our pixel centres, ``(c − (W−1)/2)·Δx`` along ``column`` and ``(r − (H−1)/2)·Δy`` along
``row``. The 3×3 part is a reflection (det −1, because our image rows run inferior); nanodrr applies ``rt_inv``
as a general affine (``transform_point``, and ``world_to_voxel @ rt_inv`` in the fused kernels), so lengths and
the step size are those of the world rays. :func:`ray_mismatch_mm` checks the rays.

The volume: nanodrr stores ``(1, 1, D, H, W)`` with the affine's first voxel axis fastest, i.e. our ``(X, Y, Z)``
array permuted to ``(Z, Y, X)``, with our affine (RAS, voxel centres at ``(i − (N−1)/2)·s``) and its HU → μ
conversion off (``convert_to_mu=False``: the values are already μ in 1/mm).

What it returns: a ray marcher. Each ray is clipped to the box where the trilinear interpolant (zero outside) can
be non-zero, voxel coordinates ``[−1, N]`` per axis, and ``n_samples`` trilinear samples at the midpoints of equal
parts of the clipped segment are summed times their spacing in mm: ``Σ μ(x_k) Δs ≈ ∫ μ dl``, the same
dimensionless line integral as our renderer (``mm · 1/mm``); no conversion is needed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from scripts.physics import ProjectionGeometry, centred_affine


def rt_inv(geometry: ProjectionGeometry) -> torch.Tensor:
    """Camera-to-world 4×4 affines ``(V, 4, 4)`` (float32) that reproduce each view's rays in nanodrr."""
    f = geometry.frames()
    mats = torch.zeros(geometry.num_views, 4, 4, dtype=torch.float64)
    mats[:, :3, 0] = f["column"]
    mats[:, :3, 1] = f["row"]
    mats[:, :3, 2] = f["beam"]
    mats[:, :3, 3] = f["source"]
    mats[:, 3, 3] = 1.0
    return mats.float()


def n_samples_for(shape: Sequence[int], spacing_mm: Sequence[float]) -> int:
    """Samples per ray so that the sample step is at most the smallest voxel size on every ray.

    nanodrr spreads ``n_samples`` over each ray's clipped segment, whose length is at most the diagonal of the
    clip box (``N + 1`` voxels per axis, one half-voxel margin each side for the interpolant's support).
    """
    diagonal_mm = math.sqrt(sum(((n + 1) * s) ** 2 for n, s in zip(shape, spacing_mm, strict=True)))
    return math.ceil(diagonal_mm / min(spacing_mm))


def step_bound_mm(shape: Sequence[int], spacing_mm: Sequence[float], n_samples: int) -> float:
    """The largest sample step (mm) any ray can get with ``n_samples`` (the clip box's diagonal / n)."""
    return math.sqrt(sum(((n + 1) * s) ** 2 for n, s in zip(shape, spacing_mm, strict=True))) / n_samples


def build(geometry: ProjectionGeometry, device: torch.device | str | None = None):
    """nanodrr's ``DRR`` (camera intrinsics only; poses come from :func:`rt_inv`) for a cone-beam geometry."""
    if geometry.parallel:
        raise ValueError("only cone-beam geometries are matched to nanodrr's camera.")
    from nanodrr.drr import DRR

    (h, w), (ph, pw) = geometry.detector_shape, geometry.pixel_spacing_mm
    return DRR.from_carm_intrinsics(
        sdd=geometry.source_to_detector_mm,
        delx=pw,
        dely=ph,
        x0=0.0,
        y0=0.0,
        height=h,
        width=w,
        dtype=torch.float32,
        device=device,
    )


def subject(mu_xyz: torch.Tensor, spacing_mm: Sequence[float]):
    """A nanodrr ``Subject`` holding ``mu_xyz`` (X, Y, Z; 1/mm, RAS, centred) on ``mu_xyz``'s device.

    Built from its constructor rather than ``from_images`` (which goes through a torchio image on the CPU), so a
    batch of volumes can be wrapped where they already are.
    """
    from nanodrr.data import Subject

    affine = torch.as_tensor(centred_affine(mu_xyz.shape, spacing_mm), dtype=torch.float64)
    image = mu_xyz.float().permute(2, 1, 0)[None, None].contiguous()  # (1, 1, Z, Y, X)
    grid = Subject._make_voxel_to_grid(image.shape)
    device = mu_xyz.device
    return Subject(
        image,
        torch.zeros_like(image),  # no labelmap: one class
        affine.float().to(device),
        affine.inverse().float().to(device),
        grid.to(device),
        torch.zeros(3, device=device),  # isocentre at the origin (unused by rendering)
        max_label=0,  # one class, without a device sync on label.max()
        convert_to_mu=False,
    )


def resolve_backend(drr, subj, poses: torch.Tensor) -> str:
    """The backend ``backend="auto"`` would run for these inputs: ``"triton"`` on CUDA when eligible, else
    ``"torch"`` (its ``grid_sample`` path), so a benchmark can pass it explicitly and report it."""
    from nanodrr.drr.backends import pick_fused_backend

    return pick_fused_backend(subj, poses, drr.tgt, drr.height, drr.width) or "torch"


def render(drr, subj, poses: torch.Tensor, n_samples: int, backend: str = "auto") -> torch.Tensor:
    """nanodrr images of all views, ``(V, H, W)``, in our pixel layout (dimensionless line integrals)."""
    return drr(subj, poses, n_samples=n_samples, backend=backend)[:, 0]


def ray_mismatch_mm(drr, geometry: ProjectionGeometry) -> float:
    """Largest distance (mm) between nanodrr's and our ray end points (source and pixel centre) over all pixels."""
    from nanodrr.geometry import transform_point

    from benchmarks.diffdrr_reference import endpoint_mismatch_mm

    poses = rt_inv(geometry).to(drr.tgt.device)
    src = transform_point(poses, drr.src)  # (V, 1, 3) world mm
    tgt = transform_point(poses, drr.tgt)  # (V, H·W, 3) world mm
    return endpoint_mismatch_mm(src, tgt, geometry)
