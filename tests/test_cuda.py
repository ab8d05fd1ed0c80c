"""CUDA checks (skipped without a GPU; ``pytest -k cuda`` runs them in benchmarks/gpu_check.sh): the cascade's forward
pass agrees between CPU and GPU, and the bf16 paths of training and sampling run and stay finite."""

from __future__ import annotations

import functools

import pytest
import torch
from conftest import small_cascade
from monai.networks.schedulers import DDIMScheduler
from scripts.engines import CascadeSampler

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
EPS32 = torch.finfo(torch.float32).eps


@pytest.fixture
def no_tf32():
    """Plain float32 on the GPU: TF32 (10-bit mantissa) would make the comparison one of TF32 against float32; and
    cuDNN's deterministic direct convolutions, not an FFT or Winograd algorithm it might pick, whose rounding is not
    that of a sum in another order."""
    backends = torch.backends
    saved = (
        backends.cuda.matmul.allow_tf32,
        backends.cudnn.allow_tf32,
        backends.cudnn.deterministic,
        backends.cudnn.benchmark,
    )
    backends.cuda.matmul.allow_tf32 = backends.cudnn.allow_tf32 = backends.cudnn.benchmark = False
    backends.cudnn.deterministic = True
    yield
    (
        backends.cuda.matmul.allow_tf32,
        backends.cudnn.allow_tf32,
        backends.cudnn.deterministic,
        backends.cudnn.benchmark,
    ) = saved


def _inputs(net, stage: int, dtype=torch.float32):
    generator = torch.Generator().manual_seed(3)
    h, w = net.encoder.image_size
    xray = torch.rand(1, net.encoder.num_views, h, w, generator=generator, dtype=dtype) * 2 - 1
    x_t = torch.randn(1, 1, *net.grid_size(stage), generator=generator, dtype=dtype)
    previous = torch.randn(1, 1, *net.grid_size(stage - 1), generator=generator, dtype=dtype) if stage else None
    return x_t, torch.tensor([400]), xray, previous


@pytest.mark.parametrize("stage", [0, 1])
def test_cascade_forward_cpu_and_cuda_agree(no_tf32, stage):
    """Both float32 results against a float64 reference. Each is the same arithmetic rounded to float32 in another
    summation order, so their errors share one worst-case bound but are not equal: the factor 8 between them is a
    stated allowance for that, not a derived bound, with a floor of 64 float32 ulps of the output's scale for a CPU
    that happens to land very close. A wrong kernel, a TF32 path or a layout bug is orders of magnitude above it."""
    net = small_cascade(random_weights=True)
    x_t, t, xray, previous = _inputs(net, stage)
    with torch.no_grad():
        prev64 = None if previous is None else previous.double()
        ref = net.double()(x_t.double(), t, xray.double(), stage=stage, previous=prev64)
        net.float()
        cpu = net(x_t, t, xray, stage=stage, previous=previous)
        gpu = net.cuda()(
            x_t.cuda(), t.cuda(), xray.cuda(), stage=stage, previous=None if previous is None else previous.cuda()
        ).cpu()
    assert ref.abs().max() > 0, "a zero output would make the comparison vacuous"
    cpu_err = (cpu.double() - ref).abs().max().item()
    gpu_err = (gpu.double() - ref).abs().max().item()
    assert gpu_err <= max(8 * cpu_err, 64 * EPS32 * ref.abs().max().item())


def test_training_step_bf16_with_drr_loss_cuda():
    """The bundle's training iteration (CascadeDiffusionTrainer._iteration: bf16 autocast, v-loss, DRR loss of x̂0,
    clipping, AdamW) on the tiny preset's second stage at half grid: finite losses, the DRR loss part of the step."""
    from benchmarks.training import train_step

    row = train_step({"preset": "tiny", "stage": 1, "grid": 32, "device": "cuda", "repeats": 1, "batch": 2})
    assert row["dtype"] == "bf16 autocast" and row["batch"] == 2
    assert 0 < row["step_s"] < 60 and row["peak_GiB"] > 0


def test_sampling_bf16_matches_float32_cuda(no_tf32):
    """Two DDIM steps per stage from the same noise, bf16 autocast against float32: finite and close. bf16 keeps 8
    significant bits (relative rounding 2^-9 = 0.002 per operation); 0.05 of relative L2 difference is a stated
    allowance for that rounding over the two stages' layers (not derived), far below what a wrong cast or an overflow
    would give (order 1); and the two differ at all, or autocast did not reach the network."""
    net = small_cascade(random_weights=True).cuda()
    factory = functools.partial(
        DDIMScheduler, 1000, schedule="scaled_linear_beta", prediction_type="v_prediction", clip_sample=False
    )
    h, w = net.encoder.image_size
    xray = (torch.rand(1, 2, h, w, generator=torch.Generator().manual_seed(5)) * 2 - 1).cuda()
    outs = {}
    for amp in (False, True):
        with torch.no_grad():
            outs[amp] = CascadeSampler(factory, 2, amp=amp, progress=False)(
                xray, net, generator=torch.Generator().manual_seed(0)
            )
    assert torch.isfinite(outs[True]).all() and outs[False].norm() > 0
    rel = ((outs[True] - outs[False]).norm() / outs[False].norm()).item()
    assert 0 < rel < 0.05
