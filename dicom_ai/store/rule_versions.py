"""Versions of the rules files: each activation's text, author, time and diff, with its audit event."""

from __future__ import annotations

import time
from dataclasses import dataclass

from dicom_ai.store.database import Part

__all__ = ["RuleVersion", "RuleVersionStore"]


@dataclass(frozen=True)
class RuleVersion:
    """One activated text of a rules file (`diff`: unified diff from the text it replaced)."""

    id: int
    file_name: str
    author: str
    created: float
    text: str
    diff: str


class RuleVersionStore(Part):
    """The rule_versions table; every version is written with an audit event in one transaction."""

    def add(self, file_name: str, author: str, text: str, diff: str, event: str = "rules_activated",
            now: float | None = None, restored_from: int | None = None) -> RuleVersion:
        now = time.time() if now is None else now
        with self._transaction() as db:
            table = db.table("rule_versions")
            table.insert({"file_name": file_name, "author": author, "created": now, "text": text, "diff": diff})
            version_id = int(table.last_pk)  # type: ignore[arg-type]
            extra = {"restored_from": restored_from} if restored_from is not None else {}
            self._event(db, event, None, file=file_name, version=version_id, author=author, diff=diff, **extra)
        return RuleVersion(version_id, file_name, author, now, text, diff)

    def get(self, version_id: int) -> RuleVersion | None:
        rows = self._query("select * from rule_versions where id = ?", [version_id])
        return RuleVersion(**rows[0]) if rows else None

    def latest(self, file_name: str) -> RuleVersion | None:
        rows = self._query("select * from rule_versions where file_name = ? order by id desc limit 1", [file_name])
        return RuleVersion(**rows[0]) if rows else None

    def history(self, file_name: str | None = None) -> list[RuleVersion]:
        """Newest first."""
        if file_name is None:
            rows = self._query("select * from rule_versions order by id desc")
        else:
            rows = self._query("select * from rule_versions where file_name = ? order by id desc", [file_name])
        return [RuleVersion(**row) for row in rows]
