"""Models switched off by an admin (the console's Models page) without deleting their folder: rules
still name them, the pipeline does not run them (the study says so), and switching one on again
needs no restart. Read by the pipeline before each study, so every node process agrees."""

from __future__ import annotations

import time

from dicom_ai.store.database import Database, Part


def disabled_models(database: Database) -> set[str]:
    return {row["name"] for row in database.query("select name from model_switches where enabled = 0")}


class ModelSwitches(Part):
    def set_enabled(self, name: str, enabled: bool, by: str) -> bool:
        """Switch a model on or off (audited with before and after); False when it already was."""
        with self._transaction() as db:
            rows = list(db.query("select enabled from model_switches where name = ?", [name]))
            before = bool(rows[0]["enabled"]) if rows else True
            if before == enabled:
                return False
            db.table("model_switches").upsert({"name": name, "enabled": int(enabled), "by": by, "at": time.time()},
                                              pk="name")
            self._event(db, "model_enabled" if enabled else "model_disabled", None, by=by, model=name,
                        before={"enabled": before}, after={"enabled": enabled})
        return True
