"""The loop's weighting choice: CZAR only; an old YAML asking for the removed naive weights gets a clear error."""
import pytest

from aesample.config import ConfigError, config_from_dict


def test_naive_weights_are_refused_with_the_field_named():
    with pytest.raises(ConfigError, match=r"old\.yaml: eabf\.estimator: 'naive' .* was removed.*use 'czar'"):
        config_from_dict({"system": {"name": "alanine-dipeptide"}, "eabf": {"estimator": "naive"}}, source="old.yaml")
    assert config_from_dict({"system": {"name": "alanine-dipeptide"}}).eabf.estimator == "czar"
    with pytest.raises(ConfigError, match=r"eabf\.estimator: invalid value 'bogus'"):
        config_from_dict({"system": {"name": "alanine-dipeptide"}, "eabf": {"estimator": "bogus"}})
