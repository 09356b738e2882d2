"""`make bench`: every benchmark in one run, written to bench/results/latest.json and latest.md.

Set BENCH_SCALE (default 1) to shrink corpora and batches for a quick run, e.g. BENCH_SCALE=0.1.
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
    turnaround,
    turnaround_ct,
    validation,
)
from bench.corpus import FULL_SPECS, bench_scale, generate, scaled
from bench.report import markdown

log = logging.getLogger("bench")

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
WORKDIR = REPO / ".state" / "bench"
NO_NODELAY_CT = 100  # CT instances sent with Nagle on (it crawls there: keep it short)
CONCURRENT = 4  # storescu processes at once


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
    try:
        specs = scaled(FULL_SPECS, factor)
        corpora = {s.name: (s, generate(s, WORKDIR / "corpus" / s.modality)) for s in specs}
        os.sync()  # the corpora's dirty pages must not be flushed inside a timed send (our fsyncs would wait for them)
        all_receivers = ("dicom-ai", "storescp", "Orthanc")
        ct_spec, ct_files = corpora[specs[0].name]
        # CT and DX also by STOW-RS into the same node (same durability), beside its C-STORE receive.
        cases = [(s, f, True, 1, all_receivers + ((receive.STOW,) if s.modality in ("CT", "DX") else ()))
                 for s, f in corpora.values()]
        cases.append((ct_spec, ct_files, True, CONCURRENT, ("dicom-ai", "storescp")))
        subset = ct_files[: max(10, round(NO_NODELAY_CT * factor))]
        cases.append((ct_spec, subset, False, 1, all_receivers))
        # Cost growth: the CT corpus at half its size too.
        half = ct_files[: max(10, len(ct_files) // 2)]
        from bench.corpus import CorpusSpec
        half_spec = CorpusSpec(f"{ct_spec.name} (half)", ct_spec.sop_class_uid, "CT", ct_spec.rows, ct_spec.columns, len(half))
        cases.append((half_spec, half, True, 1, ("dicom-ai", "storescp")))
        raw = receive.run_matrix(cases, WORKDIR / "runs")
        results["receive_raw"] = raw
        results["receive"] = receive.summarise(raw)
        shutil.rmtree(WORKDIR / "corpus", ignore_errors=True)
        log.info("receive done at %.0f s", time.monotonic() - started)

        results["turnaround"] = turnaround.run(WORKDIR / "turnaround", max(3, round(10 * factor)))
        log.info("turnaround done at %.0f s", time.monotonic() - started)
        results["turnaround_ct"] = turnaround_ct.run(WORKDIR / "turnaround_ct", max(3, round(5 * factor)))
        log.info("CT turnaround done at %.0f s", time.monotonic() - started)
        results["result_objects"] = result_objects.run(WORKDIR / "result_objects", max(3, round(5 * factor)))
        log.info("result objects done at %.0f s", time.monotonic() - started)
        results["inference"] = inference.run(WORKDIR / "inference", max(5, round(20 * factor)))
        log.info("inference done at %.0f s", time.monotonic() - started)
        results["fast_path"] = fast_path.run(WORKDIR / "fast_path", max(5, round(20 * factor)))
        results["executors"] = ray_executor.run(WORKDIR / "executors", max(6, round(40 * factor)))
        log.info("executors done at %.0f s", time.monotonic() - started)
        log.info("fast path done at %.0f s", time.monotonic() - started)
        results["scale"] = scale.run(WORKDIR / "scale", (max(100, round(1000 * factor)), max(1000, round(10_000 * factor))))
        log.info("scale done at %.0f s", time.monotonic() - started)
        results["validation"] = validation.run(WORKDIR / "validation", max(1000, round(validation.PREDICTIONS * factor)))
        log.info("validation done at %.0f s", time.monotonic() - started)
        results["validation_turnaround"] = validation.turnaround_with_reports(WORKDIR / "validation_turnaround",
                                                                             max(3, round(10 * factor)))
        log.info("turnaround with reports done at %.0f s", time.monotonic() - started)
        results["console"] = console.run(WORKDIR / "console", max(1000, round(100_000 * factor)))
        log.info("console done at %.0f s", time.monotonic() - started)
        results["rules_replay"] = rules.run(WORKDIR / "rules_replay", max(1000, round(10_000 * factor)))
        log.info("rules replay done at %.0f s", time.monotonic() - started)
    finally:
        shutil.rmtree(WORKDIR, ignore_errors=True)
    results["duration_s"] = time.monotonic() - started
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "latest.json").write_text(json.dumps(results, indent=2) + "\n")
    text = markdown(results)
    (RESULTS / "latest.md").write_text(text)
    sys.stdout.write(text)
    log.info("wrote %s and %s in %.0f s", RESULTS / "latest.json", RESULTS / "latest.md", results["duration_s"])
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        log.error("interrupted: every started process has been stopped")
        sys.exit(130)
