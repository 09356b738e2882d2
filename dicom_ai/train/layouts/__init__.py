"""Dataset layouts for `dicom-ai train`: a dataset folder -> labelled samples with patient groups.

`read_dataset(root)` detects the layout (pneumonia, kvasir, msd, rsna-mammo, kau, dicom-csv,
folders) and returns a `LabelledSet`; `split_samples` splits it by patient; `load_array` reads one
sample's pixels the way inference will see them.
"""

from __future__ import annotations

from dicom_ai.train.layouts.read import LAYOUTS, detect_layout, read_dataset
from dicom_ai.train.layouts.samples import (
    LabelledSet,
    LayoutError,
    Sample,
    SplitPlan,
    load_array,
    load_mask,
    plan_splits,
    split_samples,
)

__all__ = [
    "LAYOUTS",
    "LabelledSet",
    "LayoutError",
    "Sample",
    "SplitPlan",
    "detect_layout",
    "load_array",
    "load_mask",
    "plan_splits",
    "read_dataset",
    "split_samples",
]
