"""The pulmonary arteries and veins and the intrapulmonary bronchi: in each lobe a bundle tree (an artery beside its
bronchus) and a vein tree, grown in millimetres and turned into tubes.

* **Pulmonary arteries and veins** (label ``lung_vessels``, blood 40 HU non-contrast) — arteries from the hilum (where
  the heart module's pulmonary arteries end, radius 8 mm) into each lobe, each running beside its bronchus (the
  bronchovascular bundle: one tree, artery and bronchus offset to either side); veins a second tree per lobe that
  runs between the arterial branches and drains medially to the superior (upper/middle lobes) and inferior (lower
  lobes) pulmonary veins at the left atrium's level. Radii follow Murray's law (r³ conserved), r = 5.6 mm for a litre
  of lung supplied: lobar ≈ 5 mm, segmental ≈ 3 mm, 1 cm³ ≈ 0.55 mm; twigs towards the pleura thin out further, so the
  outer 1 cm is nearly vessel-free at 2.5 mm. Vessels and airways are ≈ 4–5 % of the lung volume (partial volume
  counted) and raise the lung's 10th–90th percentile spread to ~150–230 HU, as in real CT.

The trees are grown in millimetres on a 5 mm world lattice of the lung masks, so one patient gets the same trees on
any grid, by the volume-filling method of Tawhai et al. (J Appl Physiol 2000; after Kitaoka et al. 1999): a branch
supplies a set of points of its lobe, heads for their centroid (at most 65° off its parent) and covers 40 % of the
way; its points are split in two by a plane along the branch across their widest extent, and each half gets a
daughter, down to regions of ≈ 0.75 cm³ (~40 000 branches, all trees grown together in one vectorised pass).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from ..patient import Patient
from .airways import unit, wall_radius
from .lobes import LLL, LUL, RLL, RML, RUL

__all__ = ["COARSE_MM", "grow_trees", "vein_roots"]

# Tree growth (mm).
COARSE_MM = 5.0  # spacing of the points a tree fills (each 0.125 cm³)
_GAMMA = 3.0  # Murray's law: r³ of a parent = Σ r³ of its daughters
_R_LITRE_ARTERY = 5.6  # radius of an artery supplying 1 L: lobar ≈ 4.5, segmental ≈ 3, lobular (1 cm³) ≈ 0.5 mm
_R_LITRE_VEIN = 5.8  # the veins are a little wider than the arteries
_LEAF_POINTS = 6  # a region of ≤ 6 points (≈ 0.75 cm³) gets one terminal twig
_BRANCH_FRACTION = 0.4  # Tawhai's rule: a branch covers 40 % of the way to its region's centroid
_MAX_ANGLE = math.radians(65.0)  # daughters turn at most this far from their parent
_BUNDLE_GAP = 0.3  # mm between an artery and its bronchus


def grow_trees(
    patient: Patient,
    rng: np.random.Generator,
    pts: np.ndarray,
    pts_lobe: np.ndarray,
    cell: np.ndarray,
    airways: dict,
    veins_at: dict[int, np.ndarray],
    voxel_mm: float,
    depth: Callable[[np.ndarray], np.ndarray],
) -> dict:
    """Grow every lobe's bundle (artery + bronchus) and vein tree and turn them into tubes.

    Returns ``vessels`` and ``airway_walls``/``airway_lumens`` (polylines ``(points, radii)`` thick enough for
    :meth:`Canvas.tube_fraction`), ``faint`` (rows ``(a, b, r_a, r_b)`` of vessels thinner than half a voxel),
    ``counts`` and the raw ``tree``. Appends each lobe's bronchus from its lobar root to ``airways``.
    """
    s = patient.scale
    h = voxel_mm
    point_ml = float(np.prod(cell)) / 1000.0
    roots = airways["roots"]  # lobe -> (point, direction, radius of the lobar bronchus)
    groups_pts, groups_tree, tree_roots, tree_dirs, tree_kind, tree_lobe = [], [], [], [], [], []
    for lobe_id in range(5):
        members = np.nonzero(pts_lobe == lobe_id)[0]
        if len(members) < 8:
            continue
        centroid = pts[members].mean(axis=0)
        for kind in (0, 1):  # 0: bundle (artery with bronchus), 1: vein
            start = roots[lobe_id][0] if kind == 0 else veins_at[lobe_id]
            jitter = rng.uniform(-0.5, 0.5, (len(members), 3)) * cell
            groups_pts.append(pts[members] + jitter)
            groups_tree.append(np.full(len(members), len(tree_roots)))
            tree_roots.append(start)
            tree_dirs.append(unit(centroid - start))
            tree_kind.append(kind)
            tree_lobe.append(lobe_id)
    counts = {"arteries": 0, "bronchi": 0, "veins": 0}
    tree: dict = {}
    vessel_segs: list[tuple[np.ndarray, np.ndarray]] = []  # (points (P,3), radii (P,)) polylines
    faint: list[np.ndarray] = []  # rows (ax, ay, az, bx, by, bz, ra, rb)
    airway_walls: list[tuple[np.ndarray, np.ndarray]] = []
    airway_lumens: list[tuple[np.ndarray, np.ndarray]] = []
    thick_r = 0.5 * h  # below this a tube is drawn as a faint line with its true cross-section
    airway_r = max(1.0, 0.5 * h)  # bronchi thinner than this are below what CT resolves
    if tree_roots:
        kinds = np.asarray(tree_kind)
        tree = _grow(
            np.concatenate(groups_pts),
            np.concatenate(groups_tree),
            np.asarray(tree_roots),
            np.asarray(tree_dirs),
            np.where(kinds == 0, 0, 1),
            rng,
        )
        vol_ml = tree["count"] * point_ml
        is_vein = kinds[tree["tree"]] == 1
        radius = np.where(is_vein, _R_LITRE_VEIN, _R_LITRE_ARTERY) * (vol_ml / 1000.0) ** (1.0 / _GAMMA) * s**0.3
        # Supine: the dependent vessels carry more blood and look a little wider.
        radius *= 1.0 + 0.08 * np.clip(-(tree["end"][:, 1] - patient.body_y) / 80.0, -1.0, 1.0)
        # The outer 1–2 cm holds only terminal arterioles and venules (< 0.5 mm), below what CT resolves: twigs
        # that reach towards the pleura thin out (wide vessels running near it, at the hilum, stay as they are).
        near = np.clip((depth(tree["end"]) - 3.0) / 12.0, 0.25, 1.0)
        small = np.clip((1.5 - radius) / 1.0, 0.0, 1.0)
        radius *= 1.0 - small * (1.0 - near)
        tree["radius"] = radius
        bundle = ~is_vein
        offset = _bundle_offsets(tree, bundle)
        ends = tree["end"]
        roots_of = np.asarray(tree_roots)[tree["tree"]]
        art_end = ends + offset * (radius + 0.5 * _BUNDLE_GAP)[:, None]
        bro_end = ends - offset * (radius + 0.5 * _BUNDLE_GAP)[:, None]
        par = tree["parent"]
        top = par < 0
        root_off = offset[top] * (radius[top] + 0.5 * _BUNDLE_GAP)[:, None]
        art_start = np.where(top[:, None], 0.0, art_end[np.maximum(par, 0)])
        art_start[top] = roots_of[top] + np.where(bundle[top, None], root_off, 0.0)
        bro_start = np.where(top[:, None], 0.0, bro_end[np.maximum(par, 0)])
        bro_start[top] = roots_of[top] - root_off
        vessel_start = np.where(bundle[:, None], art_start, tree["start"])
        vessel_end = np.where(bundle[:, None], art_end, ends)
        tree.update(vessel_start=vessel_start, vessel_end=vessel_end, is_vein=is_vein)
        # The bronchus of each lobe starts where its lobar bronchus ends, beside the lobar artery.
        for b in np.nonzero(top & bundle)[0]:
            point, _, r_lobar = roots[tree_lobe[tree["tree"][b]]]
            line = np.array([point, bro_start[b]])
            airways["bronchi"].append((line, np.full(2, wall_radius(r_lobar))))
            airways["lumens"].append((line, np.full(2, r_lobar)))
        # Arteries from the hilum to each lobe's first branch (the pulmonary artery ends at the hilum).
        for b in np.nonzero(top & bundle)[0]:
            side = 1.0 if roots_of[b][0] > 0 else -1.0
            hilum = np.asarray(patient.hilum(side), dtype=np.float64)
            r_h = 8.0 * s
            vessel_segs.append(
                (
                    np.array([hilum, 0.5 * (hilum + art_start[b]), art_start[b]]),
                    np.array([r_h, 0.5 * (r_h + radius[b]), radius[b]]),
                )
            )
        # Veins from each lobe's first branch medially towards the left atrium (they leave the lung there).
        for b in np.nonzero(top & is_vein)[0]:
            side = 1.0 if tree["start"][b][0] > 0 else -1.0
            atrium = tree["start"][b] + np.array([-side * 25.0 * s, 4.0, -4.0])
            vessel_segs.append((np.array([atrium, tree["start"][b]]), np.array([radius[b] * 1.2, radius[b]])))
        thick = radius >= thick_r
        counts["arteries"] = int(bundle.sum())
        counts["veins"] = int(is_vein.sum())
        vessel_segs += _paths(vessel_start, vessel_end, radius, par, thick, tree["count"])
        leaf_taper = np.where(tree["leaf"], 0.2, 0.85)  # terminal twigs fade out
        thin = ~thick
        faint.append(
            np.column_stack([vessel_start[thin], vessel_end[thin], radius[thin], radius[thin] * leaf_taper[thin]])
        )
        air = bundle & (radius >= airway_r)
        counts["bronchi"] = int(air.sum())
        r_out = radius * 0.95
        r_in = r_out - np.maximum(0.3 * r_out, 0.35)
        airway_walls += _paths(bro_start, bro_end, r_out, par, air, tree["count"])
        airway_lumens += _paths(bro_start, bro_end, r_in, par, air, tree["count"])

    faint_rows = np.concatenate(faint) if faint else np.zeros((0, 8))
    return {
        "vessels": vessel_segs,
        "faint": faint_rows,
        "airway_walls": airway_walls,
        "airway_lumens": airway_lumens,
        "counts": counts,
        "tree": tree,
    }


def vein_roots(patient: Patient, rng: np.random.Generator) -> dict[int, np.ndarray]:
    """Where each lobe's vein tree starts: the superior (upper/middle lobes) and inferior (lower lobes) pulmonary
    veins, anterior and inferior to the bronchi at the hilum, medially at the left atrium's level."""
    s = patient.scale
    out = {}
    for lobe_id, side, dx, dy, dz in (
        (RUL, 1.0, -10.0, 16.0, -14.0),
        (RML, 1.0, -8.0, 20.0, -24.0),
        (RLL, 1.0, -12.0, -2.0, -44.0),
        (LUL, -1.0, 10.0, 14.0, -14.0),
        (LLL, -1.0, 12.0, -2.0, -40.0),
    ):
        h = np.asarray(patient.hilum(side), dtype=np.float64)
        out[lobe_id] = h + np.array([dx, dy, dz]) * s + rng.uniform(-3.0, 3.0, 3) * s
    return out


# ---- tree growth -----------------------------------------------------------------------------------------------------
def _grow(
    points: np.ndarray,
    tree_of: np.ndarray,
    roots: np.ndarray,
    root_dirs: np.ndarray,
    split_rule: np.ndarray,
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """Volume-filling growth of many trees at once (Tawhai et al. 2000).

    ``points (N, 3)`` mm, ``tree_of (N,)`` which tree each point belongs to, ``roots``/``root_dirs (T, 3)``;
    ``split_rule (T,)`` 0: split a region across its widest extent (bundles), 1: across its second-widest for the
    first two generations (veins, so they run between the arterial branches rather than along them).

    Returns per branch: ``start``, ``end`` (B, 3), ``count`` (points supplied), ``parent`` (−1 for a tree's first),
    ``tree``, ``leaf``, ``depth``. Parents precede their daughters.
    """
    start, parent_dir = roots.astype(np.float64), root_dirs.astype(np.float64)
    parent = np.full(len(roots), -1)
    tree = np.arange(len(roots))
    gid = tree_of.astype(np.int64)
    pts = points.astype(np.float64)
    rows: dict[str, list] = {k: [] for k in ("start", "end", "count", "parent", "tree", "leaf", "depth")}
    n_branches, depth, cos_max, sin_max = 0, 0, math.cos(_MAX_ANGLE), math.sin(_MAX_ANGLE)
    while len(gid) and len(start):
        g_n = len(start)
        cnt = np.bincount(gid, minlength=g_n).astype(np.float64)
        centroid = np.stack([np.bincount(gid, pts[:, a], g_n) for a in range(3)], axis=1) / cnt[:, None]
        v = centroid - start
        dist = np.linalg.norm(v, axis=1)
        u = np.where(dist[:, None] > 1e-6, v / np.maximum(dist, 1e-6)[:, None], parent_dir)
        # Daughters turn at most _MAX_ANGLE away from their parent (real branching angles are 30–60°).
        cos_a = (u * parent_dir).sum(axis=1)
        perp = u - cos_a[:, None] * parent_dir
        pn = np.linalg.norm(perp, axis=1)
        bend = (cos_a < cos_max) & (pn > 1e-6)
        turned = cos_max * parent_dir + sin_max * perp / np.maximum(pn, 1e-9)[:, None]
        u = np.where(bend[:, None], turned, u)
        leaf = cnt <= _LEAF_POINTS
        frac = _BRANCH_FRACTION * rng.uniform(0.8, 1.25, g_n)
        length = np.where(leaf, dist * rng.uniform(0.4, 0.8, g_n), dist * frac)
        length = np.maximum(length, 1.5)
        end = start + u * length[:, None]
        ids = np.arange(n_branches, n_branches + g_n)
        for k, val in (
            ("start", start),
            ("end", end),
            ("count", cnt),
            ("parent", parent),
            ("tree", tree),
            ("leaf", leaf),
            ("depth", np.full(g_n, depth)),
        ):
            rows[k].append(val)
        n_branches += g_n
        # Split each region by a plane along its branch, across the region's widest (or second-widest) extent.
        d = pts - centroid[gid]
        cov = np.empty((g_n, 3, 3))
        for a in range(3):
            for b in range(a, 3):
                cov[:, a, b] = cov[:, b, a] = np.bincount(gid, d[:, a] * d[:, b], g_n)
        # Principal axes of the region seen along its branch: a 2×2 eigenproblem in a basis perpendicular to u.
        e1 = np.cross(u, np.where(np.abs(u[:, 2:3]) < 0.9, [[0.0, 0.0, 1.0]], [[1.0, 0.0, 0.0]]))
        e1 /= np.linalg.norm(e1, axis=1)[:, None]
        e2 = np.cross(u, e1)
        c11 = np.einsum("gi,gij,gj->g", e1, cov, e1)
        c12 = np.einsum("gi,gij,gj->g", e1, cov, e2)
        c22 = np.einsum("gi,gij,gj->g", e2, cov, e2)
        theta = 0.5 * np.arctan2(2.0 * c12, c11 - c22)  # the widest direction
        second = (split_rule[tree] == 1) & (depth < 2)
        theta = theta + np.where(second, 0.5 * math.pi, 0.0)
        theta = theta + rng.normal(0.0, 0.35, g_n)  # some variety in the branching planes
        axis = np.cos(theta)[:, None] * e1 + np.sin(theta)[:, None] * e2
        side = (d * axis[gid]).sum(axis=1) > 0.0
        key = np.where(leaf[gid], -1, 2 * gid + side)
        keep = key >= 0
        present = np.bincount(key[keep], minlength=2 * g_n) > 0
        remap = np.cumsum(present) - 1
        new_parent_g = np.nonzero(present)[0] // 2
        pts, gid = pts[keep], remap[key[keep]]
        start, parent_dir = end[new_parent_g], u[new_parent_g]
        parent, tree = ids[new_parent_g], tree[new_parent_g]
        depth += 1
        if depth > 60:  # cannot happen with a finite point set, but never loop for ever
            break
    return {k: np.concatenate(v) for k, v in rows.items()}


def _bundle_offsets(tree: dict[str, np.ndarray], bundle: np.ndarray) -> np.ndarray:
    """Unit vectors, perpendicular to each branch, from the bundle's axis to its artery (the bronchus lies opposite),
    carried down the tree so a pair never swaps sides abruptly."""
    direction = tree["end"] - tree["start"]
    direction /= np.maximum(np.linalg.norm(direction, axis=1), 1e-9)[:, None]
    offset = np.zeros_like(direction)
    depth, parent = tree["depth"], tree["parent"]
    for level in range(int(depth.max()) + 1):
        at = np.nonzero(depth == level)[0]
        if level == 0:
            # At the hilum the arteries lie anterolateral to the bronchi.
            side = np.sign(tree["start"][at, 0])
            ref = np.column_stack([side, np.full(len(at), 0.8), np.zeros(len(at))])
        else:
            ref = offset[parent[at]]
        ref = ref - (ref * direction[at]).sum(axis=1)[:, None] * direction[at]
        n = np.linalg.norm(ref, axis=1)
        fallback = np.cross(direction[at], np.array([0.0, 0.0, 1.0]))
        ref = np.where((n > 1e-6)[:, None], ref / np.maximum(n, 1e-9)[:, None], fallback)
        offset[at] = ref / np.maximum(np.linalg.norm(ref, axis=1), 1e-9)[:, None]
    return offset * bundle[:, None]


def _paths(
    start: np.ndarray,
    end: np.ndarray,
    radius: np.ndarray,
    parent: np.ndarray,
    keep: np.ndarray,
    count: np.ndarray,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Split the kept branches (a top part of the tree) into polylines that follow the larger daughter, so each
    polyline tapers smoothly and joints are drawn once: ``[(points (P, 3), radii (P,)), ...]``."""
    idx = np.nonzero(keep)[0]
    if len(idx) == 0:
        return []
    main_child = {}
    for b in idx:  # parents precede daughters; the daughter supplying more volume continues its parent's path
        p = int(parent[b])
        if p >= 0 and keep[p] and (p not in main_child or count[b] > count[main_child[p]]):
            main_child[p] = int(b)
    continues = set(main_child.values())
    out = []
    for b in idx:
        if int(b) in continues:
            continue
        pts, rad = [start[b]], [radius[b]]
        cur = int(b)
        while True:
            nxt = main_child.get(cur)
            pts.append(end[cur])
            rad.append(radius[nxt] if nxt is not None else 0.8 * radius[cur])
            if nxt is None:
                break
            cur = nxt
        out.append((np.asarray(pts), np.asarray(rad)))
    return out
