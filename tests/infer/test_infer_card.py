"""model.yaml: a valid card loads; every kind of mistake is refused naming the file and the field."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydicom.uid import UID

from dicom_ai.domain import Code
from dicom_ai.infer.card import CardError, ModelError, derive_device_uid, dump_card, load_card
from tests.infer.infer_support import valid_card


def write(tmp_path: Path, card: Any) -> Path:
    path = tmp_path / "model.yaml"
    path.write_text(card if isinstance(card, str) else yaml.safe_dump(card), encoding="utf-8")
    return path


def test_valid_card_loads_with_codes(tmp_path: Path) -> None:
    card = load_card(write(tmp_path, valid_card()))
    assert card.name == "tiny-chest"
    assert card.input.size == (64, 64)
    assert card.input.normalize == "zscore"  # the default
    assert card.codes == {"Consolidation": Code("95436008", "SCT", "Lung consolidation")}
    assert card.gate == {"Modality": ["CR", "DX"]}


def test_dump_then_load_round_trips(tmp_path: Path) -> None:
    card = load_card(write(tmp_path, valid_card()))
    out = tmp_path / "again.yaml"
    dump_card(card, out)
    assert load_card(out) == card


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(card: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = card
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        if value is _DELETE:
            del node[last]
        else:
            node[last] = value

    return mutate


_DELETE = object()


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (_set("colour", "blue"), "field 'colour': unknown field"),
        (_set("version", _DELETE), "field 'version': required field is missing"),
        (_set("name", "Chest_XRay"), "field 'name': 'Chest_XRay' is not a model name"),
        (_set("format", "caffe"), "field 'format'"),
        (_set("labels.0.code.scheme", "LN"), "field 'labels[0].code.scheme'"),
        (_set("labels.0.code.value", "RID123"), "field 'labels[0].code': 'RID123' is not a SCT code value"),
        (_set("labels.0.threshold", 1.5), "field 'labels[0].threshold'"),
        (_set("labels", []), "field 'labels'"),
        (_set("architecture", _DELETE), "architecture is required when format is state_dict"),
        (_set("architecture.name", "NoSuchNet"), "field 'architecture.name': 'NoSuchNet' is not a network class"),
        (_set("architecture.kwargs.out_channels", 3), "out_channels is 3 but 1 labels are listed"),
        (_set("architecture.kwargs.in_channels", 3), "in_channels is 3 but input.channels is 1"),
        (_set("format", "torchscript"), "gradcam cannot run on torchscript weights"),
        (_set("output", "softmax"), "softmax output needs at least two labels"),
        (_set("device_uid", "1.2.abc"), "field 'device_uid': '1.2.abc' is not a valid DICOM UID"),
        (_set("weights", "../elsewhere/model.pt"), "field 'weights'"),
        (_set("gate", {"Modallity": ["CR"]}), "field 'gate': 'Modallity' is not a DICOM keyword"),
        (_set("gate", {"Modality": []}), "list at least one accepted value"),
        (_set("input.size", [2, 2]), "field 'input.size'"),
        (_set("input.channels", 2), "field 'input.channels'"),
        (_set("labels.0.code", _DELETE), "label 'Consolidation' is reported, so it needs a code (or report: false)"),
        (_set("labels.0.report", False), "at least one label must be reported"),
        (_set("input.normalize", "meanstd"), "normalize: meanstd needs both mean and std"),
        (_set("input.mean", [0.5]), "mean and std are used only with normalize: meanstd"),
        (lambda card: card["input"].update(normalize="meanstd", mean=[0.4, 0.5], std=[0.2]), "mean has 2 values; give 1"),
        (lambda card: card["input"].update(normalize="meanstd", mean=[0.5], std=[0.0]), "std must be positive"),
        (_set("labels.0.code.value", "95436003"), "'95436003' is not a SNOMED CT identifier: its check digit is wrong"),
        (_set("labels.0.code.value", "3772571013"), "'3772571013' is a SNOMED CT description or relationship identifier"),
        (_set("labels.0.threshold", "sight"), "threshold 'sight' must be a number between 0 and 1, or 'site'"),
        (_set("labels.0.prompts", ["consolidation"]), "prompts apply only to format zero_shot"),
        (_set("architecture.weights_layout", "keras"), "field 'architecture.weights_layout'"),
        (lambda card: card["architecture"].update(name="ResNet", weights_layout="torchvision-densenet"),
         "weights_layout torchvision-densenet maps onto a MONAI DenseNet (e.g. DenseNet121), not ResNet"),
        (_set("architecture.key_map", [{"pattern": "^(model", "replace": ""}]), "'^(model' is not a regular expression"),
    ],
)
def test_each_mistake_names_file_and_field(tmp_path: Path, mutate: Callable[[dict[str, Any]], None], expected: str) -> None:
    card = valid_card()
    mutate(card)
    path = write(tmp_path, card)
    with pytest.raises(CardError) as caught:
        load_card(path)
    assert str(path) in str(caught.value)
    assert expected in str(caught.value)


def test_duplicate_label_names_are_refused(tmp_path: Path) -> None:
    card = valid_card()
    card["labels"].append(dict(card["labels"][0]))
    card["architecture"]["kwargs"]["out_channels"] = 2
    with pytest.raises(CardError, match="repeated: Consolidation"):
        load_card(write(tmp_path, card))


def test_snomed_identifiers_pass_their_check_digit(tmp_path: Path) -> None:
    from dicom_ai.infer.card import verhoeff_valid

    # Codes of DICOM PS3.16 and the shipped cards; the example CheXNet card's 14 codes load with it.
    for value in ("95436008", "60046008", "36118008", "19242006", "52101004", "2667000", "363679005", "138875005"):
        assert verhoeff_valid(value), value
    assert not verhoeff_valid("95436003") and not verhoeff_valid("36118009")
    example = load_card(Path(__file__).resolve().parents[2] / "models" / "examples" / "chexnet" / "model.yaml")
    assert len(example.codes) == 14 and example.pending_thresholds == [label.name for label in example.labels]
    zero_shot = load_card(Path(__file__).resolve().parents[2] / "models" / "examples" / "biomedclip" / "model.yaml")
    assert zero_shot.format == "zero_shot" and zero_shot.zero_shot is not None and zero_shot.zero_shot.context_length == 256


def test_site_thresholds_and_key_maps_are_accepted(tmp_path: Path) -> None:
    card = valid_card()
    card["labels"][0]["threshold"] = "site"
    card["architecture"]["key_map"] = [{"pattern": r"^model\.", "replace": ""}]
    loaded = load_card(write(tmp_path, card))
    assert loaded.pending_thresholds == ["Consolidation"]
    assert loaded.labels[0].describe() == "Consolidation (SCT 95436008) >= threshold for the site to set"
    assert loaded.architecture is not None and loaded.architecture.key_map[0].pattern == r"^model\."


def test_radlex_codes_are_accepted(tmp_path: Path) -> None:
    card = valid_card()
    card["labels"][0]["code"] = {"value": "RID5350", "scheme": "RADLEX", "meaning": "pneumonia"}
    assert load_card(write(tmp_path, card)).labels[0].code.scheme == "RADLEX"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("name: [unclosed", "not valid YAML"),
        ("- just\n- a list\n", "expected a mapping of fields"),
        ("", "expected a mapping of fields"),
    ],
)
def test_unparseable_files_are_refused(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(CardError, match=expected) as caught:
        load_card(path)
    assert str(path) in str(caught.value)


def test_missing_file_is_a_card_error_and_a_model_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not found"):
        load_card(tmp_path / "nowhere" / "model.yaml")


def test_device_uid_follows_the_weights(tmp_path: Path) -> None:
    weights = tmp_path / "model.pt"
    weights.write_bytes(b"first weights")
    first = derive_device_uid(weights)
    assert first == derive_device_uid(weights)  # stable for the same bytes
    assert first.startswith("2.25.") and UID(first).is_valid and len(first) <= 64
    assert first == derive_device_uid(Path(shutil.copy(weights, tmp_path / "copy.pt")))  # bytes, not the path
    weights.write_bytes(b"second weights")
    assert derive_device_uid(weights) != first


def test_device_uid_of_missing_weights_is_a_model_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="cannot read the weights"):
        derive_device_uid(tmp_path / "absent.pt")


def test_a_single_gate_value_may_be_written_without_a_list(tmp_path: Path) -> None:
    card = valid_card()
    card["gate"] = {"Modality": "DX", "BodyPartExamined": ["CHEST"]}
    assert load_card(write(tmp_path, card)).gate == {"Modality": ["DX"], "BodyPartExamined": ["CHEST"]}
