"""Inputs of the MONAI Label check, made with the bundle's own environment (run.sh runs this before switching):

* ``STUDIES/phantom_ct.nii.gz``: a held-out synthetic chest phantom (HU, RAS, 4 mm voxels on an 80³ grid, so that
  the bundle's preprocessing has to resample it to its 64³ / 5 mm grid);
* ``STUDIES/phantom_pa.png`` and ``phantom_lateral.png``: the phantom's PA and lateral views rendered with the
  training geometry by the bundle's own ``preprocessing``, as 8-bit radiographs (attenuation bright);
* ``BUNDLE/models/model.pt`` when the bundle has none: untrained weights of the configured preset (the initial
  weights plus small random values, state dict under ``"model"``), saved with ``scripts.checkpoint.save_checkpoint``
  and the config's model config.

Usage: python tests/monailabel/prepare_inputs.py BUNDLE STUDIES
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def main(bundle: Path, studies: Path) -> dict:
    sys.path.insert(0, str(bundle))  # the bundle copy's `scripts`, as MONAI Label loads it
    import numpy as np
    import torch
    from monai.bundle import ConfigParser
    from PIL import Image
    from scripts.checkpoint import save_checkpoint
    from scripts.data import synthetic_chest_ct, write_nifti
    from scripts.physics import centred_affine

    if not Path(sys.modules["scripts"].__file__).resolve().is_relative_to(bundle.resolve()):
        raise RuntimeError(f"imported scripts from {sys.modules['scripts'].__file__}, not from the bundle {bundle}.")
    studies.mkdir(parents=True, exist_ok=True)
    parser = ConfigParser()  # the architecture the configs train (common.yaml's preset), before any checkpoint exists
    parser.read_config(str(bundle / "configs" / "common.yaml"))
    report: dict = {}

    model = bundle / "models" / "model.pt"
    if model.exists():
        report["weights"] = "shipped"
    else:
        start = time.perf_counter()
        torch.manual_seed(0)
        network = parser.get_parsed_content("network_def")
        # adaLN-Zero: a freshly initialised network outputs 0 whatever the X-rays, so every input would give the
        # same CT. Small random weights everywhere make the output depend on the input, which the check asserts.
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for parameter in network.parameters():
                parameter.add_(0.02 * torch.randn(parameter.shape, generator=generator))
        model.parent.mkdir(parents=True, exist_ok=True)
        save_checkpoint(model, {"model": network.state_dict()}, model_config=parser.get_parsed_content("model_config"))
        report["weights"] = f"untrained, random ({time.perf_counter() - start:.1f} s)"

    size, spacing = 80, 4.0
    hu, _ = synthetic_chest_ct(size=size, spacing_mm=spacing, seed=1000)
    ct_path = studies / "phantom_ct.nii.gz"
    write_nifti(ct_path, np.round(hu).astype(np.int16), centred_affine((size,) * 3, (spacing,) * 3), overwrite=True)
    report["ct"] = str(ct_path)

    # The views as the bundle's inference preprocessing renders them, with the geometry of the weights now in place.
    parser = ConfigParser()
    parser.read_config([str(bundle / "configs" / "common.yaml"), str(bundle / "configs" / "inference.yaml")])
    parser["bundle_root"] = str(bundle)
    preprocessing = parser.get_parsed_content("preprocessing")
    views = torch.as_tensor(preprocessing({"image": str(ct_path)})["image"]).float()  # (V, H, W), network scale
    for name, view in zip(parser.get_parsed_content("geometry#views"), views, strict=True):
        pixels = np.round((view.clamp(-1.0, 1.0).numpy() + 1.0) * 127.5).astype(np.uint8)
        path = studies / f"phantom_{name}.png"
        Image.fromarray(pixels).save(path)  # uint8 (H, W): 8-bit grayscale
        report[str(name)] = str(path)
    return report


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    print(json.dumps(main(Path(sys.argv[1]), Path(sys.argv[2])), indent=2))
