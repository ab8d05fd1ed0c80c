"""The GPU check's measurements, one section per process; ``benchmarks/gpu_check.sh`` runs them and the summary.

    python benchmarks/gpu_check.py --section drr --work DIR [--dry-run]
    python benchmarks/gpu_check.py --summarize --work DIR --out DIR [--dry-run]

Sections (each writes ``WORK/<section>.json`` after every row, so that a section stopped at its time limit keeps
what it measured):

* ``drr``: our DRR renderer against DiffDRR and nanodrr on the same rays, one volume and a batch of volumes through
  fixed geometry, 128³ and 256³, two 256² views (``benchmarks/drr_peers.py``).
* ``train``: a bf16 training step with the DRR loss for each stage of ``progressive_3stage`` (64³, 128³, 256³) at
  batch 1 and 2 (``benchmarks/training.py``: the bundle's ``CascadeDiffusionTrainer._iteration``), step time, peak
  memory, model-FLOP utilisation against the measured matmul rate; the same step for MONAI's stock 3D
  ``DiffusionModelUNet`` at 64³ and 128³ as the peer.
* ``inference``: the whole 3-stage cascade to 256³ from a PA + lateral pair, bf16 autocast, one sample, at the
  default steps per stage and at 10 and 5, eager: seconds per case after warm-up and the first call.
* ``compile``: the same with every stage's denoiser under ``torch.compile`` (inductor) and under
  ``torch.compile(mode="reduce-overhead")`` (inductor + CUDA graphs); the first call includes the compilation.
* ``workflow``: ``quick_2stage`` trained on synthetic phantoms by ``train.yaml`` for a wall-clock budget, resumed,
  and evaluated by ``evaluate.yaml`` (``benchmarks/gpu_workflow.py``).

``--dry-run``: the same code on the CPU at tiny sizes (grids an eighth of the seed's, two sampling steps, inductor
replaced by dynamo's ``eager`` backend and CUDA graphs left out, since neither exists on a CPU check), so that the
script is known to run before device minutes are spent. Dry-run figures are not measurements of anything.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import gc
import json
import math
import os
import sys
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "bundle"), str(ROOT)]

SECTIONS = ("drr", "train", "inference", "compile", "workflow")
#: The seed cascade's grids (progressive_3stage) and the peer's grids.
STAGE_GRIDS = (64, 128, 256)
UNET_GRIDS = (64, 128)
#: MONAI's stock 3D denoiser as the peer: three levels, attention at the coarsest (as MONAI's 3D DDPM tutorials),
#: 41.3 M parameters; it has no X-ray conditioning, so it is timed on the same objective without it.
UNET_PEER = {
    "spatial_dims": 3,
    "in_channels": 1,
    "out_channels": 1,
    "channels": (64, 128, 256),
    "attention_levels": (False, False, True),
    "num_res_blocks": 2,
    "num_head_channels": 32,
}
#: Targets of issue 18 (H200, bf16).
TARGETS = {
    "inference_s": 1.0,  # 256³ from two X-rays, end to end
    "peak_gb": 6.0,  # stage-3 training step, batch 1
    "mfu": 0.35,
    "vs_diffdrr": 5.0,  # DRR renderer speed-up
    "vs_nanodrr": 1.0,  # on batched volumes through fixed geometry
    "growth_exponent": 1.0,  # step time per stage ~ voxels^e
}


#: What each section runs on the GPU: the sizes of issue 18.
GPU_SIZES = {
    "device": "cuda",
    "scale": 1,
    "drr_grids": [128, 256],
    "detector": 256,
    "drr_batch": 8,
    "repeats": 3,
    "batches": [1, 2],
    "steps": [None, 10, 5],  # None: inference.yaml's num_inference_steps
    "compile_modes": [("reduce-overhead", "inductor"), ("default", "inductor")],  # the likelier fastest first
    # training (stage 0 20 s, its resumption 20 s, stage 1 60 s): with the four processes' start, the data and the
    # evaluation about 3 minutes, which is what the 9-minute budget leaves after the other sections
    "workflow_budget_s": 100.0,
    "all_stages": {},
    "encoder": {},
    "unet_channels": UNET_PEER["channels"],
    "parser_overrides": {},
}
#: The CPU dry run: an eighth of the grids, what else a CPU needs to run it in about two minutes.
DRY_RUN_SIZES = dict(
    GPU_SIZES,
    device="cpu",
    scale=8,
    drr_grids=[16, 32],
    detector=32,
    drr_batch=2,
    repeats=1,
    steps=[2, 1],
    compile_modes=[("default", "eager")],  # inductor compiles for minutes on a CPU; CUDA graphs need a GPU
    workflow_budget_s=10.0,
    # narrower blocks: the seed's widths (256-512, 4-8 blocks) make each CPU step seconds, not milliseconds
    all_stages={"width": 32, "depth": 1, "heads": 2},
    encoder={"stem_channels": [8, 16], "dim": 32, "heads": 2, "depth": 1, "global_dim": 32},
    unet_channels=(32, 32, 32),  # GroupNorm of 32 groups: the fewest channels it takes
    # a 32² detector over the same 563 mm (the tests' geometry): tracing the DRR matrices of 128² views was most of
    # each dry-run training row
    parser_overrides={"geometry#detector_shape": [32, 32], "geometry#pixel_spacing_mm": [17.6, 17.6]},
)


def sizes(dry_run: bool) -> dict:
    """What each section runs: :data:`GPU_SIZES`, or :data:`DRY_RUN_SIZES` for the CPU dry run (a copy)."""
    return copy.deepcopy(DRY_RUN_SIZES if dry_run else GPU_SIZES)


class Rows:
    """A section's rows, written to ``WORK/<section>.json`` after each one (a timed-out section keeps them)."""

    def __init__(self, work: Path, section: str) -> None:
        self.path, self.rows = work / f"{section}.json", []
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def add(self, row: dict) -> None:
        self.rows.append(row)
        self._write()
        print(json.dumps({k: v for k, v in row.items() if not isinstance(v, (dict, list))}, default=str), flush=True)

    def put(self, row: dict) -> None:
        """The section's one row, replaced (a workflow's result as it grows)."""
        self.rows = [row]
        self._write()

    def _write(self) -> None:
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.rows, indent=2, default=str))
        os.replace(tmp, self.path)


def _free(device: str) -> None:
    """The previous row's tensors released (each row's peak is measured from its own start, ``_PeakMemory``)."""
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


# ---- drr --------------------------------------------------------------------------------------------------------
def section_drr(cfg: dict, rows: Rows) -> None:
    from benchmarks import drr_peers
    from benchmarks.run import stamp_for

    for row in drr_peers.iter_drr_peer_rows(
        cfg["device"], cfg["drr_grids"], cfg["detector"], cfg["drr_batch"], cfg["repeats"], stamp_for(cfg["device"])
    ):
        rows.add(row)


# ---- train ------------------------------------------------------------------------------------------------------
def section_train(cfg: dict, rows: Rows) -> None:
    from benchmarks import training

    device = cfg["device"]
    cuda = device.startswith("cuda")
    dtype = torch.bfloat16 if cuda else torch.float32
    # once for all rows: 50 products of 8192² after 0.25 s of warm-up on the GPU
    rate = training.matmul_rate(device, dtype, 8192 if cuda else 1024, 50 if cuda else 3, 0.25 if cuda else 0.0)
    for batch in cfg["batches"]:
        for stage, full in enumerate(STAGE_GRIDS):
            spec = {
                "preset": "progressive_3stage",
                "stage": stage,
                "grid": full // cfg["scale"],
                "batch": batch,
                "device": device,
                "repeats": cfg["repeats"],
                "gradient_checkpointing": False,
                "matmul_rate": rate,
                "all_stages": cfg["all_stages"],
                "encoder": cfg["encoder"],
                "parser_overrides": cfg["parser_overrides"],
            }
            _free(device)
            rows.add(dict(training.train_step(spec), kind="cascade"))
    # Stage 3 at batch 1 once more with gradient checkpointing: the memory-for-time trade of the <= 6 GB target.
    _free(device)
    spec = dict(spec, stage=2, grid=STAGE_GRIDS[2] // cfg["scale"], batch=1, gradient_checkpointing=True)
    rows.add(dict(training.train_step(spec), kind="cascade"))
    for batch in cfg["batches"]:
        for full in UNET_GRIDS:
            _free(device)
            rows.add(unet_step(device, full // cfg["scale"], batch, cfg["repeats"], rate, cfg))


def unet_step(device: str, grid: int, batch: int, repeats: int, rate: float, cfg: dict) -> dict:
    """MONAI's ``DiffusionModelUNet`` trained as our stage is: v-loss + the DRR loss of x̂0 (timestep inside the
    gate), bf16 autocast on CUDA, gradient clipping, AdamW; peak memory and MFU measured as for the cascade."""
    from monai.networks.nets import DiffusionModelUNet

    from benchmarks.run import stamp_for
    from benchmarks.scaling import _PeakMemory, flop_counter
    from benchmarks.timing import seconds_per_call, timed_call
    from benchmarks.training import drr_step_setup

    cuda = device.startswith("cuda")
    parser = _parser(cfg, device)
    channels = cfg["unet_channels"]
    heads = min(UNET_PEER["num_head_channels"], channels[-1])
    args = dict(UNET_PEER, channels=tuple(channels), num_head_channels=heads)
    net = DiffusionModelUNet(**args, use_flash_attention=cuda).to(device)
    parts = drr_step_setup(parser, device, batch)
    train, objective, physics, xray = (parts[k] for k in ("train", "objective", "physics", "xray"))
    t = torch.full((batch,), parts["t_fixed"], device=device)
    x0 = torch.nn.functional.interpolate(parts["ct"], size=(grid,) * 3, mode="trilinear")
    noise = torch.randn_like(x0)
    spacing = [parser["fov_mm"] / grid] * 3
    optimizer = torch.optim.AdamW(net.parameters(), lr=train["learning_rate"], weight_decay=train["weight_decay"])

    def step() -> None:
        x_t = objective.corrupt(x0, noise, t)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
            v = net(x_t, t)
        loss = torch.nn.functional.mse_loss(v.float(), objective.target(x0, noise, t))
        loss = loss + physics(objective.predict_x0(x_t, v.float(), t), xray, t, objective.num_train_timesteps, spacing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), train["clip_grad_norm"])
        optimizer.step()

    first = timed_call(step)[1]
    with _PeakMemory(device) as memory:
        seconds = seconds_per_call(step, repeats)
    with flop_counter() as counter:
        step()
    flops = counter.get_total_flops()
    return {
        **stamp_for(device),
        "section": "train",
        "kind": "monai_unet",
        "network": "monai.networks.nets.DiffusionModelUNet",
        "network_args": {k: list(v) if isinstance(v, tuple) else v for k, v in args.items()},
        "params_M": sum(p.numel() for p in net.parameters()) / 1e6,
        "grid": [grid] * 3,
        "batch": batch,
        "dtype": "bf16 autocast" if cuda else "float32",
        "drr_loss": True,
        "first_step_s": first,
        "step_s": seconds,
        "repeats": repeats,
        "peak_GiB": memory.total,
        "peak_above_start_GiB": memory.peak,
        "model_TFLOP_per_step": flops / 1e12,
        "matmul_TFLOPs": rate / 1e12,
        "achieved_TFLOPs": flops / seconds / 1e12,
        "mfu": flops / seconds / rate,
    }


# ---- inference and compile --------------------------------------------------------------------------------------
def _parser(cfg: dict, device: str):
    """``progressive_3stage`` as ``benchmarks.cascade.preset_parser`` builds it, at ``cfg``'s sizes."""
    from benchmarks.cascade import preset_parser

    parser = preset_parser("progressive_3stage", device)
    for key, value in cfg["parser_overrides"].items():
        parser[key] = value
    if cfg["scale"] > 1:
        scaled = [dict(s, grid_size=s["grid_size"] // cfg["scale"], **cfg["all_stages"]) for s in parser["stages"]]
        parser["stages"] = scaled
        parser["encoder"] = dict(parser["encoder"], **cfg["encoder"])
    return parser


def _cascade(cfg: dict):
    """``(parser, network, views, post)`` of the 3-stage cascade (untrained weights: timing only), one sample."""
    from benchmarks.cascade import xray_pair

    parser = _parser(cfg, cfg["device"])
    parser["num_samples"] = 1
    network = parser.get_parsed_content("network_def").to(cfg["device"]).eval()
    return parser, network, xray_pair(parser, cfg["device"]), parser.get_parsed_content("postprocessing")


def _time_inference(cfg: dict, parser, network, views, post, steps: int | None, compiled: str) -> dict:
    from benchmarks.run import stamp_for
    from benchmarks.timing import seconds_per_call, timed_call

    default = parser["num_inference_steps"]
    parser["num_inference_steps"] = default if steps is None else steps
    parser.parse(reset=True)
    inferer = parser.get_parsed_content("inferer")
    parser["num_inference_steps"] = default

    def case() -> dict:
        with torch.no_grad():
            out = inferer(views, network)  # (1, 2, X, Y, Z): mean, std on the CT scale
        return post({"pred": out[0].cpu()})  # HU MetaTensors on the CPU: the case is done

    data, first = timed_call(case)
    assert tuple(data["pred"].shape[1:]) == network.grid_size(network.num_stages - 1)
    if cfg["device"].startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    seconds = seconds_per_call(case, cfg["repeats"])
    row = {
        **stamp_for(cfg["device"]),
        "section": "inference",
        "preset": "progressive_3stage",
        "grids": [list(network.grid_size(s)) for s in range(network.num_stages)],
        "views": list(views.shape[1:]),
        "num_samples": 1,
        "sampler": parser["sampler_type"],
        "steps_per_stage": parser["num_inference_steps"] if steps is None else steps,
        "default_steps": steps is None,
        "headline": steps == cfg["steps"][0],  # the default steps (the dry run: its first setting)
        "fewest_steps": steps == cfg["steps"][-1],
        "dtype": "bf16 autocast" if cfg["device"].startswith("cuda") else "float32",
        "compiled": compiled,
        "weights": "untrained (timing only)",
        "first_call_s": first,
        "case_s": seconds,
        "repeats": cfg["repeats"],
    }
    if cfg["device"].startswith("cuda"):
        row["peak_GiB"] = torch.cuda.max_memory_allocated() / 2**30
    return row


def section_inference(cfg: dict, rows: Rows) -> None:
    parser, network, views, post = _cascade(cfg)
    for steps in cfg["steps"]:
        rows.add(_time_inference(cfg, parser, network, views, post, steps, "eager"))


def compile_denoisers(network, mode: str, backend) -> None:
    """Every stage's denoiser under ``torch.compile`` in place, with static shapes: the three denoisers run the same
    code, and dynamo's automatic dynamic shapes would otherwise recompile stages 2 and 3 for symbolic sizes (one
    cache and one size history per code object), i.e. time generic kernels for the two largest stages."""
    for entry in network.stages:
        entry["denoiser"].compile(mode=mode if backend == "inductor" else None, backend=backend, dynamic=False)


def section_compile(cfg: dict, rows: Rows) -> None:
    """Each mode in a fresh network (a fresh compilation); default steps first, then the fewest."""
    for mode, backend in cfg["compile_modes"]:
        torch._dynamo.reset()
        parser, network, views, post = _cascade(cfg)
        compile_denoisers(network, mode, backend)
        label = f"torch.compile({backend}, mode={mode})" + (" + CUDA graphs" if mode == "reduce-overhead" else "")
        for steps in (cfg["steps"][0], cfg["steps"][-1]):
            rows.add(_time_inference(cfg, parser, network, views, post, steps, label))
        del network
        _free(cfg["device"])


# ---- workflow ---------------------------------------------------------------------------------------------------
def section_workflow(cfg: dict, rows: Rows, work: Path) -> None:
    from benchmarks import gpu_workflow
    from benchmarks.run import stamp_for

    stamp = {**stamp_for(cfg["device"]), "section": "workflow"}
    result = gpu_workflow.run_workflow(
        cfg["device"],
        work / "workflow",
        cfg["workflow_budget_s"],
        dry_run=cfg["device"] == "cpu",
        progress=lambda partial: rows.put({**stamp, "complete": False, **partial}),
    )
    rows.put({**stamp, "complete": True, **result})
    print(json.dumps({k: v for k, v in result.items() if not isinstance(v, (dict, list))}, default=str), flush=True)


# ---- model FLOPs at full size, counted on the CPU ------------------------------------------------------------------
#: The bf16 dense matmul rate measured on this workplace's H200 (8192³ products, 769-798 TFLOP/s on random data,
#: /work/.library/device/KINDS.md, 2026-10-28 and 2026-11-04): the ceiling the FLOP floors below are taken against.
H200_BF16_MATMUL_TFLOPS = 790.0


def _to_meta(value):
    """Tensors (inside dataclasses, lists, tuples, dicts) moved to the meta device: shapes without storage."""
    import dataclasses

    if torch.is_tensor(value):
        return value.to("meta")
    if dataclasses.is_dataclass(value):
        return dataclasses.replace(
            value, **{f.name: _to_meta(getattr(value, f.name)) for f in dataclasses.fields(value)}
        )
    if isinstance(value, (list, tuple)):
        return type(value)(_to_meta(v) for v in value)
    if isinstance(value, dict):
        return {k: _to_meta(v) for k, v in value.items()}
    return value


def count_flops(cfg: dict, steps=(20, 10, 5)) -> dict:
    """Model FLOPs of the full-size cascade, counted by ``torch.utils.flop_counter`` (matmuls, convolutions,
    attention) without running it: the X-ray encoding and each stage's conditioning (lifting, resampling) are computed
    on the CPU, then every stage's forward (and forward + backward of a training step's denoiser) runs on the meta
    device, which carries shapes only. Per case = encoding + steps × Σ stage forwards (one sample; the once-per-stage
    lifting is not counted). The floors divide by :data:`H200_BF16_MATMUL_TFLOPS`: no schedule of this arithmetic
    runs faster on that card."""
    from benchmarks.scaling import flop_counter

    network = _parser(cfg, "cpu").get_parsed_content("network_def")
    h, w = network.encoder.image_size
    with torch.no_grad(), flop_counter() as counter:
        encoding = network.encode(torch.zeros(1, network.encoder.num_views, h, w))
    encode_flops = counter.get_total_flops()
    conditioning = []
    with torch.no_grad():
        for stage in range(network.num_stages):
            previous = torch.zeros(1, 1, *network.grid_size(stage - 1)) if stage else None
            conditioning.append(_to_meta(network.stage_conditioning(stage, encoding, previous)))
    encoding = _to_meta(encoding)
    network = network.to("meta")
    stages = []
    for stage in range(network.num_stages):
        grid = network.grid_size(stage)
        inputs = {
            "x_t": torch.zeros(1, 1, *grid, device="meta"),
            "t": torch.tensor([500], device="meta"),
            "xray": None,
            "stage": stage,
            "previous": torch.zeros(1, 1, *network.grid_size(stage - 1), device="meta") if stage else None,
            "encoding": encoding,
            "conditioning": conditioning[stage],
        }
        with torch.no_grad(), flop_counter() as counter:
            network(**inputs)
        fwd = counter.get_total_flops()
        with flop_counter() as counter:
            network(**inputs).float().square().mean().backward()
        network.zero_grad(set_to_none=True)
        cfg = network.stage_configs[stage]
        stages.append(
            {
                "stage": stage,
                "grid": list(grid),
                "tokens": math.prod(network.stages[stage]["denoiser"].token_grid),
                "width": cfg["width"],
                "depth": cfg["depth"],
                "forward_TFLOP": fwd / 1e12,
                "train_step_TFLOP": counter.get_total_flops() / 1e12,  # forward + backward, without the DRR loss
            }
        )
    per_step = sum(r["forward_TFLOP"] for r in stages)
    cases = [
        {
            "steps_per_stage": n,
            "case_TFLOP": encode_flops / 1e12 + n * per_step,
            "floor_s_at_peak": (encode_flops / 1e12 + n * per_step) / H200_BF16_MATMUL_TFLOPS,
            "utilisation_needed_for_1s": (encode_flops / 1e12 + n * per_step) / H200_BF16_MATMUL_TFLOPS / 1.0,
        }
        for n in steps
    ]
    return {
        "preset": "progressive_3stage",
        "grids": [r["grid"][0] for r in stages],
        "counted_by": "torch.utils.flop_counter on the meta device (CPU conditioning)",
        "reference_TFLOPs": H200_BF16_MATMUL_TFLOPS,
        "encode_TFLOP": encode_flops / 1e12,
        "stages": stages,
        "cases": cases,
    }


def flops_markdown(f: dict) -> list[str]:
    from benchmarks.run import markdown_table

    lines = markdown_table(
        "| stage | grid | tokens | width × depth | forward TFLOP | training step TFLOP (fwd + bwd) "
        "| training step floor s at the reference rate |",
        f["stages"],
        lambda r: [
            r["stage"] + 1,
            f"{r['grid'][0]}³",
            r["tokens"],
            f"{r['width']} × {r['depth']}",
            f"{r['forward_TFLOP']:.2f}",
            f"{r['train_step_TFLOP']:.2f}",
            f"{r['train_step_TFLOP'] / f['reference_TFLOPs']:.3f}",
        ],
    )
    lines += [""] + markdown_table(
        "| steps per stage | TFLOP per case | floor s per case at the reference rate | utilisation needed for 1 s |",
        f["cases"],
        lambda r: [
            r["steps_per_stage"],
            f"{r['case_TFLOP']:.0f}",
            f"{r['floor_s_at_peak']:.2f}",
            f"{r['utilisation_needed_for_1s']:.0%}",
        ],
    )
    return lines


# ---- summary ----------------------------------------------------------------------------------------------------
def _load(work: Path, name: str) -> list[dict]:
    path = work / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else []


def _status(work: Path, name: str) -> str:
    path = work / f"{name}.status"
    return path.read_text().strip() if path.exists() else "not run"


def growth_exponents(train_rows: list[dict]) -> list[dict]:
    """Per batch: log(step-time ratio) / log(voxel ratio) between consecutive stages (≤ 1: at most linear)."""
    out = []
    cascade = [r for r in train_rows if r.get("kind") == "cascade" and not r.get("gradient_checkpointing")]
    for batch in sorted({r["batch"] for r in cascade}):
        series = sorted((r for r in cascade if r["batch"] == batch), key=lambda r: r["stage"])
        for a, b in zip(series, series[1:], strict=False):
            voxels = math.prod(b["grid"]) / math.prod(a["grid"])
            out.append(
                {
                    "batch": batch,
                    "from": a["grid"][0],
                    "to": b["grid"][0],
                    "time_ratio": b["step_s"] / a["step_s"],
                    "voxel_ratio": voxels,
                    "exponent": math.log(b["step_s"] / a["step_s"]) / math.log(voxels),
                }
            )
    return out


def summarize(work: Path, dry_run: bool) -> dict:
    """``gpu_summary.json``'s content: the headline numbers of issue 18, the targets, every section's rows."""
    from benchmarks import drr_peers, gpu_workflow
    from benchmarks.run import machine

    cfg = sizes(dry_run)
    device = cfg["device"]
    drr, train, inference = _load(work, "drr"), _load(work, "train"), _load(work, "inference")
    compiled, workflow = _load(work, "compile"), _load(work, "workflow")
    final = max(STAGE_GRIDS) // cfg["scale"]

    def pick(rows, **match):
        return [r for r in rows if all(r.get(k) == v for k, v in match.items())]

    stage3 = pick(train, kind="cascade", stage=2, batch=1, gradient_checkpointing=False)
    stage3_ckpt = pick(train, kind="cascade", stage=2, batch=1, gradient_checkpointing=True)
    steps = sorted({r["steps_per_stage"] for r in inference + compiled} or {1}, reverse=True)
    flops = count_flops(cfg, steps)
    per_case = {c["steps_per_stage"]: c["case_TFLOP"] for c in flops["cases"]}
    rate = next((r["matmul_TFLOPs"] for r in train), flops["reference_TFLOPs"])
    for r in inference + compiled:  # model-FLOP utilisation of a whole case (one sample) against the matmul rate
        r["case_TFLOP"] = per_case.get(r["steps_per_stage"])
        r["mfu"] = r["case_TFLOP"] / r["case_s"] / rate if r["case_TFLOP"] else None
    unet128 = pick(train, kind="monai_unet", batch=1, grid=[128 // cfg["scale"]] * 3)
    headline = [r for r in inference + compiled if r["headline"]]
    best = min(headline, key=lambda r: r["case_s"]) if headline else None
    fewest = [r for r in inference + compiled if r["fewest_steps"]]
    best_fewest = min(fewest, key=lambda r: r["case_s"]) if fewest else None
    eager = pick(inference, headline=True)
    growth = growth_exponents(train)
    peers = drr_peers.summary(drr) if drr else {}
    summary = {
        "device": machine(device) if not device.startswith("cuda") or torch.cuda.is_available() else device,
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d"),
        "torch": torch.__version__,
        "dry_run": dry_run,
        "note": "CPU dry run at an eighth of the sizes: checks that the script runs; not a measurement"
        if dry_run
        else "one H200-class GPU, bf16 autocast",
        "inference_256_s": best["case_s"] if best else None,
        "inference_256_setting": f"{best['compiled']}, {best['steps_per_stage']} steps per stage" if best else None,
        "inference_256_eager_s": eager[0]["case_s"] if eager else None,
        "inference_256_first_call_s": eager[0]["first_call_s"] if eager else None,
        "inference_256_fewest_steps_s": best_fewest["case_s"] if best_fewest else None,
        "inference_256_fewest_steps_setting": (
            f"{best_fewest['compiled']}, {best_fewest['steps_per_stage']} steps per stage" if best_fewest else None
        ),
        "inference_grid": final,
        "train_stage3_step_s": stage3[0]["step_s"] if stage3 else None,
        "train_stage3_peak_gb": stage3[0]["peak_GiB"] * 2**30 / 1e9 if stage3 else None,
        "train_stage3_mfu": stage3[0]["mfu"] if stage3 else None,
        "train_stage3_checkpointed_step_s": stage3_ckpt[0]["step_s"] if stage3_ckpt else None,
        "train_stage3_checkpointed_peak_gb": stage3_ckpt[0]["peak_GiB"] * 2**30 / 1e9 if stage3_ckpt else None,
        "train_stage3_checkpointed_mfu": stage3_ckpt[0]["mfu"] if stage3_ckpt else None,
        "flops": flops,
        "drr_speedup_vs_diffdrr": peers.get("drr_speedup_vs_diffdrr"),
        "drr_speedup_vs_nanodrr": peers.get("drr_speedup_vs_nanodrr"),
        "drr_summary": peers,
        "monai_unet_128_step_s": unet128[0]["step_s"] if unet128 else None,
        "stage_step_growth": growth,
        "quick_2stage_psnr": workflow[0].get("quick_2stage_psnr") if workflow else None,
        "quick_2stage_complete": bool(workflow and workflow[0].get("complete")),
        "sections": {name: _status(work, name) for name in ("cuda_tests", *SECTIONS)},
        "cuda_tests": _load_tests(work),
        "rows": {"drr": drr, "train": train, "inference": inference, "compile": compiled, "workflow": workflow},
    }
    summary["targets"] = targets(summary)
    summary["markdown"] = markdown(summary, drr_peers, gpu_workflow)
    return summary


def _load_tests(work: Path) -> dict:
    path = work / "cuda_tests.txt"
    if not path.exists():
        return {}
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    return {"last_line": lines[-1] if lines else "", "skipped": [line for line in lines if "SKIPPED" in line][:20]}


def targets(s: dict) -> list[dict]:
    """Each target, the measured value and whether it is met (None: not measured)."""
    growth = max((g["exponent"] for g in s["stage_step_growth"] if g["batch"] == 1), default=None)
    t = TARGETS
    checks = [
        (f"{s['inference_grid']}³ inference from two X-rays, s per case", s["inference_256_s"], "<=", t["inference_s"]),
        ("the same at the fewest steps per stage", s["inference_256_fewest_steps_s"], "<=", t["inference_s"]),
        ("stage-3 training step peak memory, GB (batch 1)", s["train_stage3_peak_gb"], "<=", t["peak_gb"]),
        ("stage-3 training step MFU (batch 1)", s["train_stage3_mfu"], ">=", t["mfu"]),
        (
            "the same with gradient checkpointing: peak memory, GB",
            s["train_stage3_checkpointed_peak_gb"],
            "<=",
            t["peak_gb"],
        ),
        ("with gradient checkpointing: MFU (model FLOPs)", s["train_stage3_checkpointed_mfu"], ">=", t["mfu"]),
        ("DRR renderer speed-up over DiffDRR", s["drr_speedup_vs_diffdrr"], ">=", t["vs_diffdrr"]),
        (
            "DRR renderer speed-up over nanodrr, batched fixed geometry",
            s["drr_speedup_vs_nanodrr"],
            ">=",
            t["vs_nanodrr"],
        ),
        ("step-time growth exponent per stage (time ~ voxels^e)", growth, "<=", t["growth_exponent"]),
    ]
    out = []
    for name, value, op, goal in checks:
        met = None if value is None else (value <= goal if op == "<=" else value >= goal)
        out.append({"target": name, "goal": f"{op} {goal:g}", "measured": value, "met": met})
    return out


MET = {None: "not measured", True: "yes", False: "no"}


def _fmt(x, spec: str = ".3f") -> str:
    return "-" if x is None else format(x, spec)


def markdown(s: dict, drr_peers, gpu_workflow) -> str:
    from benchmarks.run import markdown_table

    lines = [
        f"# GPU check ({s['device']}, torch {s['torch']}, {s['date']})",
        "",
        f"**{s['note']}.**",
        "",
        "## Targets",
        "",
    ]
    if s["dry_run"]:
        lines += [
            "Dry run: a CPU and grids an eighth of the targets'; the same code computes every column, and the 'met' "
            "column says nothing about the targets.",
            "",
        ]
    lines += markdown_table(
        "| target | goal | measured | met |",
        s["targets"],
        lambda t: [t["target"], t["goal"], _fmt(t["measured"]), MET[t["met"]]],
    )
    lines += ["", "## Sections", ""]
    lines += markdown_table("| section | status |", s["sections"].items(), lambda kv: list(kv))
    if s["cuda_tests"]:
        lines += ["", f"CUDA tests (`pytest -k cuda`): {s['cuda_tests']['last_line']}"]
    rows = s["rows"]
    if rows["drr"]:
        lines += ["", "## DRR renderer against DiffDRR and nanodrr (same rays)", ""] + drr_peers.markdown(rows["drr"])
    if rows["train"]:
        lines += ["", "## Training step with the DRR loss (bf16 autocast on CUDA)", ""]
        lines += markdown_table(
            "| network | grid | batch | checkpointing | params M | step s (first) | peak GiB | model TFLOP/step "
            "| achieved TFLOP/s | matmul TFLOP/s | MFU |",
            rows["train"],
            lambda r: [
                f"cascade stage {r['stage'] + 1}" if r.get("kind") == "cascade" else "MONAI DiffusionModelUNet",
                f"{r['grid'][0]}³",
                r["batch"],
                "on" if r.get("gradient_checkpointing") else "off",
                f"{r.get('trainable_params_M', r.get('params_M', 0.0)):.1f}",
                f"{r['step_s']:.4f} ({r['first_step_s']:.2f})",
                f"{r['peak_GiB']:.2f}",
                f"{r['model_TFLOP_per_step']:.3f}",
                f"{r['achieved_TFLOPs']:.1f}",
                f"{r['matmul_TFLOPs']:.1f}",
                f"{r['mfu']:.1%}",
            ],
        )
        if s["stage_step_growth"]:
            lines += ["", "Step time against voxels between stages (exponent ≤ 1: at most linear):", ""]
            lines += markdown_table(
                "| batch | from → to | time × | voxels × | exponent |",
                s["stage_step_growth"],
                lambda g: [
                    g["batch"],
                    f"{g['from']}³ → {g['to']}³",
                    f"{g['time_ratio']:.2f}",
                    f"{g['voxel_ratio']:.0f}",
                    f"{g['exponent']:.2f}",
                ],
            )
    inference = rows["inference"] + rows["compile"]
    if inference:
        lines += ["", "## Three-stage inference, two views → CT in HU, one sample (untrained weights)", ""]
        lines += markdown_table(
            "| grids | compiled | steps/stage | s per case | first call s | peak GiB | model TFLOP per case | MFU |",
            inference,
            lambda r: [
                " → ".join(f"{g[0]}³" for g in r["grids"]),
                r["compiled"],
                r["steps_per_stage"],
                f"{r['case_s']:.3f}",
                f"{r['first_call_s']:.2f}",
                _fmt(r.get("peak_GiB"), ".2f"),
                _fmt(r.get("case_TFLOP"), ".1f"),
                _fmt(r.get("mfu"), ".1%"),
            ],
        )
    if s.get("flops"):
        lines += ["", "## Model FLOPs (counted on the CPU, meta device) and their floor at the reference rate", ""]
        lines += flops_markdown(s["flops"])
    if rows["workflow"]:
        lines += ["", "## quick_2stage trained by train.yaml, resumed, evaluated by evaluate.yaml", ""]
        result = rows["workflow"][0]
        if result.get("complete"):
            lines += gpu_workflow.markdown(result)
        else:  # stopped (time limit, failure) before its end: the steps that finished
            lines += ["Not finished; steps done (wall s, process start included):", ""]
            lines += markdown_table("| step | wall s |", result.get("wall_s", {}).items(), lambda kv: list(kv))
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--section", choices=SECTIONS)
    parser.add_argument("--summarize", action="store_true")
    parser.add_argument("--flops", action="store_true", help="count the full-size model FLOPs on the CPU (a minute)")
    parser.add_argument("--work", default="/tmp/gpu_check_work", help="folder of the sections' JSON files")
    parser.add_argument("--out", help="where --summarize writes gpu_summary.json and gpu_summary.md")
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args()
    work = Path(args.work)
    if args.flops:
        flops = count_flops(sizes(False))
        out = Path(args.out or work)
        out.mkdir(parents=True, exist_ok=True)
        (out / "flops_progressive_3stage.json").write_text(json.dumps(flops, indent=2) + "\n")
        title = f"# Model FLOPs of progressive_3stage at full size (reference {H200_BF16_MATMUL_TFLOPS:g} TFLOP/s bf16)"
        note = count_flops.__doc__.split("\n\n")[0].replace("\n   ", "").replace("    ", " ")
        (out / "flops_progressive_3stage.md").write_text(
            "\n".join([title, "", note, ""] + flops_markdown(flops)) + "\n"
        )
        print((out / "flops_progressive_3stage.md").read_text())
        return
    if args.summarize:
        summary = summarize(work, args.dry_run)
        out = Path(args.out or work)
        out.mkdir(parents=True, exist_ok=True)
        (out / "gpu_summary.md").write_text(summary.pop("markdown"))
        (out / "gpu_summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
        print((out / "gpu_summary.md").read_text())
        return
    if not args.section:
        parser.error("give --section NAME or --summarize")
    cfg = sizes(args.dry_run)
    if cfg["device"] == "cuda" and not torch.cuda.is_available():
        parser.error(f"no CUDA device is available to this PyTorch ({torch.__version__}); on a CPU use --dry-run")
    if cfg["device"] == "cpu":
        torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    rows = Rows(work, args.section)
    started = time.perf_counter()
    try:
        if args.section == "workflow":
            section_workflow(cfg, rows, work)
        else:
            globals()[f"section_{args.section}"](cfg, rows)
    except Exception:
        traceback.print_exc()
        (work / f"{args.section}.status").write_text(
            f"failed after {time.perf_counter() - started:.0f} s: {traceback.format_exc().strip().splitlines()[-1]}"
        )
        sys.exit(1)
    (work / f"{args.section}.status").write_text(f"ok ({time.perf_counter() - started:.0f} s, {len(rows.rows)} rows)")


if __name__ == "__main__":
    main()
