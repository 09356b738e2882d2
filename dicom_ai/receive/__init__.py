"""receive: the DICOM C-STORE / C-ECHO service class provider."""
