"""The MONAI model zoo's own checks of a bundle, run on this one as the zoo would publish it: the zip of ``bundle/``,
fetched with ``python -m monai.bundle download`` from a ``file://`` URL into a fresh folder.

The zoo's CI (Project-MONAI/model-zoo, ``ci/verify_bundle.py`` and ``ci/unit_tests``) checks, in this order: the
directory (``configs/metadata.json`` and ``LICENSE`` required, ``models/model.pt`` and ``configs/inference.*``
preferred), ``version`` listed in ``changelog``, ``verify_metadata`` against the schema that ``ci/prepare_schema.py``
copies to ``eval/schema.json``, the workflow properties (``ConfigWorkflow(workflow_type=...).check_properties()``),
``verify_net_in_out`` of ``network_data_format`` and ``ckpt_export`` of ``network_def`` to TorchScript. Where this
bundle needs other arguments than the zoo's defaults, the tests pass them and say why: the configs are stacked
(``common.yaml`` + a workflow file, where the zoo's script names one file); the network's forward pass is one
denoising step, so the whole X-ray -> CT model that ``network_data_format`` declares is ``xray_to_ct``; and the
cascade exports to TorchScript by tracing, one graph per stage. Per-stage ``verify_net_in_out`` and the
``ckpt_export`` of a stage denoiser alone are in ``test_ecosystem.py``.
"""

from __future__ import annotations

import configparser
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import ROOT, TINY_CONFIG
from monai.bundle import ConfigParser, ConfigWorkflow, verify_metadata, verify_net_in_out
from monai.bundle.workflows import BundleWorkflow
from monai.data import load_net_with_metadata, save_net_with_metadata
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.handlers import ValidationHandler
from monai.inferers import Inferer
from monai.networks import convert_to_torchscript
from scripts.checkpoint import load_network_weights
from scripts.data import prepare_dataset
from scripts.networks import XrayToCTCascade

NAME = "xray2ct"  # the bundle's folder name in the zoo (models/<name>) and in its zip
SCHEMA = ROOT / "tests" / "data" / "meta_schema_20240725.json"  # MONAI's schema, offline copy
SEMVER = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)$")
SAMPLING = {"num_inference_steps": 2, "progress_bar": False}  # the defaults (20 steps per stage) are for real use


def _shipped_files() -> list[str]:
    """What the bundle ships: the files under bundle/ that git tracks or does not ignore."""
    cmd = ["git", "ls-files", "--cached", "--others", "--exclude-standard", "bundle"]
    listed = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    return sorted(str(Path(f).relative_to("bundle")) for f in listed if (ROOT / f).is_file())


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _configs(bundle: Path, *files: str) -> list[str]:
    return [str(bundle / "configs" / "common.yaml")] + [str(bundle / "configs" / f) for f in files]


def _meta(bundle: Path) -> dict:
    return json.loads((bundle / "configs" / "metadata.json").read_text())


@pytest.fixture(scope="module")
def zoo_bundle(tmp_path_factory) -> Path:
    """The zoo-style zip of bundle/ (one base folder named after the bundle), downloaded by MONAI's CLI."""
    version = json.loads((ROOT / "bundle" / "configs" / "metadata.json").read_text())["version"]
    archive = tmp_path_factory.mktemp("release") / f"{NAME}_v{version}.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for name in _shipped_files():
            zf.write(ROOT / "bundle" / name, f"{NAME}/{name}")
    target = tmp_path_factory.mktemp("downloads")
    cmd = [sys.executable, "-m", "monai.bundle", "download", "--name", NAME, "--url", archive.as_uri()]
    cmd += ["--bundle_dir", str(target), "--progress", "False"]
    proc = subprocess.run(cmd, cwd=target, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    return target / NAME


@pytest.fixture(scope="module")
def test_cases(tmp_path_factory) -> Path:
    """One small held-out phantom (seed 1001) under ``test`` (and one training case)."""
    root = tmp_path_factory.mktemp("cases")
    prepare_dataset(
        root, synthetic_count=2, synthetic_size=32, synthetic_spacing_mm=10.0, split=(0.5, 0, 0.5), seed=1000
    )
    return root


# ---- ci/verify_bundle.py: directory, version, metadata --------------------------------------------------------------


def test_download_from_a_local_archive_gives_the_bundle_file_for_file(zoo_bundle):
    shipped = _shipped_files()
    assert not any(f.startswith("eval/") for f in shipped)  # the zoo's work folder (schema, outputs), git-ignored
    files = [p.relative_to(zoo_bundle) for p in zoo_bundle.rglob("*") if p.is_file()]
    downloaded = sorted(str(f) for f in files if f.parts[0] != "eval")
    assert downloaded == shipped
    assert all(_md5(zoo_bundle / f) == _md5(ROOT / "bundle" / f) for f in shipped)
    # The zoo's required and preferred files; large_files.yml is needed only above 25 MB (test_ecosystem).
    for required in ("configs/metadata.json", "LICENSE", "models/model.pt", "configs/inference.yaml"):
        assert required in downloaded, required
    assert not any(f.startswith("large_files.") for f in downloaded)


def test_changelog_versions_are_semantic_newest_first_and_match_setup_cfg(zoo_bundle):
    meta = _meta(zoo_bundle)
    versions = list(meta["changelog"])
    assert all(SEMVER.match(v) for v in versions), versions
    as_tuples = [tuple(map(int, v.split("."))) for v in versions]
    assert as_tuples == sorted(set(as_tuples), reverse=True)  # unique, newest first
    assert all(isinstance(text, str) and text.strip() for text in meta["changelog"].values())
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    assert meta["version"] == versions[0] == setup["metadata"]["version"]


def test_verify_metadata_the_zoo_way_without_network(zoo_bundle, monkeypatch):
    """ci/prepare_schema.py puts the schema at eval/schema.json; verify_metadata then finds it and downloads nothing
    (the URL in metadata.json is never opened)."""

    def no_network(url, *args, **kwargs):
        raise AssertionError(f"verify_metadata tried to download {url}")

    monkeypatch.setattr("monai.apps.utils._download_with_progress", no_network)
    schema = zoo_bundle / "eval" / "schema.json"
    schema.parent.mkdir(exist_ok=True)
    shutil.copyfile(SCHEMA, schema)
    verify_metadata(meta_file=str(zoo_bundle / "configs" / "metadata.json"), filepath=str(schema))
    meta = _meta(zoo_bundle)
    assert meta["schema"].endswith("/" + SCHEMA.name)  # the offline copy is the schema the metadata names
    broken = dict(meta, version=None)
    (zoo_bundle / "eval" / "broken.json").write_text(json.dumps(broken))
    with pytest.raises(ValueError, match="Failed validating"):
        verify_metadata(meta_file=str(zoo_bundle / "eval" / "broken.json"), filepath=str(schema))


# ---- ci/unit_tests: the keys and properties of the workflows --------------------------------------------------------


def test_inference_stack_has_the_zoo_keys_and_monai_infer_properties(zoo_bundle, test_cases, tmp_path):
    overrides = {
        "bundle_root": str(zoo_bundle),
        "dataset_dir": str(test_cases),
        "output_dir": str(tmp_path),
        **SAMPLING,
    }
    workflow = ConfigWorkflow(
        config_file=_configs(zoo_bundle, "inference.yaml"),
        meta_file=str(zoo_bundle / "configs" / "metadata.json"),
        logging_file=str(zoo_bundle / "configs" / "logging.conf"),
        workflow_type="infer",
        **overrides,
    )
    workflow.initialize()
    assert (
        workflow.check_properties() == []
    )  # bundle_root, device, dataset_dir, dataset, evaluator, network_def, inferer
    parsed = workflow.parser.get_parsed_content
    assert Path(parsed("bundle_root")) == zoo_bundle and isinstance(parsed("device"), torch.device)
    assert isinstance(parsed("network_def"), XrayToCTCascade) and isinstance(parsed("inferer"), Inferer)
    assert parsed("output_dir") == str(tmp_path) and parsed("ckpt_path") == str(zoo_bundle / "models" / "model.pt")
    assert [case["image"] for case in workflow.dataset] == [str(test_cases / "volumes" / "phantom_0001.nii.gz")]
    assert workflow.evaluator.cases == list(workflow.dataset)


def test_training_stack_has_the_zoo_keys_and_monai_train_properties(zoo_bundle, tmp_path):
    tiny = {**TINY_CONFIG, "synthetic_count": 4, "synthetic_size": 32, "synthetic_spacing_mm": 10.0, "ssim_window": 3}
    folders = {k: str(tmp_path / k) for k in ("dataset_dir", "ckpt_dir", "output_dir")}
    workflow = ConfigWorkflow(
        config_file=_configs(zoo_bundle, "train.yaml"),
        meta_file=str(zoo_bundle / "configs" / "metadata.json"),
        workflow_type="train",
        bundle_root=str(zoo_bundle),
        **folders,
        **tiny,
    )
    workflow.initialize()
    assert BundleWorkflow.check_properties(workflow) == []  # MONAI's required train properties
    parsed = workflow.parser.get_parsed_content
    trainer, evaluator = parsed("train#trainer"), parsed("validate#evaluator")
    assert isinstance(trainer, SupervisedTrainer) and isinstance(evaluator, SupervisedEvaluator)
    assert isinstance(parsed("val_interval"), int) and trainer.state.max_epochs == parsed("max_epochs")
    for split in ("train", "validate"):  # the optional preprocessing properties: the datasets' transforms
        assert parsed(f"{split}#dataset").transform is parsed(f"{split}#preprocessing")
    # What MONAI's optional check of `evaluator` and `val_interval` looks for: a ValidationHandler in train#handlers
    # running validate#evaluator every val_interval epochs (its own pass stops at the reference entry "@train#state").
    handlers = [parsed(f"train#handlers#{i}") for i in range(len(workflow.parser["train#handlers"]))]
    validation = [h for h in handlers if isinstance(h, ValidationHandler)]
    assert len(validation) == 1 and validation[0].validator is evaluator
    assert validation[0].interval == parsed("val_interval")


# ---- ci/verify_bundle.py: verify_net_in_out and TorchScript ---------------------------------------------------------


def test_verify_net_in_out_of_the_declared_network_data_format(zoo_bundle):
    """MONAI feeds ``network_data_format``'s input (1, 2, 128, 128) to the module and checks the output's channels and
    dtype; here the output's spatial shape and value range are checked too."""
    args = {
        "net_id": "xray_to_ct",
        "meta_file": str(zoo_bundle / "configs" / "metadata.json"),
        "config_file": _configs(zoo_bundle, "inference.yaml"),
        "device": "cpu",
        "bundle_root": str(zoo_bundle),
        **SAMPLING,
    }
    verify_net_in_out(**args)
    with pytest.raises(ValueError, match="output channel number"):  # the check is live
        verify_net_in_out(**args, **{"_meta_#network_data_format#outputs#pred#num_channels": 2})
    fmt = _meta(zoo_bundle)["network_data_format"]
    image, pred = fmt["inputs"]["image"], fmt["outputs"]["pred"]
    parser = ConfigParser()
    parser.read_config(args["config_file"])
    parser.update({"bundle_root": str(zoo_bundle), **SAMPLING})
    model = parser.get_parsed_content("xray_to_ct")
    load_network_weights(model.network, zoo_bundle / "models" / "model.pt", parser.get_parsed_content("model_config"))
    views = torch.rand(1, image["num_channels"], *image["spatial_shape"], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ct = model(views * 2 - 1)
    assert ct.shape == (1, pred["num_channels"], *pred["spatial_shape"]) and ct.dtype == torch.float32
    low, high = pred["value_range"]
    assert low <= ct.min() and ct.max() <= high and ct.std() > 100.0  # a body in HU, not a constant
    # The zoo's default net_id is network_def: one denoising step, whose input is not the X-ray image.
    with pytest.raises(TypeError, match="missing 1 required positional argument: 't'"):
        verify_net_in_out(**{**args, "net_id": "network_def"})


def _stage_inputs(meta: dict, stage: int, batch: int, seed: int) -> dict:
    """Inputs of one cascade step shaped as ``stage<s>_data_format`` declares (the last case without a lateral view)."""
    fmt = meta[f"stage{stage}_data_format"]["inputs"]
    g = torch.Generator().manual_seed(seed)
    inputs = {
        "x_t": torch.randn(batch, fmt["x_t"]["num_channels"], *fmt["x_t"]["spatial_shape"], generator=g),
        "t": torch.randint(0, fmt["t"]["value_range"][1] + 1, (batch,), generator=g),
        "xray": torch.rand(batch, fmt["xray"]["num_channels"], *fmt["xray"]["spatial_shape"], generator=g) * 2 - 1,
        "view_mask": torch.ones(batch, fmt["xray"]["num_channels"], dtype=torch.bool),
    }
    if "previous" in fmt:
        shape = fmt["previous"]["spatial_shape"]
        inputs["previous"] = torch.rand(batch, fmt["previous"]["num_channels"], *shape, generator=g) * 2 - 1
    if batch > 1:
        inputs["view_mask"][-1, 1] = False
    return inputs


@pytest.mark.parametrize("stage", [0, 1])
def test_each_cascade_stage_traces_to_torchscript_that_matches_the_eager_cascade(zoo_bundle, tmp_path, stage):
    """The zoo's ``ckpt_export`` of ``network_def`` cannot export this network: ``torch.jit.script`` rejects the cascade
    (see ``CascadeStage``), and its trace path feeds one random tensor, while a step takes ``x_t``, ``t``, the views,
    their mask and the previous stage. Each stage traces with the shipped weights through MONAI's converter (the one
    ``ckpt_export`` calls, here with its own eager-vs-TorchScript check) and is saved the way ``ckpt_export`` saves:
    metadata and configs inside."""
    meta, ckpt = _meta(zoo_bundle), zoo_bundle / "models" / "model.pt"
    configs = _configs(zoo_bundle, "inference.yaml")
    parser = ConfigParser()
    parser.read_config(configs)
    parser["bundle_root"] = str(zoo_bundle)
    cascade = parser.get_parsed_content("network_def").eval()
    load_network_weights(cascade, ckpt, parser.get_parsed_content("model_config"))
    example = list(_stage_inputs(meta, stage, batch=1, seed=0).values())  # x_t, t, xray, view_mask(, previous)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shape checks become constants of the trace
        traced = convert_to_torchscript(cascade.stage_network(stage), inputs=example, use_trace=True, verify=True)
    extra = {Path(f).stem + ".json": json.dumps(ConfigParser.load_config_file(f)).encode() for f in configs}
    save_net_with_metadata(
        traced,
        str(tmp_path / f"cascade_stage{stage}"),
        append_timestamp=False,
        meta_values=meta,
        more_extra_files=extra,
    )
    loaded, ts_meta, files = load_net_with_metadata(str(tmp_path / f"cascade_stage{stage}.ts"), more_extra_files=extra)
    assert ts_meta["version"] == meta["version"] and "network_def" in json.loads(files["common.json"])
    inputs = _stage_inputs(meta, stage, batch=2, seed=1)  # not the tracing input: another batch size, a missing view
    with torch.no_grad():
        x_t, t, xray, mask = inputs["x_t"], inputs["t"], inputs["xray"], inputs["view_mask"]
        eager = cascade(x_t, t, xray, stage=stage, previous=inputs.get("previous"), view_mask=mask)
        out = loaded(*inputs.values())
    assert out.shape == (2, 1, *meta[f"stage{stage}_data_format"]["outputs"]["pred"]["spatial_shape"])
    assert eager.abs().mean() > 0.1  # trained weights: not the zero output of an untrained adaLN-Zero denoiser
    torch.testing.assert_close(out, eager, rtol=1e-5, atol=1e-5)


# ---- using the downloaded copy --------------------------------------------------------------------------------------


def test_inference_runs_from_the_downloaded_copy(zoo_bundle, test_cases):
    """The bundle runner with the downloaded configs and code only: ``scripts`` and ``bundle_root`` are the
    downloaded copy's, so the CT lands in its default output folder, eval/inference."""
    env = {**os.environ, "PYTHONPATH": str(zoo_bundle), "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1"}
    spec = subprocess.run(
        [sys.executable, "-c", "import importlib.util; print(importlib.util.find_spec('scripts').origin)"],
        cwd=zoo_bundle.parent,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert Path(spec.stdout.strip()) == zoo_bundle / "scripts" / "__init__.py"
    configs = "[" + ",".join(f"'{f}'" for f in _configs(zoo_bundle, "inference.yaml")) + "]"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", configs]
    cmd += ["--meta_file", str(zoo_bundle / "configs" / "metadata.json")]
    cmd += ["--logging_file", str(zoo_bundle / "configs" / "logging.conf")]
    cmd += ["--dataset_dir", str(test_cases), "--save_preview", "False"]
    cmd += [a for k, v in SAMPLING.items() for a in (f"--{k}", str(v))]
    proc = subprocess.run(cmd, cwd=zoo_bundle.parent, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    out = zoo_bundle / "eval" / "inference"
    report = json.loads((out / "inference_report.json").read_text())
    assert [c["name"] for c in report["done"]] == ["case_0000"] and report["failed"] == []
    ct = nib.load(out / "case_0000" / "case_0000_ct.nii.gz")
    hu = np.asarray(ct.dataobj)
    assert ct.shape == (64, 64, 64) and hu.dtype == np.int16
    assert -1000 <= hu.min() and hu.max() <= 2000 and hu.min() == -1000 and hu.max() > 0  # air and body in HU
    assert nib.aff2axcodes(ct.affine) == ("R", "A", "S")
    np.testing.assert_allclose(ct.header.get_zooms(), (5.0, 5.0, 5.0))  # 320 mm field of view on 64³
