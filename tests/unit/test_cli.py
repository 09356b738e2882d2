"""The CLI answers bad input with one clear line, never a traceback."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from pydicom import dcmread

from dicom_ai.domain import OutboxEntry, Carrier
from dicom_ai.cli import main
from dicom_ai.receive.scp import start_scp
from dicom_ai.store import Spool, Stores
from tests.conftest import copy_as_new_study, free_port, sample


def run(*args: str, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(main, list(args), env=env or {}, catch_exceptions=False)


def test_help_lists_every_verb() -> None:
    result = run("--help")
    assert result.exit_code == 0
    for verb in ("serve", "config", "rules", "models", "studies", "retry", "echo", "send", "train"):
        assert verb in result.output


def test_bad_setting_stops_with_one_line(tmp_path: Path) -> None:
    result = run("config", env={"DICOM_AI_PORT": "0"})
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        "Error: config key 'port' (from environment variable DICOM_AI_PORT): Input should be greater than or equal to 1"
    ]


def test_config_shows_environment_overrides(tmp_path: Path) -> None:
    result = run("config", env={"DICOM_AI_PACS": "PACS@127.0.0.1:4242", "DICOM_AI_ORTHANC_PASSWORD": "secret"})
    assert result.exit_code == 0
    assert "PACS@127.0.0.1:4242" in result.output
    assert "secret" not in result.output


def test_studies_without_database_says_so(tmp_path: Path) -> None:
    result = run("studies", env={"DICOM_AI_HOME": str(tmp_path / "nothing")})
    assert result.exit_code == 1
    assert "no database at" in result.output


def test_echo_to_nobody_is_a_clear_error() -> None:
    result = run("echo", f"NOBODY@127.0.0.1:{free_port()}")
    assert result.exit_code == 1
    assert "association with NOBODY@127.0.0.1" in result.output


def test_echo_failure_is_one_line_without_pynetdicom_errors(caplog: pytest.LogCaptureFixture) -> None:
    network_log = logging.getLogger("pynetdicom")
    level = network_log.level
    try:
        result = run("echo", f"NOBODY@127.0.0.1:{free_port()}")
    finally:
        network_log.setLevel(level)
    assert result.exit_code == 1
    assert not [r for r in caplog.records if r.name.startswith("pynetdicom") and r.levelno >= logging.ERROR]


def test_send_names_each_file_it_cannot_send_and_sends_the_rest(tmp_path: Path) -> None:
    good = copy_as_new_study(sample("CT_small.dcm"), tmp_path / "in")
    notes = tmp_path / "in" / "notes.txt"
    notes.write_text("not an image")
    port = free_port()
    pacs = Stores.open(tmp_path / "pacs.sqlite")
    server = start_scp("PACS", "127.0.0.1", port, 0, Spool(tmp_path / "pacs"), pacs.studies)
    try:
        result = CliRunner().invoke(main, ["send", f"PACS@127.0.0.1:{port}", str(tmp_path / "in")],
                                    env={"DICOM_AI_HOME": str(tmp_path / "home")})
    finally:
        server.shutdown()
    assert result.exit_code == 1
    assert f"FAILED {notes}: not a DICOM file" in result.output
    assert "sent 1 of 2 file(s)" in result.output
    header = dcmread(good)
    assert pacs.reports.receive_counts(header.StudyInstanceUID) == {header.SOPInstanceUID: 1}


def test_malformed_peer_is_named() -> None:
    result = CliRunner().invoke(main, ["echo", "localhost:104"])
    assert result.exit_code == 2
    assert "expected AE@host:port" in result.output


def test_every_command_is_in_the_readme() -> None:
    import click as _click

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    for name, command in main.commands.items():
        names = [f"{name} {sub}" for sub in command.commands] if isinstance(command, _click.Group) else [name]
        for full in names:
            assert f"`dicom-ai {full}" in readme, f"README.md does not document `dicom-ai {full}`"


def _given_up_send(home: Path) -> None:
    from dicom_ai.domain import Priority, PriorityDecision
    from dicom_ai.domain import ReceivedInstance

    store = Stores.open(home / "dicom-ai.sqlite")
    store.studies.record_instance(ReceivedInstance("1.2.9.1", "1.2", "1.2.9.0", "1.2.9", "CR", "1.2.840.10008.1.2.1",
                                           Path("/x"), 1, "PACS"), now=1.0)
    store.studies.complete_quiet_studies(quiet_since=1.0)
    store.studies.claim_complete_study()
    store.studies.save_outcome("1.2.9", rules=["r"], models=["m@1"], findings=[], results=[],
                       priority=PriorityDecision(Priority.ROUTINE, 0.1, ()),
                       outbox=[OutboxEntry(Carrier.WEBHOOK, "1.2.9", "http://127.0.0.1:9/hook", "{}")])
    [item] = store.outbox.due_outbox()
    store.outbox.mark_failed_attempt(item, "connection refused", retry_at=None)
    store.close()


def test_status_says_how_long_sends_are_retried_and_how_given_up_ones_resume(tmp_path: Path) -> None:
    _given_up_send(tmp_path)
    env = {"DICOM_AI_HOME": str(tmp_path), "DICOM_AI_SEND_RETRY_INITIAL": "5", "DICOM_AI_SEND_RETRY_MAX": "600",
           "DICOM_AI_SEND_MAX_ATTEMPTS": "20"}
    result = CliRunner().invoke(main, ["status"], env=env)
    assert result.exit_code == 1
    # 5+10+20+40+80+160+320 s, then 12 x 600 s: 7835 s
    assert "a failing send is retried for about 2 h 10 min (20 attempts)" in result.output
    assert "1 send(s) given up after send_max_attempts (about 2 h 10 min of retries)" in result.output
    assert "dicom-ai resend --failed" in result.output


def test_resend_requeues_given_up_sends_and_says_how_many(tmp_path: Path) -> None:
    _given_up_send(tmp_path)
    env = {"DICOM_AI_HOME": str(tmp_path)}
    assert CliRunner().invoke(main, ["resend"], env=env).exit_code == 2  # which studies?
    result = CliRunner().invoke(main, ["resend", "1.2.9"], env=env)
    assert result.exit_code == 0 and "1 given-up send(s) queued again" in result.output
    again = CliRunner().invoke(main, ["resend", "1.2.9"], env=env)
    assert again.exit_code == 1 and "0 given-up send(s)" in again.output  # nothing left to queue
    store = Stores.open(tmp_path / "dicom-ai.sqlite")
    assert [row["state"] for row in store.reports.outbox_rows("1.2.9")] == ["pending"]
    store.close()


def _dicom_ai(args: list[str], env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """The installed command in its own process, as an admin runs it."""
    binary = shutil.which("dicom-ai") or str(Path(sys.executable).with_name("dicom-ai"))
    base = {k: v for k, v in os.environ.items() if not k.startswith("DICOM_AI_")}
    return subprocess.run([binary, *args], env={**base, "DICOM_AI_PORT": str(free_port()), "DICOM_AI_HTTP_PORT": "0",
                                                **env},
                          capture_output=True, text=True, timeout=timeout, check=False)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"DICOM_AI_HOME": "{file}"}, "config key 'home' (from environment variable DICOM_AI_HOME): '{file}' is a file, "
                                      "not a folder"),
        ({"DICOM_AI_HOME": "{file}/state"}, "config key 'home' (from environment variable DICOM_AI_HOME): "
                                            "'{file}/state' lies under {file}, which is a file, not a folder"),
        ({"DICOM_AI_STABLE_AFTER": "inf"}, "config key 'stable_after' (from environment variable DICOM_AI_STABLE_AFTER): "
                                           "Input should be a finite number"),
        ({"DICOM_AI_STABLE_AFTER": "nan"}, "config key 'stable_after'"),
        ({"DICOM_AI_STABLE_AFTER": "1e300"}, "config key 'stable_after'"),
        ({"DICOM_AI_SEND_RETRY_MAX": "inf"}, "config key 'send_retry_max'"),
    ],
)
@pytest.mark.parametrize("verb", ["serve", "status", "config"])
def test_bad_home_or_number_stops_every_command_with_one_line(
    verb: str, env: dict[str, str], expected: str, tmp_path: Path
) -> None:
    a_file = tmp_path / "state-file"
    a_file.write_text("")
    env = {"DICOM_AI_HOME": str(tmp_path / "home"), **{key: value.format(file=a_file) for key, value in env.items()}}
    if verb == "serve":  # its own process: before the fix it crashed, or ran and failed every tick
        done = _dicom_ai([verb], env)
        code, output = done.returncode, done.stderr + done.stdout
    else:
        result = CliRunner().invoke(main, [verb], env=env)
        code, output = result.exit_code, result.output
    assert code == 1
    assert "Traceback" not in output
    [line] = output.strip().splitlines()
    assert line.startswith(f"Error: {expected.format(file=a_file)}"), line


def test_serve_with_a_home_it_cannot_create_is_one_line() -> None:
    # A folder nobody can create, root included (a permission test would pass for root).
    done = _dicom_ai(["serve"], {"DICOM_AI_HOME": "/proc/self/dicom-ai-state"})
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith(
        "Error: config key 'home' (/proc/self/dicom-ai-state): cannot hold the database and spool"), done.stderr


def test_status_shows_a_small_disk_in_megabytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    Stores.open(tmp_path / "dicom-ai.sqlite").close()
    small = shutil._ntuple_diskusage(total=40_000_000, used=28_000_000, free=12_000_000)  # type: ignore[attr-defined]
    monkeypatch.setattr("dicom_ai.store.health.shutil.disk_usage", lambda path: small)
    result = run("status", env={"DICOM_AI_HOME": str(tmp_path)})
    assert "disk free 12.0 MB of 40.0 MB" in result.output, result.output
    assert "only 12.0 MB free on the disk" in result.output
    assert "0.0 of 0.0 GB" not in result.output


def test_a_peer_resetting_its_connection_is_one_log_line_not_a_traceback() -> None:
    """pynetdicom logs a reset connection with its stack (seen when the PACS stopped during a C-FIND)."""
    import subprocess
    import sys

    code = ("import logging\n"
            "from dicom_ai.cli import _setup_logging\n"
            "_setup_logging('INFO')\n"
            "try:\n"
            "    raise ConnectionResetError(104, 'Connection reset by peer')\n"
            "except OSError as exc:\n"
            "    logging.getLogger('pynetdicom.dul').exception(exc)\n"
            "    logging.getLogger('pynetdicom.dul').exception('Connection closed before the entire PDU was received')\n"
            "    logging.getLogger('dicom_ai.test').exception('ours')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    lines = done.stderr.splitlines()
    peer = [line for line in lines if "pynetdicom.dul" in line]
    assert len(peer) == 2 and "Connection reset by peer" in peer[0]
    assert "(ConnectionResetError: [Errno 104] Connection reset by peer)" in peer[1]
    # Our own errors keep their stack (they are bugs to fix): only the peer's are shortened.
    assert done.stderr.count("Traceback") == 1 and done.stderr.index("Traceback") > done.stderr.index("ours")
