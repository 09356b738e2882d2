"""`dicom-ai demo`: a local Orthanc, the node and a handful of studies, to see the product work."""
