"""Ray-driven projectors as sparse system matrices: exact Siddon and interpolating Joseph.

A DRR pixel is a line integral ``p = ∫ μ(o + t·d) dt`` along a ray (``|d| = 1``, ``t`` in mm, ``0 <= t <= T``).
On a voxel grid both projectors write it as a weighted sum of voxels, ``p = Σ_j a_j μ_j``, whose weights depend
only on the geometry and the grid; the weights of all rays form a sparse matrix ``A`` (rays × voxels) and the DRR of
any batch of volumes is ``A @ μ``.

* ``siddon`` (Siddon, Med. Phys. 12:252, 1985): ``μ`` is piecewise constant over voxels and ``a_j`` is the exact
  length of the ray inside voxel ``j``, found by sorting the ray's crossings with the voxel-boundary planes.
  Exact for that model, but first order for a continuous object: a ray takes the value of the whole voxel row it
  runs in, wherever it passes inside it.
* ``joseph`` (Joseph, IEEE TMI 1:192, 1982): ``μ`` is sampled at voxel centres and interpolated. The ray is cut by
  the voxel-centre planes of its driving axis (the axis it advances fastest along); at each cut ``μ`` is
  interpolated bilinearly from the four surrounding voxels and weighted by the path length between planes,
  ``s_a / |d_a|``. Second order in the voxel size, so it follows an object's edges between voxel centres.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch

__all__ = ["PROJECTORS", "system_matrix"]


def _slab_interval(
    origins: torch.Tensor, directions: torch.Tensor, lengths: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Entry and exit ``t`` (mm) of each ray in the box ``[lower, upper]``, clipped to ``[0, T]``; ``(R,)`` each."""
    with torch.no_grad():
        inv = 1.0 / directions  # +-inf for axis-parallel rays, handled below
        t0 = (lower - origins) * inv
        t1 = (upper - origins) * inv
        t_near = torch.minimum(t0, t1)
        t_far = torch.maximum(t0, t1)
        # An axis-parallel ray never crosses that axis' planes: it is inside the slab for all t or for none.
        flat = directions == 0
        inside = (origins >= lower) & (origins <= upper)
        t_near = torch.where(flat, torch.where(inside, -torch.inf, torch.inf), t_near)
        t_far = torch.where(flat, torch.where(inside, torch.inf, -torch.inf), t_far)
        t_enter = torch.clamp(t_near.amax(dim=-1), min=0.0)
        t_exit = torch.minimum(t_far.amin(dim=-1), lengths)
    return t_enter, t_exit


def _siddon_entries(
    origins: torch.Tensor,
    directions: torch.Tensor,
    lengths: torch.Tensor,
    shape: Sequence[int],
    spacing: torch.Tensor,
    dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Siddon entries of one pass: ``(counts (R,), voxel (K,), length_mm (K,))``, ray by ray (float64 inputs)."""
    device = origins.device
    dims = torch.tensor(shape, dtype=torch.float64, device=device)
    lower = -0.5 * dims * spacing  # (3,) the volume is centred on the isocentre
    upper = -lower
    t_enter, t_exit = _slab_interval(origins, directions, lengths, lower, upper)  # (R,), (R,)

    crossings = []
    for axis, n in enumerate(shape):
        planes = lower[axis] + spacing[axis] * torch.arange(n + 1, dtype=torch.float64, device=device)  # (n+1,)
        d = directions[:, axis : axis + 1]  # (R, 1)
        t = (planes[None, :] - origins[:, axis : axis + 1]) / d  # (R, n+1); inf/nan where d == 0
        crossings.append(torch.where(d == 0, t_exit[:, None], t))
    t_all = torch.cat([t_enter[:, None], t_exit[:, None], *crossings], dim=1)  # (R, 2 + ΣN + 3)
    # Crossings outside the ray's part inside the volume collapse onto its ends and yield zero-length segments.
    t_all = torch.minimum(torch.maximum(t_all, t_enter[:, None]), t_exit[:, None])
    t_all, _ = torch.sort(t_all, dim=1)
    seg = t_all[:, 1:] - t_all[:, :-1]  # (R, S) segment lengths in mm
    mid = 0.5 * (t_all[:, 1:] + t_all[:, :-1])  # (R, S)
    keep = seg > 0
    counts = keep.sum(dim=1)  # (R,) entries per ray
    ray_idx = torch.nonzero(keep)[:, 0]  # row-major: entries come out ray by ray, ordered along each ray
    seg, mid = seg[keep], mid[keep]  # (K,)
    pts = origins[ray_idx] + mid[:, None] * directions[ray_idx]  # (K, 3) segment midpoints in mm
    ijk = torch.floor((pts - lower) / spacing).long()  # (K, 3)
    # A midpoint can round onto the outer face of the box; it still belongs to the boundary voxel.
    ijk = torch.minimum(torch.clamp(ijk, min=0), torch.tensor(shape, device=device) - 1)
    flat = (ijk[:, 0] * shape[1] + ijk[:, 1]) * shape[2] + ijk[:, 2]
    return counts, flat, seg.to(dtype)


def _joseph_entries(
    origins: torch.Tensor,
    directions: torch.Tensor,
    lengths: torch.Tensor,
    shape: Sequence[int],
    spacing: torch.Tensor,
    dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Joseph entries of one pass: ``(counts (R,), voxel (K,), weight_mm (K,))``, ray by ray (float64 inputs)."""
    device = origins.device
    dims = torch.tensor(shape, dtype=torch.float64, device=device)  # (3,)
    strides = torch.tensor([shape[1] * shape[2], shape[2], 1], device=device)  # (3,) of the flat voxel index
    others = torch.tensor([[1, 2], [0, 2], [0, 1]], device=device)  # the two axes that are not the driving one
    # Driving axis: the one whose voxel planes the ray crosses most often (direction in voxel units, so that
    # anisotropic grids are sampled at least once per voxel along every axis).
    a = (directions.abs() / spacing).argmax(dim=-1, keepdim=True)  # (R, 1)
    bc = others[a[:, 0]]  # (R, 2)

    def pick(x: torch.Tensor, axis: torch.Tensor) -> torch.Tensor:
        return x.expand(axis.shape[0], -1).gather(1, axis) if x.dim() == 1 else x.gather(1, axis)

    n_a = pick(dims, a)  # (R, 1)
    k = torch.arange(int(max(shape)), dtype=torch.float64, device=device)[None, :]  # (1, N)
    centres = (k - (n_a - 1) / 2.0) * pick(spacing, a)  # (R, N) voxel-centre planes of the driving axis
    d_a = pick(directions, a)  # (R, 1)
    t = (centres - pick(origins, a)) / d_a  # (R, N)
    inside = (k < n_a) & (t >= 0) & (t <= lengths[:, None])
    step = pick(spacing, a) / d_a.abs()  # (R, 1) path length between planes, mm
    # Positions are traced in float64; the weights are built in the matrix dtype and the indices in 32 bits where
    # they fit (for float32 matrices: half the memory traffic of building them).
    index = torch.int32 if int(dims.prod()) < 2**31 - 1 else torch.int64
    strides = strides.to(index)
    flat = k.to(index) * pick(strides, a)  # (R, N)
    weights = (inside * step).to(dtype)  # (R, N)
    for col in range(2):  # bilinear interpolation on the two other axes
        axis = bc[:, col : col + 1]  # (R, 1)
        n = pick(dims, axis)
        u = (pick(origins, axis) + t * pick(directions, axis)) / pick(spacing, axis) + (n - 1) / 2.0  # (R, N)
        u0 = torch.floor(u)
        frac = (u - u0).to(dtype)
        corner = torch.stack([u0, u0 + 1.0], dim=-1)  # (R, N, 2)
        w = torch.stack([1.0 - frac, frac], dim=-1) * ((corner >= 0) & (corner < n[..., None]))  # (R, N, 2)
        corner_flat = corner.clamp(min=0).to(index) * pick(strides, axis)[..., None]  # (R, N, 2)
        if col == 0:
            flat = flat[..., None] + corner_flat  # (R, N, 2)
            weights = weights[..., None] * w  # (R, N, 2)
        else:
            flat = flat[..., :, None] + corner_flat[..., None, :]  # (R, N, 2, 2)
            weights = weights[..., :, None] * w[..., None, :]  # (R, N, 2, 2)
    weights = weights.reshape(weights.shape[0], -1)  # (R, 4N) ordered along the ray
    keep = weights > 0
    return keep.sum(dim=1), flat.reshape(weights.shape)[keep], weights[keep]


PROJECTORS = {"siddon": _siddon_entries, "joseph": _joseph_entries}


def system_matrix(
    origins: torch.Tensor,
    directions: torch.Tensor,
    lengths: torch.Tensor,
    shape: Sequence[int],
    spacing_mm: Sequence[float],
    method: str = "joseph",
    dtype: torch.dtype = torch.float32,
    max_elements: int = 1 << 23,
) -> torch.Tensor:
    """Sparse CSR system matrix ``(R, X·Y·Z)`` (weights in mm) of ``R`` rays through a centred voxel grid.

    Args:
        origins: ``(R, 3)`` ray start points in mm (RAS, isocentre = volume centre).
        directions: ``(R, 3)`` unit directions.
        lengths: ``(R,)`` ray lengths in mm; the ray ends there.
        shape: ``(X, Y, Z)`` voxels; flat voxel index ``(i·Y + j)·Z + k`` matches a C-contiguous ``(X, Y, Z)`` array.
        spacing_mm: ``(sx, sy, sz)`` voxel size in mm.
        method: ``"joseph"`` (interpolating, second order) or ``"siddon"`` (exact for piecewise-constant voxels).
        dtype: value dtype of the matrix (the geometry itself is traced in float64).
        max_elements: bound on the plane-crossing work array of one pass (rays × planes); larger ray sets are
            traced in several passes, which bounds the peak memory of building the matrix.

    Returns:
        A ``torch.sparse_csr`` tensor with int32 indices when they fit, else int64, on the device of ``origins``.
    """
    if method not in PROJECTORS:
        raise ValueError(f"method must be one of {sorted(PROJECTORS)}, got {method!r}.")
    entries = PROJECTORS[method]
    shape = tuple(int(s) for s in shape)
    device = origins.device
    spacing = torch.tensor([float(s) for s in spacing_mm], dtype=torch.float64, device=device)
    origins, directions, lengths = origins.double(), directions.double(), lengths.double()
    n_rays = origins.shape[0]
    per_ray = sum(shape) + 5 if method == "siddon" else 4 * max(shape)
    step = max(1, max_elements // per_ray)
    counts, cols, vals = [], [], []
    for start in range(0, n_rays, step):
        sl = slice(start, start + step)
        n, c, v = entries(origins[sl], directions[sl], lengths[sl], shape, spacing, dtype)
        counts.append(n)
        cols.append(c)
        vals.append(v)
    n_vox = shape[0] * shape[1] * shape[2]
    crow = torch.zeros(n_rays + 1, dtype=torch.long, device=device)
    torch.cumsum(torch.cat(counts), dim=0, out=crow[1:])
    cols_t, vals_t = torch.cat(cols), torch.cat(vals)
    # Entries are grouped ray by ray (what CSR needs) but not sorted by voxel within a ray; CPU kernels accept
    # that, cuSPARSE's SpMM is only documented for sorted columns, so sort there (cheap on a GPU).
    if device.type != "cpu":
        key = torch.repeat_interleave(torch.arange(n_rays, device=device), crow.diff()) * n_vox + cols_t
        order = torch.argsort(key)
        cols_t, vals_t = cols_t[order], vals_t[order]
    index_dtype = torch.int32 if max(n_vox, cols_t.numel()) < 2**31 - 1 else torch.int64
    with warnings.catch_warnings():
        # torch labels sparse CSR "beta"; the operations used here (construction, SpMV/SpMM, CSR -> CSC) are
        # covered by this project's tests against analytic values.
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
        warnings.filterwarnings("ignore", message="Sparse invariant checks are implicitly disabled")
        return torch.sparse_csr_tensor(
            crow.to(index_dtype), cols_t.to(index_dtype), vals_t, size=(n_rays, n_vox), device=device
        )
