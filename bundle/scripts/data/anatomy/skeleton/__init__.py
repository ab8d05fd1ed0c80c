"""The thoracic skeleton: spine, ribs and costal cartilages, sternum, clavicles, scapulae and humeral heads.

Painted after the soft organs (bones win where they overlap) by :func:`paint_skeleton`, in this order:

* the paraspinal muscles (:mod:`.spine`) and the muscles round the shoulders (:mod:`.shoulder`), soft tissue the
  bones then cut into;
* the spine C5–L2: vertebrae, discs and the canal (:mod:`.spine`);
* ribs 1–12, the costal cartilages and the sternum (:mod:`.ribs`);
* clavicles, scapulae and humeral heads (:mod:`.shoulder`).

All geometry is drawn from ``rng`` before anything is painted (:mod:`.plan`) and is defined in millimetres in the
patient frame, so every grid (2.5 mm, 1.25 mm …) samples the same skeleton and the same rng state gives bit-identical
volumes. Bones are painted by partial volume with a cortical shell and a trabecular core (:mod:`.bone`).
"""

from __future__ import annotations

import numpy as np

from ..canvas import Canvas
from ..patient import Patient
from .plan import draw_plan, sternum_layout
from .ribs import paint_ribs, paint_sternum
from .shoulder import paint_shoulder_girdle, paint_shoulder_muscles, shoulder_layout
from .spine import paint_autochthons, paint_spine

__all__ = ["paint_skeleton"]


def paint_skeleton(canvas: Canvas, patient: Patient, rng: np.random.Generator) -> None:
    """Paint the thoracic skeleton (and the muscles that wrap it) into ``canvas`` for ``patient``."""
    plan = draw_plan(patient, rng)
    paint_autochthons(canvas, patient, plan)
    shoulders = [shoulder_layout(patient, plan, side) for side in (1.0, -1.0)]
    for layout in shoulders:
        paint_shoulder_muscles(canvas, patient, layout)
    paint_spine(canvas, patient, plan)
    sternum = sternum_layout(patient, plan)
    paint_ribs(canvas, patient, plan, sternum)
    paint_sternum(canvas, patient, plan, sternum)
    for layout in shoulders:
        paint_shoulder_girdle(canvas, patient, plan, layout, sternum)
