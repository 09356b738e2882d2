from __future__ import annotations

from pathlib import Path
from typing import get_args

import pytest

from dicom_ai.config import ConfigError, Peer, Settings, describe_settings, load_settings


def test_defaults_are_the_documented_ones() -> None:
    settings = load_settings(environ={})
    assert settings.ae == "DICOM_AI"
    assert settings.port == 11112
    assert settings.pacs is None
    assert settings.stable_after > 0


def test_file_then_environment_override(tmp_path: Path) -> None:
    config = tmp_path / "dicom-ai.toml"
    config.write_text('ae = "FROM_FILE"\nport = 4000\npacs = "ORTHANC@127.0.0.1:4242"\n')
    settings = load_settings(config, environ={"DICOM_AI_PORT": "5000", "DICOM_AI_HOME": str(tmp_path)})
    assert settings.ae == "FROM_FILE"
    assert settings.port == 5000
    assert settings.home == tmp_path
    assert settings.pacs == Peer(aet="ORTHANC", host="127.0.0.1", port=4242)


def test_config_path_from_environment(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("stable_after = 2.5\n")
    assert load_settings(environ={"DICOM_AI_CONFIG": str(config)}).stable_after == 2.5


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"DICOM_AI_PORT": "seventy"}, "config key 'port' (from environment variable DICOM_AI_PORT)"),
        ({"DICOM_AI_PORT": "70000"}, "config key 'port'"),
        ({"DICOM_AI_PACS": "ORTHANC:4242"}, "expected AE@host:port"),
        ({"DICOM_AI_AE": "A" * 17}, "not a valid AE title"),
        ({"DICOM_AI_ORTHANC_URL": "localhost:8042"}, "expected an http(s) URL"),
        ({"DICOM_AI_HEATMAPS": "some"}, "config key 'heatmaps'"),
        ({"DICOM_AI_HL7_RECEIVING_APPLICATION": "R" * 21}, "at most 20 characters"),
        ({"DICOM_AI_ALLOWED_CALLING_AETS": "ORTHANC, BAD\\AE"}, "not a valid AE title"),
    ],
)
def test_bad_values_give_one_line_naming_the_key(environ: dict[str, str], expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(environ=environ)
    message = str(caught.value)
    assert expected in message
    assert "\n" not in message


def test_unknown_key_in_file_is_named(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("stabel_after = 3\n")
    with pytest.raises(ConfigError, match=r"config key 'stabel_after' \(from .*c.toml\): unknown key"):
        load_settings(config, environ={})


def test_broken_toml_names_the_file(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("port = = 3\n")
    with pytest.raises(ConfigError, match="c.toml: not valid TOML"):
        load_settings(config, environ={})


def test_every_setting_is_documented_in_the_readme() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    for key, env_name, _ in describe_settings():
        assert f"`{env_name}`" in readme, f"README.md does not document {key} ({env_name})"


FLOAT_KEYS = [key for key, field in Settings.model_fields.items() if float in (field.annotation, *get_args(field.annotation))]


def test_float_settings_are_known() -> None:
    assert {"stable_after", "send_retry_initial", "send_retry_max", "retention_days"} <= set(FLOAT_KEYS)


@pytest.mark.parametrize("value", ["inf", "nan", "-inf", "Infinity"])
@pytest.mark.parametrize("key", FLOAT_KEYS)
def test_non_finite_numbers_are_refused_for_every_float_setting(key: str, value: str) -> None:
    env_name = f"DICOM_AI_{key.upper()}"
    with pytest.raises(ConfigError) as caught:
        load_settings(environ={env_name: value})
    message = str(caught.value)
    assert message.startswith(f"config key '{key}' (from environment variable {env_name}):") and "\n" not in message


def test_non_finite_number_in_the_toml_file_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("stable_after = inf\n")  # TOML has an inf literal
    with pytest.raises(ConfigError, match=r"config key 'stable_after' \(from .*c.toml\): .*finite"):
        load_settings(config, environ={})


@pytest.mark.parametrize(
    ("key", "value"),
    [("stable_after", "1e300"), ("send_retry_initial", "1e12"), ("send_retry_max", "1e300"),
     ("send_max_attempts", "5000"), ("turnaround_stat_minutes", "1e300"), ("turnaround_routine_minutes", "1e12"),
     ("retention_days", "1e300")],
)
def test_absurdly_large_numbers_are_refused(key: str, value: str) -> None:
    with pytest.raises(ConfigError, match=rf"^config key '{key}' .*less than or equal to"):
        load_settings(environ={f"DICOM_AI_{key.upper()}": value})


def test_large_but_sensible_values_are_kept() -> None:
    settings = load_settings(environ={"DICOM_AI_STABLE_AFTER": "3600", "DICOM_AI_RETENTION_DAYS": "3650",
                                      "DICOM_AI_SEND_MAX_ATTEMPTS": "500"})
    assert settings.stable_after == 3600 and settings.retention_days == 3650 and settings.send_max_attempts == 500


@pytest.mark.parametrize("key", ["home", "rules_dir", "models_dir", "mwl_dir"])
def test_a_folder_setting_naming_a_file_is_one_line(key: str, tmp_path: Path) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    for value, expected in ((a_file, "is a file, not a folder"), (a_file / "sub", "lies under")):
        with pytest.raises(ConfigError) as caught:
            load_settings(environ={f"DICOM_AI_{key.upper()}": str(value)})
        message = str(caught.value)
        assert message.startswith(f"config key '{key}'") and expected in message and "\n" not in message


def test_a_folder_that_does_not_exist_yet_is_fine(tmp_path: Path) -> None:
    assert load_settings(environ={"DICOM_AI_HOME": str(tmp_path / "new" / "home")}).home == tmp_path / "new" / "home"
