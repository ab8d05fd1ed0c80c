"""Performance features and the benchmark's bookkeeping: the per-stage conditioning cache gives bit-identical samples,
benchmark records carry device/dtype/sizes/date, growth exponents and projections are computed as documented.

Nothing here is timed: timing belongs to ``benchmarks/run.py``.
"""

from __future__ import annotations

import math
import sys
from functools import partial

import pytest
import torch
from conftest import small_cascade
from monai.networks.schedulers import DDIMScheduler, RFlowScheduler
from scripts.engines import CascadeSampler
from scripts.networks import DepthLifting, XrayToCTCascade

SCHEDULERS = {
    "ddim": partial(DDIMScheduler, 1000, prediction_type="v_prediction", clip_sample=False),
    "rflow": partial(RFlowScheduler, 1000, use_discrete_timesteps=True),
}


def _trained_looking_cascade(use_depth_lifting: bool = True) -> XrayToCTCascade:
    """Every weight random: at init (adaLN-Zero) the output ignores the conditioning, making equality vacuous."""
    return small_cascade(random_weights=True, use_depth_lifting=use_depth_lifting)


@pytest.mark.parametrize("scheduler", list(SCHEDULERS))
@pytest.mark.parametrize("use_depth_lifting", [True, False])
def test_cached_conditioning_gives_bit_identical_samples(scheduler, use_depth_lifting):
    net = _trained_looking_cascade(use_depth_lifting)
    xray = torch.rand(1, 2, 32, 32) * 2 - 1
    samples = {
        cached: CascadeSampler(SCHEDULERS[scheduler], 3, clip=False, cache_conditioning=cached)(xray, net)
        for cached in (True, False)
    }
    assert samples[True].shape == (1, 1, 32, 32, 32)
    assert torch.equal(samples[True], samples[False])
    # Not vacuous: the stage-1 prediction depends on its conditioning channels.
    encoding = net.encode(xray)
    previous = torch.rand(1, 1, 16, 16, 16)
    x_t, t = torch.randn(1, 1, 32, 32, 32), torch.tensor([300])
    with torch.no_grad():
        channels = net.stage_conditioning(1, encoding, previous)
        out = net(x_t, t, stage=1, encoding=encoding, conditioning=channels)
        blank = net(x_t, t, stage=1, encoding=encoding, conditioning=[torch.zeros_like(c) for c in channels])
        recomputed = net(x_t, t, stage=1, encoding=encoding, previous=previous)
    assert torch.equal(out, recomputed)
    assert (out - blank).abs().max() > 1e-3


def test_the_lifting_runs_once_per_stage_with_the_cache_and_every_step_without():
    net = _trained_looking_cascade()
    calls = []
    for module in net.modules():
        if isinstance(module, DepthLifting):
            module.register_forward_hook(lambda *args: calls.append(1))
    xray = torch.rand(1, 2, 32, 32) * 2 - 1
    for cached, expected in ((True, 2), (False, 2 * 4)):
        calls.clear()
        CascadeSampler(SCHEDULERS["ddim"], 4, cache_conditioning=cached)(xray, net)
        assert len(calls) == expected


def test_stage_conditioning_channels_and_errors():
    net = _trained_looking_cascade()
    encoding = net.encode(torch.zeros(2, 2, 32, 32))
    first = net.stage_conditioning(0, encoding)
    assert [c.shape for c in first] == [(2, 8, 16, 16, 16)]  # lifted prior only
    second = net.stage_conditioning(1, encoding, torch.zeros(2, 1, 16, 16, 16))
    assert [c.shape for c in second] == [(2, 8, 32, 32, 32), (2, 1, 32, 32, 32)]  # lifted prior, previous volume
    with pytest.raises(ValueError, match="previous: stage 1 needs the previous stage's volume, got None"):
        net.stage_conditioning(1, encoding)
    with pytest.raises(ValueError, match=r"stage must be in \[0, 1\], got 2"):
        net.stage_conditioning(2, encoding)
    assert _trained_looking_cascade(use_depth_lifting=False).stage_conditioning(0, encoding) == []


def test_cascade_benchmark_records_device_dtype_sizes_and_date():
    from benchmarks import cascade
    from benchmarks.run import stamp_for

    rows = cascade.time_cascade("tiny", "cpu", [("ddim", 1)], 1, stamp_for("cpu", "test"), warmup=False)
    (row,) = rows
    for key in ("device", "machine", "torch", "date", "load_avg_1m", "note", "dtype", "grids", "views", "batch"):
        assert key in row
    assert row["grids"] == [[32, 32, 32], [64, 64, 64]] and row["views"] == [2, 128, 128]
    assert row["dtype"] == "float32" and row["measured"] and row["steps_per_stage"] == 1
    split = row["split_s"]
    assert {"encode_s", "stage_0_s", "stage_1_s", "conditioning_0_s", "conditioning_1_s"} <= set(split)
    assert split["stage_0_s"] + split["stage_1_s"] + split["encode_s"] <= row["total_s"]
    table = "\n".join(cascade.markdown(rows + cascade.project_steps(row, [5])))
    assert "| tiny | 32³ → 64³ | ddim | 1 | on |" in table and "projected from 1 steps" in table


def test_projected_steps_scale_the_per_step_part_only():
    from benchmarks.cascade import project_steps

    row = {
        "grids": [[32] * 3, [64] * 3],
        "steps_per_stage": 2,
        "cache_conditioning": True,
        "total_s": 10.0,
        "split_s": {
            "encode_s": 0.5,
            "stage_0_s": 2.5,
            "conditioning_0_s": 0.5,
            "stage_1_s": 6.0,
            "conditioning_1_s": 2.0,
        },
    }
    (five,) = project_steps(row, [5])
    # fixed (encode, HU output) 10 − 8.5 = 1.5 s; stage 0: 0.5 + 2.0·5/2 = 5.5; stage 1: 2.0 + 4.0·5/2 = 12.0
    assert five["measured"] is False and five["projected_from_steps"] == 2
    assert five["split_s"]["stage_0_s"] == pytest.approx(5.5) and five["split_s"]["stage_1_s"] == pytest.approx(12.0)
    assert five["total_s"] == pytest.approx(19.0)


def test_growth_exponent_and_voxel_token_projection():
    from benchmarks.scaling import with_growth, with_ratios

    base = {"series": "s", "forward_GFLOP": 1.0, "forward_backward_peak_GiB": 1.0}
    rows = with_growth(
        [
            dict(base, voxels=4096, forward_s=1.0, forward_backward_s=3.0),
            dict(base, voxels=32768, forward_s=4.0, forward_backward_s=24.0, forward_GFLOP=8.0),
        ]
    )
    g = rows[1]["vs_previous"]
    assert "vs_previous" not in rows[0]
    assert g["forward_exponent"] == pytest.approx(2 / 3) and g["forward_backward_exponent"] == pytest.approx(1.0)
    assert g["flop_exponent"] == pytest.approx(1.0) and g["voxels_x"] == 8

    a, b = 1e-4, 1e-9
    stamp = {"device": "cpu", "machine": "m", "torch": "t", "date": "d", "dtype": "float32", "section": "voxel_tokens"}
    seed = [
        dict(stamp, series="seed voxel tokens", grid=[n] * 3, tokens=n**3, forward_s=a * n**3 + b * n**6)
        for n in (16, 24)
    ]
    ours = dict(stamp, series="ours", grid=[16] * 3, tokens=512, forward_s=0.01)
    out = with_ratios(seed + [ours])
    assert out[2]["seed_over_ours_forward"] == pytest.approx(seed[0]["forward_s"] / 0.01)
    projected = out[-1]
    assert projected["measured"] is False and projected["grid"] == [64, 64, 64]
    assert projected["forward_s"] == pytest.approx(a * 64**3 + b * 64**6)
    assert math.isclose(projected["tokens"], 64**3)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given without CUDA")
def test_gpu_benchmark_fails_clearly_without_cuda(monkeypatch, capsys):
    from benchmarks import run

    monkeypatch.setattr(sys, "argv", ["run.py", "--device", "cuda"])
    with pytest.raises(SystemExit) as exit_info:
        run.main()
    assert exit_info.value.code == 2
    assert "--device cuda: no CUDA device is available" in capsys.readouterr().err
