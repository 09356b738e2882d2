"""The node as processes (dicom_ai/procs/): receive beside the peers with 1 and 4 associations, receive while
the workers run the CT model, and studies/s with 1 and 2 workers.

    BENCH_SCALE=0.4 .venv/bin/python -m bench.scaling [--receive]   # --receive: only the receive comparison

- receive: bench/receive.run_matrix on the CT corpus, dicom-ai (default workers) / storescp / Orthanc, x1 and x4;
- receive_busy: one node (stable_after 1 s); the CT corpus received idle, then again while the workers
  process a backlog of head CT studies (sent before, complete before the timed send starts); the ratio
  busy/idle of inst/s, with how many studies were still waiting at the end of the busy send (> 0: the
  workers were busy throughout);
- workers: studies/s for chest CR and head CT demo studies (phantom_dicom) with 1 and 2 workers: all studies
  are sent inside one quiet window so they complete together; studies / (last processed - first completed),
  from the node's own timestamps.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sqlite3
import sys
import time
from contextlib import closing
from pathlib import Path
from typing import Any

from pydicom.uid import generate_uid

from bench import receive
from bench.corpus import FULL_SPECS, CorpusSpec, bench_scale, generate
from bench.procs import BenchError, OursReceiver, peak_rss_mb, running, send
from dicom_ai.train.phantom_dicom import write_chest_cr_study, write_ct_volume_study

log = logging.getLogger(__name__)

WORKDIR = Path(__file__).resolve().parent.parent / ".state" / "bench-scaling"
CT_SHAPE = (64, 256, 256)  # the head CT model's stream (bench/turnaround_ct.py's larger shape)
DONE_TIMEOUT = 600.0


class ConfiguredNode(OursReceiver):
    """`dicom-ai serve` with more settings (workers, stable_after)."""

    def __init__(self, workdir: Path, extra: dict[str, str]) -> None:
        super().__init__(workdir, nodelay=True)
        self.extra = extra

    def settings(self) -> dict[str, str]:
        return dict(self.extra)

    def database(self) -> Path:
        return self.workdir / "home" / "dicom-ai.sqlite"


def _query(database: Path, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(database, timeout=30)) as db:
        return db.execute(sql, params).fetchall()


def _wait_states(node: ConfiguredNode, uids: list[str], states: tuple[str, ...], timeout: float = DONE_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    marks = ", ".join("?" * len(uids))
    while time.monotonic() < deadline:
        [(n,)] = _query(node.database(), f"select count(*) from studies where study_instance_uid in ({marks})"
                        f" and state in ({', '.join('?' * len(states))})", (*uids, *states))
        if n == len(uids):
            return
        time.sleep(0.2)
    raise BenchError(f"studies not {states} after {timeout:.0f} s:\n{node.log_path.read_text()[-3000:]}")


def _studies(kind: str, folder: Path, count: int) -> tuple[list[Path], list[str]]:
    files: list[Path] = []
    uids: list[str] = []
    for n in range(count):
        uid = generate_uid()
        if kind == "chest CR":
            made = write_chest_cr_study(folder / str(n), seed=n, finding=bool(n % 2), patient_id=f"BENCH-{n}",
                                        study_instance_uid=uid)
        else:
            made = write_ct_volume_study(folder / str(n), seed=n, finding=bool(n % 2), shape=CT_SHAPE,
                                         patient_id=f"BENCH-{n}", study_instance_uid=uid)
        files += made
        uids.append(uid)
    return files, uids


def receive_busy(workdir: Path, ct_files: list[Path], backlog: int) -> dict[str, Any]:
    """CT receive into an idle node, then into the same node while its workers process `backlog` head CT studies;
    the busy/idle ratio. Each send is a CT corpus of its own (new UIDs), so neither replaces stored instances."""
    stream, uids = _studies("head CT", workdir / "stream", backlog)
    ct = FULL_SPECS[0]
    busy_files = generate(CorpusSpec(ct.name, ct.sop_class_uid, ct.modality, ct.rows, ct.columns, len(ct_files)),
                          workdir / "corpus-busy")
    os.sync()  # written just now: flushing them must not fall into the timed sends (an fsync of ours waits for it)
    # The first node never completes a study (stable_after one day): the idle send, then the backlog. Served again,
    # every study still arriving waits stable_after once more, so the whole backlog becomes complete at once and
    # the workers have all of it to do while the timed busy send runs.
    first = ConfiguredNode(workdir / "node", {"DICOM_AI_STABLE_AFTER": "86400", "DICOM_AI_HTTP_PORT": "0"})
    try:
        first.start()
        idle = send([ct_files], first.port, first.ae, nodelay=True)
        send([stream], first.port, first.ae, nodelay=True)
    finally:
        first.stop()
    node = ConfiguredNode(workdir / "node", {"DICOM_AI_STABLE_AFTER": "2", "DICOM_AI_HTTP_PORT": "0"})
    pending = ("receiving", "complete", "processing")
    marks = ", ".join("?" * len(uids))
    with running(node):
        _wait_states(node, uids[:1], ("processing", "done", "no_match", "failed"), 60)
        [(waiting_at_start,)] = _query(node.database(), f"select count(*) from studies where state in (?, ?, ?)"
                                       f" and study_instance_uid in ({marks})", (*pending, *uids))
        busy = send([busy_files], node.port, node.ae, nodelay=True)
        [(waiting,)] = _query(node.database(), f"select count(*) from studies where state in (?, ?, ?)"
                              f" and study_instance_uid in ({marks})", (*pending, *uids))
        rss = peak_rss_mb(node.pid)
    n = len(ct_files)
    return {"instances": n, "idle_inst_per_s": n / idle, "busy_inst_per_s": n / busy, "busy_over_idle": idle / busy,
            "backlog_studies": backlog, "backlog_waiting_at_start": waiting_at_start,
            "studies_waiting_at_end": waiting, "receiver_peak_rss_mb": rss}


def studies_per_second(workdir: Path, kind: str, count: int, workers: int) -> dict[str, Any]:
    """Studies/s of `workers` workers on studies that all become complete at the same moment: they are received
    by a node that never completes them (stable_after one day), which stops; the same home is then served with
    stable_after 2 s, and after a restart every study still arriving waits stable_after again, so they all
    complete together, when the workers are already loaded. Otherwise the rate is the arrival rate of the studies
    (a multi-instance study completes stable_after after its own last instance)."""
    files, uids = _studies(kind, workdir / f"{kind}-{workers}", count)
    os.sync()
    home = workdir / f"node-{kind}-{workers}"
    receiving = ConfiguredNode(home, {"DICOM_AI_STABLE_AFTER": "86400", "DICOM_AI_HTTP_PORT": "0",
                                      "DICOM_AI_WORKERS": "1"})
    try:
        receiving.start()
        send([files], receiving.port, receiving.ae, nodelay=True)
    finally:
        receiving.stop()
    node = ConfiguredNode(home, {"DICOM_AI_STABLE_AFTER": "2", "DICOM_AI_HTTP_PORT": "0",
                                 "DICOM_AI_WORKERS": str(workers)})
    with running(node):
        _wait_states(node, uids, ("done", "no_match", "failed"))
        marks = ", ".join("?" * len(uids))
        [(first, last_completed, last)] = _query(
            node.database(), f"select min(completed_at), max(completed_at), max(processed_at) from studies"
            f" where study_instance_uid in ({marks})", tuple(uids))
        states = _query(node.database(), f"select state, count(*) from studies where study_instance_uid in ({marks})"
                        " group by state", tuple(uids))
    return {"kind": kind, "workers": workers, "studies": count, "seconds": last - first,
            "completion_spread_s": last_completed - first, "studies_per_s": count / (last - first),
            "states": dict(states)}


def _ct_receive(workdir: Path, factor: float) -> tuple[list[Path], dict[str, Any]]:
    """The receive comparison on the CT corpus (x1 and x4, every receiver); the corpus stays for more measures."""
    ct = FULL_SPECS[0]
    count = max(50, round(ct.count * factor))
    spec = CorpusSpec(ct.name, ct.sop_class_uid, ct.modality, ct.rows, ct.columns, count)
    files = generate(spec, workdir / "corpus")
    os.sync()
    receivers: tuple[str, ...] = ("dicom-ai", "dicom-ai one process", "storescp", "Orthanc")
    cases = [(spec, files, True, 1, receivers), (spec, files, True, 4, receivers)]
    raw = receive.run_matrix(cases, workdir / "runs", rounds=max(1, round(3 * factor)))
    return files, {"receive": receive.summarise(raw), "receive_raw": raw}


def receive_only(workdir: Path, factor: float) -> dict[str, Any]:
    """Only the receive comparison: the quick check while tuning receive."""
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    try:
        return _ct_receive(workdir, factor)[1]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def processes(workdir: Path, ct_files: list[Path], factor: float) -> dict[str, Any]:
    """What `make bench` adds to its receive matrix: receive while the workers infer, and workers 1 vs 2."""
    results: dict[str, Any] = {"receive_busy": receive_busy(workdir / "busy", ct_files, max(20, round(60 * factor)))}
    per = max(6, round(20 * factor))
    rows = [studies_per_second(workdir / "workers", kind, per, w) for kind in ("chest CR", "head CT") for w in (1, 2)]
    for kind in ("chest CR", "head CT"):
        one, two = (next(r for r in rows if r["kind"] == kind and r["workers"] == w) for w in (1, 2))
        two["speed_up"] = two["studies_per_s"] / one["studies_per_s"]
    results["workers"] = rows
    results["load_average"] = os.getloadavg()[0]
    return results


def run(workdir: Path, factor: float) -> dict[str, Any]:
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    try:
        files, results = _ct_receive(workdir, factor)
        return results | processes(workdir, files, factor)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    factor = bench_scale()
    results = receive_only(WORKDIR, factor) if "--receive" in sys.argv else run(WORKDIR, factor)
    print(json.dumps({k: v for k, v in results.items() if k != "receive_raw"}, indent=2))
    for row in results["receive"]:
        log.info("%s x%d %s: %.0f inst/s, rss %.0f MB, ours/peer %s", row["corpus"], row["associations"],
                 row["receiver"], row["inst_per_s"], row["peak_rss_mb"], row.get("ours_over_peer"))
    return 0


if __name__ == "__main__":
    sys.exit(main())

