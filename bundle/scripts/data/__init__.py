"""Data: synthetic chest phantoms, CT and radiograph readers, preprocessing and on-the-fly X-ray rendering."""

from .phantom import PHANTOM_LABELS, synthetic_chest_ct

__all__ = ["PHANTOM_LABELS", "synthetic_chest_ct"]
