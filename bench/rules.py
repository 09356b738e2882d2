"""Rules replay: the console's "replay this draft over the last N days" with the shipped rules
(rules/*.yaml) over N stored studies, each a single-image study whose header is on disk as the node
keeps it (a small header-only file: replay reads headers with stop_before_pixels, never pixels).
The draft widens the chest rule to hands, so every hand radiograph changes routing. Target: 10,000
studies in under 10 s (issue 13).

Standalone: `PYTHONPATH=. .venv/bin/python -m bench.rules [N]`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian

from dicom_ai.route.drafts import replay_draft
from dicom_ai.store import Spool, Stores

log = logging.getLogger(__name__)

RULES = Path(__file__).resolve().parents[1] / "rules"
DAYS = 30
CHEST_RULE = "chest-radiograph.yaml"
CHEST_BODY_PARTS = "'(?i)^(CHEST|THORAX)$'"
# (modality, SOP Class UID, body part, rows): routed by each shipped rule, and a hand CR routed by none.
KINDS = (("CR", "1.2.840.10008.5.1.4.1.1.1", "CHEST", 2048), ("CR", "1.2.840.10008.5.1.4.1.1.1", "HAND", 2048),
         ("CT", "1.2.840.10008.5.1.4.1.1.2", "HEAD", 512), ("MR", "1.2.840.10008.5.1.4.1.1.4", "BRAIN", 256),
         ("MG", "1.2.840.10008.5.1.4.1.1.1.2", "BREAST", 3328), ("ES", "1.2.840.10008.5.1.4.1.1.77.1.1", "COLON", 1080))


def _header(uid: str, index: int, kind: tuple[str, str, str, int]) -> Dataset:
    """The header a modality sends (no pixel data): what the rules test and what a PACS fills in."""
    modality, sop_class, body_part, rows = kind
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = UID(sop_class)
    ds.file_meta.MediaStorageSOPInstanceUID = UID(uid + ".1")
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, uid + ".1"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = uid, uid + ".2"
    ds.PatientID, ds.PatientName, ds.PatientSex, ds.PatientBirthDate = f"P{index:06d}", f"Bench^{index}", "F", "19600101"
    ds.AccessionNumber, ds.StudyID, ds.SeriesNumber, ds.InstanceNumber = f"A{index}", "1", 1, 1
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20261130"
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
    ds.Modality, ds.BodyPartExamined, ds.StudyDescription = modality, body_part, f"{modality} {body_part}"
    ds.SeriesDescription, ds.Manufacturer, ds.InstitutionName = f"{body_part} series", "Bench", "Bench Hospital"
    ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored, ds.HighBit = rows, rows, 16, 12, 11
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PixelRepresentation = 1, "MONOCHROME2", 0
    if modality == "CR":
        ds.ViewPosition = "PA"
    if modality == "ES":
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 3, "RGB", 8, 8, 7
    return ds


def fill(stores: Stores, spool: Spool, studies: int) -> dict[str, int]:
    """`studies` single-image studies over the last DAYS days, kinds in turn; their count per kind."""
    now, per_kind = time.time(), {f"{k[0]} {k[2]}": 0 for k in KINDS}
    conn = stores.database.connect()
    conn.execute("begin")
    for i in range(studies):
        uid, kind = f"1.2.826.0.1.3680043.10.2.{i}", KINDS[i % len(KINDS)]
        at = now - (i / studies) * (DAYS - 1) * 86400
        folder = spool.studies / uid
        folder.mkdir(parents=True)
        path = folder / "1.dcm"
        _header(uid, i, kind).save_as(path, enforce_file_format=True)
        per_kind[f"{kind[0]} {kind[2]}"] += 1
        conn.execute("insert into studies (study_instance_uid, patient_id, accession_number, state, first_received_at,"
                     " last_received_at, completed_at, processed_at, instance_count) values (?,?,?,'done',?,?,?,?,1)",
                     [uid, f"P{i:06d}", f"A{i}", at - 5, at, at + 10, at + 15])
        conn.execute("insert into instances (sop_instance_uid, sop_class_uid, series_instance_uid, study_instance_uid,"
                     " modality, path, size, calling_aet, received_at, receive_count) values (?,?,?,?,?,?,?,?,?,1)",
                     [uid + ".1", kind[1], uid + ".2", uid, kind[0], str(path), path.stat().st_size, "BENCH", at])
    conn.execute("commit")
    return per_kind


def run(workdir: Path, studies: int) -> dict[str, Any]:
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    rules_dir = workdir / "rules"
    shutil.copytree(RULES, rules_dir)
    stores, spool = Stores.open(workdir / "dicom-ai.sqlite"), Spool(workdir / "spool")
    started = time.monotonic()
    per_kind = fill(stores, spool, studies)
    log.info("rules replay: %d studies written in %.0f s", studies, time.monotonic() - started)
    text = (rules_dir / CHEST_RULE).read_text()
    assert CHEST_BODY_PARTS in text, f"{CHEST_RULE} no longer limits body parts with {CHEST_BODY_PARTS}"
    draft = text.replace(CHEST_BODY_PARTS, "'(?i)^(CHEST|THORAX|HAND)$'")
    load = os.getloadavg()[0]
    started = time.perf_counter()
    diff = replay_draft(stores, spool, rules_dir, CHEST_RULE, draft, days=DAYS)
    seconds = time.perf_counter() - started
    assert diff.studies == studies and len(diff.changes) == per_kind["CR HAND"], (diff.studies, len(diff.changes))
    stores.close()
    shutil.rmtree(workdir, ignore_errors=True)
    return {"studies": studies, "changed": len(diff.changes), "replay_s": seconds, "load_average": load}


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    print(json.dumps(run(Path("/tmp/bench-rules"), count), indent=2))
