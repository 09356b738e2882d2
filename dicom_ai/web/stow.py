"""POST /dicom-web/studies and /dicom-web/studies/{StudyInstanceUID}: DICOMweb STOW-RS for senders that push
over HTTP (VNAs, cloud archives), with the SCP's durability (receive/stow.py keeps each part).

The body is read as it arrives and handed to the upload on a worker thread (writing, fsync and the
commit never block the event loop); the answer leaves only after every instance it names as stored
is on disk and committed. Optional HTTP Basic credentials (stow_receive_user/password) are checked
first; a declared body over the maximum is refused before a byte of it is read, a streamed one as
soon as it passes the maximum (what was kept until then stays kept and is listed).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from anyio import to_thread
from starlette.requests import ClientDisconnect, Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from dicom_ai.receive.stow import StowError, StowOutcome, StowUpload, boundary_of

if TYPE_CHECKING:
    from dicom_ai.store import Spool, StudyStore

log = logging.getLogger(__name__)

PREFIX = "/dicom-web"
DICOM_JSON = "application/dicom+json"
UNAUTHORIZED = 401
PAYLOAD_TOO_LARGE = 413
REALM = 'Basic realm="dicom-ai STOW-RS", charset="UTF-8"'


@dataclass(frozen=True)
class StowReceive:
    """What the endpoint needs: where instances go, the body limit, and the senders' credentials."""

    spool: Spool
    store: StudyStore
    max_bytes: int
    user: str | None = None
    password: str | None = None


def routes(receive: StowReceive) -> list[Route]:
    async def store_instances(request: Request) -> Response:
        return await _store_instances(request, receive)

    return [Route(f"{PREFIX}/studies", store_instances, methods=["POST"]),
            Route(f"{PREFIX}/studies/{{study}}", store_instances, methods=["POST"])]


async def _store_instances(request: Request, receive: StowReceive) -> Response:
    sender = f"{request.client.host if request.client else '?'} over STOW-RS"
    if not _authorised(request, receive):
        log.warning("refused a STOW-RS request from %s: wrong or no credentials", sender)
        return PlainTextResponse("credentials needed: HTTP Basic (stow_receive_user)\n", UNAUTHORIZED,
                                 headers={"WWW-Authenticate": REALM})
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > receive.max_bytes:
        return _too_large(sender, receive, None)
    try:
        upload = StowUpload(boundary_of(request.headers.get("content-type", "")), receive.spool, receive.store,
                            sender=sender, study_uid=request.path_params.get("study"))
    except StowError as exc:
        log.warning("refused a STOW-RS request from %s: %s", sender, exc)
        return PlainTextResponse(f"{exc}\n", exc.http_status)
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > receive.max_bytes:
                await to_thread.run_sync(upload.abandon)
                return _too_large(sender, receive, upload.outcome)
            if chunk:
                await to_thread.run_sync(upload.feed, chunk)
        outcome = await to_thread.run_sync(upload.finish)
    except ClientDisconnect:  # nobody reads an answer: what was kept stays kept, a cut-off part is dropped
        await to_thread.run_sync(upload.abandon)
        log.warning("upload from %s ended mid-way after %d byte(s): %d instance(s) kept, the part in transfer "
                    "dropped", sender, received, len(upload.outcome.stored))
        return Response(status_code=400)
    except StowError as exc:
        log.warning("upload from %s refused: %s", sender, exc)
        if exc.outcome is None or not exc.outcome.parts:
            return PlainTextResponse(f"{exc}\n", exc.http_status)
        return _dicom_json(exc.http_status, exc.outcome.answer())
    return _dicom_json(outcome.http_status, outcome.answer())


def _authorised(request: Request, receive: StowReceive) -> bool:
    if receive.user is None or receive.password is None:
        return True
    scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        user, _, password = base64.b64decode(encoded, validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return False
    # Both compared whatever the first gave, in constant time: no timing hint of a right user name.
    right_user = hmac.compare_digest(user.encode(), receive.user.encode())
    right_password = hmac.compare_digest(password.encode(), receive.password.encode())
    return right_user and right_password


def _too_large(sender: str, receive: StowReceive, outcome: StowOutcome | None) -> Response:
    limit = f"{receive.max_bytes / 1e6:g} MB"
    log.warning("refused a STOW-RS request from %s: larger than stow_receive_max_mb (%s)%s", sender, limit,
                f"; {len(outcome.stored)} instance(s) kept before the limit" if outcome and outcome.stored else "")
    if outcome is None or not outcome.parts:
        return PlainTextResponse(f"the request is larger than this node takes ({limit}): send fewer instances "
                                 "per request\n", PAYLOAD_TOO_LARGE, headers={"Connection": "close"})
    return _dicom_json(PAYLOAD_TOO_LARGE, outcome.answer(), headers={"Connection": "close"})


def _dicom_json(http_status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(body), http_status, headers=headers, media_type=DICOM_JSON)
