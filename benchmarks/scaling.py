"""Per-stage cost against voxels, and the seed's voxel-token stage against ours at the same grid.

Every configuration is one stage of :class:`scripts.networks.XrayToCTCascade` built from a preset of
``configs/common.yaml`` + the preset (the encoding precomputed; the stage's depth lifting and denoiser timed),
measured in its own process so that its peak memory is its own: on CPU the growth of the resident set
(``ru_maxrss``) during the pass, on CUDA ``torch.cuda.max_memory_allocated`` above the memory held before it. FLOPs
are counted by ``torch.utils.flop_counter`` (matmuls, convolutions, attention; elementwise work is not counted), so
their growth is exact and machine-independent.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import torch

from benchmarks.timing import seconds_per_call

ROOT = Path(__file__).resolve().parents[1]

#: The seed's voxel-token stage (DESIGN.md): patch 1, global attention over every voxel, 4 blocks, width 256.
SEED_VOXEL_TOKENS = {"patch_size": 1, "width": 256, "depth": 4, "heads": 4, "attention": "global"}


def flop_counter():
    """``FlopCounterMode`` that also counts PyTorch's CPU flash-attention kernels (not in its registry)."""
    from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

    aten = torch.ops.aten
    mapping = {
        aten._scaled_dot_product_flash_attention_for_cpu: lambda q, k, v, *a, **kw: sdpa_flop_count(q, k, v),
        aten._scaled_dot_product_flash_attention_for_cpu_backward: (
            lambda g, q, k, v, *a, **kw: sdpa_backward_flop_count(g, q, k, v)
        ),
    }
    return FlopCounterMode(display=False, custom_mapping=mapping)


def _proc_status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


class _PeakMemory:
    """Peak memory of a block above what was held before it (GiB): on CUDA the allocator's peak; on CPU (Linux) the
    resident set's high-water mark, reset at entry (``/proc/self/clear_refs``), above the resident set at entry."""

    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")

    def __enter__(self) -> _PeakMemory:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current resident set
            self.base = _proc_status_kib("VmRSS") * 1024
        return self

    def __exit__(self, *exc) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            self.peak = (torch.cuda.max_memory_allocated() - self.base) / 2**30
            self.total = torch.cuda.max_memory_allocated() / 2**30
        else:
            high = _proc_status_kib("VmHWM") * 1024
            self.peak, self.total = max(high - self.base, 0) / 2**30, high / 2**30


def build_stage(spec: dict, device: str):
    """The cascade truncated after ``spec['stage']``, its grids set to ``spec['grid']`` for that stage (earlier
    stages scaled alike), every stage entry updated by ``spec['all_stages']``, the trained one then by
    ``spec['override']``, the encoder by ``spec['encoder']``, config keys by ``spec['parser_overrides']``; returns
    ``(network, parser)``."""
    from scripts.networks import XrayToCTCascade

    from benchmarks.cascade import preset_parser

    parser = preset_parser(spec["preset"], device)
    for key, value in spec.get("parser_overrides", {}).items():  # e.g. a smaller detector for a CPU dry run
        parser[key] = value
    stage = spec["stage"]
    stages = [dict(s) for s in parser["stages"][: stage + 1]]
    scale = stages[stage]["grid_size"] / spec["grid"]
    for s in stages:
        s["grid_size"] = int(round(s["grid_size"] / scale))
    for s in stages:  # e.g. narrower blocks for a CPU dry run (benchmarks/gpu_check.py)
        s.update(spec.get("all_stages", {}))
    stages[stage].update(spec.get("override", {}))
    geometry = parser.get_parsed_content("geometry")
    network = XrayToCTCascade(
        geometry,
        parser["fov_mm"],
        stages,
        encoder=dict(parser["encoder"], **spec.get("encoder", {})),
        use_depth_lifting=parser["use_depth_lifting"],
        gradient_checkpointing=spec.get("gradient_checkpointing", False),
    )
    return network.to(device), parser


def measure_stage(spec: dict) -> dict:
    """Forward and forward+backward seconds, peak memory and FLOPs of one stage configuration (batch 1)."""
    from benchmarks.run import stamp_for

    device, stage = spec["device"], spec["stage"]
    cuda = device.startswith("cuda")
    network, parser = build_stage(spec, device)
    grid = network.grid_size(stage)
    h, w = network.encoder.image_size
    generator = torch.Generator().manual_seed(0)
    xray = torch.rand(1, network.encoder.num_views, h, w, generator=generator).to(device) * 2 - 1
    x_t = torch.randn(1, 1, *grid, generator=generator).to(device)
    previous = torch.randn(1, 1, *network.grid_size(stage - 1), generator=generator).to(device) if stage else None
    t = torch.tensor([500], device=device)
    with torch.no_grad():
        encoding = network.encode(xray)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda)

    def forward() -> torch.Tensor:
        with autocast:
            return network(x_t, t, stage=stage, previous=previous, encoding=encoding)

    def train_step() -> None:
        forward().float().square().mean().backward()
        network.zero_grad(set_to_none=True)

    network.train()
    with torch.no_grad(), _PeakMemory(device) as mem_forward:
        forward()
    row = {"forward_peak_GiB": mem_forward.peak}
    with torch.no_grad():
        row["forward_s"] = seconds_per_call(forward, spec["repeats"])
        with flop_counter() as counter:
            forward()
        row["forward_GFLOP"] = counter.get_total_flops() / 1e9
    if spec.get("backward", True):
        with _PeakMemory(device) as mem_train:
            train_step()
        row["forward_backward_peak_GiB"] = mem_train.peak
        row["forward_backward_s"] = seconds_per_call(train_step, spec["repeats"])
        with flop_counter() as counter:
            train_step()
        row["forward_backward_GFLOP"] = counter.get_total_flops() / 1e9
    cfg = network.stage_configs[stage]
    return {
        **stamp_for(device),
        "section": spec["section"],
        "series": spec["series"],
        "preset": spec["preset"],
        "stage": stage,
        "grid": list(grid),
        "voxels": math.prod(grid),
        "patch": list(cfg["patch_size"]),
        "tokens": math.prod(network.stages[stage]["denoiser"].token_grid),
        "width": cfg["width"],
        "depth": cfg["depth"],
        "attention": cfg["attention"],
        "params_stage_M": sum(p.numel() for p in network.stages[stage].parameters()) / 1e6,
        "dtype": "bf16 autocast" if cuda else "float32",
        "batch": 1,
        "repeats": spec["repeats"],
        "memory_measure": "CUDA max allocated above the model"
        if cuda
        else "CPU peak RSS above the model (fresh process)",
        **row,
    }


def isolated(function: str, spec: dict) -> dict:
    """Run ``benchmarks.<module>.<function>(spec)`` in a fresh Python process; its JSON result."""
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--isolated", function, json.dumps(spec)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        raise RuntimeError(f"{function}({spec}) failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def growth_specs(device: str, quick: bool, repeats: int) -> list[dict]:
    """The cost-growth configurations for this device and mode."""
    cuda = device.startswith("cuda")
    specs = []
    # (a) The cascade as designed: each stage on its own grid, token grid fixed (patch 2 / 4 / 8).
    scales = [1, 2] if cuda else ([4] if quick else [4, 2])
    for scale in scales:
        for stage, full in enumerate((64, 128, 256)):
            specs.append(
                {"preset": "progressive_3stage", "stage": stage, "grid": full // scale, "series": f"stages 1/{scale}"}
            )
    for stage, full in enumerate((32, 64)):
        specs.append({"preset": "tiny", "stage": stage, "grid": full, "series": "tiny stages"})
    # (b) One stage on ever finer grids at a fixed patch: global attention grows with tokens², windows linearly.
    stage, grids = (2, [64, 128, 256]) if cuda else (0, [16, 32] if quick else [16, 32, 48])
    for attention in ("global", "window"):
        for grid in grids:
            specs.append(
                {
                    "preset": "progressive_3stage",
                    "stage": stage,
                    "grid": grid,
                    "series": f"stage {stage} fixed patch, {attention}",
                    "override": {"attention": attention, "window_size": 8},
                }
            )
    return [dict(s, device=device, section="growth", repeats=repeats) for s in specs]


def voxel_token_specs(device: str, quick: bool, repeats: int) -> list[dict]:
    """The seed's voxel-token stage and ours (quick_2stage stage 0; tiny stage 0) on the same small grids."""
    cuda = device.startswith("cuda")
    grids = [32, 64] if cuda else ([16, 24] if quick else [16, 24, 32])
    specs = []
    for grid in grids:
        heavy = not cuda and grid > 16  # CPU: forward only above 16³ (a 24³ voxel-token backward takes minutes)
        specs += [
            {"preset": "quick_2stage", "series": "seed voxel tokens", "override": SEED_VOXEL_TOKENS, "grid": grid},
            {"preset": "quick_2stage", "series": "ours (quick_2stage stage 0)", "grid": grid},
            {"preset": "tiny", "series": "ours (tiny stage 0)", "grid": grid},
        ]
        for s in specs[-3:]:
            s.update(stage=0, backward=not heavy, repeats=1 if heavy and s["series"].startswith("seed") else repeats)
    return [dict(s, device=device, section="voxel_tokens", repeats=s.get("repeats", repeats)) for s in specs]


def with_growth(rows: list[dict]) -> list[dict]:
    """Add, per series, each row's growth against the previous row: voxels ×, time ×, FLOPs ×, memory × and the
    exponent ``log(time ×) / log(voxels ×)`` (≤ 1: at most linear in voxels)."""
    out, last = [], {}
    for r in rows:
        r = dict(r)
        prev = last.get(r["series"])
        if prev is not None:
            v = r["voxels"] / prev["voxels"]
            r["vs_previous"] = {
                "voxels_x": v,
                "forward_s_x": r["forward_s"] / prev["forward_s"],
                "forward_GFLOP_x": r["forward_GFLOP"] / prev["forward_GFLOP"],
                "forward_exponent": math.log(r["forward_s"] / prev["forward_s"]) / math.log(v),
                "flop_exponent": math.log(r["forward_GFLOP"] / prev["forward_GFLOP"]) / math.log(v),
            }
            if "forward_backward_s" in r and "forward_backward_s" in prev:
                r["vs_previous"]["forward_backward_exponent"] = math.log(
                    r["forward_backward_s"] / prev["forward_backward_s"]
                ) / math.log(v)
                if prev["forward_backward_peak_GiB"] > 0:
                    r["vs_previous"]["memory_x"] = r["forward_backward_peak_GiB"] / prev["forward_backward_peak_GiB"]
        last[r["series"]] = r
        out.append(r)
    return out


def with_ratios(rows: list[dict]) -> list[dict]:
    """Voxel-token rows: the seed's time over each of ours at the same grid; plus a labelled projection of the
    seed's forward time to the seed preset's first grid (64³) from ``a·T + b·T²`` fitted to the measured rows."""
    seed = {r["grid"][0]: r for r in rows if r["series"].startswith("seed")}
    out = []
    for r in rows:
        r = dict(r, measured=True)
        s = seed.get(r["grid"][0])
        if s is not None and not r["series"].startswith("seed"):
            r["seed_over_ours_forward"] = s["forward_s"] / r["forward_s"]
            if "forward_backward_s" in r and "forward_backward_s" in s:
                r["seed_over_ours_forward_backward"] = s["forward_backward_s"] / r["forward_backward_s"]
        out.append(r)
    points = sorted((r["tokens"], r["forward_s"]) for r in seed.values())
    if len(points) >= 2 and points[-1][0] < 64**3:
        (t1, y1), (t2, y2) = points[-2:]
        b = (y2 / t2 - y1 / t1) / (t2 - t1)  # y = a·T + b·T²  =>  y/T = a + b·T
        a = y1 / t1 - b * t1
        if a > 0 and b > 0:
            last = seed[max(seed)]
            tokens = 64**3
            out.append(
                dict(
                    {k: last[k] for k in ("device", "machine", "torch", "date", "dtype", "section", "series")},
                    grid=[64, 64, 64],
                    voxels=tokens,
                    tokens=tokens,
                    forward_s=a * tokens + b * tokens**2,
                    measured=False,
                    projection=f"a·T + b·T² through the measured {int(round(t1 ** (1 / 3)))}³ and "
                    f"{int(round(t2 ** (1 / 3)))}³ forward times",
                )
            )
    return out


def _fmt(x, spec: str = ".3f") -> str:
    return "-" if x is None else format(x, spec)


#: Columns of :func:`markdown_growth`.
GROWTH_HEADER = (
    "| series | preset, stage | grid (voxels) | patch → tokens | width x depth | attention | fwd s | fwd+bwd s "
    "| fwd GFLOP | peak GiB (fwd+bwd) | vs previous row: voxels × / fwd s × / GFLOP × | exponent (fwd, fwd+bwd) |"
)
#: Columns of :func:`markdown_voxel_tokens`.
VOXEL_TOKENS_HEADER = (
    "| configuration | grid | tokens | width x depth | fwd s | fwd+bwd s | fwd GFLOP | peak GiB (fwd / fwd+bwd) "
    "| seed ÷ this (fwd / fwd+bwd) | measured / projected |"
)


def _growth_cells(r: dict) -> list[object]:
    g = r.get("vs_previous")
    vs = f"{g['voxels_x']:.1f} / {g['forward_s_x']:.2f} / {g['forward_GFLOP_x']:.2f}" if g else "-"
    exps = (
        f"{g['forward_exponent']:.2f}, {_fmt(g.get('forward_backward_exponent'), '.2f')}"
        + (" (≤ linear)" if max(g["forward_exponent"], g.get("forward_backward_exponent", 0)) <= 1 else "")
        if g
        else "-"
    )
    return [
        r["series"],
        f"{r['preset']}, {r['stage']}",
        f"{r['grid'][0]}³ ({r['voxels']:,})",
        f"{r['patch'][0]} → {r['tokens']:,}",
        f"{r['width']} x {r['depth']}",
        r["attention"],
        f"{r['forward_s']:.3f}",
        _fmt(r.get("forward_backward_s")),
        f"{r['forward_GFLOP']:.1f}",
        _fmt(r.get("forward_backward_peak_GiB"), ".2f"),
        vs,
        exps,
    ]


def markdown_growth(rows: list[dict]) -> list[str]:
    from benchmarks.run import markdown_table

    return markdown_table(GROWTH_HEADER, rows, _growth_cells)


def _voxel_token_cells(r: dict) -> list[object]:
    if not r["measured"]:
        head = [r["series"], f"{r['grid'][0]}³", f"{r['tokens']:,}", "-", f"{r['forward_s']:.1f}"]
        return head + ["-"] * 4 + [f"projected: {r['projection']}"]
    ratio = "-"
    if "seed_over_ours_forward" in r:
        both = r.get("seed_over_ours_forward_backward")
        ratio = f"{r['seed_over_ours_forward']:.1f}x / " + ("-" if both is None else f"{both:.1f}x")
    peak = f"{r['forward_peak_GiB']:.2f} / {_fmt(r.get('forward_backward_peak_GiB'), '.2f')}"
    return [
        r["series"],
        f"{r['grid'][0]}³",
        f"{r['tokens']:,}",
        f"{r['width']} x {r['depth']}",
        f"{r['forward_s']:.3f}",
        _fmt(r.get("forward_backward_s")),
        f"{r['forward_GFLOP']:.1f}",
        peak,
        ratio,
        "measured",
    ]


def markdown_voxel_tokens(rows: list[dict]) -> list[str]:
    from benchmarks.run import markdown_table

    return markdown_table(VOXEL_TOKENS_HEADER, rows, _voxel_token_cells)
