"""The node's shared state: one SQLite database in parts by job, and the spool of DICOM files.

- studies (studies.py): a study from its first instance to its outcome;
- outbox (outbox.py): what must still be delivered, and each attempt;
- reports (reports.py): what people and monitors read;
- feedback (feedback.py): judgements, final reports received over HL7, assessments sent back;
- performance (performance.py): what the models predicted, with the truth, for evaluations and drift;
- rule versions (rule_versions.py): every activated text of a rules file;
- the spool (spool.py): received instances and our results as files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dicom_ai.store.database import Database
from dicom_ai.store.feedback import FeedbackStore
from dicom_ai.store.outbox import OutboxStore
from dicom_ai.store.performance import PerformanceStore
from dicom_ai.store.reports import Reports, StudyRow
from dicom_ai.store.rule_versions import RuleVersion, RuleVersionStore
from dicom_ai.store.spool import Spool
from dicom_ai.store.studies import StudyStore

__all__ = ["Database", "FeedbackStore", "OutboxStore", "PerformanceStore", "Reports", "RuleVersion", "RuleVersionStore",
           "Spool", "Stores", "StudyRow",
           "StudyStore"]


@dataclass(frozen=True)
class Stores:
    """The parts of one database, opened together (the node, a CLI command, a test)."""

    database: Database
    studies: StudyStore
    outbox: OutboxStore
    reports: Reports
    feedback: FeedbackStore
    performance: PerformanceStore
    rule_versions: RuleVersionStore

    @classmethod
    def open(cls, path: Path, busy_timeout: float = 30.0) -> Stores:
        database = Database(path, busy_timeout)
        return cls(database, StudyStore(database), OutboxStore(database), Reports(database), FeedbackStore(database),
                   PerformanceStore(database), RuleVersionStore(database))

    @property
    def path(self) -> Path:
        return self.database.path

    def close(self) -> None:
        self.database.close()
