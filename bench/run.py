"""`make bench`: every benchmark in one run, written to bench/results/latest.json and latest.md.

Set BENCH_SCALE (default 1) to shrink corpora and batches for a quick run, e.g. BENCH_SCALE=0.1, and BENCH_ONLY
to run some parts, e.g. BENCH_ONLY=receive,processes,turnaround (the names are PARTS).
Generated corpora and receiver folders live under .state/bench (gitignored) and are removed after use.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from types import FrameType
from typing import Any

from bench import (
    console,
    fast_path,
    inference,
    ray_executor,
    receive,
    result_objects,
    rules,
    scale,
    scaling,
    turnaround,
    turnaround_ct,
    validation,
)
from bench.corpus import FULL_SPECS, CorpusSpec, bench_scale, generate, scaled
from bench.report import markdown

log = logging.getLogger("bench")

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
WORKDIR = REPO / ".state" / "bench"
NO_NODELAY_CT = 100  # CT instances sent with Nagle on (it crawls there: keep it short)
CONCURRENT = 4  # storescu processes at once
ONE_PROCESS = "dicom-ai one process"
TWO_RECEIVERS = "dicom-ai receivers=2"  # two SCP processes on the port, for the concurrent case
ACK_ONLY = "pynetdicom ack-only"  # the transport's ceiling, beside the node on CT
LOAD_RATES_PER_MIN = (30.0, 60.0)  # chest CR studies/min for the turnaround under a sustained load


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem_kb = int(next(l for l in Path("/proc/meminfo").read_text().splitlines() if l.startswith("MemTotal")).split()[1])
    except (OSError, StopIteration, ValueError):
        mem_kb = 0

    def tool(command: list[str]) -> str:
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return "missing"
        lines = (done.stdout + done.stderr).strip().splitlines()
        return lines[0].strip() if lines else "?"

    return {
        "nproc": os.cpu_count(), "cpu": cpu, "memory_gib": round(mem_kb / 2**20, 1),
        "os": platform.platform(), "python": platform.python_version(),
        "versions": {p: version(p) for p in ("torch", "monai", "pydicom", "pynetdicom", "highdicom")}
        | {"dcmtk": tool(["storescp", "--version"]), "orthanc": tool(["/usr/sbin/Orthanc", "--version"])},
        "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def _stop_on_sigterm(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


PARTS = ("receive", "processes", "turnaround", "turnaround_load", "turnaround_ct", "result_objects", "inference", "fast_path",
         "executors", "scale", "validation", "validation_turnaround", "console", "rules_replay")


def _receive_parts(results: dict[str, Any], parts: set[str], factor: float) -> None:
    """The receive matrix against the peers, then the node's processes on the same CT corpus."""
    specs = scaled(FULL_SPECS, factor)
    if "receive" not in parts:
        specs = specs[:1]  # processes needs the CT corpus only
    corpora = {s.name: (s, generate(s, WORKDIR / "corpus" / s.modality)) for s in specs}
    os.sync()  # the corpora's dirty pages must not be flushed inside a timed send (our fsyncs would wait for them)
    ct_spec, ct_files = corpora[specs[0].name]
    if "receive" in parts:
        all_receivers = ("dicom-ai", "storescp", "Orthanc")
        # CT and DX also by STOW-RS into the same node (same durability), beside its C-STORE receive.
        # CT also by the node as one process (workers = 0, the design before the process split), for the before/after.
        cases = [(s, f, True, 1, all_receivers + ((receive.STOW,) if s.modality in ("CT", "DX") else ())
                  + ((ONE_PROCESS, ACK_ONLY) if s.modality == "CT" else ()))
                 for s, f in corpora.values()]
        cases.append((ct_spec, ct_files, True, CONCURRENT, ("dicom-ai", ONE_PROCESS, TWO_RECEIVERS, "storescp", "Orthanc",
                                                            ACK_ONLY)))
        subset = ct_files[: max(10, round(NO_NODELAY_CT * factor))]
        cases.append((ct_spec, subset, False, 1, all_receivers))
        # Cost growth: the CT corpus at half its size too.
        half = ct_files[: max(10, len(ct_files) // 2)]
        half_spec = CorpusSpec(f"{ct_spec.name} (half)", ct_spec.sop_class_uid, "CT", ct_spec.rows, ct_spec.columns, len(half))
        cases.append((half_spec, half, True, 1, ("dicom-ai", "storescp")))
        raw = receive.run_matrix(cases, WORKDIR / "runs")
        results["receive_raw"] = raw
        results["receive"] = receive.summarise(raw)
    if "processes" in parts:
        results["processes"] = scaling.processes(WORKDIR / "processes", ct_files, factor)
    shutil.rmtree(WORKDIR / "corpus", ignore_errors=True)


def wanted_parts() -> set[str]:
    """BENCH_ONLY's parts (all when unset); an unknown name is an error, not a silently empty run."""
    raw = os.environ.get("BENCH_ONLY", "").strip()
    if not raw:
        return set(PARTS)
    parts = {p.strip() for p in raw.split(",") if p.strip()}
    unknown = parts - set(PARTS)
    if unknown:
        raise SystemExit(f"BENCH_ONLY: unknown part(s) {', '.join(sorted(unknown))}; the parts are {', '.join(PARTS)}")
    return parts


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for noisy in ("dicom_ai", "highdicom", "tests.e2e.orthanc_server", "pynetdicom"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    factor = bench_scale()
    started = time.monotonic()
    shutil.rmtree(WORKDIR, ignore_errors=True)
    WORKDIR.mkdir(parents=True)
    results: dict[str, Any] = {"machine": machine(), "bench_scale": factor}
    parts = wanted_parts()
    if parts != set(PARTS):
        results["parts"] = [p for p in PARTS if p in parts]
    try:
        if parts & {"receive", "processes"}:
            _receive_parts(results, parts, factor)
            log.info("receive and processes done at %.0f s", time.monotonic() - started)
        later: list[tuple[str, Callable[[], Any]]] = [
            ("turnaround", lambda: turnaround.run(WORKDIR / "turnaround", max(3, round(10 * factor)))),
            ("turnaround_load", lambda: turnaround.sustained(WORKDIR / "turnaround_load", LOAD_RATES_PER_MIN,
                                                             max(6, round(30 * factor)))),
            ("turnaround_ct", lambda: turnaround_ct.run(WORKDIR / "turnaround_ct", max(3, round(5 * factor)))),
            ("result_objects", lambda: result_objects.run(WORKDIR / "result_objects", max(3, round(5 * factor)))),
            ("inference", lambda: inference.run(WORKDIR / "inference", max(5, round(20 * factor)))),
            ("fast_path", lambda: fast_path.run(WORKDIR / "fast_path", max(5, round(20 * factor)))),
            ("executors", lambda: ray_executor.run(WORKDIR / "executors", max(6, round(40 * factor)))),
            ("scale", lambda: scale.run(WORKDIR / "scale", (max(100, round(1000 * factor)),
                                                            max(1000, round(10_000 * factor))))),
            ("validation", lambda: validation.run(WORKDIR / "validation",
                                                  max(1000, round(validation.PREDICTIONS * factor)))),
            ("validation_turnaround", lambda: validation.turnaround_with_reports(WORKDIR / "validation_turnaround",
                                                                                 max(3, round(10 * factor)))),
            ("console", lambda: console.run(WORKDIR / "console", max(1000, round(100_000 * factor)))),
            ("rules_replay", lambda: rules.run(WORKDIR / "rules_replay", max(1000, round(10_000 * factor)))),
        ]
        for name, measure in later:
            if name in parts:
                results[name] = measure()
                log.info("%s done at %.0f s", name, time.monotonic() - started)
    finally:
        shutil.rmtree(WORKDIR, ignore_errors=True)
    results["duration_s"] = time.monotonic() - started
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = "latest" if parts == set(PARTS) else "partial"  # a BENCH_ONLY run never replaces the full one
    (RESULTS / f"{stem}.json").write_text(json.dumps(results, indent=2) + "\n")
    text = markdown(results)
    (RESULTS / f"{stem}.md").write_text(text)
    sys.stdout.write(text)
    log.info("wrote %s and %s in %.0f s", RESULTS / f"{stem}.json", RESULTS / f"{stem}.md", results["duration_s"])
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        log.error("interrupted: every started process has been stopped")
        sys.exit(130)
