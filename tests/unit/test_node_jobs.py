"""The node's scheduled jobs: assembly books its next run for when a study turns quiet; retention runs when set."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path

from dicom_ai.config import Settings
from dicom_ai.node import ASSEMBLE_DUE, DUE_SLACK, Node
from dicom_ai.domain import ReceivedInstance


def _instance(study: str) -> ReceivedInstance:
    return ReceivedInstance(sop_instance_uid=study + ".1.1", sop_class_uid="1.2", series_instance_uid=study + ".1",
                            study_instance_uid=study, modality="CT", transfer_syntax_uid="1.2.840.10008.1.2.1",
                            path=Path("/x"), size=1, calling_aet="PACS")


def test_assemble_books_itself_for_when_the_next_study_turns_quiet(tmp_path: Path) -> None:
    node = Node(Settings(home=tmp_path, stable_after=30.0, http_port=0))
    node.scheduler.start(paused=True)
    try:
        node._assemble()
        assert node.scheduler.get_job(ASSEMBLE_DUE) is None  # nothing receiving: nothing to book
        received = time.time()
        node.stores.studies.record_instance(_instance("1.2.3"), now=received)
        node.stores.studies.record_instance(_instance("1.2.4"), now=received + 5)
        node._assemble()
        job = node.scheduler.get_job(ASSEMBLE_DUE)
        expected = datetime.fromtimestamp(received + 30.0 + DUE_SLACK, node.scheduler.timezone)
        assert job is not None and abs((job.next_run_time - expected).total_seconds()) < 1e-3
        node.stores.studies.record_instance(_instance("1.2.3"), now=received + 10)  # more of the first study: booked later
        node._assemble()
        assert node.scheduler.get_job(ASSEMBLE_DUE).next_run_time == datetime.fromtimestamp(
            received + 5 + 30.0 + DUE_SLACK, node.scheduler.timezone)
    finally:
        node.scheduler.shutdown(wait=False)
        node.stores.close()


def test_the_booked_run_completes_the_study(tmp_path: Path) -> None:
    node = Node(Settings(home=tmp_path, stable_after=0.2, http_port=0))
    node.scheduler.start(paused=True)
    try:
        node.stores.studies.record_instance(_instance("1.2.5"), now=time.time())
        node._assemble()
        assert node.stores.reports.studies()[0].state == "receiving"
        time.sleep(0.25)
        node._assemble()  # what the booked run does when it fires
        assert node.stores.reports.studies()[0].state == "complete"
    finally:
        node.scheduler.shutdown(wait=False)
        node.stores.close()


def test_retention_runs_only_when_configured(tmp_path: Path) -> None:
    from tests.conftest import free_port

    for retention, scheduled in ((None, False), (7.0, True)):
        node = Node(Settings(home=tmp_path / str(retention), port=free_port(), host="127.0.0.1", http_port=0,
                             retention_days=retention))
        node.start()
        try:
            assert (node.scheduler.get_job("retention") is not None) is scheduled
        finally:
            node.stop()


def test_with_hl7_listen_the_node_answers_reports_and_matches_kept_ones(tmp_path: Path) -> None:
    from hl7.client import MLLPClient

    from tests.conftest import free_port
    from tests.validation_support import oru

    port = free_port()
    node = Node(Settings(home=tmp_path, http_port=0, port=free_port(), host="127.0.0.1",
                         hl7_listen=f"127.0.0.1:{port}"))
    node.start()
    try:
        assert node.scheduler.get_job("reports") is not None  # kept reports are matched again
        with MLLPClient("127.0.0.1", port) as client:
            answer = client.send_message(oru("NOT-YET", "No consolidation.", control_id="N1")).decode()
        assert "MSA|AE|N1|no study with accession NOT-YET yet: kept" in answer
        assert [r.control_id for r in node.stores.feedback.pending_reports()] == ["N1"]
    finally:
        node.stop()
