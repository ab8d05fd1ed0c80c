"""Our DRR renderer against two peers, DiffDRR (0.6.1) and nanodrr (0.1.7), on the same rays and volumes.

    python benchmarks/drr_peers.py --device cuda --grids 128 256 --detector 256 --batch 4 --out benchmarks/results
    python benchmarks/drr_peers.py --grids 16 32 --detector 32 --batch 2 --repeats 1     # CPU dry run, seconds

Two cases per grid, on a synthetic chest (:data:`benchmarks.run.CHEST` voxelised on a 320 mm cube) seen in two
cone-beam views (PA + lateral) of ``D × D`` pixels, 512 mm wide:

* ``single``: one volume, both views.
* ``batch B``: ``B`` different volumes (the chest scaled by 0.9 … 1.1) through the fixed geometry, the DRR loss's
  use. Ours is one call on ``(B, 1, X, Y, Z)``. Neither peer renders different volumes in one call: DiffDRR's
  ``DRR`` holds one 3-D density buffer that its renderer expands over the pose batch, and nanodrr's fused kernels
  take one volume (``fused_supported`` needs an image batch of 1; its ``grid_sample`` path would need every volume
  repeated once per view). Their batched time is a loop of ``B`` calls, one volume per call, each volume already in
  the peer's own layout (a density buffer swapped in, a ``Subject`` built beforehand): the loop is the render only.

Rays: DiffDRR through :mod:`benchmarks.diffdrr_reference`, nanodrr through :mod:`benchmarks.nanodrr_reference`;
each row records the largest distance between a peer's ray end points and ours. Units: all three return the
dimensionless line integral ``∫ μ dl`` (μ in 1/mm, lengths in mm): DiffDRR's Siddon sums density × intersection
length in mm, nanodrr sums trilinear samples × their spacing in mm; no conversion is applied. nanodrr samples
``n_samples`` points per ray, chosen so that the step is at most the voxel size on every ray
(:func:`benchmarks.nanodrr_reference.n_samples_for`; recorded with the step bound).

Timings (float32, no gradients) are seconds per call from :func:`benchmarks.timing.seconds_per_call`; first calls
are one :func:`benchmarks.timing.timed_call` of a freshly built renderer: ours traces its system matrix there;
nanodrr's Triton kernels compile on their first launch in a process (and are cached on disk), so only its first
row pays for that.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
for _path in (str(ROOT), str(ROOT / "bundle")):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from scripts.physics import (  # noqa: E402
    DRRRenderer,
    ProjectionGeometry,
    ellipsoid_line_integrals,
    voxelize_ellipsoids,
)

from benchmarks.run import CHEST, markdown_table, stamp_for  # noqa: E402
from benchmarks.timing import seconds_per_call, timed_call  # noqa: E402

#: Each peer's import name and the install line that provides it (without dependencies: see ``.ci/run``).
PEERS = {"diffdrr": "pip install --no-deps diffdrr==0.6.1", "nanodrr": "pip install --no-deps nanodrr==0.1.7"}
CUBE_MM = 320.0  # side of the voxelised chest cube
DETECTOR_MM = 512.0  # detector width (both axes)
BODY_CHORD_MM = 60.0  # analytic errors are averaged over rays crossing at least this much body


def peer_available(name: str) -> bool:
    """Whether the peer package ``name`` imports here."""
    try:
        importlib.import_module(name)
    except ImportError:
        return False
    return True


def chest_volumes(grid: int, batch: int, device: str) -> tuple[torch.Tensor, tuple[float, float, float], torch.Tensor]:
    """``(mu (B, 1, N, N, N) in 1/mm, spacing (mm), scale (B,))``: the chest phantom scaled by ``scale[b]``."""
    spacing = (CUBE_MM / grid,) * 3
    mu = voxelize_ellipsoids(CHEST, (grid,) * 3, spacing).to(device)  # (N, N, N)
    scale = torch.linspace(0.9, 1.1, batch, dtype=torch.float64) if batch > 1 else torch.ones(1, dtype=torch.float64)
    return mu[None, None] * scale.to(device, torch.float32)[:, None, None, None, None], spacing, scale


def _time(fn: Callable[[], torch.Tensor], repeats: int) -> tuple[torch.Tensor, float, float]:
    """``(output, first-call s, s per call)`` of ``fn`` run without gradients."""
    with torch.no_grad():
        out, first = timed_call(fn)
        return out, first, seconds_per_call(fn, repeats)


def _agreement(ours: torch.Tensor, theirs: torch.Tensor) -> tuple[float, float]:
    """``(min correlation over images, mean |ours − theirs| / mean |theirs|)`` for ``(B, V, H, W)`` images."""
    a, b = ours.double().flatten(2).flatten(0, 1), theirs.double().flatten(2).flatten(0, 1)  # (B·V, H·W)
    corr = min(torch.corrcoef(torch.stack([x, y]))[0, 1].item() for x, y in zip(a, b, strict=True))
    return corr, ((a - b).abs().mean() / b.abs().mean()).item()


def _analytic_error(images: torch.Tensor, truth: torch.Tensor, body: torch.Tensor, scale: torch.Tensor) -> float:
    """Mean relative error of ``(B, V, H, W)`` images against the scaled exact integrals over body rays."""
    exact = truth[None] * scale[:, None, None, None]  # (B, V, H, W)
    return ((images.double().cpu() - exact).abs() / exact)[:, body].mean().item()


def _diffdrr(geometry, mu, spacing, repeats) -> dict:
    """DiffDRR's Siddon: one ``DRR`` whose density buffer is swapped per volume."""
    from diffdrr.pose import RigidTransform

    from benchmarks import diffdrr_reference as reference

    drr = reference.build(geometry, mu[0, 0].cpu(), spacing).to(mu.device)
    pose = RigidTransform(reference.poses(geometry).to(mu.device))
    densities = [m[0] for m in mu]  # (X, Y, Z) each: the layout DiffDRR keeps

    def fn() -> torch.Tensor:
        images = []
        for density in densities:
            drr.density = density
            images.append(drr(pose)[:, 0])  # (V, H, W)
        return torch.stack(images)  # (B, V, H, W)

    images, first, t = _time(fn, repeats)
    return {"images": images, "first": first, "s": t, "mismatch": reference.ray_mismatch_mm(drr, geometry)}


def _nanodrr(geometry, mu, spacing, repeats) -> dict:
    """nanodrr's ray marcher with the backend ``auto`` picks (Triton on CUDA), one ``Subject`` per volume."""
    from benchmarks import nanodrr_reference as reference

    drr = reference.build(geometry, mu.device)
    poses = reference.rt_inv(geometry).to(mu.device)
    subjects = [reference.subject(m[0], spacing) for m in mu]
    backend = reference.resolve_backend(drr, subjects[0], poses)
    n_samples = reference.n_samples_for(mu.shape[2:], spacing)

    def fn() -> torch.Tensor:
        return torch.stack([reference.render(drr, s, poses, n_samples, backend) for s in subjects])  # (B, V, H, W)

    try:
        images, first, t = _time(fn, repeats)
    except Exception as error:  # noqa: BLE001  # a fused kernel that fails to build here; its torch path still runs
        if backend == "torch":
            raise
        failed = f"{backend} failed ({type(error).__name__}: {_first_line(error)})"
        backend = "torch"
        images, first, t = _time(fn, repeats)
        backend = f"torch; {failed}"
    return {
        "images": images,
        "first": first,
        "s": t,
        "mismatch": reference.ray_mismatch_mm(drr, geometry),
        "backend": backend,
        "n_samples": n_samples,
        "step_bound_mm": reference.step_bound_mm(mu.shape[2:], spacing, n_samples),
    }


def drr_peer_rows(device: str, grids: list[int], detector: int, batch: int, repeats: int, stamp: dict) -> list[dict]:
    """The rows of :func:`iter_drr_peer_rows`, as a list."""
    return list(iter_drr_peer_rows(device, grids, detector, batch, repeats, stamp))


def iter_drr_peer_rows(device: str, grids: list[int], detector: int, batch: int, repeats: int, stamp: dict):
    """One row per grid and case (``"single"``, ``f"batch {batch}"``), each yielded as soon as it is measured (a
    caller stopped at a time limit keeps the earlier ones): our renderer (Joseph, timed; Siddon too) against DiffDRR
    and nanodrr on the same rays.

    Keys beyond ``stamp``: ``case``, ``grid``, ``batch``, ``volume`` ([B, 1, N, N, N]), ``spacing_mm``, ``views``,
    ``detector``, ``dtype``; ``ours_s``/``ours_first_s`` (Joseph), ``ours_siddon_s``/``ours_siddon_first_s``;
    per peer ``{peer}_s``, ``{peer}_first_s``, ``{peer}_batching`` (``"one call"`` or a loop over volumes),
    ``{peer}_ray_mismatch_mm``, ``{peer}_min_corr`` / ``{peer}_mean_rel_diff`` (DiffDRR against our Siddon, the
    same quadrature; nanodrr against our Joseph, both linear interpolants), ``{peer}_analytic_mean_rel_err``;
    ``nanodrr_backend``, ``nanodrr_n_samples``, ``nanodrr_step_bound_mm``; ``speedup_vs_diffdrr``,
    ``speedup_vs_nanodrr`` (peer s / our Joseph s), ``siddon_speedup_vs_diffdrr``; ``ours_analytic_mean_rel_err``,
    ``ours_siddon_analytic_mean_rel_err`` (against the phantom's exact integrals, rays crossing > 60 mm of body);
    ``missing`` (``None``, or which peer packages did not import: their fields are then ``None``);
    ``peer_errors`` (``None``, or a peer's failure in this row, e.g. out of memory: its fields are ``None``). If
    nanodrr's fused backend fails, its torch path is timed instead and ``nanodrr_backend`` says so.
    """
    geometry = ProjectionGeometry(
        views=("pa", "lateral"), detector_shape=(detector, detector), pixel_spacing_mm=DETECTOR_MM / detector
    )
    rays = geometry.rays()
    truth, chords = ellipsoid_line_integrals(CHEST, rays.origins, rays.directions, rays.lengths)  # (V, H, W)
    body = chords[0] > BODY_CHORD_MM  # (V, H, W)
    available = {name: peer_available(name) for name in PEERS}
    missing = "; ".join(f"{name} not importable ({PEERS[name]})" for name, ok in available.items() if not ok)
    for grid in grids:
        for b in (1, batch):
            mu, spacing, scale = chest_volumes(grid, b, device)
            ours, ours_siddon = DRRRenderer(geometry).to(device), DRRRenderer(geometry, method="siddon").to(device)
            joseph, first, t = _time(partial(ours, mu, spacing), repeats)
            siddon, siddon_first, siddon_t = _time(partial(ours_siddon, mu, spacing), repeats)
            errors: list[str] = []
            row = {
                **stamp,
                "case": "single" if b == 1 else f"batch {b}",
                "grid": grid,
                "batch": b,
                "volume": [b, 1, grid, grid, grid],
                "spacing_mm": list(spacing),
                "views": geometry.num_views,
                "detector": [detector, detector],
                "dtype": "float32",
                "ours_s": t,
                "ours_first_s": first,
                "ours_siddon_s": siddon_t,
                "ours_siddon_first_s": siddon_first,
                "ours_analytic_mean_rel_err": _analytic_error(joseph, truth, body, scale),
                "ours_siddon_analytic_mean_rel_err": _analytic_error(siddon, truth, body, scale),
            }
            # DiffDRR is compared with our Siddon (the same quadrature), nanodrr with our Joseph (both sample a
            # linear interpolant of the voxels); the speed-ups are all against Joseph, the renderer the loss uses.
            for name, run, same_kind in (("diffdrr", _diffdrr, siddon), ("nanodrr", _nanodrr, joseph)):
                try:
                    peer = run(geometry, mu, spacing, repeats) if available[name] else {}
                except Exception as error:  # noqa: BLE001  # e.g. out of memory: keep the other renderers' rows
                    errors.append(f"{name} at {grid}³ {row['case']}: {type(error).__name__}: {_first_line(error)}")
                    peer = {}
                corr, rel = _agreement(same_kind, peer["images"]) if peer else (None, None)
                row |= {
                    f"{name}_s": peer.get("s"),
                    f"{name}_first_s": peer.get("first"),
                    f"{name}_batching": (
                        None if not peer else "one call" if b == 1 else f"loop of {b} calls, one volume each"
                    ),
                    f"{name}_ray_mismatch_mm": peer.get("mismatch"),
                    f"{name}_min_corr": corr,
                    f"{name}_mean_rel_diff": rel,
                    f"{name}_analytic_mean_rel_err": _analytic_error(peer["images"], truth, body, scale)
                    if peer
                    else None,
                }
                if name == "nanodrr":
                    row |= {f"nanodrr_{key}": peer.get(key) for key in ("backend", "n_samples", "step_bound_mm")}
            row["speedup_vs_diffdrr"] = _ratio(row["diffdrr_s"], t)
            row["speedup_vs_nanodrr"] = _ratio(row["nanodrr_s"], t)
            row["siddon_speedup_vs_diffdrr"] = _ratio(row["diffdrr_s"], siddon_t)
            row["missing"] = missing or None
            row["peer_errors"] = "; ".join(errors) or None
            yield row


def _first_line(error: Exception) -> str:
    return (str(error).splitlines() or [""])[0][:200]


def _ratio(peer_s: float | None, ours_s: float) -> float | None:
    return None if peer_s is None else peer_s / ours_s


def _fmt(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def _cells(r: dict) -> list[object]:
    return [
        f"{r['grid']}³",
        r["case"],
        f"{r['views']}x{r['detector'][0]}²",
        _fmt(r["ours_s"], ".4f"),
        _fmt(r["ours_siddon_s"], ".4f"),
        _fmt(r["diffdrr_s"], ".4f"),
        f"{_fmt(r['nanodrr_s'], '.4f')} ({r['nanodrr_backend'] or '—'}, {r['nanodrr_n_samples'] or '—'} samples)",
        f"{_fmt(r['speedup_vs_diffdrr'], '.1f')}x / {_fmt(r['speedup_vs_nanodrr'], '.1f')}x",
        " / ".join(_fmt(r[k], ".2f") for k in ("ours_first_s", "diffdrr_first_s", "nanodrr_first_s")),
        f"{_fmt(r['diffdrr_min_corr'], '.6f')} / {_fmt(r['nanodrr_min_corr'], '.6f')}",
        f"{_fmt(r['diffdrr_mean_rel_diff'], '.1e')} / {_fmt(r['nanodrr_mean_rel_diff'], '.1e')}",
        " / ".join(
            _fmt(r[k], ".2%")
            for k in (
                "ours_analytic_mean_rel_err",
                "ours_siddon_analytic_mean_rel_err",
                "diffdrr_analytic_mean_rel_err",
                "nanodrr_analytic_mean_rel_err",
            )
        ),
        f"{_fmt(r['diffdrr_ray_mismatch_mm'], '.0e')} / {_fmt(r['nanodrr_ray_mismatch_mm'], '.0e')}",
    ]


def markdown(rows: list[dict]) -> list[str]:
    """Lines of the comparison table, then one line on how the peers were batched and what was missing."""
    lines = markdown_table(
        "| grid | case | detector | ours Joseph s | ours Siddon s | DiffDRR s | nanodrr s (backend, samples) "
        "| speed-up vs DiffDRR / nanodrr | first call ours / DiffDRR / nanodrr s "
        "| min corr DiffDRR↔Siddon / nanodrr↔Joseph | mean rel diff (same pairs) "
        "| analytic err Joseph / Siddon / DiffDRR / nanodrr | ray mismatch mm DiffDRR / nanodrr |",
        rows,
        _cells,
    )
    batched = [r for r in rows if r["batch"] > 1]
    if batched:
        lines += ["", f"Batched peers: a loop of {batched[0]['batch']} calls, one volume each; ours: one call."]
    for key, title in (("missing", "Missing"), ("peer_errors", "Peer failures")):
        notes = sorted({r[key] for r in rows if r[key]})
        if notes:
            lines += ["", f"{title}: " + "; ".join(notes) + "."]
    return lines


def summary(rows: list[dict]) -> dict:
    """Headline numbers at the largest grid: ``drr_speedup_vs_diffdrr`` / ``drr_speedup_vs_nanodrr`` from its
    batched row (the loss's case), ``..._single`` from its single-volume row; peer s / our Joseph s, ``None`` for
    a missing peer."""
    grid = max(r["grid"] for r in rows)
    single = next(r for r in rows if r["grid"] == grid and r["batch"] == 1)
    batched = next((r for r in rows if r["grid"] == grid and r["batch"] > 1), single)
    return {
        "drr_peers_grid": grid,
        "drr_peers_detector": batched["detector"][0],
        "drr_peers_batch": batched["batch"],
        "drr_speedup_vs_diffdrr": batched["speedup_vs_diffdrr"],
        "drr_speedup_vs_nanodrr": batched["speedup_vs_nanodrr"],
        "drr_speedup_vs_diffdrr_single": single["speedup_vs_diffdrr"],
        "drr_speedup_vs_nanodrr_single": single["speedup_vs_nanodrr"],
        "nanodrr_backend": single["nanodrr_backend"],
        "nanodrr_n_samples": single["nanodrr_n_samples"],
        "drr_peers_min_corr": min(
            (r[k] for r in rows for k in ("diffdrr_min_corr", "nanodrr_min_corr") if r[k] is not None), default=None
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--grids", type=int, nargs="+", default=[16, 32])
    parser.add_argument("--detector", type=int, default=32)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None, help="folder for drr_peers_<device>.json / .md")
    args = parser.parse_args()
    rows = drr_peer_rows(args.device, args.grids, args.detector, args.batch, args.repeats, stamp_for(args.device))
    lines = markdown(rows)
    print("\n".join(lines))
    print(json.dumps(summary(rows), indent=2))
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        name = f"drr_peers_{args.device.split(':')[0]}"
        (args.out / f"{name}.json").write_text(json.dumps(rows, indent=2))
        (args.out / f"{name}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
