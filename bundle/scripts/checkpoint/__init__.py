"""Checkpoints, in one home: files (weights-only reading, atomic writing), the model config that says what the
weights mean, loading weights into networks, and the training handlers that write them.

* :mod:`.files` — :func:`load_checkpoint` (``torch.load(weights_only=True)``), :func:`save_checkpoint` (temp file,
  fsync, rename; never NaN or Inf); the two kinds of files: weights (``model.pt``: a state dict with its records
  beside it) and the training state (``training_state.pt``).
* :mod:`.model_config` — :func:`model_config` (the record saved with the weights), :func:`read_model_config`
  (0.2.0 records converted), :func:`check_model_config` (a contradicting setting refused by name).
* :mod:`.weights` — :func:`load_network_weights`, :func:`load_earlier_stages`, :func:`build_network`.
* :mod:`.handlers` — :class:`AtomicCheckpointSaver`, :class:`TrainingStateHandler`, :class:`ResumableRandomSampler`.
"""

from .files import first_nonfinite, load_checkpoint, plain, save_checkpoint, write_json
from .handlers import AtomicCheckpointSaver, ResumableRandomSampler, TrainingStateHandler, is_main_process
from .model_config import (
    MODEL_CONFIG_KEYS,
    check_guidance_scale,
    check_model_config,
    model_config,
    read_model_config,
)
from .weights import build_network, load_earlier_stages, load_network_weights, load_regressor, stage_checkpoint

__all__ = [
    "AtomicCheckpointSaver",
    "MODEL_CONFIG_KEYS",
    "ResumableRandomSampler",
    "TrainingStateHandler",
    "build_network",
    "check_guidance_scale",
    "check_model_config",
    "first_nonfinite",
    "is_main_process",
    "load_checkpoint",
    "load_earlier_stages",
    "load_network_weights",
    "load_regressor",
    "model_config",
    "plain",
    "read_model_config",
    "save_checkpoint",
    "stage_checkpoint",
    "write_json",
]
