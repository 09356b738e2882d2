"""deploy/: the example settings load, and the unit file, the settings and docs/deploy.md agree."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from dicom_ai.cli import main
from dicom_ai.config import load_settings

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"


def _unit(path: Path) -> dict[str, list[str]]:
    """systemd's key=value lines (a key may repeat, e.g. Environment)."""
    values: dict[str, list[str]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if "=" in line and not line.lstrip().startswith(("#", "[")):
            key, _, value = line.partition("=")
            values.setdefault(key.strip(), []).append(value.strip())
    return values


def test_example_settings_are_valid() -> None:
    settings = load_settings(DEPLOY / "dicom-ai.toml", environ={})
    assert settings.home == Path("/var/lib/dicom-ai") and settings.rules_dir == Path("/etc/dicom-ai/rules")
    assert settings.allowed_calling_aets == ("ORTHANC",) and settings.retention_days == 14
    assert settings.pacs is not None and settings.pacs.host == "127.0.0.1"
    assert settings.http_host == "127.0.0.1"


def test_unit_runs_the_cli_with_the_documented_paths() -> None:
    unit = _unit(DEPLOY / "dicom-ai.service")
    settings = load_settings(DEPLOY / "dicom-ai.toml", environ={})
    [exec_start] = unit["ExecStart"]
    assert exec_start == "/opt/dicom-ai/.venv/bin/dicom-ai serve"
    assert "DICOM_AI_CONFIG=/etc/dicom-ai/dicom-ai.toml" in unit["Environment"]
    assert unit["WorkingDirectory"] == ["/opt/dicom-ai"] and unit["Restart"] == ["on-failure"]
    assert str(settings.home) in unit["ReadWritePaths"][0].split()  # the node may write its state
    guide = (REPO / "docs" / "deploy.md").read_text(encoding="utf-8")
    for step in ("deploy/dicom-ai.toml /etc/dicom-ai/dicom-ai.toml", "deploy/dicom-ai.service",
                 "cp rules/*.yaml /etc/dicom-ai/rules/", "make install"):
        assert step in guide


def test_cli_starts_from_the_example_settings(tmp_path: Path) -> None:
    outcome = CliRunner().invoke(main, ["config"], env={"DICOM_AI_CONFIG": str(DEPLOY / "dicom-ai.toml"),
                                                        "DICOM_AI_HOME": str(tmp_path)})
    assert outcome.exit_code == 0, outcome.output
    assert "ORTHANC@127.0.0.1:4242" in outcome.output and "retention_days" in outcome.output


def test_unit_raises_the_descriptor_limit_as_the_guide_says() -> None:
    [limit] = _unit(DEPLOY / "dicom-ai.service")["LimitNOFILE"]
    assert int(limit) >= 65536
    guide = (REPO / "docs" / "deploy.md").read_text(encoding="utf-8")
    assert f"LimitNOFILE={limit}" in guide
    settings = load_settings(DEPLOY / "dicom-ai.toml", environ={})
    assert settings.max_associations < int(limit) // 4  # threads and descriptors per connection, with room
