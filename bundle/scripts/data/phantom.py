"""Synthetic chest CT phantoms: the embedded default data set (no downloads).

Anatomy is laid out in physical millimetres in the RAS frame (+x patient's right, +y anterior, +z superior) with
the grid centre at the origin, so any grid size and spacing (cubic or not) samples the same patient. A seed draws
one patient: body habitus, lung and heart size, heart position, rib spacing, vessel tree, nodules and noise.

Structures (painted in this order, later ones win): body (skin, subcutaneous fat, muscle wall, mediastinal soft
tissue) → liver under the right hemidiaphragm and upper abdomen → lungs (air with a branching vessel tree) →
heart (on the patient's left, anterior) → aorta (ascending, arch, descending) → spine (vertebral bodies with
cortical rim, discs, posterior elements) → ribs → sternum → scapulae → nodules. Values are typical CT numbers;
mild Gaussian noise imitates a reconstructed scan.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import numpy as np

__all__ = ["PHANTOM_LABELS", "phantom_spacing", "synthetic_chest_ct"]

#: Label ids of the phantom's label map.
PHANTOM_LABELS: dict[str, int] = {
    "background": 0,
    "body": 1,
    "lung_left": 2,
    "lung_right": 3,
    "heart": 4,
    "aorta": 5,
    "spine": 6,
    "ribs": 7,
    "sternum": 8,
    "scapulae": 9,
    "liver": 10,
    "vessels": 11,
    "nodules": 12,
}

_HU = {  # mean CT numbers per tissue; each phantom perturbs them slightly
    "skin": 30.0,
    "fat": -100.0,
    "muscle": 50.0,
    "soft": 35.0,
    "liver": 60.0,
    "lung": -850.0,
    "vessel": 40.0,
    "blood": 45.0,
    "myocardium": 55.0,
    "cancellous": 250.0,
    "cortical": 800.0,
    "disc": 90.0,
    "rib": 650.0,
    "nodule": 30.0,
}


class _Grid:
    """Voxel-centre coordinates (mm) as broadcastable axes ``x (X,1,1)``, ``y (1,Y,1)``, ``z (1,1,Z)``."""

    def __init__(self, shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> None:
        self.shape, self.spacing = shape, spacing
        axes = [(np.arange(n, dtype=np.float32) - (n - 1) / 2.0) * s for n, s in zip(shape, spacing, strict=True)]
        self.x = axes[0][:, None, None]
        self.y = axes[1][None, :, None]
        self.z = axes[2][None, None, :]
        self.axes = axes

    def ellipsoid(self, c: Sequence[float], r: Sequence[float]) -> np.ndarray:
        return ((self.x - c[0]) / r[0]) ** 2 + ((self.y - c[1]) / r[1]) ** 2 + ((self.z - c[2]) / r[2]) ** 2 <= 1.0

    def tube(self, points: np.ndarray, radius: float | np.ndarray) -> np.ndarray:
        """Voxels within ``radius`` (mm) of a polyline ``points (P, 3)``; radius may vary per segment."""
        mask = np.zeros(self.shape, dtype=bool)
        radii = np.broadcast_to(np.asarray(radius, dtype=np.float32), (len(points) - 1,))
        for a, b, rad in zip(points[:-1], points[1:], radii, strict=True):
            lo = np.minimum(a, b) - rad
            hi = np.maximum(a, b) + rad
            sl = []
            for axis in range(3):  # restrict the distance computation to the segment's bounding box
                ax = self.axes[axis]
                i0, i1 = np.searchsorted(ax, lo[axis]), np.searchsorted(ax, hi[axis], side="right")
                sl.append(slice(i0, i1))
            if any(s.start >= s.stop for s in sl):
                continue
            px = self.axes[0][sl[0]][:, None, None] - a[0]
            py = self.axes[1][sl[1]][None, :, None] - a[1]
            pz = self.axes[2][sl[2]][None, None, :] - a[2]
            d = b - a
            length2 = float(d @ d) or 1e-6
            t = np.clip((px * d[0] + py * d[1] + pz * d[2]) / length2, 0.0, 1.0)
            dist2 = (px - t * d[0]) ** 2 + (py - t * d[1]) ** 2 + (pz - t * d[2]) ** 2
            mask[sl[0], sl[1], sl[2]] |= dist2 <= rad**2
        return mask


def _vessel_tree(
    rng: np.random.Generator, hilum: np.ndarray, side: float, depth: int
) -> list[tuple[np.ndarray, float]]:
    """Branching polylines from a hilum outward (side = +1 right lung, -1 left lung); (points, radius) pairs.

    Three trunks (upper, middle, lower lobe directions) split in two at every level, thinning by 0.7 per split.
    """
    branches = []
    trunks = ([side, 0.1, 0.9], [side, 0.4, 0.0], [side, -0.3, -0.9])
    stack = [(hilum, np.array(d, dtype=np.float64), 4.5, 0) for d in trunks]
    while stack:
        start, direction, radius, level = stack.pop()
        length = rng.uniform(22.0, 38.0) * (0.85**level)
        direction = direction + rng.normal(0.0, 0.3, 3)
        direction[0] = side * abs(direction[0])  # vessels run laterally away from the mediastinum
        direction /= np.linalg.norm(direction)
        end = start + length * direction
        branches.append((np.stack([start, end]), radius))
        if level < depth:
            for _ in range(2):
                stack.append((end, direction, radius * 0.7, level + 1))
    return branches


def phantom_spacing(spacing_mm: float | Sequence[float]) -> tuple[float, float, float]:
    """``(sx, sy, sz)`` in mm from one number (isotropic) or three, or a ValueError naming ``spacing_mm``."""
    spacing = (float(spacing_mm),) * 3 if isinstance(spacing_mm, numbers.Real) else tuple(map(float, spacing_mm))
    if len(spacing) != 3 or not all(math.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(f"spacing_mm must be a positive number or three positive numbers in mm, got {spacing_mm!r}.")
    return spacing


def synthetic_chest_ct(
    size: int | Sequence[int] = 64,
    spacing_mm: float | Sequence[float] = 5.0,
    seed: int = 0,
    nodules: bool = True,
    noise_hu: float = 15.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Generate one synthetic chest CT.

    Args:
        size: grid ``(X, Y, Z)`` in voxels (an int means a cube), RAS axes.
        spacing_mm: voxel size ``(sx, sy, sz)`` in mm (a number means isotropic).
        seed: patient seed; the same seed gives the same volume bit for bit.
        nodules: add 0–3 lung nodules.
        noise_hu: standard deviation of the Gaussian noise inside the body, HU.

    Returns:
        ``(hu, labels)``: ``(X, Y, Z)`` float32 CT numbers (air −1000) and uint8 labels (:data:`PHANTOM_LABELS`).
        The grid centre is the world origin: voxel ``(i, j, k)`` is at ``((i − (X−1)/2)·sx, …)`` mm.
    """
    shape = (int(size),) * 3 if isinstance(size, numbers.Integral) else tuple(int(s) for s in size)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"size must be a positive int or three positive ints (X, Y, Z), got {size!r}.")
    spacing = phantom_spacing(spacing_mm)
    if not (math.isfinite(noise_hu) and noise_hu >= 0):
        raise ValueError(f"noise_hu must be a non-negative number of HU, got {noise_hu!r}.")
    rng = np.random.default_rng(seed)
    g = _Grid(shape, spacing)
    L = PHANTOM_LABELS
    labels = np.zeros(shape, dtype=np.uint8)
    hu = np.full(shape, -1000.0, dtype=np.float32)
    tissue = {k: v + rng.normal(0.0, 8.0 if v > -500 else 20.0) for k, v in _HU.items()}

    # Body: an elliptic cylinder along z, slightly wider at the bottom, with skin, fat and muscle layers.
    ax, ay = rng.uniform(135.0, 160.0), rng.uniform(95.0, 115.0)
    taper = 1.0 + 0.0008 * np.clip(-g.z, -150.0, 150.0)  # (1, 1, Z)
    y0 = rng.uniform(-5.0, 5.0)
    radial = np.sqrt((g.x / (ax * taper)) ** 2 + ((g.y - y0) / (ay * taper)) ** 2)  # 1 on the skin surface
    body = radial <= 1.0
    mean_r = 0.5 * (ax + ay)
    fat_mm, muscle_mm = rng.uniform(6.0, 20.0), rng.uniform(8.0, 14.0)
    depth_mm = (1.0 - radial) * mean_r  # approximate depth below the skin
    labels[body] = L["body"]
    hu[body] = tissue["soft"]
    hu[body & (depth_mm < 2.0 + fat_mm + muscle_mm)] = tissue["muscle"]
    hu[body & (depth_mm < 2.0 + fat_mm)] = tissue["fat"]
    hu[body & (depth_mm < 2.0)] = tissue["skin"]

    # Diaphragm domes (right higher); below them the liver (right) and upper abdomen.
    dome_r, dome_l = rng.uniform(-60.0, -35.0), rng.uniform(-75.0, -50.0)
    lung_a = np.array([rng.uniform(50.0, 62.0), rng.uniform(65.0, 80.0), rng.uniform(105.0, 125.0)])
    lung_cx, lung_cz = rng.uniform(58.0, 70.0), rng.uniform(15.0, 35.0)
    dome = np.where(g.x > 0, dome_r, dome_l) + 40.0 * (((g.x - np.sign(g.x) * lung_cx) / 70.0) ** 2 + (g.y / 80.0) ** 2)
    below = body & (g.z < dome) & (depth_mm > 2.0 + fat_mm + muscle_mm)
    liver = below & (g.x > -40.0) & (g.z > dome - 160.0)
    labels[liver] = L["liver"]
    hu[liver] = tissue["liver"]

    # Lungs: ellipsoids cut by the domes, the mediastinum and the chest wall.
    inner = depth_mm > 2.0 + fat_mm + muscle_mm + 4.0
    for name, side in (("lung_right", 1.0), ("lung_left", -1.0)):
        centre = (side * lung_cx, rng.uniform(-5.0, 10.0), lung_cz)
        lung = g.ellipsoid(centre, lung_a) & inner & (g.z > dome) & (side * g.x > 12.0)
        labels[lung] = L[name]
        hu[lung] = tissue["lung"]
        hilum = np.array([side * 30.0, 0.0, lung_cz + rng.uniform(-10.0, 10.0)], dtype=np.float32)
        for points, radius in _vessel_tree(rng, hilum, side, depth=4):
            vessel = g.tube(points.astype(np.float32), radius) & lung
            labels[vessel] = L["vessels"]
            hu[vessel] = tissue["vessel"]

    # Heart: on the patient's left (x < 0) and anterior, between the lungs, resting on the left dome.
    heart_c = (rng.uniform(-32.0, -18.0), rng.uniform(18.0, 35.0), dome_l + rng.uniform(35.0, 50.0))
    heart_r = (rng.uniform(55.0, 70.0), rng.uniform(42.0, 52.0), rng.uniform(45.0, 58.0))
    heart = g.ellipsoid(heart_c, heart_r) & inner
    labels[heart] = L["heart"]
    hu[heart] = tissue["myocardium"]
    chamber = g.ellipsoid(heart_c, [0.6 * r for r in heart_r]) & heart
    hu[chamber] = tissue["blood"]

    # Aorta: ascending (anterior, right of the midline), arch, descending (posterior, left of the spine).
    arch_z = lung_cz + rng.uniform(45.0, 65.0)
    aorta_path = np.array(
        [
            [5.0, 25.0, heart_c[2]],
            [8.0, 22.0, arch_z - 15.0],
            [0.0, 5.0, arch_z],
            [-15.0, -25.0, arch_z - 15.0],
            [-20.0, -40.0, arch_z - 40.0],
            [-18.0, -42.0, -200.0],
        ],
        dtype=np.float32,
    )
    aorta = g.tube(aorta_path, rng.uniform(11.0, 15.0)) & body
    labels[aorta] = L["aorta"]
    hu[aorta] = tissue["blood"]

    # Spine: vertebral bodies (cortical rim, cancellous core) separated by discs, plus posterior elements.
    spine_y = rng.uniform(-75.0, -62.0)
    level_mm, disc_mm = rng.uniform(24.0, 30.0), rng.uniform(5.0, 8.0)
    phase = np.mod(g.z + rng.uniform(0.0, level_mm), level_mm)  # position within one level
    body_r = rng.uniform(16.0, 20.0)
    r2 = g.x**2 + (g.y - spine_y) ** 2
    column = (r2 <= body_r**2) & body
    vertebra = column & (phase >= disc_mm)
    labels[column] = L["spine"]
    hu[column] = tissue["disc"]
    hu[vertebra] = tissue["cancellous"]
    hu[vertebra & (r2 >= (body_r - 3.0) ** 2)] = tissue["cortical"]
    posterior = (np.abs(g.x) <= 9.0) & (g.y < spine_y - body_r) & (g.y > spine_y - body_r - 35.0) & body
    posterior |= (np.abs(g.x) <= 28.0) & (np.abs(g.y - spine_y + body_r + 6.0) <= 5.0) & body  # laminae
    posterior &= phase >= disc_mm
    labels[posterior] = L["spine"]
    hu[posterior] = tissue["cortical"]

    # Ribs: arcs following the chest wall from the spine to the front, sloping down anteriorly.
    rib_gap = rng.uniform(24.0, 30.0)
    rib_top = lung_cz + lung_a[2] - 5.0
    ribs = np.zeros(shape, dtype=bool)
    theta = np.linspace(-0.45 * np.pi, 0.42 * np.pi, 24, dtype=np.float32)  # from posterior to anterior
    for level in range(12):
        z_back = rib_top - level * rib_gap
        for side in (1.0, -1.0):
            rx = (ax - fat_mm - 8.0) * (1.0 + 0.0008 * np.clip(-z_back, -150, 150))
            ry = (ay - fat_mm - 8.0) * (1.0 + 0.0008 * np.clip(-z_back, -150, 150))
            px = side * rx * np.cos(theta) * 0.97
            py = y0 + ry * np.sin(theta)
            pz = z_back - 35.0 * (theta - theta[0]) / (theta[-1] - theta[0])
            points = np.stack([px, py, pz], axis=1)
            ribs |= g.tube(points, rng.uniform(4.0, 5.5))
    ribs &= body
    labels[ribs] = L["ribs"]
    hu[ribs] = tissue["rib"]

    # Sternum: an anterior midline plate over the upper mediastinum.
    sternum_y = y0 + ay - fat_mm - 12.0
    sternum = body & (np.abs(g.x) <= rng.uniform(12.0, 18.0)) & (np.abs(g.y - sternum_y) <= 5.0)
    sternum &= (g.z <= rib_top + 10.0) & (g.z >= rib_top - 170.0)
    labels[sternum] = L["sternum"]
    hu[sternum] = tissue["cortical"] * 0.6

    # Scapulae: thin tilted plates on the posterior-lateral chest wall.
    for side in (1.0, -1.0):
        cx, cy = side * rng.uniform(85.0, 100.0), y0 - ay + fat_mm + 2.0
        plate = body & (np.abs((g.y - cy) + 0.35 * side * (g.x - cx)) <= 4.0) & (np.abs(g.x - cx) <= 45.0)
        plate &= (g.z <= rib_top + 5.0) & (g.z >= rib_top - 140.0)
        labels[plate] = L["scapulae"]
        hu[plate] = tissue["cortical"] * 0.7

    # Nodules: 0-3 small solid spheres inside the lungs.
    if nodules:
        lung_vox = np.argwhere((labels == L["lung_left"]) | (labels == L["lung_right"]))
        for _ in range(int(rng.integers(0, 4)) if len(lung_vox) else 0):
            i, j, k = lung_vox[rng.integers(len(lung_vox))]
            centre = (g.axes[0][i], g.axes[1][j], g.axes[2][k])
            radius = rng.uniform(3.0, 8.0)
            nodule = g.ellipsoid(centre, (radius, radius, radius))
            labels[nodule] = L["nodules"]
            hu[nodule] = tissue["nodule"]

    if noise_hu > 0:
        hu[body] += rng.normal(0.0, noise_hu, int(body.sum())).astype(np.float32)
    return hu, labels
