"""The node's worklist page and JSON API over a real loopback HTTP server."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from dicom_ai.domain import Priority, TurnaroundTargets
from dicom_ai.store import Stores
from dicom_ai.store.health import node_health
from dicom_ai.web.app import start_web
from tests.prioritize.test_worklist import _study


def test_page_and_api_list_studies_in_reading_order(tmp_path: Path) -> None:
    store = Stores.open(tmp_path / "db.sqlite")
    now = time.time()
    _study(store, "1.1", minutes_ago=0.02, priority=Priority.ROUTINE, now=now)
    _study(store, "1.2", minutes_ago=0.01, priority=Priority.STAT, now=now)
    _study(store, "1.3", minutes_ago=60 * 24 * 3, priority=Priority.URGENT, now=now)  # three days old
    server = start_web("127.0.0.1", 0, store.reports, TurnaroundTargets(), lambda: node_health(store.reports, tmp_path, None))
    base = f"http://127.0.0.1:{server.port}"
    try:
        entries = json.loads(urllib.request.urlopen(f"{base}/api/worklist", timeout=10).read())
        assert [e["study_instance_uid"] for e in entries] == ["1.3", "1.2", "1.1"]  # aged URGENT -> STAT, late
        assert entries[0]["priority"] == "STAT" and "URGENT target" in entries[0]["reasons"][-1]
        today = json.loads(urllib.request.urlopen(f"{base}/api/worklist?today=1", timeout=10).read())
        assert "1.3" not in [e["study_instance_uid"] for e in today]
        page = urllib.request.urlopen(f"{base}/", timeout=10).read().decode()
        assert page.index("1.3") < page.index("1.2") < page.index("1.1") and "LATE" in page
        assert "<b>Node OK</b>: 3 done; 0 send(s) pending." in page
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(f"{base}/nope", timeout=10)
        assert missing.value.code == 404
    finally:
        server.stop()
