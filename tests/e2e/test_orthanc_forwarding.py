"""The Orthanc side: orthanc/orthanc.json and its forwarding plugin, with real parts.

The e2e tests run Debian's Orthanc with the repo's configuration and plugin, and dcmtk's storescp as the
router's stand-in: a stable study is forwarded exactly once, results sent back by the router's AE title
are never forwarded, later images of the same study go alone, a router that is down is retried, and
after the last retry a study can be queued again by hand.
The unmarked tests check the configuration, its documentation and the plugin's pure functions without
any binary.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from pydicom import Dataset, dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from dicom_ai.send.carriers import orthanc_metadata
from tests.conftest import copy_as_new_study, free_port, require_binary, sample, wait_for
from tests.e2e.orthanc_server import (
    CONFIG_PATH,
    REPO,
    OrthancHttpError,
    OrthancServer,
    OrthancStartError,
    StorescuError,
    nodelay_env,
    storescu,
)

ROUTER_AET = "DICOM_AI"
PLUGIN_PATH = REPO / "orthanc" / "forward_to_router.py"
README_PATH = REPO / "orthanc" / "README.md"
STUDY_METADATA = ("AiPriority", "AiScore", "AiFindings", "AiReasons", "AiModel", "AiUpdated")
WAIT = 30.0  # seconds; a stable study is forwarded ~1-2 s after the last instance with StableAge 1


@pytest.fixture
def plugin(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """The plugin as a plain module, as outside Orthanc: `import orthanc` fails, nothing is registered."""
    monkeypatch.setitem(sys.modules, "orthanc", None)  # else the repo's orthanc/ folder would be imported
    spec = importlib.util.spec_from_file_location("forward_to_router", PLUGIN_PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up while it executes
    spec.loader.exec_module(module)
    assert not module.IN_ORTHANC
    return module


# --- configuration, documentation and pure functions (no binaries needed) ---------------------------


def test_configuration_declares_metadata_router_and_loopback_defaults() -> None:
    config = json.loads(CONFIG_PATH.read_text())
    metadata = config["UserMetadata"]
    assert set(metadata) == {*STUDY_METADATA, "AiForwarded", "AiArrived"}
    assert all(1024 <= index <= 65535 for index in metadata.values())
    assert len(set(metadata.values())) == len(metadata), "two metadata names share an index"
    # The router writes exactly the names declared here (undeclared names are refused by Orthanc).
    written = {value for name, value in vars(orthanc_metadata).items() if name.startswith("AI_")}
    assert written == set(STUDY_METADATA), "dicom_ai/send/carriers/orthanc_metadata.py and orthanc.json disagree"
    section = config["DicomAi"]
    aet, host, port = config["DicomModalities"][section["RouterModality"]]
    assert (aet, host, port) == (section["RouterAet"], "127.0.0.1", 11112)
    assert config["DicomAet"] == "ORTHANC" and config["RemoteAccessAllowed"] is False
    assert 1 <= config["StableAge"] <= 10
    # Started from the repo root: storage resolves against the file's folder, the script against the cwd.
    storage = (CONFIG_PATH.parent / config["StorageDirectory"]).resolve()
    assert storage.is_relative_to(REPO / ".state"), storage
    assert (REPO / config["PythonScript"]).resolve() == PLUGIN_PATH
    assert ".state/" in (REPO / ".gitignore").read_text().split()


def test_readme_documents_every_user_metadata_with_its_index() -> None:
    readme = README_PATH.read_text()
    for name, index in json.loads(CONFIG_PATH.read_text())["UserMetadata"].items():
        assert re.search(rf"^\|\s*`?{name}`?\s*\|\s*{index}\s*\|", readme, re.MULTILINE), f"{name} not in README table"


def test_loop_guard_forwards_only_new_instances_not_from_the_router(plugin: ModuleType) -> None:
    selection = plugin.select_instances(
        {
            "from-modality": {"Origin": "DicomProtocol", "RemoteAET": "CR_ROOM_1"},
            "uploaded": {"Origin": "RestApi"},
            "ai-result": {"Origin": "DicomProtocol", "RemoteAET": "DICOM_AI"},
            "ai-result-padded": {"Origin": "DicomProtocol", "RemoteAET": "DICOM_AI "},
            "sent-before": {"Origin": "DicomProtocol", "RemoteAET": "CR_ROOM_1", "AiForwarded": "2026-11-28T10:00:00Z"},
            "router-aet-but-uploaded": {"Origin": "RestApi", "RemoteAET": "DICOM_AI"},
        },
        ROUTER_AET,
    )
    assert selection.to_forward == ("from-modality", "uploaded", "router-aet-but-uploaded")
    assert selection.from_router == ("ai-result", "ai-result-padded")
    assert selection.already_forwarded == ("sent-before",)


def test_settings_are_checked_with_the_key_named(plugin: ModuleType) -> None:
    settings = plugin.load_settings(json.loads(CONFIG_PATH.read_text()))
    assert (settings.router_modality, settings.router_aet) == ("dicom-ai", ROUTER_AET)
    assert settings.retry_count >= 1 and settings.retry_delay > 0
    with pytest.raises(plugin.ForwardConfigError, match='no "DicomAi" section'):
        plugin.load_settings({})
    with pytest.raises(plugin.ForwardConfigError, match="DicomAi.RouterAet"):
        plugin.load_settings({"DicomAi": {"RouterModality": "dicom-ai", "RouterAet": " "}})
    with pytest.raises(plugin.ForwardConfigError, match="DicomAi.RetryCount"):
        plugin.load_settings({"DicomAi": {"RouterModality": "m", "RouterAet": "A", "RetryCount": -1}})
    with pytest.raises(plugin.ForwardConfigError, match="DicomAi.RetryDelay"):
        plugin.load_settings({"DicomAi": {"RouterModality": "m", "RouterAet": "A", "RetryDelay": 0}})
    assert [plugin.retry_delay(n, 10.0) for n in (1, 2, 3)] == [10.0, 20.0, 40.0]


# --- real Orthanc + dcmtk ---------------------------------------------------------------------------


def require_parts() -> None:
    for tool in ("Orthanc", "storescu", "storescp", "echoscu"):
        require_binary(tool)
    plugins = json.loads(CONFIG_PATH.read_text())["Plugins"]
    missing = [p for p in plugins if not Path(p).exists()]
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"{missing} not installed but CI must have it (Debian package orthanc-python)")
        pytest.skip(f"{missing} not installed (Debian package orthanc-python)")


class RouterStandIn:
    """dcmtk's storescp as the router: one unique file per C-STORE received, so duplicates show."""

    def __init__(self, folder: Path, port: int, aet: str = ROUTER_AET) -> None:
        self.folder, self.port, self.aet = folder, port, aet
        self.log_path = folder.parent / f"storescp-{port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        command = ["storescp", "-aet", self.aet, "+uf", "-od", str(self.folder), str(self.port)]
        with open(self.log_path, "ab") as log:  # the child keeps its own descriptor
            self.process = subprocess.Popen(command, env=nodelay_env(), stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while True:  # ready once it answers a C-ECHO
            echo = subprocess.run(
                ["echoscu", "-aec", self.aet, "127.0.0.1", str(self.port)], capture_output=True, timeout=10
            )
            if echo.returncode == 0:
                return
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"storescp on port {self.port} did not start: {echo.stderr!r}\n{self.log_path.read_text()}"
                )
            time.sleep(0.05)

    def received(self) -> list[Path]:
        return sorted(p for p in self.folder.iterdir() if p.is_file()) if self.folder.exists() else []

    def received_uids(self, study_instance_uid: str) -> list[str]:
        """SOP Instance UIDs received for one study, once per reception (sorted)."""
        headers = [dcmread(p, stop_before_pixels=True) for p in self.received()]
        return sorted(str(h.SOPInstanceUID) for h in headers if h.StudyInstanceUID == study_instance_uid)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None


@pytest.fixture
def router(tmp_path: Path) -> Iterator[RouterStandIn]:
    """A stand-in the test starts itself (to play a router that is down at first)."""
    require_parts()
    stand_in = RouterStandIn(tmp_path / "router", free_port())
    yield stand_in
    stand_in.stop()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[OrthancServer, RouterStandIn]]:
    """Orthanc with the repo's configuration and a running router stand-in, shared by the module's tests."""
    require_parts()
    root = tmp_path_factory.mktemp("orthanc-forwarding")
    stand_in = RouterStandIn(root / "router", free_port())
    stand_in.start()
    try:
        with OrthancServer(root / "orthanc", ROUTER_AET, stand_in.port, stable_age=1) as orthanc:
            yield orthanc, stand_in
            assert "unexpected error" not in orthanc.log_text(), orthanc.log_tail()
    finally:
        stand_in.stop()


def wait_until(what: str, check: Callable[[], Any], orthanc: OrthancServer, timeout: float = WAIT) -> Any:
    return wait_for(what, check, timeout, lambda: f"Orthanc log:\n{orthanc.log_tail()}", poll=0.05)


def plugin_lines(orthanc: OrthancServer, study_id: str, text: str) -> int:
    """How many times the plugin logged `text` for this study."""
    return orthanc.log_text().count(f"dicom-ai forward: study {study_id}: {text}")


def summaries(orthanc: OrthancServer, study_id: str) -> list[str]:
    """The plugin's one summary line per handled stable event of this study, oldest first."""
    pattern = rf"dicom-ai forward: study {study_id}: ((?:forwarded|nothing to forward).*)$"
    return re.findall(pattern, orthanc.log_text(), re.MULTILINE)


def fake_ai_result(source: Path, folder: Path) -> Path:
    """A tiny Secondary Capture in the source's study, like a heatmap the router would send back."""
    original = dcmread(source, stop_before_pixels=True)
    result = Dataset()
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID",
                    "StudyDate", "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName"):
        setattr(result, keyword, original.get(keyword, ""))
    result.SOPClassUID = SecondaryCaptureImageStorage
    result.SOPInstanceUID = generate_uid()
    result.SeriesInstanceUID = generate_uid()
    result.Modality, result.SeriesNumber, result.InstanceNumber, result.ConversionType = "OT", 9901, 1, "WSD"
    result.SeriesDescription = "AI heatmap (test)"
    result.Rows = result.Columns = 8
    result.SamplesPerPixel, result.PhotometricInterpretation = 1, "MONOCHROME2"
    result.BitsAllocated, result.BitsStored, result.HighBit, result.PixelRepresentation = 8, 8, 7, 0
    result.PixelData = bytes(range(64))
    result.file_meta = FileMetaDataset()
    result.file_meta.MediaStorageSOPClassUID = result.SOPClassUID
    result.file_meta.MediaStorageSOPInstanceUID = result.SOPInstanceUID
    result.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{result.SOPInstanceUID}.dcm"
    result.save_as(path, enforce_file_format=True)
    return path


def instance_ids_by_uid(orthanc: OrthancServer, study_id: str) -> dict[str, str]:
    instances = orthanc.get_json(f"/studies/{study_id}/instances")
    return {item["MainDicomTags"]["SOPInstanceUID"]: item["ID"] for item in instances}


def forwarded_at(orthanc: OrthancServer, instance_id: str) -> str | None:
    try:
        return orthanc.rest("GET", f"/instances/{instance_id}/metadata/AiForwarded").decode()
    except OrthancHttpError as exc:
        if exc.status == 404:
            return None
        raise


@pytest.mark.e2e
def test_stable_study_goes_to_router_once_and_results_never_do(
    tmp_path: Path, stack: tuple[OrthancServer, RouterStandIn]
) -> None:
    orthanc, router = stack
    chest = copy_as_new_study(sample("RG1_UNCR.dcm"), tmp_path / "in")
    chest_uid = str(dcmread(chest, stop_before_pixels=True).SOPInstanceUID)
    study_uid = str(dcmread(chest, stop_before_pixels=True).StudyInstanceUID)
    storescu([chest], orthanc.dicom_port, aet="CR_ROOM_1")

    study_id = wait_until("the study in Orthanc", lambda: orthanc.find_study(study_uid), orthanc)
    [first] = wait_until("the first stable event", lambda: summaries(orthanc, study_id), orthanc)
    assert first == "forwarded 1 instance(s) to modality dicom-ai on attempt 1"
    assert router.received_uids(study_uid) == [chest_uid]
    stamp = forwarded_at(orthanc, instance_ids_by_uid(orthanc, study_id)[chest_uid])
    assert stamp is not None
    age = datetime.now(UTC) - datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert timedelta(seconds=-5) < age < timedelta(minutes=5), stamp

    # The router sends its result back: the study becomes stable again, nothing goes out.
    result = fake_ai_result(chest, tmp_path / "result")
    result_uid = str(dcmread(result).SOPInstanceUID)
    storescu([result], orthanc.dicom_port, aet=ROUTER_AET)
    wait_until("the second stable event", lambda: len(summaries(orthanc, study_id)) == 2, orthanc)
    assert summaries(orthanc, study_id)[1] == f"nothing to forward (1 from {ROUTER_AET}, 1 already forwarded)"
    assert router.received_uids(study_uid) == [chest_uid]
    ids = instance_ids_by_uid(orthanc, study_id)
    assert set(ids) == {chest_uid, result_uid}
    assert forwarded_at(orthanc, ids[result_uid]) is None

    # A late image of the same study from the modality goes alone; the first is not sent twice.
    late = copy_as_new_study(sample("RG1_UNCR.dcm"), tmp_path / "late", StudyInstanceUID=study_uid)
    late_uid = str(dcmread(late, stop_before_pixels=True).SOPInstanceUID)
    storescu([late], orthanc.dicom_port, aet="CR_ROOM_1")
    wait_until("the third stable event", lambda: len(summaries(orthanc, study_id)) == 3, orthanc)
    assert summaries(orthanc, study_id)[2] == (
        f"forwarded 1 instance(s) to modality dicom-ai on attempt 1; skipped 1 from {ROUTER_AET}, 1 already forwarded"
    )
    assert router.received_uids(study_uid) == sorted([chest_uid, late_uid])


@pytest.mark.e2e
def test_router_down_is_retried_given_up_and_resent_by_hand(tmp_path: Path, router: RouterStandIn) -> None:
    overrides = {"DicomAi": {"RetryCount": 2, "RetryDelay": 0.5}}
    with OrthancServer(tmp_path / "orthanc", ROUTER_AET, router.port, overrides=overrides) as orthanc:
        # Down for good: two retries after 0.5 s and 1 s, then the plugin gives up and says how to resend.
        first = copy_as_new_study(sample("CT_small.dcm"), tmp_path / "first")
        first_uid = str(dcmread(first, stop_before_pixels=True).StudyInstanceUID)
        storescu([first], orthanc.dicom_port)
        first_id = wait_until("the first study in Orthanc", lambda: orthanc.find_study(first_uid), orthanc)
        wait_until("the plugin to give up", lambda: plugin_lines(orthanc, first_id, "giving up after 3 attempt(s)"),
                   orthanc)
        log = orthanc.log_text()
        assert "retry 1/2 in 0.5 s" in log and "retry 2/2 in 1 s" in log
        assert f"resend with POST /dicom-ai/forward/{first_id}" in log
        assert summaries(orthanc, first_id) == []
        assert orthanc.get_json("/system")["DicomAet"] == "ORTHANC"  # Orthanc kept answering meanwhile

        router.start()
        answer = json.loads(orthanc.rest("POST", f"/dicom-ai/forward/{first_id}", b""))
        assert answer == {"Study": first_id, "Queued": True}
        [summary] = wait_until("the forward by hand", lambda: summaries(orthanc, first_id), orthanc)
        assert summary == "forwarded 1 instance(s) to modality dicom-ai on attempt 1"
        assert len(router.received_uids(first_uid)) == 1
        with pytest.raises(OrthancHttpError) as unknown:
            orthanc.rest("POST", "/dicom-ai/forward/no-such-study", b"")
        assert unknown.value.status == 404

        # Down for a moment: a retry gets through.
        router.stop()
        second = copy_as_new_study(sample("CT_small.dcm"), tmp_path / "second")
        second_uid = str(dcmread(second, stop_before_pixels=True).StudyInstanceUID)
        storescu([second], orthanc.dicom_port)
        second_id = wait_until("the second study in Orthanc", lambda: orthanc.find_study(second_uid), orthanc)
        wait_until("a failed store", lambda: plugin_lines(orthanc, second_id, "store of 1 instance(s)"), orthanc)
        router.start()
        [summary] = wait_until("the retried forward", lambda: summaries(orthanc, second_id), orthanc)
        attempt = re.fullmatch(r"forwarded 1 instance\(s\) to modality dicom-ai on attempt (\d+)", summary)
        assert attempt is not None and int(attempt[1]) >= 2, summary
        assert len(router.received_uids(second_uid)) == 1


@pytest.mark.e2e
def test_declared_study_metadata_round_trips_over_rest(
    tmp_path: Path, stack: tuple[OrthancServer, RouterStandIn]
) -> None:
    orthanc, _ = stack
    ct = copy_as_new_study(sample("CT_small.dcm"), tmp_path / "in")
    uploaded = json.loads(orthanc.rest("POST", "/instances", ct.read_bytes()))
    study_id = uploaded["ParentStudy"]
    values = {"AiPriority": "STAT", "AiScore": "0.9731", "AiFindings": "Consolidation 97% (present)",
              "AiReasons": "rule chest-cr: Consolidation >= 0.8", "AiModel": "chest-xray-demo 1.0",
              "AiUpdated": "2026-11-28T11:00:00Z"}
    for name, value in values.items():
        orthanc.rest("PUT", f"/studies/{study_id}/metadata/{name}", value)
    for name, value in values.items():
        assert orthanc.rest("GET", f"/studies/{study_id}/metadata/{name}").decode() == value
    orthanc.rest("PUT", f"/studies/{study_id}/metadata/AiPriority", "ROUTINE")  # a re-run overwrites
    assert orthanc.rest("GET", f"/studies/{study_id}/metadata/AiPriority") == b"ROUTINE"
    with pytest.raises(OrthancHttpError):  # undeclared names are refused: the declaration matters
        orthanc.rest("PUT", f"/studies/{study_id}/metadata/AiUndeclared", "x")


@pytest.mark.e2e
def test_worklist_in_orthanc_sorts_by_priority_then_waiting(
    tmp_path: Path, stack: tuple[OrthancServer, RouterStandIn]
) -> None:
    orthanc, _ = stack
    before = {entry["ID"] for entry in orthanc.get_json("/dicom-ai/worklist")}
    ids = []
    for _ in range(4):
        ct = copy_as_new_study(sample("CT_small.dcm"), tmp_path / "in")
        ids.append(json.loads(orthanc.rest("POST", "/instances", ct.read_bytes()))["ParentStudy"])
        time.sleep(1.1)  # AiArrived has one-second resolution: make the waiting order certain
    oldest, urgent, stat, newest = ids
    wait_until("AiArrived on every study", lambda: all(
        "AiArrived" in orthanc.get_json(f"/studies/{i}/metadata")
        for i in ids), orthanc)
    orthanc.rest("PUT", f"/studies/{urgent}/metadata/AiPriority", "URGENT")
    orthanc.rest("PUT", f"/studies/{stat}/metadata/AiPriority", "STAT")
    orthanc.rest("PUT", f"/studies/{stat}/metadata/AiReasons", "Consolidation 97% >= STAT threshold 90%")
    entries = [e for e in orthanc.get_json("/dicom-ai/worklist") if e["ID"] not in before]
    assert [e["ID"] for e in entries] == [stat, urgent, oldest, newest]
    assert entries[0]["AiReasons"] == "Consolidation 97% >= STAT threshold 90%"
    assert entries[2]["WaitingMinutes"] >= entries[3]["WaitingMinutes"]
    page = orthanc.rest("GET", "/dicom-ai/worklist.html").decode()
    assert page.index(stat) < page.index(urgent) < page.index(oldest) < page.index(newest)
    assert f"explorer.html#study?uuid={stat}" in page


@pytest.mark.e2e
def test_bad_dicomai_section_stops_orthanc_naming_the_key(tmp_path: Path) -> None:
    require_parts()
    server = OrthancServer(tmp_path / "orthanc", ROUTER_AET, free_port(), overrides={"DicomAi": {"RouterAet": ""}})
    with pytest.raises(OrthancStartError, match="DicomAi.RouterAet must be a non-empty string"):
        server.start()
    assert server.process is None


def test_storescu_failure_raises_with_stderr(tmp_path: Path) -> None:
    require_binary("storescu")
    with pytest.raises(StorescuError, match="storescu -aet STORESCU -aec ORTHANC 127.0.0.1"):
        storescu([sample("CT_small.dcm")], free_port(), timeout=30)  # nobody listens there
