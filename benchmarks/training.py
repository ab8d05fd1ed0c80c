"""One training step of a cascade stage, DRR consistency loss included: seconds, peak memory, FLOPs and MFU.

The step is the bundle's own: ``CascadeDiffusionTrainer._iteration`` (forward under bf16 autocast on CUDA, v-loss,
DRR loss of x̂0 through the training composer, backward, gradient clipping, AdamW step), on a network built from
``configs/common.yaml`` + the preset and frozen with ``freeze_for_stage`` as ``configs/train.yaml`` does. The
timestep is fixed inside the DRR loss's gate so that every timed step renders (a random timestep skips the loss for
half of the steps). MFU = counted model FLOPs per step (``torch.utils.flop_counter``, without the recomputation of
gradient checkpointing) / step time / the measured dense matmul rate of the same device and dtype.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from benchmarks.cascade import CONFIGS, phantom_hu, xray_pair
from benchmarks.scaling import _PeakMemory, build_stage, flop_counter
from benchmarks.timing import seconds_per_call, timed_call


def matmul_rate(device: str, dtype: torch.dtype, n: int = 8192, repeats: int = 10, warmup_s: float = 0.0) -> float:
    """Measured FLOP/s of ``n × n`` matmuls (the MFU denominator); ``repeats`` timed matmuls after Timer's warm-up,
    and before that ``warmup_s`` seconds of matmuls (a GPU fresh from idle runs its clocks up first: timed cold, the
    rate would be low and every MFU against it high)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    start = time.perf_counter()
    while time.perf_counter() - start < warmup_s:
        a @ b
        if device.startswith("cuda"):
            torch.cuda.synchronize()
    return 2 * n**3 / seconds_per_call(lambda: a @ b, repeats)


def drr_step_setup(parser, device: str, batch_size: int) -> dict:
    """What a timed training step with the DRR loss needs beside its network, from ``parser`` (common.yaml + a
    preset) and train.yaml: ``train`` (that config, raw values), ``objective`` (v-prediction on the config's noise
    schedule), ``t_fixed`` (a timestep inside the DRR loss's gate, so that every timed step renders), ``physics``
    (the DRR consistency loss), ``xray`` ``(B, V, H, W)`` and ``ct`` ``(B, 1, 64, 64, 64)`` on the CT scale: the
    held-out phantom repeated ``batch_size`` times (a step's cost does not depend on the values)."""
    from monai.bundle import ConfigParser
    from monai.networks.schedulers import DDPMScheduler
    from scripts.engines import DiffusionObjective, DRRConsistencyLoss
    from scripts.physics import hu_to_ct_scale

    train = ConfigParser()
    train.read_config(str(CONFIGS / "train.yaml"))  # loss weights and optimiser settings (raw values only)
    objective = DiffusionObjective(
        DDPMScheduler(parser["num_train_timesteps"], schedule=parser["noise_schedule"], prediction_type="v_prediction")
    )
    gate = train["physics_timestep_gate"]
    physics = DRRConsistencyLoss(
        parser.get_parsed_content("composer"), parser["hu_window"], train["physics_loss_weight"], gate
    )
    hu, _ = phantom_hu(parser)
    low, high = parser["hu_window"]
    return {
        "train": train,
        "objective": objective,
        "t_fixed": int(gate * objective.num_train_timesteps) // 2,  # inside the gate: the DRR loss is on
        "physics": physics.to(device),
        "xray": xray_pair(parser, device).repeat(batch_size, 1, 1, 1),
        "ct": hu_to_ct_scale(hu.clamp(low, high), parser["hu_window"]).to(device).repeat(batch_size, 1, 1, 1, 1),
    }


def train_step(spec: dict) -> dict:
    """``spec``: preset, stage, grid, device, repeats, gradient_checkpointing, optional batch (default 1). One row.

    A batch of ``b`` repeats the one phantom pair ``b`` times: the cost of a step does not depend on the values."""
    from scripts.engines import CascadeDiffusionTrainer, freeze_for_stage

    from benchmarks.run import stamp_for

    device, stage = spec["device"], spec["stage"]
    cuda = device.startswith("cuda")
    network, parser = build_stage(spec, device)
    freeze_for_stage(network, stage)
    batch_size = int(spec.get("batch", 1))
    parts = drr_step_setup(parser, device, batch_size)
    train, objective, physics, t_fixed, ct = (parts[k] for k in ("train", "objective", "physics", "t_fixed", "ct"))
    objective.sample_timesteps = lambda x0, generator=None: torch.full((x0.shape[0],), t_fixed, device=x0.device)
    batch = {"xray": parts["xray"]}
    for s in range(stage + 1):
        grid = network.grid_size(s)
        batch[f"image_{grid[0]}"] = F.interpolate(ct, size=grid, mode="trilinear")
    params = [p for p in network.parameters() if p.requires_grad]
    trainer = CascadeDiffusionTrainer(
        device=torch.device(device),
        max_epochs=1,
        train_data_loader=[batch],
        network=network,
        optimizer=torch.optim.AdamW(params, lr=train["learning_rate"], weight_decay=train["weight_decay"]),
        loss_function=torch.nn.MSELoss(),
        objective=objective,
        stage=stage,
        physics_loss=physics,
        clip_grad_norm=train["clip_grad_norm"],
        amp=cuda,
    )

    def step() -> dict:
        return trainer._iteration(trainer, batch)

    out, first = timed_call(step)  # the first step also creates AdamW's state
    out = out[0] if isinstance(out, list) else out  # MONAI decollates the output by default
    assert float(out["loss_drr"]) > 0, "the DRR loss must be part of the timed step"
    with _PeakMemory(device) as memory:  # steady state: weights, gradients, AdamW state, activations, renderer
        seconds = seconds_per_call(step, spec["repeats"])
    checkpointing = [d["denoiser"].gradient_checkpointing for d in network.stages]
    for d in network.stages:  # model FLOPs: without the recomputation
        d["denoiser"].gradient_checkpointing = False
    with flop_counter() as counter:
        step()
    for d, c in zip(network.stages, checkpointing, strict=True):
        d["denoiser"].gradient_checkpointing = c
    dtype = torch.bfloat16 if cuda else torch.float32
    rate = spec.get("matmul_rate") or matmul_rate(device, dtype, 8192 if cuda else 2048, 10 if cuda else 3)
    flops = counter.get_total_flops()
    return {
        **stamp_for(device),
        "section": "train",
        "preset": spec["preset"],
        "stage": stage,
        "grid": list(network.grid_size(stage)),
        "batch": batch_size,
        "dtype": "bf16 autocast" if cuda else "float32",
        "gradient_checkpointing": bool(spec.get("gradient_checkpointing", False)),
        "drr_loss": True,
        "timestep": t_fixed,
        "trainable_params_M": sum(p.numel() for p in params) / 1e6,
        "first_step_s": first,
        "step_s": seconds,
        "repeats": spec["repeats"],
        "peak_GiB": memory.total,
        "peak_above_start_GiB": memory.peak,
        "memory_measure": "CUDA max allocated" if cuda else "CPU peak RSS (fresh process)",
        "model_TFLOP_per_step": flops / 1e12,
        "matmul_TFLOPs": rate / 1e12,
        "matmul_dtype": str(dtype).replace("torch.", ""),
        "achieved_TFLOPs": flops / seconds / 1e12,
        "mfu": flops / seconds / rate,
    }


def train_specs(device: str, quick: bool, repeats: int) -> list[dict]:
    """Stage 3 of ``progressive_3stage`` (index 2): full 256³ on CUDA, a quarter grid (64³) on CPU."""
    grid = 256 if device.startswith("cuda") else 64
    return [
        {
            "preset": "progressive_3stage",
            "stage": 2,
            "grid": grid,
            "gradient_checkpointing": ckpt,
            "device": device,
            "repeats": repeats,
            "series": "train",
        }
        for ckpt in ((False, True) if device.startswith("cuda") or not quick else (False,))
    ]


#: Columns of :func:`markdown`.
HEADER = (
    "| preset, stage | grid | batch | dtype | checkpointing | step s (first) | peak GiB (above step start) "
    "| model TFLOP/step | achieved TFLOP/s | matmul TFLOP/s | MFU |"
)


def _cells(r: dict) -> list[object]:
    return [
        f"{r['preset']}, {r['stage']}",
        f"{r['grid'][0]}³",
        r["batch"],
        r["dtype"],
        "on" if r["gradient_checkpointing"] else "off",
        f"{r['step_s']:.3f} ({r['first_step_s']:.2f})",
        f"{r['peak_GiB']:.2f} ({r['peak_above_start_GiB']:.2f})",
        f"{r['model_TFLOP_per_step']:.3f}",
        f"{r['achieved_TFLOPs']:.2f}",
        f"{r['matmul_TFLOPs']:.2f} ({r['matmul_dtype']})",
        f"{r['mfu']:.1%}",
    ]


def markdown(rows: list[dict]) -> list[str]:
    from benchmarks.run import markdown_table

    return markdown_table(HEADER, rows, _cells)
