"""The carriers: every way a result or a priority leaves the node, one module each, by `Carrier`.

A priority carrier module has `build(publication, settings) -> OutboxEntry | None` (None when the
settings do not enable it, or the result's level does not call for it) and `deliver(item, context)`,
which raises DeliveryError when the item must be retried; carriers whose message can follow a
priority change (an override) also have `rebuild(previous_payload, study_uid, priority, settings)`.
The result carriers (DICOM by C-STORE, STOW by DICOMweb) build one entry per result file
(`build_results`) and deliver in batches (`deliver_batch(destination, items, context, answered)`,
one association or request for many files, each file's outcome reported as soon as it is known).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING

from dicom_ai.domain import Carrier, Finding, ModelInfo, PriorityDecision
from dicom_ai.send.carriers import dicom, email, hl7, mwl, orthanc_metadata, stow, webhook
from dicom_ai.send.carriers.orthanc_metadata import OrthancFlags

if TYPE_CHECKING:
    from dicomweb_client.api import DICOMwebClient
    from pydicom import Dataset

    from dicom_ai.config import Settings

# In the order a study's messages are built and delivered: the PACS's own metadata first.
PRIORITY_CARRIERS: tuple[ModuleType, ...] = (orthanc_metadata, mwl, hl7, webhook, email)
# The result objects' carriers, delivered in batches: C-STORE first, then STOW-RS.
RESULT_CARRIERS: tuple[ModuleType, ...] = (dicom, stow)
CARRIERS: dict[Carrier, ModuleType] = {module.CARRIER: module for module in (*RESULT_CARRIERS, *PRIORITY_CARRIERS)}


@dataclass(frozen=True, eq=False)
class Publication:
    """What the priority carriers say about one study's result."""

    study_instance_uid: str
    header: Dataset  # the study's patient/study attributes (a series header)
    priority: PriorityDecision  # as published: a radiologist's override already applied
    findings: tuple[Finding, ...]
    models: tuple[ModelInfo, ...]


@dataclass
class DeliveryContext:
    """What deliveries share: the settings, and clients kept open between items."""

    settings: Settings
    orthanc_client: Callable[[str], OrthancFlags] | None = None
    _orthanc: dict[str, OrthancFlags] = field(default_factory=dict)
    _stow: dict[str, DICOMwebClient] = field(default_factory=dict)

    def orthanc(self, url: str) -> OrthancFlags:
        """The Orthanc REST client for `url`, made once."""
        if url not in self._orthanc:
            factory = self.orthanc_client or (
                lambda u: OrthancFlags(u, self.settings.orthanc_user, self.settings.orthanc_password))
            self._orthanc[url] = factory(url)
        return self._orthanc[url]

    def stow(self, url: str) -> DICOMwebClient:
        """The DICOMweb client for `url` (its HTTP session kept between batches), made once."""
        if url not in self._stow:
            self._stow[url] = stow.client(url, self.settings)
        return self._stow[url]
