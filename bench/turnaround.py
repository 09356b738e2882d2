"""End-to-end turnaround: storescu -> real Orthanc -> (stable) -> `dicom-ai serve` -> SR back in Orthanc.

`measure` is the harness (one Orthanc, one node, any kinds of study); `run` is the chest CR case, one study at a
time; `sustained` sends chest CRs at steady rates (studies/min) whether or not earlier results are back.
bench/turnaround_ct.py adds head CT volumes through the same harness.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom.data import get_testdata_file

from bench.corpus import copy_as_new_study
from bench.procs import _CHILDREN, READY_TIMEOUT, BenchError, spawn, terminate
from bench.stats import median, percentile
from dicom_ai.demo.orthanc import OrthancServer, free_port
from tests.e2e.orthanc_server import storescu

log = logging.getLogger(__name__)

ORTHANC_STABLE_AGE = 1  # s, Orthanc's StableAge in this benchmark
STABLE_AFTER = 1.0  # s, our quiet time
SR_TIMEOUT = 120.0  # s per study before the benchmark gives up
POLL = 0.02  # s between REST polls

# Writes one new study under the given (empty) folder; returns its files and StudyInstanceUID.
StudyMaker = Callable[[Path, int], tuple[list[Path], str]]


@dataclass(frozen=True)
class Case:
    """One kind of study to time: `label` goes into the report, `info` into the JSON result."""

    label: str
    make: StudyMaker
    info: dict[str, Any] = field(default_factory=dict)


def _sr_arrived(orthanc: OrthancServer, study_uid: str) -> bool:
    orthanc_id = orthanc.find_study(study_uid)
    if orthanc_id is None:
        return False
    series = orthanc.get_json(f"/studies/{orthanc_id}/series")
    return any(s.get("MainDicomTags", {}).get("Modality") == "SR" for s in series)


def _chest_cr(folder: Path, _number: int) -> tuple[list[Path], str]:
    source = get_testdata_file("RG1_UNCR.dcm", download=False)
    if source is None:
        raise BenchError("RG1_UNCR.dcm is not installed (pip install pydicom-data)")
    path, study_uid = copy_as_new_study(Path(source), folder)
    return [path], study_uid


CHEST_CR = Case("chest CR studies (RG1_UNCR.dcm, new UIDs)", _chest_cr, {"kind": "chest CR", "instances": 1})


def run(workdir: Path, studies: int) -> dict[str, Any]:
    """Send `studies` chest radiographs one after another; seconds from storescu's end to the SR in Orthanc."""
    return measure(workdir, [CHEST_CR], studies)[0]


def measure(workdir: Path, cases: Sequence[Case], studies: int, settings: Mapping[str, str] | None = None
            ) -> list[dict[str, Any]]:
    """Per case, one warm-up study then `studies` counted ones, one at a time, through one Orthanc and one node
    (`settings`: more DICOM_AI_* variables for the node)."""
    with _orthanc_and_node(workdir, settings) as (orthanc, log_path, home):
        timed = [_time_case(orthanc, log_path, case, workdir / "in" / str(index), studies)
                 for index, case in enumerate(cases)]
    return [_summary(case, t, home / "dicom-ai.sqlite") for case, t in zip(cases, timed)]


def sustained(workdir: Path, rates_per_min: Sequence[float], studies: int) -> list[dict[str, Any]]:
    """Chest CR turnaround while studies arrive at a steady rate (storescu to Orthanc every 60/rate s, whether
    or not earlier SRs are back), `studies` per rate, one node and one Orthanc for all rates."""
    out: list[dict[str, Any]] = []
    with _orthanc_and_node(workdir, None) as (orthanc, log_path, home):
        for index, rate in enumerate(rates_per_min):
            t = _time_at_rate(orthanc, log_path, CHEST_CR, workdir / "rate" / str(index), studies, rate)
            out.append(_summary(CHEST_CR, t, home / "dicom-ai.sqlite")
                       | {"rate_per_min": rate, "achieved_per_min": t["achieved_per_min"],
                          "max_in_flight": t["max_in_flight"]})
    return out


@contextmanager
def _orthanc_and_node(workdir: Path, settings: Mapping[str, str] | None) -> Iterator[tuple[OrthancServer, Path, Path]]:
    router_port = free_port()
    orthanc = OrthancServer(workdir / "orthanc", router_aet="DICOM_AI", router_port=router_port,
                            stable_age=ORTHANC_STABLE_AGE)
    orthanc.start()
    assert orthanc.process is not None
    _CHILDREN.add(orthanc.process)
    home = workdir / "router"
    home.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "DICOM_AI_HOME": str(home), "DICOM_AI_HOST": "127.0.0.1", "DICOM_AI_PORT": str(router_port),
           "DICOM_AI_PACS": f"{orthanc.aet}@127.0.0.1:{orthanc.dicom_port}", "DICOM_AI_ORTHANC_URL": orthanc.http_url,
           "DICOM_AI_STABLE_AFTER": str(STABLE_AFTER), **(settings or {})}
    log_path = home / "serve.log"
    serve = spawn([str(Path(sys.executable).parent / "dicom-ai"), "serve"], env, log_path)
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        while b"dicom-ai ready" not in log_path.read_bytes():
            if serve.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"dicom-ai serve did not start:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.05)
        yield orthanc, log_path, home
    finally:
        terminate(serve)
        _CHILDREN.discard(orthanc.process)
        orthanc.stop()


def _time_at_rate(orthanc: OrthancServer, log_path: Path, case: Case, folder: Path, studies: int,
                  rate_per_min: float) -> dict[str, Any]:
    made = [case.make(folder / str(number), number) for number in range(studies + 1)]
    warm_files, warm_uid = made[0]  # warm-up, alone and not counted
    storescu(warm_files, orthanc.dicom_port, called=orthanc.aet)
    _wait_sr(orthanc, log_path, case, warm_uid, time.monotonic() + SR_TIMEOUT)
    interval = 60.0 / rate_per_min
    times: list[float] = []
    send_times: list[float] = []
    sizes: list[int] = []
    sent_wall: dict[str, float] = {}
    arrived_wall: dict[str, float] = {}
    in_flight: dict[str, float] = {}
    max_in_flight = 0
    queue = made[1:]
    first_send = next_send = time.perf_counter()
    last_send = first_send
    deadline = time.monotonic() + SR_TIMEOUT + studies * interval
    while queue or in_flight:
        if queue and time.perf_counter() >= next_send:
            files, uid = queue.pop(0)
            started = time.perf_counter()
            storescu(files, orthanc.dicom_port, called=orthanc.aet)
            last_send = time.perf_counter()
            in_flight[uid], sent_wall[uid] = last_send, time.time()
            send_times.append(last_send - started)
            sizes.append(sum(p.stat().st_size for p in files))
            next_send += interval
            max_in_flight = max(max_in_flight, len(in_flight))
        for uid in [u for u in in_flight if _sr_arrived(orthanc, u)]:
            times.append(time.perf_counter() - in_flight.pop(uid))
            arrived_wall[uid] = time.time()
        if time.monotonic() > deadline:
            raise BenchError(f"{len(in_flight)} SRs missing at {rate_per_min}/min; node log:\n{log_path.read_text()[-3000:]}")
        time.sleep(POLL)
    achieved = (studies - 1) / (last_send - first_send) * 60 if studies > 1 and last_send > first_send else rate_per_min
    log.info("sustained %.0f/min (sent at %.0f/min): p50 %.2f s, at most %d in flight", rate_per_min, achieved,
             median(times), max_in_flight)
    return {"times": times, "send_times": send_times, "sizes": sizes, "sent": sent_wall, "arrived": arrived_wall,
            "achieved_per_min": achieved, "max_in_flight": max_in_flight}


def _wait_sr(orthanc: OrthancServer, log_path: Path, case: Case, study_uid: str, deadline: float) -> None:
    while not _sr_arrived(orthanc, study_uid):
        if time.monotonic() > deadline:
            raise BenchError(f"no SR for study {study_uid} ({case.label}) after {SR_TIMEOUT:.0f} s; node log:\n"
                             f"{log_path.read_text()[-3000:]}")
        time.sleep(POLL)


def _time_case(orthanc: OrthancServer, log_path: Path, case: Case, folder: Path, studies: int) -> dict[str, Any]:
    times: list[float] = []
    send_times: list[float] = []
    sizes: list[int] = []
    sent_wall: dict[str, float] = {}
    arrived_wall: dict[str, float] = {}
    for number in range(studies + 1):  # the first study warms caches and is not counted
        files, study_uid = case.make(folder / str(number), number)
        started = time.perf_counter()
        storescu(files, orthanc.dicom_port, called=orthanc.aet)
        sent = time.perf_counter()
        sent_wall[study_uid] = time.time()
        _wait_sr(orthanc, log_path, case, study_uid, time.monotonic() + SR_TIMEOUT)
        elapsed = time.perf_counter() - sent
        arrived_wall[study_uid] = time.time()
        log.info("turnaround %s %d: %.2f s%s", case.info.get("kind", case.label), number, elapsed,
                 " (warm-up, not counted)" if number == 0 else "")
        if number:
            times.append(elapsed)
            send_times.append(sent - started)
            sizes.append(sum(p.stat().st_size for p in files))
        else:
            sent_wall.pop(study_uid)
    return {"times": times, "send_times": send_times, "sizes": sizes, "sent": sent_wall, "arrived": arrived_wall}


def _summary(case: Case, t: dict[str, Any], database: Path) -> dict[str, Any]:
    times = t["times"]
    waits = ORTHANC_STABLE_AGE + STABLE_AFTER
    return {
        **case.info, "label": case.label,
        "studies": len(times), "orthanc_stable_age_s": ORTHANC_STABLE_AGE, "stable_after_s": STABLE_AFTER,
        "study_mb": median(t["sizes"]) / 1e6, "storescu_p50_s": median(t["send_times"]),
        "raw_s": times, "p50_s": median(times), "p95_s": percentile(times, 95),
        "p50_minus_waits_s": median(times) - waits, "p95_minus_waits_s": percentile(times, 95) - waits,
        "stages_p50_s": _stages(database, t["sent"], t["arrived"]),
    }


def _stages(database: Path, sent: dict[str, float], arrived: dict[str, float]) -> dict[str, float]:
    """Where the time goes, from our database's wall-clock stamps (median over the counted studies).

    orthanc_to_us ends at the first instance; first_to_last_received is Orthanc's forwarding of the
    rest (zero for one-instance studies).
    """
    parts: dict[str, list[float]] = {"orthanc_to_us": [], "first_to_last_received": [], "quiet_to_complete": [],
                                     "complete_to_processed": [], "processed_to_sr_in_orthanc": []}
    with closing(sqlite3.connect(database)) as db:
        for uid, t_sent in sent.items():
            row = db.execute("select first_received_at, last_received_at, completed_at, processed_at from studies"
                             " where study_instance_uid = ?", [uid]).fetchone()
            if row is None or None in row:
                continue
            first, last, completed, processed = row
            parts["orthanc_to_us"].append(first - t_sent)
            parts["first_to_last_received"].append(last - first)
            parts["quiet_to_complete"].append(completed - last)
            parts["complete_to_processed"].append(processed - completed)
            parts["processed_to_sr_in_orthanc"].append(arrived[uid] - processed)
    return {k: median(v) for k, v in parts.items() if v}


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    print(json.dumps(run(Path("/tmp/bench-turnaround"), 3), indent=2))
