"""Network benchmark: parameters, forward/backward time and peak memory per cascade stage and preset.

    python benchmarks/networks.py              # CPU: tiny preset at full size, seed presets at 1/4 grid
    python benchmarks/networks.py --device cuda  # GPU: every preset at full size, bf16 autocast

Each (preset, stage) runs in its own process so that peak memory is that configuration's alone (CPU: growth of the
resident set during forward+backward; CUDA: ``torch.cuda.max_memory_allocated``). Results:
``benchmarks/results/networks_<device>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import resource
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "bundle"), str(ROOT)]

PRESETS = {
    "tiny": [],
    "quick_2stage": ["stages/quick_2stage.yaml"],
    "progressive_3stage": ["stages/progressive_3stage.yaml"],
}


def measure(preset: str, stage: int, scale: int, device: str, repeats: int) -> dict:
    import torch

    from benchmarks.cascade import preset_parser
    from benchmarks.run import machine
    from benchmarks.timing import seconds_per_call

    parser = preset_parser(preset, "cpu")  # the network is moved to the device below
    full_stages = parser["stages"]
    if scale > 1:
        parser["stages"] = [dict(s, grid_size=s["grid_size"] // scale) for s in full_stages]
    net = parser.get_parsed_content("network_def").to(device)
    cfg = net.stage_configs[stage]
    grid = net.grid_size(stage)
    h, w = net.encoder.image_size
    xray = torch.randn(1, net.encoder.num_views, h, w, device=device)
    x_t = torch.randn(1, 1, *grid, device=device)
    previous = torch.randn(1, 1, *net.grid_size(stage - 1), device=device) if stage > 0 else None
    t = torch.tensor([500], device=device)
    cuda = device.startswith("cuda")
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else torch.autocast("cpu", enabled=False)

    def step(backward: bool) -> None:
        with autocast:
            out = net(x_t, t, xray, stage=stage, previous=previous)
        if backward:
            out.float().square().mean().backward()
            net.zero_grad(set_to_none=True)

    with torch.no_grad():
        step(False)  # warm-up
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    step(True)
    peak = (
        torch.cuda.max_memory_allocated() / 2**30
        if cuda
        else (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 2**20
    )
    with torch.no_grad():
        forward_s = seconds_per_call(lambda: step(False), repeats)
    train_s = seconds_per_call(lambda: step(True), repeats)
    # Parameters are those of the full-size preset (built last, so that it does not inflate the peak above).
    parser["stages"] = full_stages
    parser.parse(reset=True)
    full = parser.get_parsed_content("network_def")
    params_stage = sum(p.numel() for p in full.stages[stage].parameters())
    params_encoder = sum(p.numel() for p in full.encoder.parameters())
    return {
        "preset": preset,
        "stage": stage,
        "grid": list(grid),
        "grid_scale": f"1/{scale}" if scale > 1 else "full",
        "patch": cfg["patch_size"],
        "tokens": list(net.stages[stage]["denoiser"].token_grid),
        "width": cfg["width"],
        "depth": cfg["depth"],
        "heads": cfg["heads"],
        "params_stage_M": params_stage / 1e6,
        "params_encoder_M": params_encoder / 1e6,
        "forward_s": forward_s,
        "forward_backward_s": train_s,
        "peak_memory_GiB": peak,
        "memory_measure": "cuda max allocated" if cuda else "CPU RSS growth",
        "dtype": "bf16 autocast" if cuda else "float32",
        "device": device,
        "machine": machine(device),
        "torch": torch.__version__,
        "date": dt.date.today().isoformat(),
    }


def _cells(r: dict) -> list[object]:
    return [
        r["preset"],
        r["stage"],
        f"{'x'.join(map(str, r['grid']))} ({r['grid_scale']})",
        "x".join(map(str, r["patch"])),
        "x".join(map(str, r["tokens"])),
        f"{r['width']} x {r['depth']} / {r['heads']}",
        f"{r['params_stage_M']:.2f}",
        f"{r['forward_s']:.3f}",
        f"{r['forward_backward_s']:.3f}",
        f"{r['peak_memory_GiB']:.2f}",
    ]


def write_markdown(rows: list[dict], path: Path) -> None:
    from benchmarks.run import markdown_table

    r0 = rows[0]
    lines = [f"# Network benchmark ({r0['device']}, {r0['machine']}, {r0['dtype']}, {r0['date']})", ""]
    lines += markdown_table(
        "| preset | stage | grid timed | patch | tokens | width x depth / heads | params (M, full size) | forward s "
        "| fwd+bwd s | peak GiB |",
        rows,
        _cells,
    )
    lines += [
        "",
        f"Encoder parameters (shared): {rows[0]['params_encoder_M']:.2f} M (tiny) / "
        f"{rows[-1]['params_encoder_M']:.2f} M (seed presets). Batch 1, one X-ray pair.",
    ]
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--one", nargs=3, metavar=("PRESET", "STAGE", "SCALE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        preset, stage, scale = args.one
        print(json.dumps(measure(preset, int(stage), int(scale), args.device, args.repeats)))
        return
    rows = []
    for preset in PRESETS:
        n_stages = {"tiny": 2, "quick_2stage": 2, "progressive_3stage": 3}[preset]
        scale = 1 if (preset == "tiny" or args.device.startswith("cuda")) else 4
        for stage in range(n_stages):
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--device",
                    args.device,
                    "--repeats",
                    str(args.repeats),
                    "--one",
                    preset,
                    str(stage),
                    str(scale),
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(rows[-1]["preset"], rows[-1]["stage"], f"{rows[-1]['forward_backward_s']:.3f} s", flush=True)
    from benchmarks.run import save_results

    name = f"networks_{'cuda' if args.device.startswith('cuda') else 'cpu'}"
    save_results(rows, ROOT / "benchmarks" / "results", name, write_markdown)


if __name__ == "__main__":
    main()
