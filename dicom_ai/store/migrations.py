"""Named, ordered schema migrations: a new column or table is a new function, never an edit."""

from __future__ import annotations

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

migrations = Migrations("dicom_ai")


@migrations(name="001_initial")
def _initial(db: Database) -> None:
    db.table("studies").create(
        {
            "study_instance_uid": str,
            "patient_id": str,
            "patient_name": str,
            "accession_number": str,
            "study_date": str,
            "study_description": str,
            "state": str,
            "first_received_at": float,
            "last_received_at": float,
            "completed_at": float,
            "processed_at": float,
            "instance_count": int,
            "error": str,
            "priority": str,
            "priority_score": float,
            "priority_reasons": str,  # JSON list of strings
            "rules": str,  # JSON list of rule names that matched
            "models": str,  # JSON list of model name@version that ran
        },
        pk="study_instance_uid",
        not_null={"state"},
    )
    db.table("studies").create_index(["state", "last_received_at"])
    db.table("instances").create(
        {
            "sop_instance_uid": str,
            "sop_class_uid": str,
            "series_instance_uid": str,
            "study_instance_uid": str,
            "modality": str,
            "transfer_syntax_uid": str,
            "path": str,
            "size": int,
            "calling_aet": str,
            "received_at": float,
            "receive_count": int,
        },
        pk="sop_instance_uid",
        foreign_keys=[("study_instance_uid", "studies", "study_instance_uid")],
    )
    db.table("instances").create_index(["study_instance_uid", "series_instance_uid"])
    db.table("results").create(
        {
            "sop_instance_uid": str,
            "study_instance_uid": str,
            "series_instance_uid": str,
            "kind": str,  # SR | SC
            "model": str,
            "model_version": str,
            "path": str,
            "created_at": float,
        },
        pk="sop_instance_uid",
    )
    db.table("results").create_index(["study_instance_uid"])
    db.table("findings").create(
        {
            "id": int,
            "study_instance_uid": str,
            "sop_instance_uid": str,  # the analysed source image
            "model": str,
            "model_version": str,
            "label": str,
            "code_value": str,
            "code_scheme": str,
            "probability": float,
            "threshold": float,
            "present": int,
            "created_at": float,
        },
        pk="id",
    )
    db.table("findings").create_index(["study_instance_uid", "sop_instance_uid", "model", "label"], unique=True)
    db.table("outbox").create(
        {
            "id": int,
            "kind": str,  # dicom | orthanc_metadata
            "key": str,  # SOP Instance UID, or the study UID for metadata
            "study_instance_uid": str,
            "destination": str,
            "payload": str,  # a file path, or JSON
            "state": str,  # pending | sent | failed
            "attempts": int,
            "next_attempt_at": float,
            "last_error": str,
            "created_at": float,
            "sent_at": float,
        },
        pk="id",
        not_null={"state"},
    )
    db.table("outbox").create_index(["kind", "key", "destination"], unique=True)
    db.table("outbox").create_index(["state", "next_attempt_at"])
    db.table("events").create(
        {"id": int, "at": float, "kind": str, "study_instance_uid": str, "detail": str},
        pk="id",
    )
    db.table("events").create_index(["study_instance_uid"])


@migrations(name="002_priority_override")
def _priority_override(db: Database) -> None:
    """A radiologist's override of the AI priority, kept beside it (both are shown)."""
    db.table("studies").add_column("priority_override", str)
    db.table("studies").add_column("priority_override_reason", str)
    db.table("studies").add_column("priority_override_by", str)
    db.table("studies").add_column("priority_override_at", float)


@migrations(name="003_studies_by_arrival")
def _studies_by_arrival(db: Database) -> None:
    """`dicom-ai studies` and the worklist list newest first; without this they sort every row."""
    db.table("studies").create_index(["last_received_at"])


@migrations(name="004_retention")
def _retention(db: Database) -> None:
    """When a finished study's files were deleted after `retention_days` (its records stay)."""
    db.table("studies").add_column("purged_at", float)


@migrations(name="005_hardening")
def _hardening(db: Database) -> None:
    """Replaced instances, result revisions, a quiet clock that downtime does not run, resumable sends.

    - studies.revision: bumped when an instance's content is replaced or moves out, so the next
      results get new UIDs (the PACS would otherwise keep the stale objects under the old ones);
    - studies.quiet_since: when the quiet period started (each receive, and each start of the node:
      the wall clock that ran while nothing could arrive is not quiet time);
    - results.superseded_by: the SR that replaced this result after the study changed;
    - outbox.last_attempt_at: given-up sends are probed again from it;
    - trash: files whose rows were switched to a newer copy; deleted after the commit, and at start
      after a crash in between.
    """
    db.table("studies").add_column("revision", int, not_null_default=0)
    db.table("studies").add_column("quiet_since", float)
    db.execute("update studies set quiet_since = last_received_at")
    db.table("studies").create_index(["state", "quiet_since"])
    db.table("results").add_column("superseded_by", str)
    db.table("results").add_column("revision", int, not_null_default=0)
    db.table("results").create_index(["study_instance_uid", "model"])
    db.table("outbox").add_column("last_attempt_at", float)
    db.table("trash").create({"path": str, "at": float}, pk="path")


@migrations(name="006_studies_by_patient")
def _studies_by_patient(db: Database) -> None:
    """The worklist of one patient and the patient's prior findings look studies up by PatientID."""
    db.table("studies").create_index(["patient_id"])


@migrations(name="007_validation")
def _validation(db: Database) -> None:
    """The clinical validation loop: judgements, inbound reports, what each model saw, drift checks.

    - feedback: every judgement of a model's label on a study, never updated (the latest of a
      source counts; a radiologist's outranks one derived from a report);
    - hl7_reports: final reports received over MLLP, matched to a study or waiting for it;
    - analysed_images: the input properties of each image a model analysed (drift, subgroups);
    - drift_checks: the latest PSI and KS test per model, ISO week and variable.
    """
    db.table("feedback").create(
        {
            "id": int,
            "study_instance_uid": str,
            "model": str,
            "label": str,
            "truth": str,  # present | absent | uncertain
            "source": str,  # radiologist | report
            "by": str,
            "comment": str,
            "report_id": int,
            "at": float,
        },
        pk="id",
        not_null={"study_instance_uid", "model", "label", "truth", "source"},
    )
    db.table("feedback").create_index(["model", "study_instance_uid", "label"])
    db.table("hl7_reports").create(
        {
            "id": int,
            "received_at": float,
            "control_id": str,
            "sender": str,
            "accession_number": str,
            "patient_id": str,
            "study_date": str,
            "status": str,  # pending | matched
            "study_instance_uid": str,
            "matched_at": float,
            "message": str,  # the ER7 text as received
            "outcome": str,  # what was derived, in words
        },
        pk="id",
        not_null={"status"},
    )
    db.table("hl7_reports").create_index(["status"])
    db.table("analysed_images").create(
        {
            "sop_instance_uid": str,
            "model": str,
            "study_instance_uid": str,
            "calling_aet": str,
            "manufacturer": str,
            "station_name": str,
            "body_part": str,
            "modality": str,
            "photometric": str,
            "rows": int,
            "columns": int,
            "pixel_spacing": float,
            "kvp": float,
            "field_strength": float,
            "patient_sex": str,
            "patient_age": float,
            "analysed_at": float,
        },
        pk=("sop_instance_uid", "model"),
    )
    db.table("analysed_images").create_index(["model", "analysed_at"])
    db.table("analysed_images").create_index(["study_instance_uid"])
    db.table("drift_checks").create(
        {
            "model": str,
            "week": str,  # ISO week, e.g. 2026-W48
            "variable": str,  # score:<label> or a property (rows, manufacturer...)
            "cases": int,
            "psi": float,
            "ks_p": float,  # None for categorical variables
            "flagged": int,
            "checked_at": float,
        },
        pk=("model", "week", "variable"),
    )
    db.table("findings").create_index(["model", "study_instance_uid"])
    db.table("studies").create_index(["accession_number"])
    db.table("studies").create_index(["processed_at"])


@migrations(name="008_rule_versions")
def _rule_versions(db: Database) -> None:
    """Every activated text of a rules file, with its author, time and unified diff, for history and restore."""
    db.table("rule_versions").create(
        {"id": int, "file_name": str, "author": str, "created": float, "text": str, "diff": str},
        pk="id",
        not_null={"file_name", "author", "created", "text", "diff"},
    )
    db.table("rule_versions").create_index(["file_name", "id"])


@migrations(name="009_waiting_for_window")
def _waiting_for_window(db: Database) -> None:
    """When a study that waits for a model's time window (state waiting) is queued again."""
    db.table("studies").add_column("waiting_until", float)


@migrations(name="010_console_accounts")
def _console_accounts(db: Database) -> None:
    """The console's people: accounts (argon2 hashes), server-side sessions, and failed sign-ins.

    - users: one row per account; `role` is admin, radiologist or viewer;
    - sessions: a signed-in browser; only the SHA-256 of its cookie is kept (a copy of the database
      signs nobody in), with its CSRF token and when it was last used (idle expiry);
    - login_failures: per user name and per address, how many sign-ins failed in a row and when the
      last did: the next try waits longer each time.
    """
    db.table("users").create(
        {"name": str, "role": str, "password_hash": str, "created_at": float, "password_changed_at": float},
        pk="name", not_null={"role", "password_hash"},
    )
    db.table("sessions").create(
        {"token_hash": str, "user_name": str, "csrf_token": str, "created_at": float, "last_seen_at": float},
        pk="token_hash", foreign_keys=[("user_name", "users", "name")],
    )
    db.table("sessions").create_index(["user_name"])
    db.table("login_failures").create({"key": str, "failures": int, "last_at": float}, pk="key")
    db.table("events").create_index(["kind", "at"])
    db.table("outbox").create_index(["state", "sent_at"])  # the dashboard's and /metrics' turnaround
    db.table("outbox").create_index(["kind", "state", "created_at"])  # sends per carrier, without reading rows
    db.table("instances").create_index(["calling_aet", "receive_count"])  # /metrics: instances per calling AE


@migrations(name="011_model_switches")
def _model_switches(db: Database) -> None:
    """Models an admin switched off in the console: kept in models_dir, routed to, but not run."""
    db.table("model_switches").create({"name": str, "enabled": int, "by": str, "at": float}, pk="name")


@migrations(name="012_study_claims")
def _study_claims(db: Database) -> None:
    """Which worker process holds a study in processing (see dicom_ai/procs/): when that worker dies, the
    supervisor puts exactly its studies back in the queue while the other workers keep theirs.

    - studies.claimed_by: the claiming worker's id (`worker-N:<boot token>`, new at each start of a worker);
    - studies.claimed_at: when it claimed the study.
    """
    db.table("studies").add_column("claimed_by", str)
    db.table("studies").add_column("claimed_at", float)
    db.table("studies").create_index(["claimed_by"])


@migrations(name="013_console_speed")
def _console_speed(db: Database) -> None:
    """Indexes that let the dashboard, `dicom-ai status` and /metrics answer without reading every row.

    - studies done with an error (a skipped carrier): a partial index, holding only those rows;
    - the turnaround's SR sends in the last 24 h, by carrier: read from the index alone, each joined
      to its result's kind through another;
    - the oldest pending send: the first entry of (state, created_at), no sort;
    - the bytes held: summed over the sizes' index instead of the instances' rows;
    - sends by carrier and state: counted in `outbox_counts` by triggers, in the transaction that
      adds or changes the send, instead of by counting every send the node ever made at each read.
    """
    db.execute("create index if not exists idx_studies_done_with_error on studies (state) where error is not null")
    db.table("outbox").create_index(["state", "kind", "sent_at", "key", "study_instance_uid"], if_not_exists=True)
    db.table("outbox").create_index(["state", "created_at"], if_not_exists=True)
    db.table("results").create_index(["sop_instance_uid", "kind"], if_not_exists=True)
    db.table("instances").create_index(["size"], if_not_exists=True)
    # `is`, not `=`: a send without a kind is counted too, as a group by counts it.
    bump = ("update outbox_counts set n = n + 1 where kind is new.kind and state is new.state;"
            " insert into outbox_counts (kind, state, n) select new.kind, new.state, 1 where not exists"
            " (select 1 from outbox_counts where kind is new.kind and state is new.state);")
    drop = "update outbox_counts set n = n - 1 where kind is old.kind and state is old.state;"
    for statement in (  # one at a time: executescript would commit the migration's transaction midway
            "create table outbox_counts (kind text, state text, n integer not null)",
            "insert into outbox_counts (kind, state, n) select kind, state, count(*) from outbox group by kind, state",
            f"create trigger outbox_counts_insert after insert on outbox begin {bump} end",
            f"create trigger outbox_counts_delete after delete on outbox begin {drop} end",
            ("create trigger outbox_counts_update after update of kind, state on outbox"
             f" when old.kind is not new.kind or old.state is not new.state begin {drop} {bump} end")):
        db.execute(statement)
