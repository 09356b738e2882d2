"""The DICOMweb settings: results by STOW-RS (stow_url and its auth) and STOW-RS receive."""

from __future__ import annotations

import pytest

from dicom_ai.config import ConfigError, load_settings


def test_stow_settings_are_read_and_the_url_normalised() -> None:
    settings = load_settings(environ={"DICOM_AI_STOW_URL": "http://127.0.0.1:8042/dicom-web/",
                                      "DICOM_AI_STOW_USER": "ai", "DICOM_AI_STOW_PASSWORD": "secret",
                                      "DICOM_AI_STOW_RECEIVE": "true", "DICOM_AI_STOW_RECEIVE_MAX_MB": "10"})
    assert settings.stow_url == "http://127.0.0.1:8042/dicom-web"
    assert (settings.stow_user, settings.stow_password, settings.stow_token) == ("ai", "secret", None)
    assert settings.stow_receive and settings.stow_receive_max_mb == 10
    defaults = load_settings(environ={"DICOM_AI_STOW_USER": ""})
    assert defaults.stow_url is None and defaults.stow_user is None and not defaults.stow_receive


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"DICOM_AI_STOW_URL": "127.0.0.1:8042/dicom-web"}, "config key 'stow_url'"),
        ({"DICOM_AI_STOW_USER": "ai"}, "config key 'stow_password' (from defaults): HTTP Basic needs both"),
        ({"DICOM_AI_STOW_PASSWORD": "secret"}, "config key 'stow_password'"),
        ({"DICOM_AI_STOW_USER": "ai", "DICOM_AI_STOW_PASSWORD": "s", "DICOM_AI_STOW_TOKEN": "t"},
         "config key 'stow_token' (from environment variable DICOM_AI_STOW_TOKEN): give either"),
        ({"DICOM_AI_STOW_RECEIVE": "true", "DICOM_AI_HTTP_PORT": "0"}, "config key 'stow_receive'"),
        ({"DICOM_AI_STOW_RECEIVE_USER": "pacs"}, "config key 'stow_receive_password'"),
        ({"DICOM_AI_STOW_RECEIVE_MAX_MB": "0"}, "config key 'stow_receive_max_mb'"),
    ],
)
def test_bad_dicomweb_settings_give_one_line_naming_the_key(environ: dict[str, str], expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(environ=environ)
    message = str(caught.value)
    assert expected in message and "\n" not in message
