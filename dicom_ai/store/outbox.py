"""The outbox: what must still be delivered, and how each delivery went.

Rows are written in the transaction that produced them (a study's outcome, an override), so a
crash never loses a send; this part hands them to the sender and records each attempt.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from dicom_ai.domain import Carrier, OutboxItem
from dicom_ai.store.database import Part


class OutboxStore(Part):
    """Due deliveries, their outcomes, and the admin's and the node's ways of queueing them again."""

    def due_outbox(self, now: float | None = None, limit: int = 500) -> list[OutboxItem]:
        now = time.time() if now is None else now
        rows = self._query(
            "select * from outbox where state = 'pending' and next_attempt_at <= ? order by id limit ?",
            [now, limit],
        )
        return [_outbox_item(row) for row in rows]

    def mark_sent(self, item: OutboxItem) -> None:
        now = time.time()
        with self._transaction() as db:
            db.execute(
                "update outbox set state = 'sent', sent_at = ?, last_attempt_at = ?, attempts = attempts + 1,"
                " last_error = null where id = ? and payload = ?",
                [now, now, item.id, item.payload],
            )
            self._event(db, "sent", item.study_instance_uid, what=item.kind, key=item.key, to=item.destination)

    def mark_failed_attempt(self, item: OutboxItem, error: str, retry_at: float | None) -> None:
        """Record a failed delivery; `retry_at` None gives up (state failed, kept for the admin)."""
        with self._transaction() as db:
            db.execute(
                "update outbox set attempts = attempts + 1, last_error = ?, state = ?, next_attempt_at = ?,"
                " last_attempt_at = ? where id = ? and payload = ?",
                [error, "pending" if retry_at is not None else "failed", retry_at or 0, time.time(), item.id,
                 item.payload],
            )
            self._event(
                db, "send_failed", item.study_instance_uid, what=item.kind, key=item.key, error=error,
                gave_up=retry_at is None,
            )

    def resume_given_up(self, kind: str, destination: str) -> int:
        """A destination answered again: its given-up sends are queued afresh (attempts from zero)."""
        with self._transaction() as db:
            studies = [row["study_instance_uid"] for row in db.query(
                "select distinct study_instance_uid from outbox where state = 'failed' and kind = ? and destination = ?",
                [kind, destination])]
            cursor = db.execute(
                "update outbox set state = 'pending', attempts = 0, next_attempt_at = ? where state = 'failed'"
                " and kind = ? and destination = ?", [time.time(), kind, destination])
            for uid in studies:
                self._event(db, "sends_resumed", uid, what=kind, to=destination, by="node")
            return cursor.rowcount

    def probe_candidates(self, last_attempt_before: float) -> list[OutboxItem]:
        """One given-up send per destination that nothing else is trying, last tried before the time given:
        trying it again tells whether the destination is back (then the rest resume)."""
        rows = self._query(
            "select * from outbox o where o.id in (select min(id) from outbox where state = 'failed'"
            " group by kind, destination) and coalesce(o.last_attempt_at, 0) <= ?"
            " and not exists (select 1 from outbox p where p.state = 'pending' and p.kind = o.kind"
            " and p.destination = o.destination)",
            [last_attempt_before])
        return [_outbox_item(row) for row in rows]

    def requeue_sends(self, study_uids: Sequence[str] | None, by: str, include_sent: bool = False) -> int:
        """An admin re-queues sends without re-running the models: the given-up ones (and with
        `include_sent`, those already delivered, e.g. after the PACS lost them); None: every study."""
        states = ("failed", "sent") if include_sent else ("failed",)
        marks = ", ".join("?" * len(states))
        with self._transaction() as db:
            if study_uids is None:
                study_uids = [row["study_instance_uid"] for row in db.query(
                    f"select distinct study_instance_uid from outbox where state in ({marks})", list(states))]
            total = 0
            for uid in study_uids:
                cursor = db.execute(
                    f"update outbox set state = 'pending', attempts = 0, next_attempt_at = ? where"
                    f" study_instance_uid = ? and state in ({marks})", [time.time(), uid, *states])
                if cursor.rowcount:
                    self._event(db, "sends_resumed", uid, by=by, sends=cursor.rowcount, include_sent=include_sent)
                total += cursor.rowcount
            return total

    def discard_sends(self, study_uid: str, by: str) -> int:
        """An admin gives up for good on a study's given-up sends (the destination will never take them):
        they leave the failed count and are never probed again; audited. The files stay."""
        with self._transaction() as db:
            cursor = db.execute("update outbox set state = 'discarded' where study_instance_uid = ? and state = 'failed'",
                                [study_uid])
            if cursor.rowcount:
                self._event(db, "sends_discarded", study_uid, by=by, sends=cursor.rowcount, before="failed",
                            after="discarded")
            return cursor.rowcount

    def latest_payloads(self, study_uid: str) -> dict[Carrier, str]:
        """The last payload queued for the study per priority carrier (to re-publish a changed priority)."""
        rows = self._query(
            "select kind, payload from outbox where study_instance_uid = ? and key = ? order by id",
            [study_uid, study_uid])
        return {Carrier(row["kind"]): row["payload"] for row in rows if row["kind"] in {c.value for c in Carrier}}

def _outbox_item(row: dict[str, Any]) -> OutboxItem:
    return OutboxItem(id=row["id"], kind=row["kind"], key=row["key"], study_instance_uid=row["study_instance_uid"],
                      destination=row["destination"], payload=row["payload"], attempts=row["attempts"])
