"""Rules drafts: checked with the other files, replayed over stored studies, activated, versioned, restored."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from dicom_ai.cli import main
from dicom_ai.domain import ReceivedInstance
from dicom_ai.route.drafts import (
    ON_DISK_AUTHOR,
    DraftError,
    DraftProblem,
    ReplayDiff,
    RoutingChange,
    activate_draft,
    check_draft,
    replay_draft,
    restore_version,
    rule_versions,
)
from dicom_ai.route.loader import load_ruleset
from dicom_ai.store import Spool, Stores
from tests.conftest import copy_as_new_study, sample

CHEST = """rules:
  - name: chest
    series:
      Modality: CR
      BodyPartExamined: CHEST
    models: [chest-xray-demo]
"""
CT = """rules:
  - name: ct
    series:
      Modality: CT
    models: [ct-head-demo]
"""
ANY_CR = """rules:
  - name: chest
    series:
      Modality: CR
    models: [chest-xray-demo]
"""
CR_TO_OTHER = """rules:
  - name: chest
    series:
      Modality: CR
    models: [brain-mr-demo]
"""


@pytest.fixture
def stores(tmp_path: Path) -> Iterator[Stores]:
    opened = Stores.open(tmp_path / "home" / "dicom-ai.sqlite")
    yield opened
    opened.close()


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    return Spool(tmp_path / "home" / "spool")


@pytest.fixture
def rules(tmp_path: Path) -> Path:
    directory = tmp_path / "rules"
    directory.mkdir()
    (directory / "a-chest.yaml").write_text(CHEST, encoding="utf-8")
    (directory / "b-ct.yaml").write_text(CT, encoding="utf-8")
    return directory


def receive(stores: Stores, spool: Spool, source: str, at: float, **overrides: str) -> str:
    """Keep a real image as a new study in the spool and record it as the SCP does."""
    path = copy_as_new_study(sample(source), spool.studies / "in", **overrides)
    from pydicom import dcmread

    ds = dcmread(path, stop_before_pixels=True)
    stores.studies.record_instance(ReceivedInstance(
        str(ds.SOPInstanceUID), str(ds.SOPClassUID), str(ds.SeriesInstanceUID), str(ds.StudyInstanceUID),
        str(ds.Modality), "1.2.840.10008.1.2.1", path, path.stat().st_size, "PACS"), now=at)
    return str(ds.StudyInstanceUID)


def test_problem_reads_as_file_line_field_message() -> None:
    assert str(DraftProblem("a.yaml", 3, "rules[0].models", "missing")) == "a.yaml:3: rules[0].models: missing"
    assert str(DraftProblem("a.yaml", None, "", "bad name")) == "a.yaml: bad name"


def test_a_valid_draft_has_no_problem(rules: Path) -> None:
    assert check_draft(rules, "a-chest.yaml", ANY_CR) == []
    assert check_draft(rules, "c-new.yaml", CT.replace("name: ct", "name: ct-2")) == []


def test_a_broken_draft_names_its_line_and_field(rules: Path) -> None:
    broken = CHEST.replace("Modality: CR", "Modalty: CR")
    problems = check_draft(rules, "a-chest.yaml", broken)
    assert [(p.file, p.line, p.field) for p in problems] == [("a-chest.yaml", 4, "rules[0].series.Modalty")]
    assert "did you mean 'Modality'" in problems[0].message


def test_the_other_files_are_the_context(rules: Path) -> None:
    """A draft that reuses a rule name of another file is refused, naming the draft's line."""
    problems = check_draft(rules, "c-new.yaml", CT)
    assert len(problems) == 1
    assert problems[0].file == "c-new.yaml" and problems[0].line == 2
    assert "already used at" in problems[0].message and "b-ct.yaml" in problems[0].message


def test_unknown_models_when_known_models_are_given(rules: Path) -> None:
    problems = check_draft(rules, "a-chest.yaml", CR_TO_OTHER, known_models={"chest-xray-demo", "ct-head-demo"})
    assert [p.field for p in problems] == ["rules[0].models[0]"]


@pytest.mark.parametrize("name", ["../x.yaml", ".hidden.yaml", "notes.txt", ""])
def test_a_file_name_outside_the_rules_directory_is_a_problem(rules: Path, name: str) -> None:
    assert len(check_draft(rules, name, CT)) == 1


def test_replay_moves_studies_between_models(stores: Stores, spool: Spool, rules: Path) -> None:
    now = time.time()
    chest = receive(stores, spool, "RG1_UNCR.dcm", now - 3600)  # CR chest
    extremity = receive(stores, spool, "RG3_UNCI.dcm", now - 7200)  # CR, not chest: unrouted today
    ct = receive(stores, spool, "CT_small.dcm", now - 3600)
    receive(stores, spool, "RG3_UNCI.dcm", now - 10 * 86400)  # too old for the replay

    same = replay_draft(stores, spool, rules, "a-chest.yaml", CHEST, days=2, now=now)
    assert same == ReplayDiff(3, [])
    assert same.summary() == "no study changes routing (3 studies replayed)"

    wider = replay_draft(stores, spool, rules, "a-chest.yaml", ANY_CR, days=2, now=now)
    assert wider.changes == [RoutingChange(extremity, (), ("chest-xray-demo",))]
    assert wider.summary() == "1 more study to chest-xray-demo, 0 fewer; 0 studies change model"

    moved = replay_draft(stores, spool, rules, "a-chest.yaml", CR_TO_OTHER, days=2, now=now)
    assert {c.study_uid: (c.before, c.after) for c in moved.changes} == {
        extremity: ((), ("brain-mr-demo",)), chest: (("chest-xray-demo",), ("brain-mr-demo",))}
    assert moved.summary() == "2 more studies to brain-mr-demo, 0 fewer; 0 more studies to chest-xray-demo, " \
                              "1 fewer; 1 study changes model"
    assert ct not in {c.study_uid for c in moved.changes}


def test_studies_that_look_alike_to_the_rules_each_count(stores: Stores, spool: Spool, rules: Path) -> None:
    """Alike studies are routed once per replay (their routing view), but each is a change of its own;
    one that differs in an attribute a rule reads (here the draft's) is routed for itself."""
    now = time.time()
    hands = [receive(stores, spool, "RG3_UNCI.dcm", now - 60 * i, PatientID=f"P{i}") for i in (1, 2, 3)]
    chest_like = receive(stores, spool, "RG3_UNCI.dcm", now - 240, BodyPartExamined="CHEST")
    wider = replay_draft(stores, spool, rules, "a-chest.yaml", ANY_CR, days=1, now=now)
    assert sorted(c.study_uid for c in wider.changes) == sorted(hands) and wider.studies == 4
    narrower = replay_draft(stores, spool, rules, "a-chest.yaml", CHEST.replace("BodyPartExamined: CHEST",
                                                                                "BodyPartExamined: EXTREMITY"), days=1, now=now)
    assert {c.study_uid: c.after for c in narrower.changes} == {**{uid: ("chest-xray-demo",) for uid in hands},
                                                                chest_like: ()}
    by_patient = replay_draft(stores, spool, rules, "a-chest.yaml", CHEST.replace("BodyPartExamined: CHEST",
                                                                                  "PatientID: P2"), days=1, now=now)
    assert {c.study_uid: c.after for c in by_patient.changes} == {hands[1]: ("chest-xray-demo",), chest_like: ()}


def test_replay_skips_a_study_whose_files_are_gone(stores: Stores, spool: Spool, rules: Path) -> None:
    now = time.time()
    uid = receive(stores, spool, "RG1_UNCR.dcm", now - 60)
    for instance in stores.studies.instances_of(uid):
        instance.path.unlink()
    assert replay_draft(stores, spool, rules, "a-chest.yaml", ANY_CR, days=1, now=now) == ReplayDiff(0, [], 1)


def test_replay_refuses_a_broken_draft(stores: Stores, spool: Spool, rules: Path) -> None:
    with pytest.raises(DraftError, match=r"^a-chest\.yaml:4: YAML syntax error"):
        replay_draft(stores, spool, rules, "a-chest.yaml", CHEST.replace("series:", "series: 3"), days=1)


def test_activation_refused_on_a_broken_draft(stores: Stores, rules: Path) -> None:
    before = (rules / "a-chest.yaml").read_text()
    with pytest.raises(DraftError, match=r"^a-chest\.yaml:4: rules\[0\]\.series\.Modalty: "):
        activate_draft(stores, rules, "a-chest.yaml", CHEST.replace("Modality", "Modalty"), "alice")
    assert (rules / "a-chest.yaml").read_text() == before
    assert rule_versions(stores) == []


def test_activation_writes_the_file_and_keeps_the_version(stores: Stores, rules: Path) -> None:
    version = activate_draft(stores, rules, "a-chest.yaml", ANY_CR, "alice")
    assert (rules / "a-chest.yaml").read_text() == ANY_CR
    assert load_ruleset(rules).get("chest").series.keys() == {"Modality"}  # type: ignore[union-attr]
    assert [p.name for p in rules.iterdir() if p.name.startswith(".")] == []  # no temporary left
    assert version.author == "alice" and version.text == ANY_CR
    assert "-      BodyPartExamined: CHEST" in version.diff and version.diff.startswith("--- a/a-chest.yaml")
    history = rule_versions(stores, "a-chest.yaml")
    assert [(v.author, v.text) for v in history] == [("alice", ANY_CR), (ON_DISK_AUTHOR, CHEST)]
    events = [e for e in stores.reports.events() if e["kind"] == "rules_activated"]
    assert len(events) == 1
    detail = json.loads(events[0]["detail"])
    assert detail["author"] == "alice" and detail["file"] == "a-chest.yaml" and detail["version"] == version.id


def test_a_new_file_has_no_on_disk_version(stores: Stores, rules: Path) -> None:
    text = CT.replace("name: ct", "name: ct-2")
    activate_draft(stores, rules, "c-new.yaml", text, "bob")
    assert [v.author for v in rule_versions(stores, "c-new.yaml")] == ["bob"]
    assert (rules / "c-new.yaml").read_text() == text


def test_restore_round_trip(stores: Stores, rules: Path) -> None:
    first = activate_draft(stores, rules, "a-chest.yaml", ANY_CR, "alice")
    activate_draft(stores, rules, "a-chest.yaml", CR_TO_OTHER, "alice")
    original = rule_versions(stores, "a-chest.yaml")[-1]
    assert original.text == CHEST
    restored = restore_version(stores, rules, original.id, "carol")
    assert (rules / "a-chest.yaml").read_text() == CHEST
    assert restored.id > first.id and restored.author == "carol" and restored.text == CHEST
    assert "+      BodyPartExamined: CHEST" in restored.diff
    assert [v.text for v in rule_versions(stores, "a-chest.yaml")] == [CHEST, CR_TO_OTHER, ANY_CR, CHEST]
    event = next(e for e in stores.reports.events() if e["kind"] == "rules_activated")
    assert json.loads(event["detail"])["restored_from"] == original.id


def test_restore_of_an_unknown_version(stores: Stores, rules: Path) -> None:
    with pytest.raises(LookupError, match="no rules version 42"):
        restore_version(stores, rules, 42, "carol")


def test_a_hand_edit_between_activations_is_kept(stores: Stores, rules: Path) -> None:
    activate_draft(stores, rules, "a-chest.yaml", ANY_CR, "alice")
    (rules / "a-chest.yaml").write_text(CR_TO_OTHER, encoding="utf-8")
    activate_draft(stores, rules, "a-chest.yaml", CHEST, "bob")
    assert [(v.author, v.text) for v in rule_versions(stores, "a-chest.yaml")] == [
        ("bob", CHEST), (ON_DISK_AUTHOR, CR_TO_OTHER), ("alice", ANY_CR), (ON_DISK_AUTHOR, CHEST)]


def test_cli_activate_history_restore_replay(tmp_path: Path, rules: Path, stores: Stores, spool: Spool) -> None:
    home = tmp_path / "home"
    env = {"DICOM_AI_HOME": str(home), "DICOM_AI_RULES_DIR": str(rules)}  # the shipped models
    receive(stores, spool, "RG3_UNCI.dcm", time.time() - 60)
    draft = tmp_path / "draft.yaml"
    draft.write_text(ANY_CR, encoding="utf-8")

    def run(*args: str, stdin: str | None = None):  # type: ignore[no-untyped-def]
        return CliRunner().invoke(main, list(args), env=env, input=stdin, catch_exceptions=False)

    replay = run("rules", "replay", str(draft), "--as", "a-chest.yaml", "--days", "1")
    assert replay.exit_code == 0, replay.output
    assert "1 more study to chest-xray-demo, 0 fewer; 0 studies change model" in replay.output

    broken = tmp_path / "a-chest.yaml"
    broken.write_text(CHEST.replace("Modality", "Modalty"), encoding="utf-8")
    refused = run("rules", "activate", str(broken), "--author", "alice")
    assert refused.exit_code == 1
    assert "a-chest.yaml:4: rules[0].series.Modalty:" in refused.output
    assert "Traceback" not in refused.output

    done = run("rules", "activate", str(draft), "--as", "a-chest.yaml", "--author", "alice")
    assert done.exit_code == 0, done.output
    assert (rules / "a-chest.yaml").read_text() == ANY_CR
    history = run("rules", "history", "a-chest.yaml")
    assert history.exit_code == 0
    lines = history.output.splitlines()
    assert "alice" in lines[0] and ON_DISK_AUTHOR in history.output
    old_id = rule_versions(stores, "a-chest.yaml")[-1].id
    restored = run("rules", "restore", str(old_id), "--author", "bob")
    assert restored.exit_code == 0, restored.output
    assert (rules / "a-chest.yaml").read_text() == CHEST
    assert run("rules", "restore", "999").exit_code == 1


def test_replay_shows_a_rule_turned_shadow(stores: Stores, spool: Spool, rules: Path) -> None:
    now = time.time()
    chest = receive(stores, spool, "RG1_UNCR.dcm", now - 60)
    diff = replay_draft(stores, spool, rules, "a-chest.yaml", CHEST + "    shadow: true\n", days=1, now=now)
    assert diff.changes == [RoutingChange(chest, ("chest-xray-demo",), ("chest-xray-demo (shadow)",))]
