"""The spool: received instances and encoded results as DICOM files, made durable before use.

Files are written under a temporary name, fsynced, renamed into place and the directory fsynced,
so a crash leaves either the old file, the new file, or a stray temporary: never half a file
under a final name.
"""

from __future__ import annotations

import filecmp
import logging
import os
import secrets
import shutil
import tempfile
import threading
import zlib
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from dicom_ai.dicom_values import is_safe_uid

if TYPE_CHECKING:
    from pydicom import Dataset

log = logging.getLogger(__name__)
_LOCK_STRIPES = 64


class SpoolError(OSError):
    """A file could not be made durable (disk full, permissions...)."""


def fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    """Where files live: incoming/ for partial uploads, studies/ for received, results/ for ours."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.incoming = root / "incoming"
        self.studies = root / "studies"
        self.results = root / "results"
        for folder in (self.incoming, self.studies, self.results):
            folder.mkdir(parents=True, exist_ok=True)
        self._locks = [threading.Lock() for _ in range(_LOCK_STRIPES)]

    def study_lock(self, study_uid: str) -> threading.Lock:
        """Held while a study's files change hands: the SCP around keep-and-record, the purge around
        forget-and-delete, so a purge never deletes an instance that was just acknowledged."""
        return self._locks[zlib.crc32(study_uid.encode()) % _LOCK_STRIPES]

    @contextmanager
    def study_locks(self, study_uids: Iterable[str]) -> Iterator[None]:
        """The locks of several studies (an instance moving between two), always taken in one order."""
        stripes = sorted({zlib.crc32(uid.encode()) % _LOCK_STRIPES for uid in study_uids})
        with ExitStack() as stack:
            for stripe in stripes:
                stack.enter_context(self._locks[stripe])
            yield

    def remove_files(self, paths: list[Path]) -> int:
        """Delete files (already forgotten by the database) and their emptied folders; returns bytes freed."""
        freed = 0
        folders = set()
        for path in paths:
            try:
                size = path.stat().st_size
                path.unlink()
            except FileNotFoundError:
                continue
            except OSError as exc:  # e.g. permissions changed by hand: say so, go on with the rest
                log.warning("cannot delete %s: %s", path, exc.strerror or exc)
                continue
            freed += size
            folders.add(path.parent)
        for folder in sorted(folders, key=lambda f: len(f.parts), reverse=True):
            for empty in (folder, folder.parent):
                if empty not in (self.studies, self.results, self.root):
                    try:
                        empty.rmdir()  # only if empty
                    except OSError:
                        pass
        return freed

    def remove_study_folders(self, study_uid: str) -> bool:
        """Delete whatever is left of a purged study (after a crash mid-purge); True if something was."""
        found = False
        for folder in (self.studies / study_uid, self.results / study_uid):
            if is_safe_uid(study_uid) and folder.is_dir():
                shutil.rmtree(folder, ignore_errors=True)
                found = True
        return found

    def instance_path(self, study_uid: str, series_uid: str, sop_uid: str) -> Path:
        return self.studies / study_uid / series_uid / f"{sop_uid}.dcm"

    def free_instance_path(self, study_uid: str, series_uid: str, sop_uid: str) -> Path:
        """Where a newly received copy goes: never over a file we hold, so the acknowledged copy stays
        intact until the database has switched to the new one (see Store.record_instance)."""
        path = self.instance_path(study_uid, series_uid, sop_uid)
        while path.exists():
            path = path.with_name(f"{sop_uid}~{secrets.token_hex(4)}.dcm")
        return path

    @staticmethod
    def same_content(a: Path, b: Path) -> bool:
        """True when two files hold the same bytes (a repeat of an instance we hold)."""
        try:
            return filecmp.cmp(a, b, shallow=False)
        except OSError:
            return False

    def discard(self, path: Path) -> None:
        """Remove a file that was never acknowledged (its commit failed): the sender retries it."""
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            log.warning("cannot remove %s: %s", path, exc.strerror or exc)

    def make_folder(self, folder: Path) -> None:
        """Create `folder` and any missing parents durably: each new folder's entry is fsynced in its
        parent, so a power cut cannot lose the study or series folder of an acknowledged file."""
        missing = []
        for candidate in (folder, *folder.parents):
            if candidate.is_dir():
                break
            missing.append(candidate)
        if not missing:
            return
        folder.mkdir(parents=True, exist_ok=True)
        for created in reversed(missing):
            fsync_directory(created.parent)

    def result_path(self, study_uid: str, sop_uid: str) -> Path:
        return self.results / study_uid / f"{sop_uid}.dcm"

    def adopt(self, temporary: Path, final: Path) -> int:
        """Make `temporary` durable and move it to `final` (same filesystem); returns its size."""
        try:
            with open(temporary, "rb+") as handle:
                os.fsync(handle.fileno())
                size = os.fstat(handle.fileno()).st_size
            self.make_folder(final.parent)
            os.replace(temporary, final)
            fsync_directory(final.parent)
        except OSError as exc:
            raise SpoolError(f"cannot store {final}: {exc.strerror or exc}") from exc
        return size

    def write_dataset(self, dataset: Dataset, final: Path) -> int:
        """Write a dataset as a DICOM file durably (used for our own results)."""
        handle, name = tempfile.mkstemp(dir=self.incoming, suffix=".dcm")
        os.close(handle)
        temporary = Path(name)
        try:
            dataset.save_as(temporary, enforce_file_format=True)
            return self.adopt(temporary, final)
        except Exception:
            temporary.unlink(missing_ok=True)
            raise

    def sweep_incoming(self) -> int:
        """Remove temporaries left by a crash (never acknowledged, so the sender retries them)."""
        removed = 0
        for stray in self.incoming.iterdir():
            stray.unlink(missing_ok=True)
            removed += 1
        return removed
