"""The node killed with SIGKILL at random moments while a sender keeps delivering studies, as an
unlucky hospital network would do to it: at the end every instance the sender saw acknowledged is
kept, every study is done exactly once, the PACS holds one SR per study under the UID the node
recorded, and repeated deliveries are counted (each crash may repeat at most the one object whose
acknowledgement it interrupted).

DICOM_AI_TEST_KILLS sets the number of kills (20 by default; `make test-long` runs 100).
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread

from dicom_ai.train.phantom_dicom import write_brain_mr_study
from tests.conftest import require_binary
from tests.integration.node_process import NodeProcess, Pacs, current_result_uids, done_events, settled, storescu

KILLS = int(os.environ.get("DICOM_AI_TEST_KILLS", "20"))
SEED = int(os.environ.get("DICOM_AI_TEST_SEED", "20261130"))
STUDY_EVERY = 1.2  # seconds between two studies from the sender
STABLE_AFTER = 4.0


@pytest.fixture
def pacs(tmp_path: Path) -> Iterator[Pacs]:
    running = Pacs(tmp_path / "pacs")
    yield running
    running.stop()


class Sender(threading.Thread):
    """Sends each file in its own association until it is acknowledged, as a PACS retries a failed job;
    a file once acknowledged is never sent again, so a lost one would be missing at the end."""

    def __init__(self, port: int, studies: list[list[Path]]) -> None:
        super().__init__(daemon=True)
        self.port, self.studies = port, studies
        self.acknowledged: list[Path] = []
        self.refused_attempts = 0

    def run(self) -> None:
        for files in self.studies:
            for path in files:
                while not storescu(self.port, [path], timeout=30):
                    self.refused_attempts += 1
                    time.sleep(0.2)
                self.acknowledged.append(path)
            time.sleep(STUDY_EVERY)


def test_random_kills_under_load_lose_nothing_and_repeat_little(tmp_path: Path, pacs: Pacs) -> None:
    require_binary("storescu")
    chance = random.Random(SEED)
    studies = [write_brain_mr_study(tmp_path / f"study{i}", seed=200 + i, finding=i % 2 == 0, slices=3, size=(96, 96))
               for i in range(max(KILLS, 4))]
    uids = [str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID) for files in studies]
    node = NodeProcess(tmp_path / "node", pacs, stable_after=STABLE_AFTER)
    node.start()
    sender = Sender(node.port, studies)
    sender.start()
    try:
        for _ in range(KILLS):
            time.sleep(chance.uniform(0.2, 2.5))
            node.kill()
            node.start()
        sender.join(timeout=600)
        assert not sender.is_alive(), "the sender never got every file acknowledged"
        node.wait_until("every study done and sent", lambda: settled(node, uids), 300)
        time.sleep(1.0)  # anything still to be sent twice would show now
        store = node.store()
        repeats = 0
        try:
            for files in studies:  # acknowledged means kept
                for path in files:
                    held = store.studies.stored_copy(str(dcmread(path, stop_before_pixels=True).SOPInstanceUID))
                    assert held is not None and held.path.exists(), f"{path.name} was acknowledged, then lost"
            for uid in uids:
                assert done_events(store, uid) == 1, f"study {uid} was done more than once"
                counts = pacs.received(uid)
                assert set(counts) == current_result_uids(store, uid), uid  # same UIDs, nothing stale or extra
                srs = [sop for sop in counts if dcmread(pacs.store.studies.stored_copy(sop).path,
                                                        stop_before_pixels=True).Modality == "SR"]
                assert len(srs) == 1, uid
                repeats += sum(n - 1 for n in counts.values())
        finally:
            store.close()
        print(f"{KILLS} kills (seed {SEED}), {len(studies)} studies, {len(sender.acknowledged)} instances acknowledged, "
              f"{sender.refused_attempts} sends refused while down, {repeats} repeated deliveries at the PACS")
        assert repeats <= KILLS
        assert "Traceback" not in node.log()
    finally:
        node.stop()
