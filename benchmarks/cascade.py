"""End-to-end cascade inference timing: an X-ray pair -> a CT in HU through the bundle's own inference path.

The network, the ``CTInferer``/``CascadeSampler`` and the HU ``postprocessing`` are built from
``configs/common.yaml`` + ``configs/inference.yaml`` with the stage preset stacked on top
(``monai.bundle.ConfigParser``), exactly as ``python -m monai.bundle run`` builds them; only
``num_inference_steps``, the scheduler and ``amp`` are overridden.
Weights are untrained (timing does not depend on them). The per-stage split comes from timing wrappers around the
sampler's ``encode``, ``stage_conditioning`` and ``sample_stage`` calls (with a CUDA synchronisation in each). Each
run is one wall time of the whole path (``benchmarks.timing.timed_call``), not ``Timer``'s repeat loop: every run
must yield its own split, and a run of a seed preset on CPU is minutes, too long for ``Timer``'s warm-up calls.
"""

from __future__ import annotations

import copy
import functools
import itertools
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from benchmarks.timing import timed_call

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "bundle" / "configs"
PRESETS = {
    "tiny": [],
    "quick_2stage": ["stages/quick_2stage.yaml"],
    "progressive_3stage": ["stages/progressive_3stage.yaml"],
}
#: (sampler, steps) settings: DDIM for the v-prediction checkpoints, Euler steps of rectified flow.
SAMPLERS = {"ddim": "v_prediction", "rflow": "rectified_flow"}


def preset_parser(preset: str, device: str):
    """``common.yaml`` + ``inference.yaml`` + the preset's stage file, on ``device``, bf16 autocast on CUDA, no
    progress bar. There is no trained checkpoint of each preset to read the model keys from, so they are the values
    training would record (common.yaml + the preset)."""
    from monai.bundle import ConfigParser
    from scripts.checkpoint import MODEL_CONFIG_KEYS

    presets = [str(CONFIGS / p) for p in PRESETS[preset]]
    architecture = ConfigParser()
    architecture.read_config([str(CONFIGS / "common.yaml"), *presets])
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "common.yaml"), str(CONFIGS / "inference.yaml"), *presets])
    for key in MODEL_CONFIG_KEYS:  # the record's keys are common.yaml's, but for the network class (its _target_)
        if key != "network":
            parser[key] = copy.deepcopy(architecture[key])
    parser["device"] = f"$torch.device('{device}')"
    parser["amp"] = device.startswith("cuda")
    parser["progress_bar"] = False
    # The cascade's own cost: no regression prior (it would skip stage 0) and no DRR guidance, whatever the defaults.
    parser["regression_prior#ckpt_path"] = None
    parser["drr_guidance#enabled"] = False
    return parser


def phantom_hu(parser, size: int = 64) -> tuple[torch.Tensor, list[float]]:
    """``(1, 1, size³)`` HU of a held-out synthetic chest phantom on the config's field of view, and its spacing."""
    spacing = [parser["fov_mm"] / size] * 3
    return _phantom(float(parser["fov_mm"]), size).clone(), spacing


@functools.lru_cache(maxsize=2)
def _phantom(fov_mm: float, size: int) -> torch.Tensor:
    """The phantom of :func:`phantom_hu`, made once per process (about a second each on a CPU)."""
    from scripts.data import synthetic_chest_ct

    hu, _ = synthetic_chest_ct(size, [fov_mm / size] * 3, seed=1000)
    return torch.from_numpy(hu)[None, None]


def xray_pair(parser, device: str) -> torch.Tensor:
    """``(1, 2, H, W)`` PA + lateral views of :func:`phantom_hu`, rendered with the bundle's composer."""
    hu, spacing = phantom_hu(parser)
    with torch.no_grad():
        views = parser.get_parsed_content("composer")(hu, spacing)
    return views.to(device)


class _Timers:
    """Wall-clock totals of wrapped calls, synchronised on CUDA so that asynchronous kernels are counted."""

    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")
        self.totals: dict[str, float] = {}

    def wrap(self, fn: Callable, name: Callable[..., str]) -> Callable:
        def timed(*args, **kwargs):
            out, seconds = timed_call(fn, *args, **kwargs)
            key = name(*args, **kwargs)
            self.totals[key] = self.totals.get(key, 0.0) + seconds
            return out

        return timed


def _end_to_end(inferer, network, views: torch.Tensor, post, timers: _Timers) -> dict:
    """One X-ray pair -> CT in HU; total seconds and the wrapped calls' split."""
    timers.totals.clear()

    def run() -> dict:
        out = inferer(views, network)  # (1, 2, X, Y, Z) CT scale: mean, std
        return post({"pred": out[0].cpu()})  # pred, pred_std in HU (MetaTensors)

    data, total = timed_call(run)
    assert tuple(data["pred"].shape[1:]) == network.grid_size(network.num_stages - 1)
    return {"total_s": total, **timers.totals}


def time_cascade(
    preset: str,
    device: str,
    settings: Sequence[tuple[str, int]],
    repeats: int,
    stamp: dict,
    cache: Sequence[bool] = (True,),
    warmup: bool = True,
) -> list[dict]:
    """One row per (sampler, steps, cache setting): end-to-end seconds (median of ``repeats``) and its split.

    ``settings``: ``("ddim" | "rflow", steps per stage)``. ``cache``: the sampler's ``cache_conditioning`` values to
    run (False = the lifted prior and previous volume recomputed at every step, the path before the cache).
    """
    from benchmarks.run import stamp_for

    parser = preset_parser(preset, device)
    network = parser.get_parsed_content("network_def").to(device).eval()
    post = parser.get_parsed_content("postprocessing")
    views = xray_pair(parser, device)
    timers = _Timers(device)
    encode, condition = network.encode, network.stage_conditioning
    # stage_conditioning(stage, encoding, previous); sample_stage(network, encoding, stage, ...)
    network.encode = timers.wrap(encode, lambda *a, **k: "encode_s")
    network.stage_conditioning = timers.wrap(condition, lambda *a, **k: f"conditioning_{a[0]}_s")
    rows = []
    try:
        for (sampler_type, steps), cached in itertools.product(settings, cache):
            parser["prediction_type"] = SAMPLERS[sampler_type]
            parser["num_inference_steps"] = int(steps)
            parser.parse(reset=True)
            inferer = parser.get_parsed_content("inferer")
            inferer.sampler.cache_conditioning = cached
            inferer.sampler.sample_stage = timers.wrap(inferer.sampler.sample_stage, lambda *a, **k: f"stage_{a[2]}_s")
            if warmup:
                _end_to_end(inferer, network, views, post, timers)
            if timers.cuda:
                torch.cuda.reset_peak_memory_stats()
            runs = [_end_to_end(inferer, network, views, post, timers) for _ in range(repeats)]
            best = min(runs, key=lambda r: r["total_s"])
            row = {
                **stamp_for(device, stamp.get("note", "")),
                "preset": preset,
                "grids": [list(network.grid_size(s)) for s in range(network.num_stages)],
                "batch": 1,
                "views": list(views.shape[1:]),
                "sampler": sampler_type,
                "steps_per_stage": int(steps),
                "cache_conditioning": cached,
                "dtype": "bf16 autocast" if device.startswith("cuda") else "float32",
                "weights": "untrained (timing only)",
                "runs": repeats,
                "warmup": warmup,
                "measured": True,
                "total_s": statistics.median(r["total_s"] for r in runs),
                "split_s": {k: v for k, v in best.items() if k != "total_s"},
            }
            if timers.cuda:
                row["peak_GiB"] = torch.cuda.max_memory_allocated() / 2**30
            rows.append(row)
            print(f"cascade {preset} {sampler_type} {steps} steps cache={cached}: {row['total_s']:.3f} s", flush=True)
    finally:
        del network.encode, network.stage_conditioning  # back to the class's methods
    return rows


def time_workflow(preset: str, device: str, steps: int, stamp: dict) -> dict:
    """The bundle's inference workflow as a user runs it (``python -m monai.bundle run --config_file
    "['configs/common.yaml','configs/inference.yaml']"``): the demo's held-out phantoms (prepared beforehand, not
    timed), each case read, its views rendered, sampled, written as NIfTI with a preview PNG and a JSON summary.
    Untrained weights, saved with their model config in a temporary folder. One row: seconds per case (the
    workflow's own figure: preprocessing to HU) and wall seconds of the whole run per case (with the file writing
    and the DRR check)."""
    import json
    import tempfile

    from monai.bundle import ConfigWorkflow
    from scripts.checkpoint import save_checkpoint
    from scripts.data import ensure_dataset

    from benchmarks.run import stamp_for

    parser = preset_parser(preset, device)
    network = parser.get_parsed_content("network_def")
    with tempfile.TemporaryDirectory() as tmp:
        ckpt, inputs, output = Path(tmp) / "model.pt", Path(tmp) / "inputs", Path(tmp) / "out"
        save_checkpoint(ckpt, {"model": network.state_dict()}, model_config=parser.get_parsed_content("model_config"))
        demo = {"synthetic_count": parser["demo_count"], "seed": parser["demo_seed"], "split": parser["demo_split"]}
        ensure_dataset(inputs, ["test"], **demo)
        workflow = ConfigWorkflow(  # the model keys come from the checkpoint, as in a user's run
            config_file=[str(CONFIGS / "common.yaml"), str(CONFIGS / "inference.yaml")],
            workflow_type=None,
            run_id="run",
            device=f"$torch.device('{device}')",
            dataset_dir=str(inputs),
            output_dir=str(output),
            ckpt_path=str(ckpt),
            num_inference_steps=int(steps),
            progress_bar=False,
            **{"drr_guidance#enabled": False},  # the plain sampler, as the recorded rows (0.6.0 guides CT inputs)
        )
        workflow.initialize()
        wall = timed_call(workflow.run)[1]
        workflow.finalize()
        report = json.loads((output / "inference_report.json").read_text())
    cases = report["done"]
    if report["failed"] or not cases:
        raise RuntimeError(f"inference workflow failed: {report['failed']}")
    return {
        **stamp_for(device, stamp.get("note", "")),
        "preset": preset,
        "grids": [list(network.grid_size(s)) for s in range(network.num_stages)],
        "sampler": "ddim",
        "steps_per_stage": int(steps),
        "cases": len(cases),
        "input": cases[0]["input"],
        "dtype": "bf16 autocast" if device.startswith("cuda") else "float32",
        "weights": "untrained (timing only)",
        "case_s": [c["seconds"] for c in cases],
        "case_s_median": statistics.median(c["seconds"] for c in cases),
        "wall_s_per_case": wall / len(cases),
    }


def project_steps(row: dict, steps: Sequence[int]) -> list[dict]:
    """Rows for other step counts from one measured row: the per-step cost of each stage (its time less the
    once-per-stage conditioning, divided by the steps) times the new count, plus the fixed parts. Labelled
    ``measured: False``."""
    split, n = row["split_s"], row["steps_per_stage"]
    stages = len(row["grids"])
    fixed = row["total_s"] - sum(split[f"stage_{s}_s"] for s in range(stages))  # encode, HU output, overhead
    out = []
    for k in steps:
        per_stage = {}
        for s in range(stages):
            once = split.get(f"conditioning_{s}_s", 0.0) if row["cache_conditioning"] else 0.0
            per_stage[f"stage_{s}_s"] = once + (split[f"stage_{s}_s"] - once) * k / n
        out.append(
            dict(
                row,
                steps_per_stage=int(k),
                measured=False,
                projected_from_steps=n,
                total_s=fixed + sum(per_stage.values()),
                split_s=dict(split, **per_stage),
            )
        )
    return out


def _run_cells(r: dict) -> list[object]:
    n = range(len(r["grids"]))
    split = r["split_s"]
    return [
        r["preset"],
        " → ".join(f"{g[0]}³" if len(set(g)) == 1 else "x".join(map(str, g)) for g in r["grids"]),
        r["sampler"],
        r["steps_per_stage"],
        "on" if r["cache_conditioning"] else "off",
        f"{r['total_s']:.3f}",
        f"{split['encode_s']:.3f}",
        " / ".join(f"{split[f'stage_{s}_s']:.3f}" for s in n),
        " / ".join(f"{split.get(f'conditioning_{s}_s', 0.0):.3f}" for s in n),
        "measured" if r["measured"] else f"projected from {r['projected_from_steps']} steps",
        r["runs"] if r["measured"] else "-",
        format(r["peak_GiB"], ".2f") if "peak_GiB" in r else "-",
        r["dtype"],
        r["device"],
    ]


def _workflow_cells(r: dict) -> list[object]:
    each = ", ".join(f"{x:.2f}" for x in r["case_s"])
    return [
        r["preset"],
        f"{r['sampler']}, {r['steps_per_stage']}",
        f"{r['cases']} ({r['input']})",
        f"{r['case_s_median']:.2f} ({each})",
        f"{r['wall_s_per_case']:.2f}",
        r["dtype"],
        r["device"],
    ]


def markdown(rows: list[dict]) -> list[str]:
    """Table lines: one per row, stage split in seconds; projected rows marked; workflow rows in their own table."""
    from benchmarks.run import markdown_table

    workflow = [r for r in rows if "case_s" in r]
    lines = markdown_table(
        "| preset | grids | sampler | steps/stage | lifting cache | total s | encode s | per stage s "
        "| of which lifting s | measured / projected | runs | peak GiB | dtype | device |",
        [r for r in rows if "case_s" not in r],
        _run_cells,
    )
    if workflow:
        lines += [
            "",
            "Whole inference workflow (`inference.yaml`: read the case, render its views, sample, write NIfTI, "
            "preview and JSON), per case:",
            "",
        ]
        lines += markdown_table(
            "| preset | sampler, steps/stage | cases (input) | s per case, workflow's figure (median; each) "
            "| wall s per case, incl. writing | dtype | device |",
            workflow,
            _workflow_cells,
        )
    return lines
