"""send: deliver results (DICOM to the PACS, metadata to Orthanc) from the durable outbox."""
