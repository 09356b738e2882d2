"""The console's state changes, shared by its pages and its API: each calls the function the CLI
calls (pipeline.apply_override, StudyStore.requeue, OutboxStore.requeue_sends,
validation.record_feedback), so a change made in the browser is the same change, with the same
audit event, as one made with `dicom-ai`."""

from __future__ import annotations

from dicom_ai.domain import Judgement, Override, Priority, Truth, TruthSource
from dicom_ai.pipeline import apply_override
from dicom_ai.store.accounts import User
from dicom_ai.validation import FeedbackError, record_feedback
from dicom_ai.web.context import WebContext

NOT_FOUND = 404
BAD_REQUEST = 400
UNAVAILABLE = 503


class ActionError(Exception):
    """A refused action: an HTTP status and a one-line reason for the person who asked."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _stores(ctx: WebContext):  # type: ignore[no-untyped-def]
    if ctx.stores is None or ctx.settings is None:
        raise ActionError(UNAVAILABLE, "this server only reads: changes are made on the running node")
    return ctx.stores, ctx.settings


def override_priority(ctx: WebContext, user: User, study_uid: str, level: str, reason: str) -> str:
    """A radiologist's priority (level STAT, URGENT, ROUTINE; or CLEAR); the reason is required."""
    stores, settings = _stores(ctx)
    level = level.strip().upper()
    if level != "CLEAR" and level not in Priority.__members__:
        raise ActionError(BAD_REQUEST, f"priority {level!r}: choose STAT, URGENT, ROUTINE or CLEAR")
    if not reason.strip():
        raise ActionError(BAD_REQUEST, "a reason is required: the override is audited and shown in the worklist")
    override = Override(None if level == "CLEAR" else Priority[level], reason.strip(), user.name)
    if not apply_override(stores, settings, study_uid, override):
        raise ActionError(NOT_FOUND, f"no study {study_uid} with an AI priority on this node")
    return f"{study_uid}: priority {override.describe()}"


def give_feedback(ctx: WebContext, user: User, study_uid: str, model: str, label: str, truth: str,
                  comment: str) -> str:
    """A radiologist's judgement of one finding, as `dicom-ai feedback` records it: the signed-in user is
    `by`; the store audits it (`judged`) and the model's assessment SR is queued for the PACS."""
    stores, settings = _stores(ctx)
    truth = truth.strip().lower()
    if truth not in {t.value for t in Truth}:
        raise ActionError(BAD_REQUEST, f"truth {truth!r}: choose present, absent or uncertain")
    if not model.strip() or not label.strip():
        raise ActionError(BAD_REQUEST, "name the model and the finding (label) judged")
    judgement = Judgement(study_uid, model.strip(), label.strip(), Truth(truth), TruthSource.RADIOLOGIST, user.name,
                          comment.strip())
    try:
        assessment = record_feedback(stores, settings, judgement)
    except FeedbackError as exc:
        raise ActionError(NOT_FOUND if stores.reports.study(study_uid) is None else BAD_REQUEST, str(exc)) from None
    sent = f"; assessment SR {assessment} queued for the PACS" if assessment else ""
    return f"{judgement.model} {judgement.label} judged {truth} by {user.name}{sent}"


def retry_study(ctx: WebContext, user: User, study_uid: str) -> str:
    stores, _ = _stores(ctx)
    if stores.studies.requeue(study_uid, by=user.name):
        return f"{study_uid}: queued; the node processes it within seconds"
    row = stores.reports.study(study_uid)
    if row is None:
        raise ActionError(NOT_FOUND, f"no study {study_uid} on this node")
    if row.purged_at is not None:
        raise ActionError(BAD_REQUEST, f"{study_uid}: its files were deleted after retention_days; send it again from the PACS")
    raise ActionError(BAD_REQUEST, f"{study_uid} is {row.state}: only done, no_match or failed studies can be retried")


def set_model_enabled(ctx: WebContext, user: User, name: str, enabled: bool) -> str:
    """Switch a model off (its folder stays; rules still name it; studies say it was not run) or on again."""
    if ctx.switches is None or ctx.models is None:
        raise ActionError(UNAVAILABLE, "this server only reads: changes are made on the running node")
    if name not in ctx.models.names():
        raise ActionError(NOT_FOUND, f"no model {name!r} in models_dir (there: {', '.join(ctx.models.names()) or 'none'})")
    changed = ctx.switches.set_enabled(name, enabled, by=user.name)
    state = "on" if enabled else "off"
    return f"{name} switched {state}" if changed else f"{name} was already {state}"


def discard_study(ctx: WebContext, user: User, study_uid: str) -> str:
    stores, _ = _stores(ctx)
    if not stores.studies.discard_failed(study_uid, by=user.name):
        raise ActionError(BAD_REQUEST, f"{study_uid} is not a failed study: only failed studies can be discarded")
    return f"{study_uid}: discarded (kept as no_match, without results; retry still processes it)"


def resend(ctx: WebContext, user: User, study_uid: str) -> str:
    stores, _ = _stores(ctx)
    queued = stores.outbox.requeue_sends([study_uid], by=user.name)
    if not queued:
        raise ActionError(BAD_REQUEST, f"{study_uid} has no given-up sends")
    return f"{study_uid}: {queued} given-up send(s) queued again"


def discard_sends(ctx: WebContext, user: User, study_uid: str) -> str:
    stores, _ = _stores(ctx)
    dropped = stores.outbox.discard_sends(study_uid, by=user.name)
    if not dropped:
        raise ActionError(BAD_REQUEST, f"{study_uid} has no given-up sends")
    return f"{study_uid}: {dropped} given-up send(s) discarded (the files stay)"
