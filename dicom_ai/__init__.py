"""dicom-ai: a DICOM node that routes PACS studies to AI models and returns SR, heatmaps and priorities."""

__version__ = "0.1.0"
