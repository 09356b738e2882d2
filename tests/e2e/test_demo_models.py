"""End to end for every demo model: a known-positive and a known-negative synthetic study of each
kind (written as DICOM by phantom_dicom, sent by dcmtk's storescu to the real Orthanc) are forwarded
to the node, routed by the rules in rules/ to its model, and come back as a valid SR plus heatmap SCs
marked as a demo: chest radiographs, mammograms by view, brain MR slices, a head CT series as one
volume (heatmaps on its most salient slices) and colour colonoscopy frames.

What the model said is read back from Orthanc, not from our database: the SR file over REST (each
image's Present/Absent and probability) and the study's AiPriority metadata. The positive study
must be found, the negative not, and their priorities must differ: a model that never finds
anything (or always does) fails here.

The seeds are studies the shipped models get right with a wide margin, measured once with the
node's own inference (ONNX fast path) and noted next to each case; a retrained model that no longer
separates them is a regression this test is meant to catch.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from orthanc_api_client import OrthancApiClient
from pydicom import Dataset, dcmread
from pydicom.uid import generate_uid

from dicom_ai.train import phantom_dicom
from tests.conftest import HttpReceiver, MllpListener
from tests.e2e.conftest import RouterProcess, wait_for
from tests.e2e.orthanc_server import OrthancServer, storescu
from tests.e2e.test_backbone import SC_CLASS, SR_CLASS, by_class, study_instances, validate_with_dciodvfy
from tests.e2e.test_triage import phantom_study

Stack = tuple[OrthancServer, RouterProcess, HttpReceiver, MllpListener]

pytestmark = pytest.mark.e2e

PRESENT, ABSENT = "52101004", "2667000"  # SNOMED CT qualitative evaluation values in our SR
MEASUREMENT_GROUP = "125007"


def write_chest_study(out_dir: Path, seed: int, finding: bool, *, patient_id: str) -> list[Path]:
    """A one-image CR study of a chest phantom (the triage test's writer)."""
    return [phantom_study(out_dir, patient_id, seed, finding)[1]]


@dataclass(frozen=True)
class Demo:
    writer: Callable[..., list[Path]]
    model: str
    meaning: str  # the finding's coded meaning in the SR
    heatmaps: int  # heatmap SCs per study (heatmaps = all)
    seed: int
    positive_priority: str  # rules/: STAT at or above stat_above, else URGENT at the model's threshold
    measured: str  # the study-level maximum probabilities at this seed, positive / negative


DEMOS: dict[str, Demo] = {
    "chest-xray": Demo(write_chest_study, "chest-xray-demo", "Lung consolidation", 1, 105, "STAT",
                       "0.995 / 0.174 (threshold 0.349, STAT 0.9)"),
    "mammography": Demo(phantom_dicom.write_mammography_study, "mammography-demo", "Mass", 4, 11, "STAT",
                        "0.997 / 0.120 (threshold 0.454, STAT 0.95)"),
    "brain-mr": Demo(phantom_dicom.write_brain_mr_study, "brain-mr-demo", "Neoplasm of brain", 5, 5, "STAT",
                     "0.990 / 0.091 (threshold 0.184, STAT 0.95)"),
    "ct-head": Demo(phantom_dicom.write_ct_volume_study, "ct-head-demo", "Intracranial hemorrhage", 3, 2, "STAT",
                    "1.000 / 0.018 (threshold 0.297, STAT 0.9)"),
    "endoscopy": Demo(phantom_dicom.write_endoscopy_study, "endoscopy-demo", "Polyp of colon", 2, 7, "URGENT",
                      "0.993 / 0.040 (threshold 0.112, no stat_above: URGENT)"),
}
MARGIN = 0.5  # the positive's top probability is at least this much above the negative's


@dataclass(frozen=True)
class Evaluation:
    meaning: str
    present: bool
    percent: float


def evaluations(sr: Dataset) -> list[Evaluation]:
    """Every measurement group's Present/Absent and probability (%), per finding, from an SR file."""
    found = []

    def items(node: Dataset) -> list[Dataset]:
        out = []
        for item in node.get("ContentSequence", []):
            out.append(item)
            out.extend(items(item))
        return out

    for group in items(sr):
        if group.ValueType != "CONTAINER" or group.ConceptNameCodeSequence[0].CodeValue != MEASUREMENT_GROUP:
            continue
        children = group.ContentSequence
        codes = {c.ConceptNameCodeSequence[0].CodeMeaning: c.ConceptCodeSequence[0].CodeValue for c in children
                 if c.ValueType == "CODE" and c.ConceptCodeSequence[0].CodeValue in (PRESENT, ABSENT)}
        numbers = {c.ConceptNameCodeSequence[0].CodeMeaning: float(c.MeasuredValueSequence[0].NumericValue)
                   for c in children if c.ValueType == "NUM"}
        found += [Evaluation(meaning, code == PRESENT, numbers[meaning]) for meaning, code in codes.items()]
    return found


def results_in_orthanc(client: OrthancApiClient, study_uid: str, heatmaps: int) -> list[dict[str, Any]] | None:
    found = study_instances(client, study_uid)
    if by_class(found, SR_CLASS) and len(by_class(found, SC_CLASS)) == heatmaps:
        return found
    return None


@pytest.mark.parametrize("kind", sorted(DEMOS))
def test_demo_model_tells_a_positive_from_a_negative_study(kind: str, node_stack: Stack, tmp_path: Path) -> None:
    orthanc, router, _, _ = node_stack
    demo = DEMOS[kind]
    client = OrthancApiClient(orthanc.http_url)
    studies: dict[bool, str] = {}
    for finding in (True, False):  # two patients: no history links the two studies
        patient = f"E2E-{kind.upper()}-{'POS' if finding else 'NEG'}-{generate_uid()[-6:]}"
        files = demo.writer(tmp_path / f"in-{finding}", seed=demo.seed, finding=finding, patient_id=patient)
        studies[finding] = str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
        storescu(files, orthanc.dicom_port)

    reports: dict[bool, list[Evaluation]] = {}
    priorities: dict[bool, str] = {}
    for finding, study_uid in studies.items():
        what = f"the SR and {demo.heatmaps} heatmap SC(s) of the {'positive' if finding else 'negative'} {kind} study"
        instances = wait_for(what, lambda uid=study_uid: results_in_orthanc(client, uid, demo.heatmaps),
                             timeout=180, router=router)
        [sr] = by_class(instances, SR_CLASS)
        assert "DEMO" in sr["SeriesDescription"]  # marked as a demo wherever a viewer lists series
        for instance in [sr, *by_class(instances, SC_CLASS)]:
            path = tmp_path / f"{instance['ID']}.dcm"
            path.write_bytes(client.instances.get_file(instance["ID"]))  # the copy Orthanc holds
            validate_with_dciodvfy(path)
        sr_path = tmp_path / f"{sr['ID']}.dcm"
        dump = subprocess.run(["dsrdump", str(sr_path)], capture_output=True, text=True, timeout=60)
        assert dump.returncode == 0, dump.stderr
        assert demo.meaning in dump.stdout and demo.model in dump.stdout
        reports[finding] = evaluations(dcmread(sr_path))
        orthanc_id = client.studies.lookup(study_uid)
        priorities[finding] = wait_for(
            "AiPriority on the study",
            lambda oid=orthanc_id: client.studies.get_string_metadata(oid, "AiPriority", default_value=""),
            timeout=60, router=router)

    positive, negative = reports[True], reports[False]
    assert positive and negative and {e.meaning for e in positive + negative} == {demo.meaning}
    assert any(e.present for e in positive), f"{kind}: the positive study was not found ({demo.measured}): {positive}"
    assert not any(e.present for e in negative), f"{kind}: the negative study was found ({demo.measured}): {negative}"
    top_positive, top_negative = max(e.percent for e in positive), max(e.percent for e in negative)
    assert top_positive - top_negative >= MARGIN * 100, (kind, top_positive, top_negative, demo.measured)
    assert priorities == {True: demo.positive_priority, False: "ROUTINE"}, (kind, priorities, demo.measured)
    assert f"-> {demo.model} " in router.log()  # routed by its rule to its model
