"""Projection geometry of a (bi)planar radiography system, in patient RAS millimetres.

World frame: the RAS frame of the CT volume (MONAI's ``Orientationd(axcodes="RAS")``), with its origin at the
centre of the volume, which sits at the isocentre. ``+x`` points to the patient's right, ``+y`` anterior,
``+z`` superior.

A view is a gantry angle ``theta`` (degrees) about the ``z`` axis. The beam direction (source -> detector) is
``d(theta) = (-sin theta, cos theta, 0)``:

* ``"pa"`` is ``theta = 0``: the source is posterior, the beam travels toward anterior (``+y``);
* ``"lateral"`` is ``theta = 90``: the source is on the patient's right, the beam travels right -> left (``-x``).

Images are displayed as seen from the detector looking back at the source, superior at the top. Image columns run
along ``u = z_hat x d`` and rows run along ``-z_hat``; this puts the patient's right on the image's left for PA and
anterior on the image's left for the lateral view (the radiological display of chest films).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["VIEW_ANGLES_DEG", "ProjectionGeometry", "Rays", "centred_affine"]

#: Named views and their gantry angles in degrees (see the module docstring for the frame).
VIEW_ANGLES_DEG: dict[str, float] = {"pa": 0.0, "lateral": 90.0}


@dataclass(frozen=True)
class Rays:
    """Ray bundle of a geometry; every tensor is indexed ``(V, H, W, ...)``.

    Attributes:
        origins: ``(V, H, W, 3)`` start points in mm (the source for cone beam).
        directions: ``(V, H, W, 3)`` unit vectors from the start point toward the pixel centre.
        lengths: ``(V, H, W)`` ray lengths in mm (start point -> pixel centre).
    """

    origins: torch.Tensor
    directions: torch.Tensor
    lengths: torch.Tensor


def centred_affine(shape: Sequence[int], spacing_mm: Sequence[float]) -> np.ndarray:
    """RAS affine (4×4, mm) of a grid whose centre is the world origin, i.e. the isocentre of the renderer."""
    affine = np.diag([*map(float, spacing_mm), 1.0])
    affine[:3, 3] = [-(n - 1) / 2.0 * s for n, s in zip(shape, spacing_mm, strict=True)]
    return affine


def _number(value, name: str, integer: bool = False) -> float | int:
    """A real number (an integral one if ``integer``) or a ``ValueError`` naming the argument; no bools, no strings."""
    kind = numbers.Integral if integer else numbers.Real
    if isinstance(value, bool) or not isinstance(value, kind):
        if integer and isinstance(value, numbers.Real) and float(value).is_integer():
            return int(value)
        what = "an integer" if integer else "a number"
        raise ValueError(f"{name} must be {what}, got {value!r}.")
    return int(value) if integer else float(value)


def _as_pair(value, name: str, integer: bool) -> tuple:
    """Broadcast a scalar to a pair of numbers and check the length."""
    pair = (value, value) if isinstance(value, numbers.Real) else tuple(value) if isinstance(value, Sequence) else None
    if pair is None or isinstance(value, str) or len(pair) != 2:
        raise ValueError(f"{name} must be a number or a pair (rows, columns), got {value!r}.")
    return tuple(_number(v, name, integer) for v in pair)


class ProjectionGeometry:
    """Cone- or parallel-beam geometry of one or more radiographic views sharing an isocentre.

    Args:
        views: view names (``"pa"``, ``"lateral"``) or gantry angles in degrees, in output order.
        source_to_isocenter_mm: distance from the focal spot to the isocentre (the volume centre), mm.
        source_to_detector_mm: distance from the focal spot to the detector plane, mm.
        detector_shape: ``(H, W)`` pixels (rows, columns); an int means a square detector.
        pixel_spacing_mm: ``(row, column)`` pixel pitch in mm; an int or float means square pixels. Measured on
            the detector for cone beam and at the isocentre for parallel beam.
        parallel: trace parallel rays along the beam direction instead of rays from a point source.

    Raises:
        ValueError: unknown view name, non-positive distances or sizes, or a detector closer than the isocentre.
    """

    def __init__(
        self,
        views: Sequence[str | float] = ("pa", "lateral"),
        source_to_isocenter_mm: float = 541.0,  # focal spot -> isocentre
        source_to_detector_mm: float = 949.0,  # focal spot -> detector plane
        detector_shape: int | Sequence[int] = (128, 128),  # (rows, columns)
        pixel_spacing_mm: float | Sequence[float] = (2.5, 2.5),  # (row, column) pitch
        parallel: bool = False,
    ) -> None:
        if isinstance(views, (str, numbers.Real)):
            views = (views,)
        if len(views) == 0:
            raise ValueError("views must name at least one view, got an empty sequence.")
        angles = []
        for view in views:
            if isinstance(view, str):
                key = view.lower()
                if key not in VIEW_ANGLES_DEG:
                    raise ValueError(
                        f"views: unknown view name {view!r}; expected one of {sorted(VIEW_ANGLES_DEG)} "
                        "or a gantry angle in degrees."
                    )
                angles.append(VIEW_ANGLES_DEG[key])
            elif isinstance(view, numbers.Real) and not isinstance(view, bool) and math.isfinite(view):
                angles.append(float(view))
            else:
                raise ValueError(f"views: each view must be a name or a finite angle in degrees, got {view!r}.")
        sid = _number(source_to_isocenter_mm, "source_to_isocenter_mm")
        sdd = _number(source_to_detector_mm, "source_to_detector_mm")
        if not (math.isfinite(sid) and sid > 0):
            raise ValueError(
                f"source_to_isocenter_mm must be a positive distance in mm, got {source_to_isocenter_mm!r}."
            )
        if not (math.isfinite(sdd) and sdd > sid):
            raise ValueError(
                f"source_to_detector_mm must be larger than source_to_isocenter_mm ({sid} mm), "
                f"got {source_to_detector_mm!r}."
            )
        shape = _as_pair(detector_shape, "detector_shape", integer=True)
        if min(shape) < 1:
            raise ValueError(f"detector_shape must be positive (rows, columns), got {detector_shape!r}.")
        spacing = _as_pair(pixel_spacing_mm, "pixel_spacing_mm", integer=False)
        if not all(math.isfinite(s) and s > 0 for s in spacing):
            raise ValueError(f"pixel_spacing_mm must be positive (row, column) in mm, got {pixel_spacing_mm!r}.")

        self.views: tuple[str | float, ...] = tuple(v.lower() if isinstance(v, str) else float(v) for v in views)
        self.angles_deg: tuple[float, ...] = tuple(angles)
        self.source_to_isocenter_mm = sid
        self.source_to_detector_mm = sdd
        self.detector_shape: tuple[int, int] = shape
        self.pixel_spacing_mm: tuple[float, float] = spacing
        self.parallel = bool(parallel)

    @property
    def num_views(self) -> int:
        return len(self.angles_deg)

    @property
    def magnification(self) -> float:
        """Magnification of an object at the isocentre on the detector (1 for parallel beam)."""
        return 1.0 if self.parallel else self.source_to_detector_mm / self.source_to_isocenter_mm

    def __repr__(self) -> str:
        return (
            f"ProjectionGeometry(views={self.views}, source_to_isocenter_mm={self.source_to_isocenter_mm}, "
            f"source_to_detector_mm={self.source_to_detector_mm}, detector_shape={self.detector_shape}, "
            f"pixel_spacing_mm={self.pixel_spacing_mm}, parallel={self.parallel})"
        )

    def frames(self, device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
        """Per-view frame vectors in float64, each ``(V, 3)``.

        Returns:
            ``beam`` (unit source -> detector direction), ``column`` (image left -> right), ``row`` (image top ->
            bottom, i.e. inferior), ``source`` (focal spot, mm) and ``detector_center`` (mm).
        """
        theta = torch.tensor(self.angles_deg, dtype=torch.float64, device=device) * (math.pi / 180.0)
        zeros = torch.zeros_like(theta)
        beam = torch.stack([-torch.sin(theta), torch.cos(theta), zeros], dim=-1)  # (V, 3)
        # z_hat x d = (-d_y, d_x, 0): the viewer's right when looking from the detector toward the source.
        column = torch.stack([-beam[:, 1], beam[:, 0], zeros], dim=-1)  # (V, 3)
        row = torch.stack([zeros, zeros, -torch.ones_like(theta)], dim=-1)  # (V, 3)
        source = -self.source_to_isocenter_mm * beam  # (V, 3)
        detector_center = source + self.source_to_detector_mm * beam  # (V, 3)
        return {"beam": beam, "column": column, "row": row, "source": source, "detector_center": detector_center}

    def _pixel_offsets(self, device: torch.device | str | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Signed pixel-centre offsets from the detector centre in mm: rows ``(H,)``, columns ``(W,)``."""
        (h, w), (ph, pw) = self.detector_shape, self.pixel_spacing_mm
        rows = (torch.arange(h, dtype=torch.float64, device=device) - (h - 1) / 2.0) * ph
        cols = (torch.arange(w, dtype=torch.float64, device=device) - (w - 1) / 2.0) * pw
        return rows, cols

    def rays(self, device: torch.device | str | None = None) -> Rays:
        """All rays of all views in float64.

        Cone beam: from the focal spot to each pixel centre. Parallel beam: along the beam direction through each
        pixel centre laid out at the isocentre, over the same source-to-detector extent as the cone beam.
        """
        f = self.frames(device)
        rows, cols = self._pixel_offsets(device)
        # Pixel-centre offsets inside the (isocentre or detector) plane: (V, H, W, 3).
        offsets = (
            rows[None, :, None, None] * f["row"][:, None, None, :]
            + cols[None, None, :, None] * f["column"][:, None, None, :]
        )
        beam = f["beam"][:, None, None, :].expand_as(offsets)  # (V, H, W, 3)
        if self.parallel:
            origins = offsets - self.source_to_isocenter_mm * beam  # (V, H, W, 3)
            directions = beam.clone()
            lengths = torch.full(offsets.shape[:3], self.source_to_detector_mm, dtype=torch.float64, device=device)
        else:
            targets = f["detector_center"][:, None, None, :] + offsets  # (V, H, W, 3)
            origins = f["source"][:, None, None, :].expand_as(targets).clone()
            chords = targets - origins
            lengths = chords.norm(dim=-1)  # (V, H, W)
            directions = chords / lengths[..., None]
        return Rays(origins=origins, directions=directions, lengths=lengths)

    def project_points(self, points_mm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Project world points onto every detector.

        Args:
            points_mm: ``(..., 3)`` RAS positions in mm (isocentre at the origin).

        Returns:
            ``pixels``: ``(V, ..., 2)`` continuous ``(row, column)`` coordinates where pixel ``(0, 0)``'s centre is
            ``(0, 0)``; ``depth``: ``(V, ...)`` distance in mm from the source plane along the beam.
        """
        f = self.frames(points_mm.device)
        pts = points_mm.to(torch.float64)
        lead = (slice(None),) + (None,) * (pts.dim() - 1)
        beam, column, row = f["beam"][lead], f["column"][lead], f["row"][lead]  # (V, 1.., 3)
        rel = pts[None] - f["source"][lead]  # (V, ..., 3)
        depth = (rel * beam).sum(-1)  # (V, ...)
        # Cone beam scales in-plane offsets by SDD / depth (similar triangles); parallel beam keeps them.
        scale = torch.ones_like(depth) if self.parallel else self.source_to_detector_mm / depth
        on_plane = rel * scale[..., None]
        (h, w), (ph, pw) = self.detector_shape, self.pixel_spacing_mm
        r = (on_plane * row).sum(-1) / ph + (h - 1) / 2.0
        c = (on_plane * column).sum(-1) / pw + (w - 1) / 2.0
        return torch.stack([r, c], dim=-1), depth
