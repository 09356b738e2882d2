"""Group commit (store/database.py `Part._grouped`): instances received at once share one durable commit,
each caller returns only once its own row is committed, and one failing work leaves the others in."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from dicom_ai.domain import ReceivedInstance
from dicom_ai.store import Stores


def _instance(n: int, study: str = "1.2.3") -> ReceivedInstance:
    return ReceivedInstance(sop_instance_uid=f"{study}.1.{n}", sop_class_uid="1.2", series_instance_uid=f"{study}.1",
                            study_instance_uid=study, modality="CT", transfer_syntax_uid="1.2.840.10008.1.2.1",
                            path=Path(f"/spool/{n}.dcm"), size=1, calling_aet="PACS")


def test_concurrent_records_are_all_committed(tmp_path: Path) -> None:
    stores = Stores.open(tmp_path / "db.sqlite")
    try:
        start = threading.Barrier(8)
        results: dict[int, bool] = {}

        def record(n: int) -> None:
            start.wait()
            results[n] = stores.studies.record_instance(_instance(n)).is_new

        threads = [threading.Thread(target=record, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results == {n: True for n in range(8)}
        reopened = Stores.open(tmp_path / "db.sqlite")  # another connection sees every row: committed
        try:
            assert len(reopened.studies.instances_of("1.2.3")) == 8
            [row] = reopened.database.query("select instance_count from studies")
            assert row["instance_count"] == 8
        finally:
            reopened.close()
    finally:
        stores.close()


def test_works_queued_behind_a_commit_share_the_next_one_and_a_failure_stays_its_own(tmp_path: Path) -> None:
    stores = Stores.open(tmp_path / "db.sqlite")
    part = stores.studies
    commits: list[str] = []
    part._conn.set_trace_callback(lambda sql: commits.append(sql) if sql.strip().upper() == "COMMIT" else None)
    outcomes: dict[str, object] = {}

    def ok(name: str) -> None:
        def work(db):  # type: ignore[no-untyped-def]
            db.execute("insert into trash (path, at) values (?, 0)", [name])
            return name
        outcomes[name] = part._grouped(work)

    def bad() -> None:
        def work(db):  # type: ignore[no-untyped-def]
            db.execute("insert into trash (path, at) values ('bad', 0)")
            raise ValueError("this one fails")
        with pytest.raises(ValueError, match="this one fails"):
            part._grouped(work)
        outcomes["bad"] = "raised"

    try:
        with part._lock:  # a commit in progress: the three queue behind it
            threads = [threading.Thread(target=ok, args=("a",)), threading.Thread(target=bad),
                       threading.Thread(target=ok, args=("b",))]
            for t in threads:
                t.start()
            deadline = time.monotonic() + 10
            while len(part._pending) < 3 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert len(part._pending) == 3
        for t in threads:
            t.join(10)
        assert outcomes == {"a": "a", "b": "b", "bad": "raised"}
        assert len(commits) == 1  # one commit (one fsync) for the three
        assert {row["path"] for row in stores.database.query("select path from trash")} == {"a", "b"}
    finally:
        stores.close()
