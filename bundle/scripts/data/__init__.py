"""Data: synthetic chest phantoms, CT and radiograph readers, preprocessing and on-the-fly X-ray rendering."""

from .anatomy import (
    FINDING_LABELS,
    PATHOLOGIES,
    PHANTOM_LABELS,
    ChestPhantom,
    chest_phantom,
    label_names,
    synthetic_chest_ct,
)
from .cases import INPUT_KEYS, LABEL_KEY, CTOutputd, XrayInputsd, load_cases
from .dicom_output import STUDY_LINK_KEYWORDS, SYNTHETIC_SERIES_DESCRIPTION, bundle_version
from .dicom_radiograph import header_view
from .dicomweb import DicomWebClient, DicomWebError, StoreResult, check_uid
from .io import CT_SUFFIXES, LoadCTd, find_ct_sources, load_ct, split_series_source, write_ct_dicom_series, write_nifti
from .prepare import ensure_dataset, prepare_dataset, split_cases
from .radiograph import (
    DEFAULT_LINE_INTEGRAL_RANGES,
    RADIOGRAPH_MODALITIES,
    LoadRadiographsd,
    NetworkRadiograph,
    Radiograph,
    is_radiograph_file,
    map_radiograph,
    radiograph_to_network,
    read_radiograph,
)
from .realism import RadiographRealism
from .transforms import (
    CropOrPadToFieldOfViewd,
    RemoveCouchd,
    RenderXrayd,
    StageResized,
    ValidateCTd,
    add_ct_warning,
    body_mask,
    label_on_grid,
    source_name,
    voxel_spacing,
)

__all__ = [
    "CT_SUFFIXES",
    "CTOutputd",
    "INPUT_KEYS",
    "LABEL_KEY",
    "XrayInputsd",
    "ensure_dataset",
    "load_cases",
    "DEFAULT_LINE_INTEGRAL_RANGES",
    "CropOrPadToFieldOfViewd",
    "LoadCTd",
    "PATHOLOGIES",
    "FINDING_LABELS",
    "PHANTOM_LABELS",
    "ChestPhantom",
    "chest_phantom",
    "label_names",
    "RADIOGRAPH_MODALITIES",
    "NetworkRadiograph",
    "Radiograph",
    "RadiographRealism",
    "DicomWebClient",
    "DicomWebError",
    "StoreResult",
    "check_uid",
    "header_view",
    "RemoveCouchd",
    "STUDY_LINK_KEYWORDS",
    "SYNTHETIC_SERIES_DESCRIPTION",
    "RenderXrayd",
    "StageResized",
    "ValidateCTd",
    "LoadRadiographsd",
    "add_ct_warning",
    "body_mask",
    "bundle_version",
    "find_ct_sources",
    "is_radiograph_file",
    "label_on_grid",
    "load_ct",
    "map_radiograph",
    "prepare_dataset",
    "radiograph_to_network",
    "read_radiograph",
    "source_name",
    "split_series_source",
    "split_cases",
    "synthetic_chest_ct",
    "voxel_spacing",
    "write_ct_dicom_series",
    "write_nifti",
]
