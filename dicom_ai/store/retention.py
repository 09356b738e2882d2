"""Retention: a finished study's files are deleted `retention_days` after it was processed.

The node is not an archive: the PACS keeps the originals and our results. What stays here after a
purge is the record of what happened (study row, findings, results sent, events), which the
patient-history priority and the audit need; the DICOM files go. A study is purged only when it is
finished (done, no_match, failed), untouched for the retention period, and has nothing left to
send. The database forgets the files first, then they are deleted, both under the study's spool
lock, so an instance acknowledged meanwhile (which re-opens the study) is never deleted; a crash
between the two leaves files that `sweep_purged` removes at the next start.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from dicom_ai.store.studies import StudyStore
from dicom_ai.store.spool import Spool

log = logging.getLogger(__name__)

DAY = 86400.0


@dataclass(frozen=True)
class PurgeReport:
    studies: int
    files: int
    bytes_freed: int


def purge_expired(store: StudyStore, spool: Spool, retention_days: float, now: float | None = None,
                  batch: int = 200) -> PurgeReport:
    """Delete the files of every study finished more than `retention_days` ago."""
    finished_before = (time.time() if now is None else now) - retention_days * DAY
    studies = files = freed = 0
    while True:
        candidates = store.purgeable_studies(finished_before, limit=batch)
        purged_any = False
        for uid in candidates:
            with spool.study_lock(uid):
                paths = store.forget_files(uid, finished_before)
                if paths is None:
                    continue
                freed += spool.remove_files(paths)
            studies, files, purged_any = studies + 1, files + len(paths), True
        if len(candidates) < batch or not purged_any:
            break
    if studies:
        log.info("retention: deleted the files of %d study(ies) finished over %g day(s) ago: %d file(s), %.1f MB",
                 studies, retention_days, files, freed / 1e6)
    return PurgeReport(studies, files, freed)


def sweep_purged(store: StudyStore, spool: Spool) -> int:
    """At start-up, before the SCP listens: delete files a crash left behind mid-purge."""
    swept = sum(spool.remove_study_folders(uid) for uid in store.last_purged_study_uids(window=DAY))
    if swept:
        log.warning("retention: removed files of %d purged study(ies) left by an interrupted purge", swept)
    return swept
