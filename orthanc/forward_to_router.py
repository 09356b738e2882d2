"""Orthanc Python plugin: forward each stable study to the dicom-ai router, once, minus our own results.

It runs inside Orthanc (Debian's libOrthancPython.so, on the system Python 3.11, not the project's
virtualenv), so it uses only the `orthanc` module and the standard library.

Why a plugin and not Lua: Lua's SendToModality(studyId) is broken in Orthanc 1.10.1. Why a loop guard:
a study becomes stable again when the router's results arrive, so on every STABLE_STUDY we send only
the instances that (a) did not come over DICOM from the router's AE title and (b) carry no AiForwarded
metadata yet; after a successful C-STORE each sent instance gets AiForwarded = a UTC timestamp.
The work runs on one background thread (retries via threading.Timer), so Orthanc is never blocked; after
the last retry, POST /dicom-ai/forward/{study} queues a study again by hand. Settings come from the
"DicomAi" section of the Orthanc configuration; orthanc/README.md has the details.
"""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Protocol

try:
    import orthanc  # built into Orthanc's Python plugin
except ImportError:
    orthanc = None
# Outside Orthanc (unit tests of the pure functions below) `orthanc` is missing, or is the repo's
# orthanc/ folder seen as a namespace package: then nothing is registered.
IN_ORTHANC = hasattr(orthanc, "RegisterOnChangeCallback")

CONFIG_SECTION = "DicomAi"
META_FORWARDED = "AiForwarded"  # instance level, written here: when it went to the router
META_ORIGIN = "Origin"  # Orthanc's own instance metadata: how the instance arrived
META_REMOTE_AET = "RemoteAET"  # Orthanc's own instance metadata: the calling AE title, for DICOM
ORIGIN_DICOM = "DicomProtocol"  # value of Origin for instances received by C-STORE
DEFAULT_RETRY_COUNT = 5
DEFAULT_RETRY_DELAY = 10.0  # seconds before the first retry; doubles on each further one
STOP_TIMEOUT = 5.0  # seconds Orthanc waits at shutdown for a forward in progress
LOG_PREFIX = "dicom-ai forward: "
FORWARD_ROUTE = "/dicom-ai/forward/([^/]+)"  # POST: forward a study now (same rules as on STABLE_STUDY)


class ForwardConfigError(ValueError):
    """The "DicomAi" section of the Orthanc configuration is missing or wrong."""


@dataclass(frozen=True)
class ForwardSettings:
    """Where to forward and how hard to try."""

    router_modality: str  # key in DicomModalities, used in POST /modalities/{id}/store
    router_aet: str  # AE title the router uses when it sends results back (the loop guard)
    retry_count: int  # retries after a failed store; 0 = try once
    retry_delay: float  # seconds before the first retry


@dataclass(frozen=True)
class Selection:
    """Instances of one study, split by what the plugin does with them."""

    to_forward: tuple[str, ...]
    from_router: tuple[str, ...]
    already_forwarded: tuple[str, ...]


class RestApi(Protocol):
    """The part of Orthanc's in-process REST API the forwarder needs."""

    def get(self, uri: str) -> Any: ...

    def post(self, uri: str, body: str) -> Any: ...

    def put(self, uri: str, body: str) -> Any: ...


class PluginLog(Protocol):
    def info(self, message: str) -> None: ...

    def warning(self, message: str) -> None: ...

    def error(self, message: str) -> None: ...


def load_settings(configuration: Mapping[str, Any]) -> ForwardSettings:
    """Read and check the "DicomAi" section; raise ForwardConfigError naming the bad key."""
    section = configuration.get(CONFIG_SECTION)
    if not isinstance(section, Mapping):
        raise ForwardConfigError(
            f'the Orthanc configuration has no "{CONFIG_SECTION}" section: add one with RouterModality '
            f"and RouterAet (see orthanc/orthanc.json)"
        )
    values: dict[str, Any] = {}
    for key in ("RouterModality", "RouterAet"):
        value = section.get(key)
        if not isinstance(value, str) or not value.strip():
            raise ForwardConfigError(f"{CONFIG_SECTION}.{key} must be a non-empty string, got {value!r}")
        values[key] = value.strip()
    count = section.get("RetryCount", DEFAULT_RETRY_COUNT)
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise ForwardConfigError(f"{CONFIG_SECTION}.RetryCount must be an integer >= 0, got {count!r}")
    delay = section.get("RetryDelay", DEFAULT_RETRY_DELAY)
    if isinstance(delay, bool) or not isinstance(delay, (int, float)) or delay <= 0:
        raise ForwardConfigError(f"{CONFIG_SECTION}.RetryDelay must be a number of seconds > 0, got {delay!r}")
    return ForwardSettings(values["RouterModality"], values["RouterAet"], count, float(delay))


def came_from_router(metadata: Mapping[str, str], router_aet: str) -> bool:
    """True for an instance the router itself sent over DICOM (an AI result)."""
    return metadata.get(META_ORIGIN) == ORIGIN_DICOM and metadata.get(META_REMOTE_AET, "").strip() == router_aet


def select_instances(metadata_by_instance: Mapping[str, Mapping[str, str]], router_aet: str) -> Selection:
    """Split a study's instances (Orthanc id -> instance metadata) into forward / router's / already sent."""
    to_forward: list[str] = []
    from_router: list[str] = []
    already: list[str] = []
    for instance_id, metadata in metadata_by_instance.items():
        if came_from_router(metadata, router_aet):
            from_router.append(instance_id)
        elif META_FORWARDED in metadata:
            already.append(instance_id)
        else:
            to_forward.append(instance_id)
    return Selection(tuple(to_forward), tuple(from_router), tuple(already))


def retry_delay(retry: int, first_delay: float) -> float:
    """Seconds to wait before retry number `retry` (1-based): exponential backoff."""
    return first_delay * 2 ** (retry - 1)


def describe(exc: BaseException) -> str:
    """orthanc.OrthancException carries (code, description): say it as a sentence."""
    if len(exc.args) == 2 and isinstance(exc.args[0], int) and isinstance(exc.args[1], str):
        return f"{exc.args[1]} (Orthanc error {exc.args[0]}; details in the lines above)"
    return str(exc) or repr(exc)


def utc_timestamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class Forwarder:
    """Forwards stable studies on one worker thread; failed stores are retried by timers."""

    def __init__(self, settings: ForwardSettings, rest: RestApi, log: PluginLog) -> None:
        self.settings = settings
        self._rest = rest
        self._log = log
        self._queue: queue.Queue[tuple[str, int] | None] = queue.Queue()
        self._timers: set[threading.Timer] = set()
        self._lock = threading.Lock()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="dicom-ai-forward", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Cancel pending retries and let the worker finish what it is doing (bounded wait)."""
        with self._lock:
            self._stopping = True
            timers, self._timers = self._timers, set()
        for timer in timers:
            timer.cancel()
        self._queue.put(None)
        if self._thread.is_alive():
            self._thread.join(STOP_TIMEOUT)

    def submit(self, study_id: str, attempt: int = 0) -> None:
        """Queue a study; `attempt` counts earlier failed tries."""
        with self._lock:
            if self._stopping:
                return
        self._queue.put((study_id, attempt))

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            study_id, attempt = item
            try:
                self.forward(study_id, attempt)
            except Exception as exc:  # never let one study kill the worker
                self._log.error(f"{LOG_PREFIX}study {study_id}: unexpected error: {exc!r}")

    def forward(self, study_id: str, attempt: int = 0) -> None:
        """Send the study's not-yet-forwarded, not-from-router instances, then mark them."""
        try:
            selection = self._select(study_id)
        except Exception as exc:  # typically: the study was deleted since it became stable
            self._log.warning(f"{LOG_PREFIX}study {study_id}: cannot list its instances, skipped: {describe(exc)}")
            return
        if not selection.to_forward:
            self._log.warning(
                f"{LOG_PREFIX}study {study_id}: nothing to forward ({len(selection.from_router)} from "
                f"{self.settings.router_aet}, {len(selection.already_forwarded)} already forwarded)"
            )
            return
        modality = self.settings.router_modality
        body = json.dumps({"Resources": list(selection.to_forward), "Synchronous": True})
        try:
            answer = json.loads(self._rest.post(f"/modalities/{modality}/store", body))
            failed = answer.get("FailedInstancesCount", 0) if isinstance(answer, dict) else 0
            if failed:
                raise RuntimeError(f"{failed} of {len(selection.to_forward)} instance(s) failed")
        except Exception as exc:
            self._retry_or_give_up(study_id, attempt, len(selection.to_forward), describe(exc))
            return
        stamp = utc_timestamp()
        unmarked = 0
        for instance_id in selection.to_forward:
            try:
                self._rest.put(f"/instances/{instance_id}/metadata/{META_FORWARDED}", stamp)
            except Exception as exc:  # the instance would be forwarded again next time: say so
                unmarked += 1
                self._log.error(
                    f"{LOG_PREFIX}instance {instance_id}: forwarded but cannot set {META_FORWARDED} "
                    f"(is it declared in UserMetadata?): {describe(exc)}"
                )
        skipped = ""
        if selection.from_router or selection.already_forwarded or unmarked:
            skipped = (
                f"; skipped {len(selection.from_router)} from {self.settings.router_aet}, "
                f"{len(selection.already_forwarded)} already forwarded"
                f"{f'; {unmarked} left unmarked' if unmarked else ''}"
            )
        self._log.warning(
            f"{LOG_PREFIX}study {study_id}: forwarded {len(selection.to_forward)} instance(s) to modality "
            f"{modality} on attempt {attempt + 1}{skipped}"
        )

    def _select(self, study_id: str) -> Selection:
        instances = json.loads(self._rest.get(f"/studies/{study_id}/instances"))
        metadata = {
            item["ID"]: json.loads(self._rest.get(f"/instances/{item['ID']}/metadata?expand")) for item in instances
        }
        return select_instances(metadata, self.settings.router_aet)

    def _retry_or_give_up(self, study_id: str, attempt: int, count: int, reason: str) -> None:
        modality = self.settings.router_modality
        retry = attempt + 1
        if retry > self.settings.retry_count:
            self._log.error(
                f"{LOG_PREFIX}study {study_id}: giving up after {attempt + 1} attempt(s) to store {count} "
                f"instance(s) to modality {modality}: {reason}. Check that the router is listening, then "
                f"resend with POST /dicom-ai/forward/{study_id}"
            )
            return
        delay = retry_delay(retry, self.settings.retry_delay)
        self._log.warning(
            f"{LOG_PREFIX}study {study_id}: store of {count} instance(s) to modality {modality} failed "
            f"({reason}); retry {retry}/{self.settings.retry_count} in {delay:g} s"
        )
        timer = threading.Timer(delay, self._fire_retry, (study_id, retry))
        timer.daemon = True
        with self._lock:
            if self._stopping:
                return
            self._timers.add(timer)
        timer.start()

    def _fire_retry(self, study_id: str, attempt: int) -> None:
        with self._lock:
            self._timers.discard(threading.current_thread())  # type: ignore[arg-type]  # the Timer itself
        self.submit(study_id, attempt)


class _OrthancRest:
    """RestApi over the plugin SDK (calls Orthanc in-process, no HTTP, no credentials)."""

    def get(self, uri: str) -> Any:
        return orthanc.RestApiGet(uri)

    def post(self, uri: str, body: str) -> Any:
        return orthanc.RestApiPost(uri, body)

    def put(self, uri: str, body: str) -> Any:
        return orthanc.RestApiPut(uri, body)


class _OrthancLog:
    def info(self, message: str) -> None:
        orthanc.LogInfo(message)

    def warning(self, message: str) -> None:
        orthanc.LogWarning(message)

    def error(self, message: str) -> None:
        orthanc.LogError(message)


def _check_router_modality(settings: ForwardSettings, rest: RestApi, log: PluginLog) -> None:
    """At start-up (the REST API is unusable during plugin init): warn early about a missing modality."""
    try:
        modalities = json.loads(rest.get("/modalities"))
    except Exception as exc:
        log.error(f"{LOG_PREFIX}cannot list DicomModalities: {describe(exc)}")
        return
    if settings.router_modality not in modalities:
        log.error(
            f'{LOG_PREFIX}{CONFIG_SECTION}.RouterModality is "{settings.router_modality}", but DicomModalities '
            f"has only {sorted(modalities)}: add it, or nothing can be forwarded"
        )
    else:
        log.warning(
            f"{LOG_PREFIX}ready: stable studies go to modality {settings.router_modality}; instances from "
            f"{settings.router_aet} are never forwarded"
        )


def _install() -> None:
    log = _OrthancLog()
    try:
        settings = load_settings(json.loads(orthanc.GetConfiguration()))
    except ForwardConfigError as exc:
        log.error(f"{LOG_PREFIX}{exc}")
        raise
    rest = _OrthancRest()
    forwarder = Forwarder(settings, rest, log)
    forwarder.start()
    import ai_worklist  # beside this script: Orthanc puts the script's folder on sys.path

    stamp_arrival = ai_worklist.install(orthanc, rest.get, rest.put, log)

    def on_change(change_type: int, level: int, resource_id: str) -> None:
        if change_type == orthanc.ChangeType.STABLE_STUDY:
            log.info(f"{LOG_PREFIX}study {resource_id} is stable, queued")
            forwarder.submit(resource_id)
        elif change_type == orthanc.ChangeType.NEW_STUDY:
            stamp_arrival(resource_id)
        elif change_type == orthanc.ChangeType.ORTHANC_STARTED:
            _check_router_modality(settings, rest, log)
        elif change_type == orthanc.ChangeType.ORTHANC_STOPPED:
            forwarder.stop()

    def on_forward_request(output: Any, uri: str, **request: Any) -> None:
        """POST /dicom-ai/forward/{study}: queue a study by hand (after the plugin gave up), loop guard kept."""
        if request["method"] != "POST":
            output.SendMethodNotAllowed("POST")
            return
        study_id = request["groups"][0]
        try:
            rest.get(f"/studies/{study_id}")
        except Exception:
            message = f"no study with Orthanc id {study_id} (use the id from /studies, not the StudyInstanceUID)"
            output.SendHttpStatus(404, message, len(message))
            return
        forwarder.submit(study_id)
        output.AnswerBuffer(json.dumps({"Study": study_id, "Queued": True}), "application/json")

    orthanc.RegisterOnChangeCallback(on_change)
    orthanc.RegisterRestCallback(FORWARD_ROUTE, on_forward_request)


if IN_ORTHANC:
    _install()
