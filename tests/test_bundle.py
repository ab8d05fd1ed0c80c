"""Bundle-level checks: metadata schema and the DRR demo workflow through MONAI's bundle runner."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import nibabel as nib
import numpy as np
import pytest
from conftest import cli_config_files, config_files
from monai.bundle import ConfigWorkflow
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "bundle" / "configs"
SCHEMA = ROOT / "tests" / "data" / "meta_schema_20240725.json"  # MONAI's schema, offline copy
TINY = {"volume#shape": [16, 16, 20], "volume#spacing_mm": [20.0, 20.0, 16.0], "geometry#detector_shape": [24, 32]}


def test_metadata_validates_against_the_monai_schema():
    meta = json.loads((CONFIGS / "metadata.json").read_text())
    jsonschema.validate(meta, json.loads(SCHEMA.read_text()))
    assert meta["version"] in meta["changelog"]


def _run_demo(output_dir: Path, **overrides):
    workflow = ConfigWorkflow(
        config_file=config_files("drr_demo.yaml"), workflow_type=None, output_dir=str(output_dir), **TINY, **overrides
    )
    workflow.initialize()
    summary = workflow.run()
    workflow.finalize()
    return summary[0]


def test_demo_writes_ct_and_radiographs_in_physical_units(tmp_path):
    summary = _run_demo(tmp_path)
    ct = nib.load(tmp_path / "phantom_ct.nii.gz")
    assert ct.shape == (16, 16, 20) and nib.aff2axcodes(ct.affine) == ("R", "A", "S")
    np.testing.assert_allclose(ct.header.get_zooms(), (20.0, 20.0, 16.0))
    # The grid is centred on the isocentre: the centre of the volume maps to world (0, 0, 0) mm.
    np.testing.assert_allclose(ct.affine @ np.array([7.5, 7.5, 9.5, 1.0]), [0.0, 0.0, 0.0, 1.0], atol=1e-9)
    hu = np.asarray(ct.dataobj)
    assert hu.min() == pytest.approx(-1000.0) and hu.max() > 0.0  # air outside, soft tissue and bone inside
    for view in ("pa", "lateral"):
        png = Image.open(tmp_path / f"drr_{view}.png")
        assert png.size == (32, 24) and png.mode == "L"  # (width, height)
        drr = nib.load(tmp_path / f"drr_{view}.nii.gz")
        assert drr.shape == (32, 24, 1)
        assert summary["line_integrals"][view]["max"] == pytest.approx(float(np.asarray(drr.dataobj).max()), rel=1e-6)
        assert 2.0 < summary["line_integrals"][view]["max"] < 10.0
    assert json.loads((tmp_path / "drr_summary.json").read_text()) == summary


def test_demo_refuses_to_overwrite_unless_asked(tmp_path):
    _run_demo(tmp_path)
    before = (tmp_path / "drr_pa.png").read_bytes()
    (tmp_path / "drr_summary.json").write_text("keep me")
    with pytest.raises(RuntimeError) as info:
        _run_demo(tmp_path)
    assert "outputs exist" in str(info.value.__cause__) and "--overwrite true" in str(info.value.__cause__)
    assert (tmp_path / "drr_summary.json").read_text() == "keep me"
    assert (tmp_path / "drr_pa.png").read_bytes() == before
    _run_demo(tmp_path, overwrite=True)
    assert json.loads((tmp_path / "drr_summary.json").read_text())["projector"] == "joseph"


def test_readme_command_runs_from_the_repository_root(tmp_path):
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", cli_config_files("drr_demo.yaml")]
    cmd += ["--output_dir", str(tmp_path)]
    for key, value in TINY.items():
        cmd += [f"--{key}", json.dumps(value)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.glob("drr_*.png")) == ["drr_lateral.png", "drr_pa.png"]
