"""DIMSE status codes our C-STORE handler answers with (PS3.4 Annex B.2.3, PS3.7 Annex C)."""

SUCCESS = 0x0000
# Failure: we could not make the instance durable (disk full, database unavailable). The sender
# should retry later; nothing was kept under a final name.
OUT_OF_RESOURCES = 0xA700
# Failure: the dataset lacks, or has malformed, attributes we need to file it (Study/Series/SOP
# Instance UIDs), or its SOP Instance UID differs from the one in the C-STORE request.
DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
# Failure: the dataset cannot be parsed as DICOM at all.
CANNOT_UNDERSTAND = 0xC000
