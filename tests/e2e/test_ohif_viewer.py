"""What a radiologist sees of our results in a real OHIF v3 (3.13.2, the npm package's prebuilt viewer) in
headless Chromium, reading the study from Orthanc over DICOMweb.

Studies go the real way: dcmtk's storescu -> Orthanc -> the node -> SR + heatmaps back into Orthanc.
Then the viewer opens each study, the SR series is opened (OHIF shows a TID 1500 SR only in its
measurement viewport) and the region's label must be on screen (the SVG text of the viewport):
the comment and the probability the SR holds, "present" on a positive study, "absent" on a
negative one, and for a CT volume on one of its salient slices. A screenshot of each is kept
under the test's tmp dir and copied to tests/artifacts/ (git ignores it).

A second node with heatmap_objects = sc,pm sends a CT volume's heatmaps back as a Parametric Map too:
it reaches Orthanc by C-STORE like the other results, valid under dciodvfy, and OHIF lists it.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from orthanc_api_client import OrthancApiClient
from playwright.sync_api import TimeoutError as PlaywrightTimeout
from playwright.sync_api import sync_playwright
from pydicom import Dataset, dcmread
from pydicom.uid import generate_uid

from dicom_ai.train import phantom_dicom
from tests.conftest import (
    REPO,
    HttpReceiver,
    MllpListener,
    copy_as_new_study,
    free_port,
    require_binary,
    sample,
)
from tests.e2e.conftest import RouterProcess, wait_for
from tests.e2e.ohif import CHROMIUM, CHROMIUM_ARGS, OhifServer, ohif_dist
from tests.e2e.orthanc_server import OrthancServer, storescu
from tests.e2e.test_backbone import (
    SR_CLASS,
    by_class,
    study_instances,
    validate_with_dciodvfy,
)
from tests.e2e.test_triage import phantom_study

Stack = tuple[OrthancServer, RouterProcess, HttpReceiver, MllpListener]

pytestmark = pytest.mark.e2e

ARTIFACTS = REPO / "tests" / "artifacts"
RESULTS_TIMEOUT = 180.0  # s until the node's SR is in Orthanc
VIEW_TIMEOUT_MS = 90_000  # until OHIF shows the study's thumbnails, then the region's label
POLL_MS = 2000
SCREEN = {"width": 1920, "height": 1080}  # a reading-room monitor
OPEN_ATTEMPTS = 3  # opening the study again when the region's label did not come up
ATTEMPT_S = 30.0
NEXT_MEASUREMENT = "[data-cy=viewport-action-arrows-right]"
COMMENT, MEASUREMENT_GROUP = "121106", "125007"
PM_CLASS = "1.2.840.10008.5.1.4.1.1.30"  # Parametric Map Storage
THUMBNAIL = "[data-cy^=study-browser-thumbnail]"
SR_THUMBNAIL = "[data-cy=study-browser-thumbnail-no-image]"  # OHIF draws no picture for an SR series
LABELS_JS = "() => Array.from(document.querySelectorAll('svg text')).map(t => t.textContent)"
# Overlays the viewer puts up on a first visit (a guided tour, a notice): closed when present.
DISMISS = ("Skip all", "Confirm and hide")
TOUR_BACKDROP = ".shepherd-modal-is-visible"
OVERLAY_SETTLE_S = 2.0
OVERLAY_TIMEOUT_S = 20.0


@dataclass(frozen=True)
class Case:
    name: str
    study_uid: str
    expected_state: str  # "present" or "absent", as our comment says it


@dataclass(frozen=True)
class Label:
    """What OHIF writes next to a region: the comment, then 'meaning: value unit' per NUM."""

    comment: str
    first_number: str
    description: str


def without_zero_spacing(path: Path) -> Path:
    """pydicom-data's RG1_UNCR.dcm (and phantoms made from it) has PixelSpacing 0\\0: OHIF renders that black."""
    dataset = dcmread(path)
    if "PixelSpacing" in dataset and not any(float(v) for v in dataset.PixelSpacing):
        del dataset.PixelSpacing
        dataset.save_as(path, enforce_file_format=True)
    return path


def enlarged(path: Path, factor: int) -> Path:
    """The image `factor` times larger (pixel replication), the size of a real radiograph.

    OHIF 3.13 sometimes leaves an SR region undrawn on a small image without plane geometry that
    loads at once (a 672-pixel phantom: about half the openings; the 1955-pixel RG1 and a 96-pixel
    CT slice with geometry: never). Radiographs are large, so the test's phantom is too.
    """
    dataset = dcmread(path)
    pixels = np.kron(dataset.pixel_array, np.ones((factor, factor), dtype=dataset.pixel_array.dtype))
    dataset.Rows, dataset.Columns = pixels.shape
    dataset.PixelData = pixels.tobytes()
    dataset.save_as(path, enforce_file_format=True)
    return path


def label_in(sr: Dataset) -> Label:
    """The first measurement group's label lines as OHIF v3.13 formats them (NUM value with 2 decimals)."""
    def groups(node: Dataset) -> Iterator[Dataset]:
        for item in node.get("ContentSequence", []):
            if item.ValueType == "CONTAINER" and item.ConceptNameCodeSequence[0].CodeValue == MEASUREMENT_GROUP:
                yield item
            yield from groups(item)

    first = next(groups(sr))
    comment = next(i.TextValue for i in first.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == COMMENT)
    number = next(i for i in first.ContentSequence if i.ValueType == "NUM")
    value = float(number.MeasuredValueSequence[0].NumericValue)
    unit = number.MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0].CodeValue
    return Label(comment, f"{number.ConceptNameCodeSequence[0].CodeMeaning}: {value:.2f} {unit}", str(sr.SeriesDescription))


@pytest.fixture(scope="module")
def cases(node_stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Case]:
    """A positive chest radiograph (the real CR), a negative chest phantom and a positive head CT volume."""
    orthanc, router, _, _ = node_stack
    folder = tmp_path_factory.mktemp("ohif-in")
    positive = without_zero_spacing(copy_as_new_study(sample("RG1_UNCR.dcm"), folder / "cr",
                                                      PatientID=f"OHIF-POS-{generate_uid()[-6:]}"))
    negative_uid, negative = phantom_study(folder / "phantom", f"OHIF-NEG-{generate_uid()[-6:]}", 105, False)
    enlarged(without_zero_spacing(negative), 3)
    ct = phantom_dicom.write_ct_volume_study(folder / "ct", seed=2, finding=True,
                                             patient_id=f"OHIF-CT-{generate_uid()[-6:]}")
    storescu([positive, negative, *ct], orthanc.dicom_port)
    found = {
        "chest-positive": Case("chest-positive", str(dcmread(positive, stop_before_pixels=True).StudyInstanceUID),
                               "present"),
        "chest-negative": Case("chest-negative", negative_uid, "absent"),
        "ct-head-positive": Case("ct-head-positive", str(dcmread(ct[0], stop_before_pixels=True).StudyInstanceUID),
                                 "present"),
    }
    client = OrthancApiClient(orthanc.http_url)
    for case in found.values():
        wait_for(f"the SR of the {case.name} study in Orthanc",
                 lambda uid=case.study_uid: by_class(study_instances(client, uid), SR_CLASS),
                 timeout=RESULTS_TIMEOUT, router=router)
    return found


@pytest.fixture(scope="module")
def ohif(node_stack: Stack) -> Iterator[OhifServer]:
    with OhifServer(ohif_dist(), node_stack[0].http_url) as server:
        yield server


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    require_binary("chromium")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def sr_of(orthanc: OrthancServer, study_uid: str, folder: Path) -> Dataset:
    client = OrthancApiClient(orthanc.http_url)
    [sr] = by_class(study_instances(client, study_uid), SR_CLASS)
    path = folder / "sr.dcm"
    path.write_bytes(client.instances.get_file(sr["ID"]))
    return dcmread(path)


def dismiss_overlays(page: object) -> None:
    """Close the guided tour and the notice OHIF shows on a first visit; they come up a moment after the
    study list and the tour's backdrop takes every click."""
    settle = time.monotonic() + OVERLAY_SETTLE_S
    end = time.monotonic() + OVERLAY_TIMEOUT_S
    while time.monotonic() < end:
        for name in DISMISS:
            button = page.get_by_text(name, exact=True)  # type: ignore[attr-defined]
            if button.count() and button.first.is_visible():
                button.first.click()
        if time.monotonic() > settle and not page.locator(TOUR_BACKDROP).count():  # type: ignore[attr-defined]
            return
        page.wait_for_timeout(250)  # type: ignore[attr-defined]


def open_sr_in_ohif(browser: object, ohif: OhifServer, study_uid: str, want: str,
                    shot: Path) -> tuple[list[str], str, int]:
    """Open the study, open its SR series, wait until `want` is in the viewport's text; screenshot.

    Returns the viewport's SVG texts, the page's visible text and the attempts it took. On a timeout the assertion carries
    the browser console, the texts seen so far and the proxy's errors.
    """
    page = browser.new_page(viewport=SCREEN)  # type: ignore[attr-defined]
    console: list[str] = []
    page.on("console", lambda message: console.append(f"{message.type}: {message.text}"))
    page.on("pageerror", lambda error: console.append(f"pageerror: {error}"))

    def failure(what: str) -> str:
        page.screenshot(path=str(shot))
        log_path = shot.with_suffix(".console.log")
        log_path.write_text("\n".join(console))
        texts = page.evaluate(LABELS_JS)
        shown = [line for line in console if "ProtocolEngine" not in line]
        return (f"OHIF {what} (screenshot {shot}, console {log_path}); viewport texts {texts}; proxy errors "
                f"{ohif.errors[-5:]};\nconsole (end):\n" + "\n".join(shown[-25:]))

    def drawn() -> bool:
        return any(want in text for text in page.evaluate(LABELS_JS))

    try:
        deadline = time.monotonic() + VIEW_TIMEOUT_MS / 1000
        for attempt in range(1, OPEN_ATTEMPTS + 1):
            page.goto(ohif.viewer_url(study_uid))
            try:
                page.wait_for_selector(SR_THUMBNAIL, timeout=VIEW_TIMEOUT_MS)
                page.wait_for_load_state("networkidle", timeout=VIEW_TIMEOUT_MS)
            except PlaywrightTimeout as exc:
                raise AssertionError(failure(f"showed no SR series thumbnail for study {study_uid}: {exc}")) from None
            dismiss_overlays(page)
            page.locator(SR_THUMBNAIL).first.dblclick()
            # OHIF sometimes adds the region after the viewport's last render and draws it on the next;
            # a reader then steps to the finding with the viewport's ">" arrow, as done here.
            tried_until = min(deadline, time.monotonic() + ATTEMPT_S)
            while not drawn() and time.monotonic() < tried_until:
                page.wait_for_timeout(POLL_MS)
                arrow = page.locator(NEXT_MEASUREMENT)
                if not drawn() and arrow.count() and arrow.first.is_visible():
                    arrow.first.click()
            if drawn():
                break
            console.append(f"-- attempt {attempt}: {want!r} not drawn, opening the study again --")
        else:
            raise AssertionError(failure(f"did not draw {want!r} for study {study_uid} in {OPEN_ATTEMPTS} attempts"))
        page.wait_for_timeout(500)  # let the image finish rendering under the label for the screenshot
        page.screenshot(path=str(shot))
        crashes = [line for line in console if "pageerror" in line or "Cannot read properties" in line]
        assert not crashes, failure(f"logged errors for study {study_uid}: {crashes}")
        return page.evaluate(LABELS_JS), page.evaluate("document.body.innerText"), attempt
    finally:
        page.close()


def keep(shot: Path) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    kept = ARTIFACTS / shot.name
    shutil.copyfile(shot, kept)
    return kept


@pytest.mark.parametrize("name", ["chest-positive", "chest-negative", "ct-head-positive"])
def test_ohif_draws_the_finding_on_the_image(name: str, cases: dict[str, Case], ohif: OhifServer, browser: object,
                                             node_stack: Stack, tmp_path: Path) -> None:
    case = cases[name]
    label = label_in(sr_of(node_stack[0], case.study_uid, tmp_path))
    assert f" {case.expected_state} - AI " in label.comment, label
    shot = tmp_path / f"ohif-{name}.png"
    texts, page_text, attempts = open_sr_in_ohif(browser, ohif, case.study_uid, label.comment, shot)
    print(f"{name}: {keep(shot)} shows {texts} (attempts: {attempts})")
    drawn = " ".join(texts)
    assert label.first_number in drawn, (label, texts)  # e.g. "Lung consolidation: 99.95 %"
    assert label.description in page_text  # the series list: "AI STAT Consolidation 100% ..."


def test_positive_and_negative_studies_read_differently(cases: dict[str, Case], node_stack: Stack,
                                                        tmp_path: Path) -> None:
    labels = {}
    for name in ("chest-positive", "chest-negative"):
        (tmp_path / name).mkdir()
        labels[name] = label_in(sr_of(node_stack[0], cases[name].study_uid, tmp_path / name))
    positive, negative = labels["chest-positive"], labels["chest-negative"]
    assert "present" in positive.comment and "absent" in negative.comment
    assert positive.first_number != negative.first_number
    assert positive.description.split()[1] != negative.description.split()[1]  # priority: STAT vs ROUTINE


@pytest.fixture(scope="module")
def map_node(node_stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouterProcess]:
    """A second node, sending to the same Orthanc, that also makes Parametric Maps."""
    webhook, ris = HttpReceiver(failures=0), MllpListener()
    router = RouterProcess(tmp_path_factory.mktemp("map-node"), free_port(), node_stack[0], webhook.url, ris.port,
                           DICOM_AI_HEATMAP_OBJECTS="sc,pm", DICOM_AI_HTTP_PORT="0")
    yield router
    router.stop()
    webhook.stop()
    ris.close()
    assert "Traceback" not in router.log(), router.log()


def test_a_parametric_map_goes_back_to_the_pacs_with_the_other_results(
        map_node: RouterProcess, node_stack: Stack, ohif: OhifServer, browser: object, tmp_path: Path) -> None:
    orthanc = node_stack[0]
    files = phantom_dicom.write_ct_volume_study(tmp_path / "ct", seed=2, finding=True,
                                                patient_id=f"OHIF-PM-{generate_uid()[-6:]}")
    study_uid = str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    storescu(files, map_node.port, called="DICOM_AI")  # straight to this node, as a modality would
    client = OrthancApiClient(orthanc.http_url)
    [pm] = wait_for("the Parametric Map in Orthanc", lambda: by_class(study_instances(client, study_uid), PM_CLASS),
                    timeout=RESULTS_TIMEOUT, router=map_node)
    path = tmp_path / "pm.dcm"
    path.write_bytes(client.instances.get_file(pm["ID"]))  # the copy Orthanc holds
    validate_with_dciodvfy(path)
    dataset = dcmread(path)
    assert int(dataset.NumberOfFrames) == len(files)  # one frame per image of the CT series
    assert dataset.SeriesDescription.startswith("AI STAT Intracranial")
    page = browser.new_page(viewport=SCREEN)  # type: ignore[attr-defined]
    try:
        page.goto(ohif.viewer_url(study_uid))
        page.wait_for_selector(f"{THUMBNAIL}:has-text('PMAP')", timeout=VIEW_TIMEOUT_MS)
        assert str(dataset.SeriesDescription) in page.evaluate("document.body.innerText")
    finally:
        page.close()
