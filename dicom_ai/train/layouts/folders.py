"""One class per sub-folder of images (the "ImageFolder" convention); also the base of Kvasir.

No patient ids exist in such a layout, so each image is its own group: near-identical images
of one patient can fall into different splits, and the notes say so. Colour is decided from the
content (a few images sampled), since grayscale images are often saved as RGB JPEGs.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from dicom_ai.train.layouts.files import IMAGE_SUFFIXES, has_files, require_folder, subfolders, walk_files
from dicom_ai.train.layouts.samples import Channels, LabelledSet, LayoutError, Sample

NAME = "folders"
DEFAULT_MODALITY = "OT"  # DICOM "other": the layout says nothing about how the images were made
COLOUR_PROBES = 16  # images opened to decide grayscale vs RGB


def class_folders(root: Path) -> list[Path]:
    """Sub-folders holding images directly; looks one level deeper when root wraps a single folder."""
    found = [p for p in subfolders(root) if has_files(p, IMAGE_SUFFIXES)]
    if not found:
        children = subfolders(root)
        if len(children) == 1:
            found = [p for p in subfolders(children[0]) if has_files(p, IMAGE_SUFFIXES)]
    return found


def matches(root: Path) -> bool:
    """At least two sub-folders of images."""
    return len(class_folders(root)) >= 2


def read(
    root: Path,
    *,
    modality: str = DEFAULT_MODALITY,
    channels: Channels | None = None,
    positive: Iterable[str] | None = None,
) -> LabelledSet:
    """Classes are the sorted folder names (binary with `positive`); channels from content unless given."""
    root = require_folder(root)
    folders = class_folders(root)
    if len(folders) < 2:
        raise LayoutError(f"{root}: needs at least two sub-folders of images (one per class), found {len(folders)}")
    return read_class_folders(NAME, root, folders, modality=modality, channels=channels, positive=positive)


def read_class_folders(
    layout: str,
    root: Path,
    folders: list[Path],
    *,
    modality: str,
    channels: Channels | None,
    positive: Iterable[str] | None = None,
    notes: tuple[str, ...] = (),
) -> LabelledSet:
    """Samples from class folders; with `positive`, binary: ("other", the positive names joined by '+')."""
    names = [folder.name for folder in folders]
    if positive is None:
        classes = tuple(names)
        label_of = {name: index for index, name in enumerate(names)}
    else:
        wanted = tuple(positive)
        unknown = [name for name in wanted if name not in names]
        if unknown or not wanted:
            raise LayoutError(f"{root}: positive classes {list(wanted)} must be folder names among {names}")
        classes = ("other", "+".join(wanted))
        label_of = {name: int(name in wanted) for name in names}
    samples = [
        Sample(path=path, label=label_of[folder.name], group=path.stem)
        for folder in folders
        for path in walk_files(folder, IMAGE_SUFFIXES)
    ]
    if not samples:
        raise LayoutError(f"{root}: no images in the class folders {names}")
    if channels is None:
        channels = guess_channels([s.path for s in samples])
    stems = [s.group for s in samples]
    all_notes = list(notes)
    all_notes.append("no patient ids in this layout: each image is its own group, so one patient's images may be in several splits")
    if len(set(stems)) < len(stems):
        all_notes.append(f"{len(stems) - len(set(stems))} images share a file name with another class's image: grouped together")
    return LabelledSet(
        layout=layout, root=root, classes=classes, samples=tuple(samples), dims=2, channels=channels,
        modality=modality, notes=tuple(all_notes),
    )


def guess_channels(paths: list[Path]) -> Channels:
    """3 if any of a few evenly spaced images has real colour, else 1."""
    from PIL import Image

    step = max(1, len(paths) // COLOUR_PROBES)
    for path in paths[::step][:COLOUR_PROBES]:
        try:
            with Image.open(path) as image:
                if image.mode not in ("RGB", "RGBA", "P", "CMYK", "YCbCr"):
                    continue
                image.thumbnail((64, 64))
                rgb = np.asarray(image.convert("RGB"), dtype=np.int16)
        except OSError as exc:
            raise LayoutError(f"{path}: cannot read the image: {exc}") from exc
        if np.abs(rgb - rgb.mean(axis=2, keepdims=True)).max() > 8:
            return 3
    return 1
