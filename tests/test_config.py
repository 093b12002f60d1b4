"""Config validation: exact messages for bad input, YAML round trip, effective defaults."""

from __future__ import annotations

import pytest
import yaml

from aesample.config import (
    Config,
    ConfigError,
    apply_overrides,
    config_from_dict,
    dump_config,
    effective_config,
    load_config,
)


def test_defaults_are_alanine_dipeptide():
    cfg = effective_config(Config())
    assert cfg.system.name == "alanine-dipeptide"
    assert cfg.system.temperature == 300.0
    assert cfg.cv.selection == "protein and not element H"
    assert cfg.cv.hidden_layers == [40] and cfg.cv.dimension == 2 and cfg.cv.activation == "tanh"


def test_unknown_key_message():
    with pytest.raises(ConfigError) as exc:
        config_from_dict({"md": {"timestp": 1.0}}, source="run.yaml")
    assert str(exc.value) == (
        "run.yaml: unknown key 'md.timestp' (allowed keys in md: timestep, friction, minimize, "
        "equilibration, report_interval, segment_steps, seed, cv_interval)"
    )


def test_unknown_section_message():
    with pytest.raises(ConfigError) as exc:
        config_from_dict({"mdd": {}})
    assert str(exc.value) == (
        "unknown key 'mdd' (allowed keys in the top level: system, md, cv, eabf, training, loop, output, execution)"
    )


def test_wrong_type_message():
    with pytest.raises(ConfigError) as exc:
        config_from_dict({"md": {"timestep": "fast"}})
    assert str(exc.value) == "md.timestep: expected a number, got 'fast' (str)"


def test_negative_timestep_message():
    with pytest.raises(ConfigError) as exc:
        config_from_dict({"md": {"timestep": -2.0}})
    assert str(exc.value) == "md.timestep: must be > 0.0 (got -2.0)"


def test_unknown_system_message():
    with pytest.raises(ConfigError) as exc:
        config_from_dict({"system": {"name": "lysozyme"}})
    assert str(exc.value) == (
        "system.name: unknown system 'lysozyme' (available: alanine-dipeptide, alanine-dipeptide-water, "
        "chignolin, chignolin-water, or set system.pdb)"
    )


def test_missing_pdb_message(tmp_path):
    missing = tmp_path / "nothere.pdb"
    with pytest.raises(ConfigError) as exc:
        config_from_dict({"system": {"pdb": str(missing)}})
    assert str(exc.value) == f"system.pdb: file not found: {missing}"


def test_literal_and_range_messages():
    with pytest.raises(ConfigError, match=r"cv.activation: invalid value 'sigmoidish' \(allowed: 'tanh', "):
        config_from_dict({"cv": {"activation": "sigmoidish"}})
    with pytest.raises(ConfigError, match=r"eabf: grid_min \(1.0\) must be < grid_max \(-1.0\)"):
        config_from_dict({"eabf": {"grid_min": 1.0, "grid_max": -1.0}})
    with pytest.raises(ConfigError, match=r"md: report_interval \(100\) must be a multiple of cv_interval \(3\)"):
        config_from_dict({"md": {"cv_interval": 3}})
    with pytest.raises(ConfigError, match=r"md: segment_steps \(1001\) must be a multiple of report_interval \(100\)"):
        config_from_dict({"md": {"segment_steps": 1001}})



def test_share_interval_is_checked_against_the_md_section():
    from aesample.loopstages import share_segment_steps

    assert config_from_dict({}).loop.share_interval is None
    with pytest.raises(ConfigError, match=r"loop.share_interval: must be > 0 \(got 0\)"):
        config_from_dict({"loop": {"share_interval": 0}})
    with pytest.raises(ConfigError, match=r"loop.share_interval \(150\) must be a multiple of md.report_interval "
                                          r"\(100\)"):
        config_from_dict({"loop": {"share_bias": True, "share_interval": 150}})
    # the shared walkers' segment: the interval, never longer than md.segment_steps (null: md.segment_steps)
    md = {"report_interval": 50, "segment_steps": 1000}
    assert share_segment_steps(config_from_dict({"md": md, "loop": {"share_interval": 250}})) == 250
    assert share_segment_steps(config_from_dict({"md": md, "loop": {"share_interval": 5000}})) == 1000
    assert share_segment_steps(config_from_dict({"md": md})) == 1000


def test_malformed_yaml_names_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("md: [1\n")
    with pytest.raises(ConfigError, match=f"^{path}: malformed YAML"):
        load_config(path)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found: .*absent.yaml"):
        load_config(tmp_path / "absent.yaml")


@pytest.mark.parametrize("system", ["alanine-dipeptide", "chignolin-water"])
def test_dump_loads_back_identically(tmp_path, system):
    cfg = effective_config(apply_overrides(Config(), [f"system.name={system}", "md.timestep=1.5", "cv.hidden_layers=[30, 10]"]))
    path = tmp_path / "run.yaml"
    path.write_text(dump_config(cfg))
    again = load_config(path)
    assert again == cfg
    assert dump_config(again) == dump_config(cfg)
    assert yaml.safe_load(path.read_text())["md"]["timestep"] == 1.5


def test_override_syntax_error():
    with pytest.raises(ConfigError, match=r"--set 'timestep=1': expected section.key=value"):
        apply_overrides(Config(), ["timestep=1"])


def test_every_field_documented():
    for section in Config.model_fields.values():
        for name, field in section.annotation.model_fields.items():
            assert field.description, f"{name} has no description"
