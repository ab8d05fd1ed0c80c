"""The model config saved with the weights: built from the configs, read back (0.2.0 records converted), checked."""

from __future__ import annotations

import re

import pytest
import torch
from conftest import ROOT, SMALL_STAGES, TINY_CONFIG, config_parser
from scripts.checkpoint import (
    MODEL_CONFIG_KEYS,
    build_network,
    check_model_config,
    load_network_weights,
    model_config,
    read_model_config,
    save_checkpoint,
)

SHIPPED = ROOT / "bundle" / "models" / "model.pt"


def _record(**changes) -> dict:
    return config_parser(**{**TINY_CONFIG, **changes}).get_parsed_content("model_config")


def test_common_yaml_records_every_setting_that_gives_the_weights_their_meaning():
    record = _record()
    assert list(record) == list(MODEL_CONFIG_KEYS)
    assert record["network"] == "XrayToCTCascade" and record["preset"] == "tiny" and record["stages"] == SMALL_STAGES
    assert record["geometry"] == {
        "views": ["pa", "lateral"],
        "source_to_isocenter_mm": 541.0,
        "source_to_detector_mm": 949.0,
        "detector_shape": [32, 32],
        "pixel_spacing_mm": [17.6, 17.6],
        "parallel": False,
    }
    assert record["physics"] == {"mu_water_per_mm": 0.0206, "max_line_integral": 10.0}
    assert record["hu_window"] == [-1000.0, 2000.0] and record["prediction_type"] == "v_prediction"
    assert record["noise_schedule"] == "scaled_linear_beta" and record["num_train_timesteps"] == 1000
    # Rectified flow has no beta schedule: recorded as None, so a schedule name cannot contradict it.
    assert _record(prediction_type="rectified_flow")["noise_schedule"] is None


def test_the_record_round_trips_and_rebuilds_the_network(tmp_path):
    parser = config_parser(**TINY_CONFIG)
    network = parser.get_parsed_content("network_def")
    record = parser.get_parsed_content("model_config")
    path = tmp_path / "model.pt"
    save_checkpoint(path, {"model": network.state_dict()}, model_config=record, config={"stage": 1})
    assert read_model_config(path) == record
    rebuilt = build_network(read_model_config(path))
    load_network_weights(rebuilt, path, record)
    for (name, a), (_, b) in zip(network.state_dict().items(), rebuilt.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


@pytest.mark.parametrize(
    "files, stages",
    [
        ((), SMALL_STAGES),
        (
            ("train.yaml", "stages/baseline_lifted_prior.yaml"),
            [{"grid_size": 16, "decoder": "linear", "lift_channels": 4}],
        ),
    ],
    ids=["cascade", "baseline"],
)
def test_a_state_dict_with_its_records_loads_with_torch_alone(tmp_path, files, stages):
    parser = config_parser(*files, **{**TINY_CONFIG, "stages": stages})
    network = parser.get_parsed_content("network_def")
    record = parser.get_parsed_content("model_config")
    path = tmp_path / "model.pt"
    save_checkpoint(path, network.state_dict(), model_config=record, config={"stage": 0})  # training's model.pt
    content = torch.load(path, weights_only=True)
    assert set(content) == set(network.state_dict()) | {"model_config", "config"}
    assert read_model_config(path) == record and content["config"] == {"stage": 0}
    rebuilt = build_network(record)
    result = rebuilt.load_state_dict(content)  # strict: the network skips the two records
    assert not result.missing_keys and not result.unexpected_keys and "model_config" in content  # content untouched
    assert all(torch.equal(v, network.state_dict()[k]) for k, v in rebuilt.state_dict().items())
    load_network_weights(build_network(record), path, record)  # the bundle's loader, records checked


def test_shipped_checkpoint_records_match_the_defaults():
    record = read_model_config(SHIPPED)
    assert record["preset"] == "tiny" and record["network"] == "XrayToCTCascade"
    assert [s["grid_size"] for s in record["stages"]] == [32, 64]
    assert record["geometry"]["source_to_detector_mm"] == 949.0 and record["geometry"]["detector_shape"] == [128, 128]
    assert record["noise_schedule"] == "scaled_linear_beta" and record["prediction_type"] == "v_prediction"
    # The shipped files agree with common.yaml's defaults: the default configs train what is shipped.
    assert record == config_parser().get_parsed_content("model_config")
    for name in ("unet_3d", "lifted_prior"):
        baseline = read_model_config(ROOT / "bundle" / "models" / "baselines" / f"{name}.pt")
        assert baseline["network"] == "LiftedRegressor" and baseline["noise_schedule"] is None


def test_a_checkpoint_without_any_record_says_how_to_add_one(tmp_path):
    path = tmp_path / "bare.pt"
    torch.save({"model": {"w": torch.zeros(1)}}, path)
    with pytest.raises(ValueError, match=re.escape(f"checkpoint {path} records no model_config")) as err:
        read_model_config(path)
    assert "save_checkpoint(path, content, model_config=...)" in str(err.value)


@pytest.mark.parametrize(
    "change, key, found, given",
    [
        ({"preset": "quick_2stage"}, "preset", "'tiny'", "'quick_2stage'"),
        ({"stages": [SMALL_STAGES[0], dict(SMALL_STAGES[1], width=64)]}, "stages#1#width", "32", "64"),
        ({"encoder": dict(TINY_CONFIG["encoder"], depth=2)}, "encoder#depth", "1", "2"),
        ({"geometry#parallel": True}, "geometry#parallel", "False", "True"),
        ({"num_train_timesteps": 500}, "num_train_timesteps", "1000", "500"),
        ({"use_depth_lifting": False}, "use_depth_lifting", "True", "False"),
    ],
)
def test_a_contradiction_is_one_line_naming_the_key_and_both_values(change, key, found, given):
    with pytest.raises(ValueError) as err:
        check_model_config(_record(), _record(**change), "m.pt")
    assert str(err.value) == (
        f"{key}: the checkpoint m.pt was trained with {found}, this run gives {given}; it is part of what the "
        "weights mean and comes from the checkpoint, so leave it unset (sampling settings stay free)."
    )
    assert check_model_config(_record(), _record(), "m.pt") == _record()  # agreement passes


def test_what_no_class_checks_is_checked_when_the_record_is_built():
    base = _record()
    args = {k: base[k] for k in MODEL_CONFIG_KEYS}
    with pytest.raises(ValueError, match=re.escape("hu_window must be (low, high) in HU with high > low, got [2000")):
        model_config(**dict(args, hu_window=[2000.0, -1000.0]))
    with pytest.raises(ValueError, match=re.escape("network: 'UNet' is not one of ['XrayToCTCascade'")):
        model_config(**dict(args, network="monai.networks.nets.UNet"))
