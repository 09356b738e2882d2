"""Loading a rules folder: order, and every error with its file:line and field."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pytest

from dicom_ai.route.loader import RuleError, RuleSetError, load_ruleset
from dicom_ai.route.rules import RuleSource

Write = Callable[[str, str], Path]

CHEST = """\
rules:
  - name: {name}
    models: [chest-xray-demo]
"""


def _messages(directory: Path, known_models: set[str] | None = None) -> list[str]:
    with pytest.raises(RuleSetError) as info:
        load_ruleset(directory, known_models)
    return [str(error) for error in info.value.errors]


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rules_dir: Path) -> Path:
    """Run from the folder above rules/, so paths print as rules/<file> like an admin sees them."""
    monkeypatch.chdir(tmp_path)
    return Path("rules")


def test_shipped_rules_load(shipped_rules: Path) -> None:
    installed = {p.name for p in (shipped_rules.parent / "models").iterdir() if (p / "model.yaml").is_file()}
    ruleset = load_ruleset(shipped_rules, known_models=installed)
    by_name = {rule.name: rule for rule in ruleset.rules}
    assert sorted(by_name) == ["brain-mr", "chest-radiograph", "ct-head", "endoscopy", "mammography"]
    assert {model for rule in ruleset.rules for model in rule.models} == installed  # every demo model is routed
    rule = by_name["chest-radiograph"]
    assert rule.enabled and rule.models == ["chest-xray-demo"]
    assert rule.priority is not None and rule.priority.stat_above == 0.9
    assert shipped_rules / "chest-radiograph.yaml" in ruleset.files
    assert rule.source is not None and rule.source.file == shipped_rules / "chest-radiograph.yaml"
    lines = rule.source.file.read_text().splitlines()
    assert lines[rule.source.line - 1].strip().startswith("- name: chest-radiograph")


def test_files_in_name_order_and_rules_in_file_order(write: Write, rules_dir: Path) -> None:
    write("b.yaml", CHEST.format(name="b1") + CHEST.format(name="b2").removeprefix("rules:\n"))
    write("a.yml", CHEST.format(name="a1"))
    write("c.yaml.bak", CHEST.format(name="backup"))
    write("notes.txt", "not rules")
    write(".#b.yaml", CHEST.format(name="editor-lock"))
    (rules_dir / "sub.yaml").mkdir()
    ruleset = load_ruleset(rules_dir)
    assert [rule.name for rule in ruleset.rules] == ["a1", "b1", "b2"]
    assert ruleset.files == (rules_dir / "a.yml", rules_dir / "b.yaml")
    assert [rule.source for rule in ruleset.rules] == [
        RuleSource(rules_dir / "a.yml", 2),
        RuleSource(rules_dir / "b.yaml", 2),
        RuleSource(rules_dir / "b.yaml", 4),
    ]


def test_empty_folder_is_an_empty_ruleset_with_a_warning(
    rules_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="dicom_ai.route"):
        ruleset = load_ruleset(rules_dir)
    assert ruleset.rules == () and ruleset.files == ()
    assert any("no routing rules" in record.getMessage() for record in caplog.records)


def test_empty_file_and_null_rules_define_nothing(write: Write, rules_dir: Path) -> None:
    write("a.yaml", "# nothing yet\n")
    write("b.yaml", "rules:\n")
    write("c.yaml", "rules: []\n")
    assert load_ruleset(rules_dir).rules == ()


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(RuleSetError, match="rules directory not found"):
        load_ruleset(tmp_path / "nope")


def test_unknown_keyword_names_file_line_and_field(write: Write, in_tmp: Path) -> None:
    write(
        "chest.yaml",
        """\
# Chest rules
rules:
  - name: chest-radiograph
    description: Frontal chest radiographs
    enabled: true
    study:
      ModalitiesInStudy: {in: [CR, DX]}
    models: [chest-xray-demo]
    series:
      BodyPartExamined: {regex: "(?i)chest"}
      Rows: {range: [512, null]}
      Modalty: [CR, DX]
""",
    )
    assert _messages(in_tmp) == [
        "rules/chest.yaml:12: rules[0].series.Modalty: unknown DICOM keyword 'Modalty' (did you mean 'Modality'?)"
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (  # YAML syntax
            "rules:\n  - name: a\n    models: [m\n  - name: b\n",
            "rules/x.yaml:4: YAML syntax error: expected ',' or ']', but got ':' (while parsing a flow sequence)",
        ),
        (
            "rules:\n  - name: a: b\n",
            "rules/x.yaml:2: YAML syntax error: mapping values are not allowed here",
        ),
        (  # unknown operator
            "rules:\n  - name: a\n    models: [m]\n    series:\n      BodyPartExamined: {regexp: chest}\n",
            "rules/x.yaml:5: rules[0].series.BodyPartExamined.regexp: unknown operator 'regexp' "
            "(did you mean 'regex'?); operators are exists, equals, in, regex, range, not",
        ),
        (  # unknown operator inside not, in block style
            "rules:\n  - name: a\n    models: [m]\n    series:\n      ViewPosition:\n        not:\n          inn: [LL]\n",
            "rules/x.yaml:7: rules[0].series.ViewPosition.not.inn: unknown operator 'inn' "
            "(did you mean 'in'?); operators are exists, equals, in, regex, range, not",
        ),
        (  # unknown rule field
            "rules:\n  - name: a\n    models: [m]\n    priorty: {stat_above: 0.9}\n",
            "rules/x.yaml:4: rules[0].priorty: unknown field 'priorty' (did you mean 'priority'?); "
            "allowed: name, description, enabled, study, series, models, priority, order, fallback, shadow, window, "
            "complete",
        ),
        (  # unknown priority field
            "rules:\n  - name: a\n    models: [m]\n    priority:\n      stat_abov: 0.9\n",
            "rules/x.yaml:5: rules[0].priority.stat_abov: unknown field 'stat_abov' (did you mean 'stat_above'?); "
            "allowed: findings, stat_above, urgent_above",
        ),
        (  # regex that does not compile
            "rules:\n  - name: a\n    models: [m]\n    series:\n      BodyPartExamined: {regex: '(CHEST'}\n",
            "rules/x.yaml:5: rules[0].series.BodyPartExamined.regex: invalid regular expression '(CHEST': "
            "missing ), unterminated subpattern at position 0",
        ),
        (  # range bound that is not a number
            "rules:\n  - name: a\n    models: [m]\n    series:\n      Rows:\n        range: [big, null]\n",
            "rules/x.yaml:6: rules[0].series.Rows.range[0]: range bounds must be numbers or null, got 'big'",
        ),
        (  # range of the wrong shape
            "rules:\n  - name: a\n    models: [m]\n    series:\n      Rows: {range: 512}\n",
            "rules/x.yaml:5: rules[0].series.Rows.range: range takes [min, max] (null for an open end), got 512",
        ),
        (  # missing required field: the rule's line
            "rules:\n  - name: a\n    series:\n      Modality: CR\n",
            "rules/x.yaml:2: rules[0].models: missing required field 'models'",
        ),
        (  # an unquoted yes inside a shorthand list
            "rules:\n  - name: a\n    models: [m]\n    series:\n      Modality:\n        - CR\n        - yes\n",
            "rules/x.yaml:7: rules[0].series.Modality[1]: YAML read an unquoted yes/no/true/false/on/off "
            "as a boolean; quote it (e.g. 'YES') to compare text",
        ),
        (  # an unquoted date
            "rules:\n  - name: a\n    models: [m]\n    study:\n      StudyDate: 2024-01-31\n",
            "rules/x.yaml:5: rules[0].study.StudyDate: YAML read 2024-01-31 as a date; "
            "write DICOM dates as quoted text, e.g. '20240131'",
        ),
        (  # a sequence keyword
            "rules:\n  - name: a\n    models: [m]\n    series:\n      SourceImageSequence: {exists: true}\n",
            "rules/x.yaml:5: rules[0].series.SourceImageSequence: SourceImageSequence is a sequence (VR SQ); "
            "sequences cannot be matched, use an attribute that holds a value",
        ),
        (  # wrong type with the value shown
            "rules:\n  - name: a\n    models: chest\n",
            "rules/x.yaml:3: rules[0].models: Input should be a valid list, got 'chest'",
        ),
        (  # priority rule violated
            "rules:\n  - name: a\n    models: [m]\n    priority: {stat_above: 0.2, urgent_above: 0.5}\n",
            "rules/x.yaml:4: rules[0].priority: stat_above (0.2) must be >= urgent_above (0.5)",
        ),
        (  # duplicate key
            "rules:\n  - name: a\n    models: [m]\n    series:\n      Modality: CR\n      Modality: DX\n",
            "rules/x.yaml:6: rules[0].series.Modality: duplicate key 'Modality' (first at line 5); "
            "YAML would keep only the last",
        ),
        (  # a rule that is not a mapping
            "rules:\n  - chest\n",
            "rules/x.yaml:2: rules[0]: Input should be a mapping (key: value), got 'chest'",
        ),
        (  # file shape
            "- name: a\n  models: [m]\n",
            "rules/x.yaml:1: a rules file must be a mapping with a 'rules' list (rules: ...)",
        ),
        (
            "rules:\n  name: a\n",
            "rules/x.yaml:1: rules: 'rules' must be a list; start each rule with '- name: ...'",
        ),
        (
            "rule:\n  - name: a\n",
            "rules/x.yaml:1: rule: unknown top-level field 'rule' (did you mean 'rules'?); a rules file holds only 'rules'",
        ),
    ],
)
def test_each_error_kind_names_file_line_and_field(
    write: Write, in_tmp: Path, text: str, expected: str
) -> None:
    write("x.yaml", text)
    assert expected in _messages(in_tmp)


def test_unknown_model_when_known_models_given(write: Write, in_tmp: Path) -> None:
    write(
        "x.yaml",
        "rules:\n  - name: a\n    models:\n      - chest-xray-demo\n      - chest-xray-dem\n",
    )
    assert _messages(in_tmp, {"chest-xray-demo", "ct-demo"}) == [
        "rules/x.yaml:5: rules[0].models[1]: unknown model 'chest-xray-dem' (did you mean 'chest-xray-demo'?); "
        "known models: chest-xray-demo, ct-demo"
    ]
    assert _messages(in_tmp, set()) == [
        "rules/x.yaml:4: rules[0].models[0]: unknown model 'chest-xray-demo': no models are installed",
        "rules/x.yaml:5: rules[0].models[1]: unknown model 'chest-xray-dem': no models are installed",
    ]
    assert len(load_ruleset(in_tmp).rules) == 1, "without known_models any name is accepted"


def test_duplicate_names_across_files(write: Write, in_tmp: Path) -> None:
    write("a.yaml", CHEST.format(name="chest"))
    write("b.yaml", "# second\n" + CHEST.format(name="chest"))
    assert _messages(in_tmp) == [
        "rules/b.yaml:3: rules[0].name: rule name 'chest' is already used at rules/a.yaml:2"
    ]


def test_all_errors_of_all_files_are_collected_in_order(write: Write, in_tmp: Path) -> None:
    write(
        "b.yaml",
        "rules:\n  - name: ok\n    models: [m]\n  - name: bad\n    models: []\n    series: {Modalty: CR}\n",
    )
    write("a.yaml", "rules: [\n")
    write("c.yml", CHEST.format(name="ok"))
    with pytest.raises(RuleSetError) as info:
        load_ruleset(in_tmp)
    errors = info.value.errors
    assert [(error.path.name, error.line, error.field) for error in errors] == [
        ("a.yaml", 2, ""),
        ("b.yaml", 5, "rules[1].models"),
        ("b.yaml", 6, "rules[1].series.Modalty"),
        ("c.yml", 2, "rules[0].name"),
    ]
    assert all(isinstance(error, RuleError) and "\n" not in str(error) for error in errors)
    assert str(info.value).startswith(
        "4 errors in the routing rules:\nrules/a.yaml:2: YAML syntax error"
    )


def test_rule_error_format_without_line_or_field() -> None:
    assert (
        str(RuleError(Path("rules/a.yaml"), None, "", "cannot read the file"))
        == "rules/a.yaml: cannot read the file"
    )
    assert str(RuleError(Path("r.yaml"), 3, "rules[0]", "bad")) == "r.yaml:3: rules[0]: bad"


def test_undecodable_file(rules_dir: Path) -> None:
    (rules_dir / "latin.yaml").write_bytes(b"rules:\n  - name: caf\xe9\n")
    with pytest.raises(RuleSetError, match=r"latin.yaml: not UTF-8 text"):
        load_ruleset(rules_dir)


def test_a_control_character_is_a_syntax_error_naming_file_and_line(write: Write, in_tmp: Path) -> None:
    """Found by fuzzing (tests/fuzz/crashes/rules): PyYAML's reader refused it with an error the
    loader did not catch, so a stray NUL in a rules file gave a traceback instead of file:line."""
    write("chest.yaml", "rules:\n  - name: chest\n    description: bad \x00 byte\n    models: [chest-xray-demo]\n")
    assert _messages(in_tmp) == [
        "rules/chest.yaml:3: YAML syntax error: character 0x0000 is not allowed in YAML (column 22)"]
