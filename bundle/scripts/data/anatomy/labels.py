"""Label ids of the anatomical chest phantom, named after TotalSegmentator's classes where it has one.

Names follow TotalSegmentator (Wasserthal et al., Radiology: AI 2023) — its ``total`` task (organs, bones, vessels:
``lung_upper_lobe_left``, ``rib_left_1``, ``vertebrae_T1``, ``clavicula_left`` ...), ``heartchambers_highres``
(``heart_myocardium``, ``heart_atrium_left`` ...), ``lung_vessels`` (``lung_vessels``, ``lung_trachea_bronchia``),
``tissue_types`` (``subcutaneous_fat``, ``skeletal_muscle``, ``torso_fat``), ``lung_nodules`` and
``pleural_pericard_effusion`` (``pleural_effusion``). Classes it lacks keep a plain descriptive name (``skin``,
``breast``, ``epicardial_fat``, ``lung_mass``, ``consolidation``, ``atelectasis``, ``pneumothorax``, ``emphysema``,
``stomach_gas``).

One label per voxel. Painting order decides overlaps: a finding (nodule, effusion ...) replaces the anatomy it
occupies, so a lobe's label count is the lobe minus its findings.
"""

from __future__ import annotations

__all__ = ["FINDING_LABELS", "PATHOLOGIES", "PHANTOM_LABELS", "label_names"]

#: The findings' own labels, in id order (cardiomegaly has none: it is the heart's labels).
FINDING_LABELS: tuple[str, ...] = (
    "lung_nodules",
    "lung_mass",
    "pleural_effusion",
    "consolidation",
    "atelectasis",
    "pneumothorax",
    "emphysema",
)


def _build() -> dict[str, int]:
    names = [
        "background",
        "skin",
        "subcutaneous_fat",
        "breast",
        "skeletal_muscle",
        "autochthon_left",
        "autochthon_right",
        "torso_fat",
        "lung_upper_lobe_left",
        "lung_lower_lobe_left",
        "lung_upper_lobe_right",
        "lung_middle_lobe_right",
        "lung_lower_lobe_right",
        "trachea",
        "lung_trachea_bronchia",
        "lung_vessels",
        "heart_myocardium",
        "heart_atrium_left",
        "heart_ventricle_left",
        "heart_atrium_right",
        "heart_ventricle_right",
        "epicardial_fat",
        "aorta",
        "pulmonary_artery",
        "superior_vena_cava",
        "inferior_vena_cava",
        "brachiocephalic_trunk",
        "common_carotid_artery_left",
        "subclavian_artery_left",
        "brachiocephalic_vein_left",
        "brachiocephalic_vein_right",
        "esophagus",
        "liver",
        "spleen",
        "stomach",
        "stomach_gas",
        "kidney_left",
        "kidney_right",
        "small_bowel",
        "spinal_cord",
        "intervertebral_discs",
        "sternum",
        "costal_cartilages",
        "clavicula_left",
        "clavicula_right",
        "scapula_left",
        "scapula_right",
        "humerus_left",
        "humerus_right",
    ]
    names += ["vertebrae_C7"] + [f"vertebrae_T{i}" for i in range(1, 13)] + ["vertebrae_L1", "vertebrae_L2"]
    names += [f"rib_left_{i}" for i in range(1, 13)] + [f"rib_right_{i}" for i in range(1, 13)]
    names += list(FINDING_LABELS)
    return {name: i for i, name in enumerate(names)}


#: Label ids of the phantom's label map (name -> id); ids are stable across versions of the generator.
PHANTOM_LABELS: dict[str, int] = _build()

#: Findings the generator can place, each with its own label (cardiomegaly is a heart size, no extra label).
PATHOLOGIES: tuple[str, ...] = (
    "nodule",
    "mass",
    "pleural_effusion",
    "consolidation",
    "atelectasis",
    "pneumothorax",
    "cardiomegaly",
    "emphysema",
)


def label_names() -> dict[str, str]:
    """``{"0": "background", ...}``: the label table as 3D Slicer / MONAI Label / nnU-Net ``labels`` write it."""
    return {str(i): name for name, i in PHANTOM_LABELS.items()}
