"""The model config: every setting that gives a checkpoint's weights their meaning, saved with them.

The pattern of diffusers' saved config and nanoGPT's ``model_args``: training writes :func:`model_config` into every
checkpoint (``"model_config"``), inference and evaluation read it back (:func:`read_model_config`) and build the
network, the geometry and the diffusion schedule from it; a setting of the run that contradicts it is refused by
:func:`check_model_config` with one line naming the key, the checkpoint's value and the given one.

What belongs here is what changes what the numbers mean — the network class and its architecture (preset, stages,
encoder, depth lifting), the field of view, the projection geometry, the physics constants (μ_water, p_max), the
HU window of the CT scale, the prediction type, the noise schedule and the number of training timesteps. Sampling
choices (sampler, steps, samples, seed) are not: they stay free at inference.

Checkpoints of version 0.2.0 have no ``model_config``; they carry ``preset`` (architecture) and ``config`` (the run
settings, the geometry as its ``repr``). :func:`read_model_config` converts those records (their noise schedule was
always ``scaled_linear_beta``), so 0.2.0 files load unchanged.
"""

from __future__ import annotations

import ast
import numbers
import os
from collections.abc import Mapping, Sequence
from typing import Any

from ..physics import ProjectionGeometry
from .files import load_checkpoint, plain

__all__ = [
    "MODEL_CONFIG_KEYS",
    "NETWORKS",
    "check_guidance_scale",
    "check_model_config",
    "model_config",
    "read_model_config",
]

#: The record's keys, in the order a contradiction is looked for (the architecture first: a wrong one makes the
#: weights unusable, the rest makes them wrong).
MODEL_CONFIG_KEYS = (
    "network",
    "preset",
    "stages",
    "encoder",
    "use_depth_lifting",
    "fov_mm",
    "geometry",
    "physics",
    "hu_window",
    "prediction_type",
    "noise_schedule",
    "num_train_timesteps",
)
#: Network classes a record can name (the ``_target_`` of ``network_def``), by name.
NETWORKS = ("XrayToCTCascade", "LiftedRegressor")
GEOMETRY_KEYS = (
    "views",
    "source_to_isocenter_mm",
    "source_to_detector_mm",
    "detector_shape",
    "pixel_spacing_mm",
    "parallel",
)


def _geometry_record(geometry: ProjectionGeometry | Mapping) -> dict:
    """The constructor arguments of a geometry (an object or its config mapping), checked by building it."""
    if isinstance(geometry, Mapping):
        geometry = ProjectionGeometry(**{k: v for k, v in geometry.items() if k != "_target_"})
    return {k: getattr(geometry, k) for k in GEOMETRY_KEYS}


def model_config(
    network: str,
    preset: str,
    stages: Sequence[Mapping],
    encoder: Mapping | None,
    use_depth_lifting: bool,
    fov_mm: float,
    geometry: ProjectionGeometry | Mapping,
    physics: Mapping,
    hu_window: Sequence[float],
    prediction_type: str,
    noise_schedule: str | None,
    num_train_timesteps: int,
) -> dict:
    """The record of what a network's weights mean (JSON-plain; the keys of :data:`MODEL_CONFIG_KEYS`).

    Args:
        network: the network class (:data:`NETWORKS`), e.g. ``network_def#_target_``'s last part.
        preset: the architecture's name (``tiny``, ``quick_2stage``, ...; a label, recorded and compared).
        stages: the stage settings; encoder: the X-ray encoder settings; use_depth_lifting: lifting on or off.
        fov_mm: the field of view of the stage grids (mm).
        geometry: the projection geometry (object or its constructor arguments).
        physics: ``mu_water_per_mm`` (1/mm) and ``max_line_integral`` (p_max of the X-ray network scale).
        hu_window: ``(low, high)`` HU mapped to −1 and +1 of the CT scale.
        prediction_type: ``v_prediction``, ``epsilon``, ``rectified_flow`` (the diffusion objectives) or
            ``regression`` (the deterministic baselines).
        noise_schedule: MONAI's beta schedule name for ``v_prediction`` / ``epsilon``; recorded as ``None`` for the
            others, which have no beta schedule.
        num_train_timesteps: the training schedule's length.

    Only what no class checks is checked here (the network class and the HU window); the networks, the geometry
    and MONAI's schedulers check their own arguments when they are built.

    Raises:
        ValueError: naming the setting.
    """
    network = str(network).rsplit(".", 1)[-1]
    if network not in NETWORKS:
        raise ValueError(f"network: {network!r} is not one of {list(NETWORKS)}.")
    if not isinstance(preset, str) or not preset:
        raise ValueError(f"preset must be a non-empty name, got {preset!r}.")
    diffusion = prediction_type in ("v_prediction", "epsilon")
    window = list(hu_window) if isinstance(hu_window, Sequence) and not isinstance(hu_window, str) else []
    if len(window) != 2 or not all(isinstance(v, numbers.Real) for v in window) or not window[1] > window[0]:
        raise ValueError(f"hu_window must be (low, high) in HU with high > low, got {hu_window!r}.")
    missing = [k for k in ("mu_water_per_mm", "max_line_integral") if k not in physics]
    if missing:
        raise ValueError(f"physics must give {missing}, got {dict(physics)!r}.")
    return plain(
        {
            "network": network,
            "preset": preset,
            "stages": list(stages),
            "encoder": dict(encoder or {}),
            "use_depth_lifting": bool(use_depth_lifting),
            "fov_mm": float(fov_mm),
            "geometry": _geometry_record(geometry),
            "physics": {k: float(physics[k]) for k in ("mu_water_per_mm", "max_line_integral")},
            "hu_window": [float(v) for v in window],
            "prediction_type": prediction_type,
            "noise_schedule": noise_schedule if diffusion else None,
            "num_train_timesteps": int(num_train_timesteps),
        }
    )


def _legacy_geometry(text: str, path: Any) -> dict:
    """A 0.2.0 record's geometry, ``"ProjectionGeometry(views=('pa', 'lateral'), ...)"``, as its arguments.

    Read with ``ast.literal_eval`` per argument: nothing of the text is executed.
    """
    try:
        call = ast.parse(text, mode="eval").body
        if not (isinstance(call, ast.Call) and getattr(call.func, "id", None) == "ProjectionGeometry"):
            raise ValueError("not a ProjectionGeometry(...) record")
        return {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords}
    except (SyntaxError, ValueError) as err:
        raise ValueError(f"checkpoint {path}: its 0.2.0 geometry record {text!r} is unreadable ({err}).") from None


def _from_legacy(checkpoint: Mapping, path: Any) -> dict:
    """Convert the ``preset`` + ``config`` records of a 0.2.0 checkpoint."""
    preset, config = checkpoint.get("preset"), checkpoint.get("config")
    if not isinstance(preset, Mapping) or not isinstance(config, Mapping):
        raise ValueError(
            f"checkpoint {path} records no model_config (and no 0.2.0 preset/config): nothing says what its weights "
            "mean. Save it again with scripts.checkpoint.save_checkpoint(path, content, model_config=...) giving the "
            "settings it was trained with."
        )
    geometry = config.get("geometry")
    prediction_type = config.get("prediction_type", "v_prediction")
    return model_config(
        network="LiftedRegressor" if prediction_type == "regression" else "XrayToCTCascade",
        preset=preset["name"],
        stages=preset["stages"],
        encoder=preset["encoder"],
        use_depth_lifting=preset["use_depth_lifting"],
        fov_mm=preset["fov_mm"],
        geometry=_legacy_geometry(geometry, path) if isinstance(geometry, str) else geometry,
        physics=config["physics"],
        hu_window=config["hu_window"],
        prediction_type=prediction_type,
        noise_schedule="scaled_linear_beta",  # the only schedule 0.2.0's train.yaml could train with
        num_train_timesteps=config.get("num_train_timesteps", 1000),
    )


def read_model_config(checkpoint: str | os.PathLike | Mapping, path: str | os.PathLike | None = None) -> dict:
    """The model config of a checkpoint (a path, read ``weights_only``, or its loaded dictionary).

    Args:
        checkpoint: the file, or its content already loaded.
        path: the file the content came from, for the messages (default: ``checkpoint`` when it is a path).

    Raises:
        FileNotFoundError / ValueError: the file is missing or unreadable, or records nothing usable (the message
            names the file and says how to add a record).
    """
    if path is None:
        path = checkpoint if not isinstance(checkpoint, Mapping) else "<in memory>"
    content = load_checkpoint(checkpoint) if not isinstance(checkpoint, Mapping) else checkpoint
    record = content.get("model_config")
    if record is None:
        return _from_legacy(content, path)
    missing = [k for k in MODEL_CONFIG_KEYS if k not in record]
    if missing:
        raise ValueError(f"checkpoint {path}: its model_config lacks {missing}.")
    return plain(record)


def _first_difference(found: Any, given: Any, where: str) -> tuple[str, Any, Any] | None:
    """The first place where two plain records differ: ``(key path, found, given)``, or ``None``."""
    if isinstance(found, dict) and isinstance(given, dict):
        for key in list(found) + [k for k in given if k not in found]:
            if key not in found or key not in given:
                return f"{where}#{key}", found.get(key, "<absent>"), given.get(key, "<absent>")
            diff = _first_difference(found[key], given[key], f"{where}#{key}")
            if diff:
                return diff
        return None
    if isinstance(found, list) and isinstance(given, list) and len(found) == len(given):
        for i, (a, b) in enumerate(zip(found, given, strict=True)):
            diff = _first_difference(a, b, f"{where}#{i}")
            if diff:
                return diff
        return None
    return None if found == given else (where, found, given)


def check_model_config(found: Mapping, given: Mapping, path: str | os.PathLike) -> dict:
    """Refuse a run whose settings contradict the checkpoint's record; returns the record.

    Args:
        found: the checkpoint's model config (:func:`read_model_config`).
        given: this run's (:func:`model_config` of the config as resolved, command-line overrides included).
        path: the checkpoint, for the message.

    Raises:
        ValueError: one line naming the config key (``#`` paths, as on the command line), the checkpoint's value
            and the given one.
    """
    found, given = plain(found), plain(given)
    for key in MODEL_CONFIG_KEYS:
        diff = _first_difference(found.get(key), given.get(key), key)
        if diff is not None:
            where, a, b = diff
            raise ValueError(
                f"{where}: the checkpoint {path} was trained with {a!r}, this run gives {b!r}; it is part of what "
                "the weights mean and comes from the checkpoint, so leave it unset (sampling settings stay free)."
            )
    return found


def check_guidance_scale(checkpoint: str | os.PathLike, guidance_scale: float) -> float:
    """Refuse classifier-free guidance (``guidance_scale`` ≠ 1) with a checkpoint trained without condition dropout.

    Such a network never learnt the prediction without the X-rays, so ``p_null + w·(p_xray − p_null)`` would
    extrapolate from an arbitrary output: a wrong CT, not an error. The training run's ``condition_dropout`` is in
    the checkpoint's ``config`` record (absent in older checkpoints: 0).

    Returns ``guidance_scale``; raises ``ValueError`` (one line naming the file) otherwise.
    """
    if float(guidance_scale) == 1.0:
        return float(guidance_scale)
    record = load_checkpoint(checkpoint).get("config") or {}
    dropout = record.get("condition_dropout", 0.0) if isinstance(record, Mapping) else 0.0
    if not (isinstance(dropout, numbers.Real) and dropout > 0):
        raise ValueError(
            f"guidance_scale {guidance_scale}: the checkpoint {checkpoint} was trained without condition dropout "
            f"(condition_dropout {dropout}), so it has no X-ray-free prediction to guide with; leave guidance_scale "
            "at 1, or use a checkpoint trained with condition_dropout > 0."
        )
    return float(guidance_scale)
