"""Receive throughput: our durable SCP vs storescp vs Orthanc, fed by the same storescu, interleaved per round;
and the same node taking the same files by STOW-RS (sent by curl), with the same durability."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from bench.corpus import CorpusSpec
from bench.procs import RECEIVERS, BenchError, peak_rss_mb, running
from bench.stats import median

log = logging.getLogger(__name__)

ROUNDS = 3
STOW = "dicom-ai STOW-RS"  # the node taking the corpus by DICOMweb STOW-RS (bench/procs.OursStowReceiver)


def _chunks(files: list[Path], parts: int) -> list[list[Path]]:
    return [files[i::parts] for i in range(parts) if files[i::parts]]


def measure_once(receiver_name: str, files: list[Path], workdir: Path, nodelay: bool, associations: int) -> dict[str, Any]:
    """Start a fresh receiver, send the files over `associations` storescu processes, stop it."""
    cls = RECEIVERS[receiver_name]
    receiver = cls(workdir, nodelay=nodelay, fork=associations > 1)
    with running(receiver):
        seconds = receiver.send(_chunks(files, associations), nodelay)
        rss = peak_rss_mb(receiver.pid)
        stored = receiver.stored()
    if stored != len(files):
        raise BenchError(f"{receiver_name} stored {stored} of {len(files)} instances")
    size = sum(f.stat().st_size for f in files)
    return {"seconds": seconds, "instances": len(files), "bytes": size,
            "inst_per_s": len(files) / seconds, "mb_per_s": size / seconds / 1e6, "peak_rss_mb": rss}


def run_matrix(
    cases: list[tuple[CorpusSpec, list[Path], bool, int, tuple[str, ...]]], workdir: Path, rounds: int = ROUNDS
) -> list[dict[str, Any]]:
    """Each case = (corpus, files, nodelay, associations, receivers). Rounds interleave every case and receiver,
    rotating the receiver order so none always runs first (warm page cache, CPU frequency)."""
    raw: list[dict[str, Any]] = []
    for rnd in range(rounds):
        for spec, files, nodelay, associations, receivers in cases:
            order = list(receivers[rnd % len(receivers):] + receivers[: rnd % len(receivers)])
            for name in order:
                started = time.monotonic()
                row = measure_once(name, files, workdir / f"{name}-r{rnd}", nodelay, associations)
                row.update(corpus=spec.name, receiver=name, nodelay=nodelay, associations=associations, round=rnd)
                raw.append(row)
                log.info("round %d %s %s nodelay=%s x%d: %.1f inst/s %.0f MB/s rss %.0f MB (%.1f s)", rnd, spec.name,
                         name, nodelay, associations, row["inst_per_s"], row["mb_per_s"], row["peak_rss_mb"],
                         time.monotonic() - started)
    return raw


def summarise(raw: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Median per (corpus, nodelay, associations, receiver), with ratios ours/peer computed per round, then medianed."""
    keys = sorted({(r["corpus"], r["nodelay"], r["associations"]) for r in raw}, key=lambda k: (not k[1], k[2], k[0]))
    out: list[dict[str, Any]] = []
    for corpus, nodelay, associations in keys:
        rows = [r for r in raw if (r["corpus"], r["nodelay"], r["associations"]) == (corpus, nodelay, associations)]
        names = sorted({r["receiver"] for r in rows}, key=list(RECEIVERS).index)
        for name in names:
            mine = [r for r in rows if r["receiver"] == name]
            entry: dict[str, Any] = {
                "corpus": corpus, "nodelay": nodelay, "associations": associations, "receiver": name,
                "instances": mine[0]["instances"], "rounds": len(mine),
                "inst_per_s": median([r["inst_per_s"] for r in mine]),
                "mb_per_s": median([r["mb_per_s"] for r in mine]),
                "peak_rss_mb": median([r["peak_rss_mb"] for r in mine]),
            }
            ours = {r["round"]: r["seconds"] for r in rows if r["receiver"] == "dicom-ai"}
            if name == STOW:  # the same node by STOW-RS: C-STORE time / STOW-RS time, >1: STOW-RS is faster
                ratios = [ours[r["round"]] / r["seconds"] for r in mine if r["round"] in ours]
                entry["stow_over_cstore"] = median(ratios) if ratios else None
            elif name != "dicom-ai":
                ratios = [r["seconds"] / ours[r["round"]] for r in mine if r["round"] in ours]
                entry["ours_over_peer"] = median(ratios) if ratios else None  # >1: we are faster
            out.append(entry)
    return out
