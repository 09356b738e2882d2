"""What a crash of the whole node left, put right before anything receives or processes: partial
uploads, purges half done, older copies replaced just before the crash, studies caught in processing.
Run once per start, by node.py (one process) or the supervisor (before any role starts)."""

from __future__ import annotations

import logging

from dicom_ai.store import Spool, Stores
from dicom_ai.store.retention import sweep_purged

log = logging.getLogger(__name__)


def recover_after_stop(stores: Stores, spool: Spool) -> None:
    strays = spool.sweep_incoming()
    if strays:
        log.warning("removed %d partial upload(s) left by an interrupted run", strays)
    sweep_purged(stores.studies, spool)
    trash = stores.studies.trash()
    if trash:  # older copies replaced just before a crash: the newer ones are recorded
        spool.remove_files(trash)
        stores.studies.empty_trash(trash)
    recovered = stores.studies.recover_interrupted()
    if recovered:
        log.warning("re-processing %d study(ies) interrupted by a stop: %s", len(recovered), ", ".join(recovered))
