"""Tests for gateway/config.py: validation, ${ENV} interpolation and precise errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.config import interpolate_env, load_config, parse_config
from gateway.errors import ConfigError
from gateway.plugins import make_plugin_manager
from tests.conftest import config_data


def problems_of(data: Any, **kwargs: Any) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(data, file="gw.yaml", plugin_manager=make_plugin_manager(), **kwargs)
    return info.value.problems


def test_the_shipped_default_config_is_valid() -> None:
    """config/gateway.yaml (the quick start's config) validates with no environment set."""
    config = load_config(
        Path(__file__).parent.parent / "config" / "gateway.yaml",
        env={},
        plugin_manager=make_plugin_manager(),
    )
    assert config.sources[0].write_keys[0].get_secret_value() == "dev-write-key"
    assert config.server.port == 8088
    assert [d.type for d in config.destinations] == ["file", "warehouse"]


def test_env_interpolation_with_defaults_and_escapes() -> None:
    """${VAR} and ${VAR:-default} are replaced in strings at any depth; $$ is a dollar."""
    data = {"a": "${X}", "b": ["${Y:-fallback}", "$${X}"], "c": {"d": "pre-${X}-post"}, "e": 1}
    assert interpolate_env(data, {"X": "1"}) == {
        "a": "1",
        "b": ["fallback", "${X}"],
        "c": {"d": "pre-1-post"},
        "e": 1,
    }


def test_unset_env_var_names_the_key(tmp_path: Path) -> None:
    """An unset variable without a default is reported with the key path that uses it."""
    data = config_data(tmp_path)
    data["sources"][0]["write_keys"] = ["${WEB_KEY}"]
    [problem] = problems_of(data, env={})
    assert problem.startswith("gw.yaml: sources[0].write_keys[0]: environment variable WEB_KEY")


def test_secrets_from_env_are_not_in_repr(tmp_path: Path) -> None:
    """A write key from the environment is a secret: it never shows in the config's repr."""
    data = config_data(tmp_path)
    data["sources"][0]["write_keys"] = ["${WEB_KEY}"]
    config = parse_config(data, env={"WEB_KEY": "s3cr3t-value"})
    assert config.sources[0].write_keys[0].get_secret_value() == "s3cr3t-value"
    assert "s3cr3t-value" not in repr(config)


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        pytest.param(
            lambda d: d["server"].update(port="http"),
            "gw.yaml: server.port: Input should be a valid integer",
            id="wrong-type",
        ),
        pytest.param(
            lambda d: d["server"].update(prot=1),
            "gw.yaml: server.prot: unknown key; valid keys here: admin_token, event_loop, host",
            id="unknown-key",
        ),
        pytest.param(
            lambda d: d.update(sources=[{"name": "web"}]),
            "gw.yaml: sources[0]: a source needs at least one entry in write_keys or api_keys",
            id="no-keys",
        ),
        pytest.param(
            lambda d: d["sources"][0].update(destinations=["nowhere"]),
            "feeds destination 'nowhere', which is not configured",
            id="dangling-reference",
        ),
        pytest.param(
            lambda d: d["destinations"][0].update(type="kafka"),
            "gw.yaml: destinations[0].type: unknown destination type 'kafka'; installed types:",
            id="unknown-type",
        ),
        pytest.param(
            lambda d: d["destinations"][0].update(settings={}),
            "gw.yaml: destinations[0].settings.directory: required key is missing",
            id="missing-setting",
        ),
        pytest.param(
            lambda d: d["destinations"][0]["settings"].update(colour="red"),
            "gw.yaml: destinations[0].settings.colour: unknown key; valid keys here: directory",
            id="unknown-setting",
        ),
        pytest.param(
            lambda d: d.update(sources=d["sources"] * 2),
            "the name 'web' is used twice",
            id="duplicate-source",
        ),
        pytest.param(
            lambda d: d.pop("sources"),
            "gw.yaml: sources: required key is missing",
            id="no-sources",
        ),
    ],
)
def test_problems_name_file_key_and_fix(tmp_path: Path, mutate: Any, expected: str) -> None:
    """Every problem names the file, the key path, what is wrong and what would be valid."""
    data = config_data(tmp_path)
    mutate(data)
    assert any(expected in p for p in problems_of(data, env={})), problems_of(data, env={})


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    """Several mistakes give several problems, not just the first."""
    data = config_data(tmp_path)
    data["server"].update(port=-1, host=5)
    assert len(problems_of(data, env={})) == 2


def test_problems_never_echo_secret_values(tmp_path: Path) -> None:
    """A bad value next to a secret does not print the secret."""
    data = config_data(tmp_path)
    data["sources"][0]["write_keys"] = ["super-secret-key", 123]
    for problem in problems_of(data, env={}):
        assert "super-secret-key" not in problem


def test_load_config_reports_yaml_position(tmp_path: Path) -> None:
    """Invalid YAML is reported with its line and column."""
    path = tmp_path / "gw.yaml"
    path.write_text("server:\n  port: [1\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems[0].startswith(f"{path}: line ")


def test_load_config_missing_file(tmp_path: Path) -> None:
    """A missing file is a ConfigError naming it."""
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.yaml")
    assert "cannot read the file" in info.value.problems[0]
