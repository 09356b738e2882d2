"""Walking dataset folders as they come out of real archives: junk skipped, order stable.

Zips made on macOS carry `__MACOSX/` and `._name` resource forks that look like images by
name but are not; `.DS_Store` and other dot-files are never data.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from dicom_ai.train.layouts.samples import LayoutError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
DICOM_SUFFIXES = (".dcm", ".dicom")
MACOS_JUNK = "__MACOSX"


def is_junk(path: Path, root: Path) -> bool:
    """True for macOS archive debris and dot-files anywhere below root."""
    return any(part == MACOS_JUNK or part.startswith(".") for part in path.relative_to(root).parts)


def walk_files(root: Path, suffixes: tuple[str, ...] | None = None) -> Iterator[Path]:
    """Files below root in sorted order, junk skipped; only those ending in `suffixes` if given."""
    for path in sorted(root.rglob("*")):
        if is_junk(path, root) or not path.is_file():
            continue
        if suffixes is None or path.name.lower().endswith(suffixes):
            yield path


def subfolders(folder: Path) -> list[Path]:
    """Child folders, junk skipped, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_dir() and not is_junk(p, folder))


def has_files(folder: Path, suffixes: tuple[str, ...]) -> bool:
    """Whether folder holds (directly) at least one non-junk file ending in `suffixes`."""
    return any(
        p.is_file() and not p.name.startswith(".") and p.name.lower().endswith(suffixes) for p in folder.iterdir()
    )


def require_folder(root: Path) -> Path:
    """The dataset root as an existing folder, or LayoutError naming it."""
    root = Path(root).expanduser().absolute()  # samples keep absolute paths: the trainer may change directory
    if not root.is_dir():
        raise LayoutError(f"{root}: dataset folder not found (or not a folder)")
    return root


def stem(path: Path) -> str:
    """File name without its (possibly double, e.g. .nii.gz) suffix."""
    name = path.name
    for suffix in (".nii.gz",):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem
