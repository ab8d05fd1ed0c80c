"""Anatomical synthetic chest CT phantoms: the embedded default data set (no downloads).

A seed draws one adult patient (sex, age, size, habitus, inspiration, heart size, position on the table, findings);
modules paint the body wall and upper abdomen (:mod:`.torso`), heart and great vessels (:mod:`.heart`), lobed lungs
with airways and vessel trees (:mod:`.lungs`), the skeleton (:mod:`.skeleton`) and findings (:mod:`.pathology`) in
millimetres in the patient frame (:mod:`.patient`, :mod:`.canvas`), so any grid samples the same patient; the
scanner (:mod:`.scanner`) adds the reconstruction kernel, correlated noise and streaks. Labels follow TotalSegmentator
(:mod:`.labels`).
"""

from .generator import ChestPhantom, chest_phantom, phantom_spacing, synthetic_chest_ct
from .labels import FINDING_LABELS, PATHOLOGIES, PHANTOM_LABELS, label_names

__all__ = [
    "PATHOLOGIES",
    "FINDING_LABELS",
    "PHANTOM_LABELS",
    "ChestPhantom",
    "chest_phantom",
    "label_names",
    "phantom_spacing",
    "synthetic_chest_ct",
]
