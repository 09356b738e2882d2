"""Fuzzing with atheris (coverage-guided, libFuzzer) over what strangers and admins hand the node:
the bytes of a received dataset (read_identity), the text of a rules file (the rule loader) and the
patient and study values that go into HL7 results. See tests/fuzz/targets.py for each contract.

In the normal suite each target runs a fixed number of inputs with a fixed seed (a few seconds);
`make test-long` sets FUZZ_SECONDS to fuzz each target that long. Every input that once broke a
target is committed under tests/fuzz/crashes/TARGET/ and replayed here.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_charset_files, get_testdata_file
from pydicom.filebase import DicomFileLike
from pydicom.filewriter import write_dataset

from tests.fuzz.targets import TARGETS, TRANSFER_SYNTAXES

REPO = Path(__file__).resolve().parents[2]
CRASHES = Path(__file__).resolve().parent / "crashes"
RUNS = {"read_identity": 3000, "rules": 3000, "hl7": 200}  # inputs per target in the normal suite (HL7: ~25 per second)
SEED_FILES = ("CT_small.dcm", "MR_small.dcm", "rtplan.dcm", "ExplVR_BigEnd.dcm", "SC_rgb.dcm", "test-SR.dcm",
              "chrH31.dcm", "chrFrenMulti.dcm", "image_dfl.dcm")


def _dataset_bytes(name: str, syntax_index: int) -> bytes:
    """A real file's header (no pixel data) encoded as a peer sends it in transfer syntax `syntax_index`."""
    path = get_testdata_file(name, download=False) or next(iter(get_charset_files(name)), None)
    assert path is not None, name
    dataset = dcmread(path, stop_before_pixels=True, force=True)
    syntax = TRANSFER_SYNTAXES[syntax_index]
    buffer = io.BytesIO()
    stream = DicomFileLike(buffer)
    stream.is_little_endian = syntax.is_little_endian
    stream.is_implicit_VR = syntax.is_implicit_VR
    write_dataset(stream, dataset)
    data = buffer.getvalue()
    if syntax.is_deflated:
        compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
        data = compressor.compress(data) + compressor.flush()
    return bytes([syntax_index]) + data


def seed_corpus(target: str, folder: Path) -> Path:
    """Starting inputs for a target: real headers in every syntax, the shipped rules, a few HL7 draws."""
    folder.mkdir(parents=True, exist_ok=True)
    if target == "read_identity":
        for name in SEED_FILES:
            for index in range(len(TRANSFER_SYNTAXES)):
                (folder / f"{name}.{index}").write_bytes(_dataset_bytes(name, index))
    elif target == "rules":
        for path in sorted((REPO / "rules").glob("*.yaml")):
            (folder / path.name).write_bytes(path.read_bytes())
        (folder / "empty.yaml").write_bytes(b"")
        (folder / "list.yaml").write_bytes(b"rules:\n  - name: a\n    series: {Modality: CT}\n    models: [brain-mr-demo]\n")
    else:
        for size in (0, 16, 64, 256, 1024):
            (folder / f"draw-{size}").write_bytes(bytes((i * 37 + size) % 256 for i in range(size)))
    return folder


def run_fuzzer(target: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    seconds = os.environ.get("FUZZ_SECONDS")
    budget = [f"-max_total_time={int(seconds)}"] if seconds else [f"-runs={RUNS[target]}"]
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    command = [sys.executable, "-m", "tests.fuzz.run_atheris", target, *budget, "-seed=1", "-max_len=8192",
               "-timeout=20", "-rss_limit_mb=4096", f"-artifact_prefix={artifacts}/",
               str(tmp_path / "corpus"), str(seed_corpus(target, tmp_path / "seeds"))]
    (tmp_path / "corpus").mkdir()
    limit = int(seconds) * 2 + 300 if seconds else 600
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=limit, check=False,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))})


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_fuzz_target_survives(target: str, tmp_path: Path) -> None:
    done = run_fuzzer(target, tmp_path)
    crashes = sorted((tmp_path / "artifacts").glob("*"))
    tail = "\n".join((done.stdout + done.stderr).splitlines()[-40:])
    assert done.returncode == 0 and not crashes, (
        f"atheris found a crash in {target}: {[str(c) for c in crashes]} (commit it under "
        f"tests/fuzz/crashes/{target}/ with the fix)\n{tail}")
    assert "Done" in done.stderr or "DONE" in done.stderr, tail  # it really ran its inputs


CRASH_INPUTS = sorted(p for p in CRASHES.glob("*/*") if p.is_file()) if CRASHES.is_dir() else []


@pytest.mark.parametrize("path", CRASH_INPUTS, ids=[f"{p.parent.name}/{p.name}" for p in CRASH_INPUTS])
def test_committed_crash_inputs_no_longer_crash(path: Path) -> None:
    TARGETS[path.parent.name](path.read_bytes())


def test_crash_folders_name_targets() -> None:
    folders = {p.name for p in CRASHES.iterdir() if p.is_dir()} if CRASHES.is_dir() else set()
    assert folders <= set(TARGETS), folders
