"""Model zoo and scale-out: metadata against MONAI's schema and this environment, MONAI's bundle tools
(verify_metadata offline, verify_net_in_out per stage, ckpt_export of a stage denoiser to TorchScript), DDP training
through torchrun with gloo on CPU, and the size of the shipped files."""

from __future__ import annotations

import configparser
import hashlib
import importlib.metadata
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import monai
import numpy as np
import pytest
import torch
import yaml
from conftest import CONFIGS, ROOT, cli_config_files, config_files, config_parser
from monai.bundle import ckpt_export, verify_metadata, verify_net_in_out
from monai.data import load_net_with_metadata
from scripts.engines import freeze_for_stage
from scripts.networks import HybridViT3D

META = CONFIGS / "metadata.json"
SCHEMA = ROOT / "tests" / "data" / "meta_schema_20240725.json"  # MONAI's schema, offline copy
MULTI_GPU = CONFIGS / "multi_gpu_train.yaml"
LARGE_FILE_BYTES = 25_000_000  # model zoo: files over 25 MB go to large_files.yml (Git LFS / download)


def _meta() -> dict:
    return json.loads(META.read_text())


def _cascade(*files: str, seed: int = 0) -> torch.nn.Module:
    """``network_def`` of common.yaml + ``files`` with small random weights on top of the init (adaLN-Zero outputs 0
    at init). The inference stack builds the shipped checkpoint's network (its model config)."""
    net = config_parser(*files).get_parsed_content("network_def")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=g))
    return net.eval()


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split("."))


# ---- metadata -----------------------------------------------------------------------------------------------------


def test_metadata_is_schema_valid_and_records_this_environment():
    meta = _meta()
    jsonschema.validate(meta, json.loads(SCHEMA.read_text()))
    assert meta["version"] == max(meta["changelog"], key=_version) and "0.1.0" in meta["changelog"]
    assert meta["monai_version"] == monai.__version__
    assert meta["pytorch_version"] == torch.__version__.split("+")[0]  # the build suffix (+cpu, +cu128) aside
    assert meta["numpy_version"] == np.__version__
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    pins = dict(re.findall(r"^\s*([A-Za-z0-9_.-]+)\s*[=><]=\s*([0-9.]+)", setup["options"]["install_requires"], re.M))
    assert pins["monai"] == meta["monai_version"]
    for name, version in meta["required_packages_version"].items():
        assert name in pins, f"{name} is not an install requirement in setup.cfg"
        assert importlib.metadata.version(name) == version, f"{name}: installed {importlib.metadata.version(name)}"
    references = " ".join(meta["references"])
    for work in ("DESIGN.md", "X2CT-GAN", "DiT", "Cascaded Diffusion Models", "DiffDRR"):
        assert work in references
    assert "research only" in meta["intended_use"].lower() and "not a medical device" in meta["intended_use"].lower()
    assert "docs/data_license.txt" in meta["data_source"] and (ROOT / "bundle" / "docs" / "data_license.txt").is_file()


def test_network_data_format_describes_the_default_configs():
    fmt = _meta()["network_data_format"]
    assert list(fmt["inputs"])[0] == "image" and list(fmt["outputs"])[0] == "pred"
    image, pred = fmt["inputs"]["image"], fmt["outputs"]["pred"]
    train, inference = config_parser("train.yaml"), config_parser("inference.yaml")
    geometry = inference.get_parsed_content("geometry")
    assert image["num_channels"] == geometry.num_views == 2
    assert image["channel_def"] == {"0": "PA view", "1": "lateral view"}
    assert image["spatial_shape"] == list(geometry.detector_shape)
    assert image["value_range"] == [-1, 1]  # the fixed network scale 2 p / max_line_integral - 1
    last = inference.get_parsed_content("stages")[-1]["grid_size"]  # the shipped checkpoint's
    assert pred["spatial_shape"] == [last] * 3 and pred["num_channels"] == 1 and pred["format"] == "hounsfield"
    assert pred["value_range"] == inference.get_parsed_content("hu_window") == train.get_parsed_content("hu_window")
    assert inference.get_parsed_content("fov_mm") / last == 5.0
    # The shipped model is the default architecture: training with the defaults reproduces its model config.
    assert inference.get_parsed_content("checkpoint_config") == train.get_parsed_content("model_config")


def test_verify_metadata_runs_offline_against_the_schema_copy(tmp_path):
    md5 = hashlib.md5(SCHEMA.read_bytes()).hexdigest()
    cmd = [sys.executable, "-m", "monai.bundle", "verify_metadata", "--meta_file", "bundle/configs/metadata.json"]
    cmd += ["--filepath", "tests/data/meta_schema_20240725.json", "--hash_val", md5]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "skipped downloading" in proc.stderr + proc.stdout
    assert "metadata is verified with no error" in proc.stderr + proc.stdout
    broken = _meta()
    del broken["task"]
    (tmp_path / "metadata.json").write_text(json.dumps(broken))
    with pytest.raises(ValueError, match="'task' is a required property"):
        verify_metadata(meta_file=str(tmp_path / "metadata.json"), filepath=str(SCHEMA), hash_val=md5)


def test_version_is_one_everywhere():
    """setup.cfg's package version, metadata.json's version and the newest changelog entry are the same."""
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    meta = _meta()
    newest = max(meta["changelog"], key=_version)
    assert setup["metadata"]["version"] == meta["version"] == newest, (setup["metadata"]["version"], meta["version"])


# ---- verify_net_in_out and TorchScript export ---------------------------------------------------------------------


@pytest.mark.parametrize("stage", [0, 1])
def test_verify_net_in_out_checks_each_stage_of_the_cascade(stage):
    """One denoising step of ``network_def`` against ``stage<s>_data_format``; the tensors it needs besides ``x_t``
    go through ``extra_forward_args`` (Python only: the command line cannot pass tensors)."""
    fmt = _meta()[f"stage{stage}_data_format"]
    x_t, pred, xray = fmt["inputs"]["x_t"], fmt["outputs"]["pred"], fmt["inputs"]["xray"]
    prefix = "_meta_#network_data_format"
    override = {
        f"{prefix}#inputs#image#num_channels": x_t["num_channels"],
        f"{prefix}#inputs#image#spatial_shape": x_t["spatial_shape"],
        f"{prefix}#inputs#image#dtype": x_t["dtype"],
        f"{prefix}#outputs#pred#num_channels": pred["num_channels"],
        f"{prefix}#outputs#pred#dtype": pred["dtype"],
    }
    extra = {
        "t": torch.full((1,), 500, dtype=torch.long),
        "xray": torch.rand(1, xray["num_channels"], *xray["spatial_shape"]) * 2 - 1,
        "stage": fmt["inputs"]["stage"],
    }
    if "previous" in fmt["inputs"]:
        extra["previous"] = torch.zeros(1, 1, *fmt["inputs"]["previous"]["spatial_shape"])
    args = {
        "net_id": "network_def",
        "meta_file": str(META),
        "config_file": config_files("inference.yaml"),
        "device": "cpu",
    }
    verify_net_in_out(**args, extra_forward_args=extra, **override)
    with pytest.raises(ValueError, match="output channel number"):  # the check is live
        verify_net_in_out(**args, extra_forward_args=extra, **{**override, f"{prefix}#outputs#pred#num_channels": 2})


def _denoiser_inputs(net, stage: int, batch: int = 2) -> tuple[tuple, torch.Tensor]:
    """The arguments the cascade passes to stage ``stage``'s denoiser (one view missing in the last case), and the
    cascade's own prediction."""
    g = torch.Generator().manual_seed(1)
    xray = torch.rand(batch, 2, 128, 128, generator=g) * 2 - 1
    mask = torch.ones(batch, 2, dtype=torch.bool)
    mask[-1, 1] = False
    grid = net.grid_size(stage)
    x_t = torch.randn(batch, 1, *grid, generator=g)
    t = torch.tensor([900, 20][:batch])
    previous = torch.rand(batch, 1, *net.grid_size(stage - 1), generator=g) * 2 - 1 if stage > 0 else None
    captured = {}
    hook = net.stages[stage]["denoiser"].register_forward_pre_hook(lambda m, a: captured.setdefault("args", a))
    with torch.no_grad():
        out = net(x_t, t, xray, stage=stage, previous=previous, view_mask=mask)
    hook.remove()
    return captured["args"], out


@pytest.mark.parametrize("via", ["command line", "python"])
def test_ckpt_export_of_a_stage_denoiser_matches_the_eager_cascade(tmp_path, via):
    stage = 1 if via == "command line" else 0
    net = _cascade("inference.yaml")
    ckpt, exported = tmp_path / "model.pt", tmp_path / f"denoiser_stage{stage}.ts"
    torch.save({"network": net.state_dict()}, ckpt)  # the shipped layout: weights under "network"
    definition = f"$@network_def.standalone_denoiser({stage})"
    if via == "command line":
        cmd = [sys.executable, "-m", "monai.bundle", "ckpt_export", "denoiser_def"]
        cmd += ["--config_file", cli_config_files("inference.yaml"), "--meta_file", "bundle/configs/metadata.json"]
        cmd += ["--ckpt_file", str(ckpt), "--key_in_ckpt", "network", "--filepath", str(exported)]
        cmd += ["--denoiser_def", definition]
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
    else:
        ckpt_export(
            net_id="denoiser_def",
            filepath=str(exported),
            ckpt_file=str(ckpt),
            meta_file=str(META),
            config_file=config_files("inference.yaml"),
            key_in_ckpt="network",
            denoiser_def=definition,
        )
    files = ("common.json", "inference.json")  # ckpt_export stores each stacked config file under its name
    scripted, meta, extra = load_net_with_metadata(str(exported), more_extra_files=files)
    assert isinstance(scripted, torch.jit.ScriptModule) and meta["version"] == _meta()["version"]
    assert "network_def" in json.loads(extra["common.json"])
    assert "checkpoint_config" in json.loads(extra["inference.json"])  # the network is the checkpoint's
    args, cascade_out = _denoiser_inputs(net, stage)
    fmt = _meta()[f"stage{stage}_denoiser_data_format"]["inputs"]
    assert args[0].shape[1:] == (fmt["x"]["num_channels"], *fmt["x"]["spatial_shape"])
    assert args[2].shape[1:] == (*fmt["context"]["spatial_shape"], fmt["context"]["num_channels"])
    with torch.no_grad():
        ts_out = scripted(*args)
    assert cascade_out.abs().mean() > 1e-3  # not the all-zero output of an untrained adaLN-Zero denoiser
    torch.testing.assert_close(ts_out, cascade_out, rtol=1e-5, atol=1e-5)


def test_scripted_denoiser_with_shifted_padded_windows_matches_eager():
    """The window path (presets with ``attention: window``): a 6³ token grid in 4³ windows is padded and shifted."""
    net = HybridViT3D(3, 1, 24, 4, 32, 2, 2, 16, 16, attention="window", window_size=4).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    x, ctx, emb = torch.randn(2, 3, 24, 24, 24), torch.randn(2, 10, 16), torch.randn(2, 16)
    mask = torch.tensor([[True] * 10, [True] * 5 + [False] * 5])
    scripted = torch.jit.script(net)
    with torch.no_grad():
        torch.testing.assert_close(
            scripted(x, torch.tensor([3, 700]), ctx, emb, mask), net(x, torch.tensor([3, 700]), ctx, emb, mask)
        )


# ---- distributed training -----------------------------------------------------------------------------------------


def test_multi_gpu_fills_train_yaml_initialize_slots_instead_of_copying_it():
    """multi_gpu_train.yaml adds to train.yaml's ``initialize`` through its two slots: the process group (and the
    data preparation by rank 0) before anything that builds the network or reads the data, the per-rank reseed after
    the network is built (every rank builds it from the same seed)."""
    train = yaml.safe_load((CONFIGS / "train.yaml").read_text())
    multi = yaml.safe_load(MULTI_GPU.read_text())
    assert "initialize" not in multi  # no copy to fall out of step with train.yaml
    stack = config_parser("train.yaml", "multi_gpu_train.yaml")
    steps = stack.get("initialize")
    assert steps == train["initialize"]  # train.yaml's steps, unchanged, in order
    setup, reseed = steps.index("@distributed_setup"), steps.index("@per_rank_seed")
    builds = [i for i, step in enumerate(steps) if "@network" in step or "@datalist" in step or "@train#" in step]
    assert builds and setup < min(builds) and reseed > max(builds)
    # Single-process training leaves both slots empty; the overlay fills them.
    assert train["distributed_setup"] == [] and train["per_rank_seed"] is None
    distributed = stack.get("distributed_setup")
    group = next(i for i, s in enumerate(distributed) if "init_process_group(backend=@dist_backend)" in s)
    assert group < distributed.index("$@datalist")  # rank 0 prepares the data once the group exists
    assert "torch.distributed.get_rank()" in stack.get("per_rank_seed")


@pytest.mark.parametrize("stage", [0, 1])
def test_one_trained_stage_leaves_no_trainable_parameter_unused(stage):
    """Why DDP needs no ``find_unused_parameters`` unless all stages train jointly: every trainable parameter of a
    stage takes part in that stage's forward pass (the frozen ones are never registered with DDP)."""
    net = _cascade("train.yaml").train()
    freeze_for_stage(net, stage)
    x_t = torch.randn(1, 1, *net.grid_size(stage))
    previous = torch.zeros(1, 1, *net.grid_size(stage - 1)) if stage > 0 else None
    out = net(x_t, torch.tensor([10]), torch.rand(1, 2, 128, 128) * 2 - 1, stage=stage, previous=previous)
    out.square().mean().backward()
    trainable = {n: p for n, p in net.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith((f"stages.{stage}.", "encoder.")) for n in trainable)
    assert [n for n, p in trainable.items() if p.grad is None] == []


def test_torchrun_two_processes_gloo_train_one_epoch_in_sync(tmp_path):
    """The documented CPU command: two ranks train one epoch; rank 0 writes the training state, both end with its
    weights. Each rank dumps its weights before the config's own finalize steps (test-only addition)."""
    torchrun = shutil.which("torchrun")
    launcher = [torchrun] if torchrun else [sys.executable, "-m", "torch.distributed.run"]
    rank_file = "os.path.join(@output_dir, 'rank' + str(torch.distributed.get_rank()) + '.pt')"
    dump = f"$torch.save(@network.state_dict(), {rank_file})"
    finalize = [dump] + yaml.safe_load(MULTI_GPU.read_text())["finalize"]
    cmd = launcher + ["--standalone", "--nproc_per_node=2", "-m", "monai.bundle", "run", "training"]
    cmd += ["--config_file", cli_config_files("train.yaml", "multi_gpu_train.yaml")]
    cmd += ["--dist_backend", "gloo", "--device", "cpu", "--train#trainer#max_epochs", "1"]
    cmd += ["--dataset_dir", str(tmp_path / "data"), "--synthetic_count", "3", "--ckpt_dir", str(tmp_path / "models")]
    cmd += ["--output_dir", str(tmp_path / "runs"), "--val_interval", "1000", "--num_inference_steps", "2"]
    cmd += ["--progress_bar", "false", "--finalize", json.dumps(finalize)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert len(json.loads((tmp_path / "data" / "datalist.json").read_text())["training"]) >= 1  # prepared once
    state = torch.load(tmp_path / "models" / "stage_0" / "training_state.pt", map_location="cpu", weights_only=True)
    steps = [s["step"] for s in state["optimizer"]["state"].values()]
    assert steps and all(float(s) == 1.0 for s in steps)  # one optimizer step per rank, none skipped
    ranks = [torch.load(tmp_path / "runs" / f"rank{r}.pt", map_location="cpu", weights_only=True) for r in (0, 1)]
    assert ranks[0].keys() == ranks[1].keys() == state["network"].keys()
    for key, value in state["network"].items():
        torch.testing.assert_close(ranks[0][key], value, rtol=0, atol=0)
        torch.testing.assert_close(ranks[1][key], value, rtol=0, atol=0)


# ---- shipped files ------------------------------------------------------------------------------------------------


def test_files_over_25_mb_are_listed_in_large_files_yml():
    """Every file the bundle ships (tracked or not ignored by git) is at most 25 MB, or listed in large_files.yml."""
    listed = set()
    large_files = ROOT / "bundle" / "large_files.yml"
    if large_files.exists():
        listed = {entry["path"] for entry in yaml.safe_load(large_files.read_text())["large_files"]}
    cmd = ["git", "ls-files", "--cached", "--others", "--exclude-standard", "bundle"]
    files = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    assert "bundle/configs/metadata.json" in files
    big = [f for f in files if (ROOT / f).is_file() and (ROOT / f).stat().st_size > LARGE_FILE_BYTES]
    assert [f for f in big if str(Path(f).relative_to("bundle")) not in listed] == []
