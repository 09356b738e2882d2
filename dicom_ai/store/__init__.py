"""The node's shared state: the SQLite database and the spool of received files."""

from dicom_ai.store.database import OutboxItem, ReceivedInstance, Store, StudyRow
from dicom_ai.store.spool import Spool

__all__ = ["OutboxItem", "ReceivedInstance", "Spool", "Store", "StudyRow"]
