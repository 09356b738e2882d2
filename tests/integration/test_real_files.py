"""Every real DICOM file the installed packages ship (pydicom's test files, pydicom-data), each as its
own study, routed by a catch-all rule to the chest and brain MR models: each study ends done,
no_match or failed with a message naming the file, never 'failed unexpectedly' (a bug) and never
stuck; every result passes dciodvfy without errors."""

from __future__ import annotations

import logging
import subprocess
import time
import warnings
from pathlib import Path

import pydicom
import pytest
from pydicom import dcmread

from dicom_ai.config import Settings
from dicom_ai.domain import StudyState
from dicom_ai.infer.registry import ModelRegistry
from dicom_ai.pipeline import Pipeline
from dicom_ai.receive.scp import read_identity
from dicom_ai.route.loader import RuleWatcher
from dicom_ai.store import Spool, Store
from dicom_ai.store.database import ReceivedInstance
from tests.conftest import copy_as_new_study, require_binary

REPO = Path(__file__).resolve().parents[2]
CATCH_ALL = """\
rules:
  - name: everything
    series:
      SOPClassUID: {regex: '.*'}
    models: [chest-xray-demo, brain-mr-demo]
"""


def _installed_test_files() -> list[Path]:
    folders = [Path(pydicom.__file__).parent / "data" / "test_files"]
    try:
        import pydicom_data

        folders.append(Path(pydicom_data.__file__).parent / "data")
    except ImportError:
        pass
    return sorted(p for folder in folders for p in folder.rglob("*")
                  if p.is_file() and p.suffix.lower() in (".dcm", "") and p.stat().st_size > 0)


def _readable_copies(target: Path) -> list[Path]:
    copies = []
    for source in _installed_test_files():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                copies.append(copy_as_new_study(source, target))
        except Exception:  # not DICOM, or not writable as a file (the SCP refuses those: tested there)
            continue
    return copies


def test_every_installed_real_file_gets_a_clear_outcome(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "all.yaml").write_text(CATCH_ALL)
    settings = Settings(home=tmp_path / "home", stable_after=1.0)
    store, spool = Store(settings.database_path), Spool(settings.spool_dir)
    registry = ModelRegistry(REPO / "models")
    pipeline = Pipeline(store, spool, RuleWatcher(rules, known_models=registry.names()), registry, settings)
    copies = _readable_copies(tmp_path / "in")
    assert len(copies) > 100  # pydicom alone ships well over a hundred
    outcomes: dict[str, str] = {}
    with caplog.at_level(logging.INFO), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in copies:
            header = dcmread(path, stop_before_pixels=True)
            try:
                identity = read_identity(path, str(header.SOPInstanceUID), "TEST",
                                         str(header.file_meta.TransferSyntaxUID))
            except Exception:  # refused at the door, with a DICOM status (tests/receive)
                continue
            store.record_instance(ReceivedInstance(**{**identity.__dict__, "size": path.stat().st_size}))
            store.complete_quiet_studies(time.time() + 5)
            study_uid = pipeline.process_next()
            assert study_uid is not None
            [row] = store.studies(study_uid=study_uid)
            outcomes[path.name] = row.state
            assert row.state in (StudyState.DONE, StudyState.NO_MATCH, StudyState.FAILED), row
            if row.state == StudyState.FAILED:
                assert str(path) in (row.error or ""), row.error  # names the file
    assert "failed unexpectedly" not in caplog.text
    done = [name for name, state in outcomes.items() if state == StudyState.DONE]
    assert len(done) >= 10  # real CR/DX and MR images were read and scored
    dciodvfy = require_binary("dciodvfy")
    for result in sorted(spool.results.rglob("*.dcm")):
        run = subprocess.run([dciodvfy, str(result)], capture_output=True, text=True, timeout=60, check=False)
        errors = [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]
        assert not errors, f"{result.name}: {errors}"
    store.close()
