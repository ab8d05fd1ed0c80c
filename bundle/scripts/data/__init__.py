"""Data: synthetic chest phantoms, CT and radiograph readers, preprocessing and on-the-fly X-ray rendering."""

from .cases import INPUT_KEYS, CTOutputd, XrayInputsd, load_cases
from .io import CT_SUFFIXES, find_ct_sources, load_ct, write_ct_dicom_series, write_nifti
from .phantom import PHANTOM_LABELS, synthetic_chest_ct
from .prepare import ensure_dataset, prepare_dataset, split_cases
from .radiograph import (
    DEFAULT_LINE_INTEGRAL_RANGES,
    RADIOGRAPH_MODALITIES,
    LoadRadiographsd,
    Radiograph,
    is_radiograph_file,
    radiograph_to_network,
    read_radiograph,
)
from .transforms import CropOrPadToFieldOfViewd, RenderXrayd, StageResized, ValidateCTd, source_name, voxel_spacing

__all__ = [
    "CT_SUFFIXES",
    "CTOutputd",
    "INPUT_KEYS",
    "XrayInputsd",
    "ensure_dataset",
    "load_cases",
    "DEFAULT_LINE_INTEGRAL_RANGES",
    "CropOrPadToFieldOfViewd",
    "PHANTOM_LABELS",
    "RADIOGRAPH_MODALITIES",
    "Radiograph",
    "RenderXrayd",
    "StageResized",
    "ValidateCTd",
    "LoadRadiographsd",
    "find_ct_sources",
    "is_radiograph_file",
    "load_ct",
    "prepare_dataset",
    "radiograph_to_network",
    "read_radiograph",
    "source_name",
    "split_cases",
    "synthetic_chest_ct",
    "voxel_spacing",
    "write_ct_dicom_series",
    "write_nifti",
]
