"""Benchmarks for dicom-ai (`make bench`): ratios against peers measured in the same run, never lone times."""
