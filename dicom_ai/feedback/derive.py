"""A report read against a model card's report_terms: the truth per label, and how it was read.

Coded observations first: an OBX whose identifier is one of the label's codes states the finding
in OBX-5 (present/absent/equivocal as SNOMED CT codes or words) or, when that is empty, in its
abnormal flag (OBX-8). Otherwise the report text is searched for the label's keywords, sentence by
sentence, with the negation and hedging cues nearest before or just after each mention deciding it,
in the manner of NegEx: "no focal consolidation" is absent, "consolidation has resolved" absent,
"possible consolidation" uncertain, "consolidation in the right lower lobe" present. Sentences of
an indication or history section ("Indication: rule out consolidation") are not read. When a label
is mentioned several times, present outranks uncertain, which outranks absent. A label the report
does not name gets no truth: silence is not a negative.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from dicom_ai.domain import ReportRule, Truth
from dicom_ai.feedback.hl7_report import ParsedReport

# Cues before a mention, nearest wins (multi-word cues are matched as phrases).
NEGATION_CUES = ("no", "not", "without", "no evidence of", "no sign of", "no signs of", "negative for", "free of",
                 "absence of", "resolution of", "resolved", "denies", "neither", "nor", "never", "ruled out")
UNCERTAIN_CUES = ("possible", "possibly", "probable", "probably", "may", "might", "could", "questionable",
                  "equivocal", "suspicious for", "suspected", "suspect", "likely", "concern for", "cannot exclude",
                  "can not exclude", "cannot rule out", "differential", "versus", "vs", "rule out", "r/o",
                  "evaluate for", "?")
# Cues just after a mention ("consolidation has resolved", "consolidation cannot be excluded").
NEGATION_AFTER = ("is absent", "are absent", "absent", "has resolved", "have resolved", "resolved", "not seen",
                  "is not seen", "are not seen", "not identified", "is not identified", "not present", "is excluded",
                  "excluded", "ruled out")
UNCERTAIN_AFTER = ("cannot be excluded", "can not be excluded", "not excluded", "is not excluded", "is possible",
                   "is suspected", "is questionable", "may be present", "versus", "vs", "?")
# A cue's scope ends at these words (NegEx's termination terms).
TERMINATORS = ("but", "however", "although", "though", "except", "aside from", "apart from", "which", "whereas")
WINDOW_BEFORE, WINDOW_AFTER = 8, 4  # words searched before and after a mention
SKIPPED_SECTIONS = ("indication", "indications", "history", "clinical history", "clinical information",
                    "clinical indication", "reason for exam", "reason for examination", "reason for study", "request")
READ_SECTIONS = ("findings", "impression", "conclusion", "conclusions", "result", "results", "report", "opinion")
PRESENT_VALUES = ("52101004", "present", "yes", "y", "positive", "pos", "detected", "true")
ABSENT_VALUES = ("2667000", "absent", "no", "n", "negative", "neg", "not detected", "false")
UNCERTAIN_VALUES = ("42425007", "82334004", "equivocal", "indeterminate", "uncertain", "possible")
ABNORMAL_FLAGS = ("A", "AA", "H", "HH", "L", "LL", "POS")
NORMAL_FLAGS = ("N", "NEG")
_RANK = {Truth.PRESENT: 2, Truth.UNCERTAIN: 1, Truth.ABSENT: 0}
_WORD = re.compile(r"[a-z0-9/]+|\?")


@dataclass(frozen=True)
class Derived:
    """One label's truth as the report states it, and the words (or code) that said so."""

    label: str
    truth: Truth
    evidence: str


def derive_truths(report: ParsedReport, rules: Sequence[ReportRule]) -> list[Derived]:
    """The labels the report names, each with its truth (coded observations outrank the text)."""
    found = []
    sentences = report_sentences(report.text)
    for rule in rules:
        derived = _from_codes(report, rule) or _from_text(sentences, rule)
        if derived is not None:
            found.append(derived)
    return found


def report_sentences(text: str) -> list[str]:
    """The sentences of a report that describe the images: lower case, indication and history left out."""
    sentences: list[str] = []
    skipping = False
    for line in text.splitlines():
        header = re.match(r"^\s*([a-z][a-z /]{1,40}?)\s*:\s*(.*)$", line, re.IGNORECASE)
        if header:
            name = header.group(1).strip().lower()
            if name in SKIPPED_SECTIONS:
                skipping, line = True, header.group(2)
            elif name in READ_SECTIONS:
                skipping, line = False, header.group(2)
        if skipping:
            continue
        sentences.extend(part.strip().lower() for part in re.split(r"(?<=[.;!])\s+|[.;!]$|\n", line) if part.strip())
    return sentences


def _from_codes(report: ParsedReport, rule: ReportRule) -> Derived | None:
    for observation in report.observations:
        if observation.identifier not in rule.codes:
            continue
        value = observation.value.lower()
        words = set(re.findall(r"[a-z0-9]+(?: detected)?", value)) | {value.strip()}
        for values, truth in ((PRESENT_VALUES, Truth.PRESENT), (ABSENT_VALUES, Truth.ABSENT),
                              (UNCERTAIN_VALUES, Truth.UNCERTAIN)):
            if words & set(values):
                return Derived(rule.label, truth, f"OBX {observation.identifier} = {observation.value[:40]}")
        if not value and observation.abnormal_flag in ABNORMAL_FLAGS:
            return Derived(rule.label, Truth.PRESENT, f"OBX {observation.identifier} flagged {observation.abnormal_flag}")
        if not value and observation.abnormal_flag in NORMAL_FLAGS:
            return Derived(rule.label, Truth.ABSENT, f"OBX {observation.identifier} flagged {observation.abnormal_flag}")
    return None


def _from_text(sentences: Sequence[str], rule: ReportRule) -> Derived | None:
    best: Derived | None = None
    for keyword in rule.keywords:
        pattern = re.compile(rf"(?<![a-z0-9]){_plural(keyword.lower())}(?![a-z0-9])")
        for sentence in sentences:
            for match in pattern.finditer(sentence):
                truth = mention_truth(sentence[: match.start()], sentence[match.end():])
                if best is None or _RANK[truth] > _RANK[best.truth]:
                    best = Derived(rule.label, truth, f'text: "{_excerpt(sentence, match.start(), match.end())}"')
    return best


def _plural(keyword: str) -> str:
    """A keyword and its plural: "opacity" also finds "opacities", "effusion" "effusions"."""
    if keyword.endswith("y") and len(keyword) > 2:
        return f"(?:{re.escape(keyword)}|{re.escape(keyword[:-1])}ies)"
    return f"{re.escape(keyword)}(?:s|es)?"


def mention_truth(before: str, after: str) -> Truth:
    """Whether one mention is affirmed, negated or hedged, from the words around it."""
    words_before = _scope(_WORD.findall(before), reverse=True)[-WINDOW_BEFORE:]
    words_after = _scope(_WORD.findall(after), reverse=False)[:WINDOW_AFTER]
    nearest: tuple[int, Truth] | None = None
    for cues, truth in ((NEGATION_CUES, Truth.ABSENT), (UNCERTAIN_CUES, Truth.UNCERTAIN)):
        for cue in cues:
            position = _last_phrase(words_before, cue.split())
            if position is not None and (nearest is None or position > nearest[0]
                                         or (position == nearest[0] and truth == Truth.UNCERTAIN)):
                nearest = (position, truth)
    if nearest is not None:
        return nearest[1]
    text_after = " ".join(words_after)
    if any(_phrase_in(text_after, cue) for cue in UNCERTAIN_AFTER):
        return Truth.UNCERTAIN
    if any(_phrase_in(text_after, cue) for cue in NEGATION_AFTER):
        return Truth.ABSENT
    return Truth.PRESENT


def _scope(words: list[str], reverse: bool) -> list[str]:
    """The words on the mention's side of the nearest terminator ("no effusion but consolidation")."""
    cut = [i for i, w in enumerate(words) if w in TERMINATORS or " ".join(words[i:i + 2]) in TERMINATORS]
    if not cut:
        return words
    return words[cut[-1] + 1:] if reverse else words[: cut[0]]


def _last_phrase(words: list[str], phrase: list[str]) -> int | None:
    """Index (of its last word) of the last occurrence of `phrase` in `words`."""
    for end in range(len(words), len(phrase) - 1, -1):
        if words[end - len(phrase): end] == phrase:
            return end - 1
    return None


def _phrase_in(text: str, phrase: str) -> bool:
    return re.search(rf"(?<![a-z0-9]){re.escape(phrase)}(?![a-z0-9])", text) is not None


def _excerpt(sentence: str, start: int, end: int, room: int = 40) -> str:
    return sentence[max(0, start - room): end + room].strip()
