"""The patient's prior studies in the PACS, by C-FIND: what a radiologist will want to compare with.

Our own database knows the AI results of studies this node processed; the PACS also knows the
studies it never saw (older exams, other modalities). Those cannot say "new" or "known", so they
add reasons, not levels. History is best effort: a PACS that does not answer never blocks a result.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from pydicom import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind  # type: ignore[attr-defined]

from dicom_ai.config import Peer
from dicom_ai.tls import ClientTls

log = logging.getLogger(__name__)

MAX_PRIORS = 100  # a patient with more studies than this: the newest are enough for reasons


class PacsHistoryError(Exception):
    """The PACS could not be asked; the message names it."""


@dataclass(frozen=True)
class PacsPrior:
    study_instance_uid: str
    study_date: str
    modalities: tuple[str, ...]
    description: str


def prior_studies(ae_title: str, peer: Peer, patient_id: str, exclude: str, timeout: float = 10,
                  tls: ClientTls | None = None) -> list[PacsPrior]:
    """Study-level C-FIND on PatientID; the current study is left out."""
    ae = AE(ae_title=ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.PatientID = patient_id
    query.StudyInstanceUID = ""
    query.StudyDate = ""
    query.ModalitiesInStudy = ""
    query.StudyDescription = ""
    assoc = ae.associate(peer.host, peer.port, ae_title=peer.aet, tls_args=tls)
    if not assoc.is_established:
        raise PacsHistoryError(f"C-FIND association with {peer} failed")
    priors: list[PacsPrior] = []
    try:
        for status, answer in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind):
            code = getattr(status, "Status", None)
            if code is None:
                raise PacsHistoryError(f"no C-FIND response from {peer}")
            if code == 0x0000:  # final: no identifier
                break
            if code not in (0xFF00, 0xFF01):
                raise PacsHistoryError(f"{peer} answered C-FIND with status 0x{code:04X}")
            if answer is None:
                continue
            uid = str(answer.get("StudyInstanceUID", ""))
            if uid and uid != exclude and len(priors) < MAX_PRIORS:
                value = answer.get("ModalitiesInStudy", "")
                modalities = [value] if isinstance(value, str) else list(value)
                priors.append(PacsPrior(uid, str(answer.get("StudyDate", "") or ""),
                                        tuple(str(m) for m in modalities if m),
                                        str(answer.get("StudyDescription", "") or "")))
    finally:
        if assoc.is_established:
            assoc.release()
    return sorted(priors, key=lambda p: p.study_date, reverse=True)


def comparison_reasons(priors: list[PacsPrior], analysed: set[str]) -> tuple[str, ...]:
    """Reasons naming the newest prior studies the AI did not analyse (for comparison)."""
    unseen = [p for p in priors if p.study_instance_uid not in analysed]
    if not unseen:
        return ()
    newest = unseen[0]
    when = f"{newest.study_date[:4]}-{newest.study_date[4:6]}-{newest.study_date[6:]}" if len(newest.study_date) == 8 \
        else "an unknown date"
    what = "/".join(newest.modalities) + " " if newest.modalities else ""
    more = f" and {len(unseen) - 1} older" if len(unseen) > 1 else ""
    return (f"prior {what}study of {when} in the PACS{more}, without AI result: compare",)
