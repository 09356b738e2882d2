"""Settings: embedded defaults, then one TOML file, then DICOM_AI_* environment variables.

Every key of the file can be overridden by the environment variable DICOM_AI_<KEY upper-cased>,
so a container or a systemd unit never needs to edit the file. A bad value stops start-up with
one line naming the key, where it came from and the problem.
"""

from __future__ import annotations

import os
import re
import ssl
import tomllib
from pathlib import Path
from typing import Any, Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from dicom_ai.domain import TurnaroundTargets
from dicom_ai.tls import ClientTls, TlsError, client_tls, server_context

ENV_PREFIX = "DICOM_AI_"
CONFIG_ENV = "DICOM_AI_CONFIG"  # path of the TOML file; not itself a setting
_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # 16 chars of the default repertoire, no backslash
_PEER = re.compile(r"^(?P<aet>[^@]{1,16})@(?P<host>[^:@]+):(?P<port>\d{1,5})$")
_REPO_ROOT = Path(__file__).resolve().parent.parent
# Upper bounds of the time settings: far beyond any sensible value, and far below what breaks the
# scheduler (datetime overflows past year 9999) or the retry backoff (2**attempts as a float).
WEEK_S = 7 * 86400.0
YEAR_MINUTES = 365 * 1440.0
CENTURY_DAYS = 36500.0
MAX_SEND_ATTEMPTS = 1000


class ConfigError(Exception):
    """A setting is missing or wrong; the message is one line naming the key."""


class Peer(BaseModel):
    """A remote DICOM application entity written as AE@host:port."""

    model_config = ConfigDict(frozen=True)

    aet: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Peer:
        match = _PEER.match(text.strip())
        if not match:
            raise ValueError(f"expected AE@host:port (e.g. ORTHANC@127.0.0.1:4242), got {text!r}")
        port = int(match["port"])
        if not 0 < port < 65536:
            raise ValueError(f"port {port} is out of range 1-65535")
        return cls(aet=match["aet"].strip(), host=match["host"], port=port)

    def __str__(self) -> str:
        return f"{self.aet}@{self.host}:{self.port}"


class Settings(BaseModel):
    """Everything the node needs; see README.md, section Configuration, for each key."""

    # allow_inf_nan=False: 'inf' or 'nan' parse as floats and pass gt=0, then break the scheduler.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    home: Path = Field(default=Path(".state"), description="state directory: database and spool")
    ae: str = Field(default="DICOM_AI", description="our AE title")
    host: str = Field(default="0.0.0.0", description="address the DICOM SCP listens on")
    port: int = Field(default=11112, ge=1, le=65535, description="DICOM port")
    allowed_calling_aets: tuple[str, ...] = Field(
        default=(), description="calling AE titles allowed to associate, comma-separated (empty: any)")
    pacs: Peer | None = Field(default=None, description="where results go, AE@host:port")
    stow_url: str | None = Field(
        default=None, description="DICOMweb root where results also go by STOW-RS, e.g. http://127.0.0.1:8042/dicom-web")
    stow_user: str | None = Field(default=None, description="HTTP Basic user for stow_url, if any")
    stow_password: str | None = Field(default=None, validate_default=True, description="its password")
    stow_token: str | None = Field(
        default=None, validate_default=True, description="bearer token for stow_url (instead of a user and password)")
    orthanc_url: str | None = Field(default=None, description="Orthanc REST URL for priority flags")
    orthanc_user: str | None = Field(default=None, description="Orthanc REST user, if any")
    orthanc_password: str | None = Field(default=None, description="Orthanc REST password")
    rules_dir: Path = Field(default=_REPO_ROOT / "rules", description="routing rules (*.yaml)")
    models_dir: Path = Field(default=_REPO_ROOT / "models", description="model folders")
    stable_after: float = Field(default=5.0, gt=0, le=WEEK_S, description="quiet seconds before a study is complete")
    heatmaps: Literal["all", "positive", "none"] = Field(default="all", description="which images get a heatmap SC")
    heatmap_objects: tuple[Literal["sc", "pm"], ...] = Field(
        default=("sc",), description="objects per heatmap, comma-separated: sc (Secondary Capture), pm (also a "
        "Parametric Map viewers overlay on the image)")
    onnx_fast_path: bool = Field(default=True, description="run a model's ONNX copy with onnxruntime when it has one")
    workers: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=0, le=256,
                         description="pipeline worker processes, each holding the models (0: the whole node in one process)")
    worker_nice: int = Field(default=19, ge=0, le=19, description="niceness added to the pipeline worker processes, "
                             "so the receiver gets the CPU first when both want it (0: same priority)")
    receivers: int = Field(default=1, ge=1, le=64, description="C-STORE SCP processes sharing the DICOM port "
                           "(SO_REUSEPORT; with workers >= 1)")
    executor: Literal["local", "ray"] = Field(
        default="local", description="where models run: local (in this node's processes) or ray (on Ray actors)")
    ray_address: str | None = Field(
        default=None, description="Ray cluster to join, e.g. 10.0.0.5:6379 (none: RAY_ADDRESS, else a local Ray)")
    ray_actor_cpus: int = Field(default=1, ge=1, le=1024, description="CPUs each model actor reserves (its torch threads)")
    send_retry_initial: float = Field(default=5.0, gt=0, le=WEEK_S, description="first retry delay, seconds")
    send_retry_max: float = Field(default=600.0, gt=0, le=WEEK_S, description="longest retry delay, seconds")
    send_max_attempts: int = Field(default=20, ge=1, le=MAX_SEND_ATTEMPTS, description="attempts before a result is given up")
    mwl_dir: Path | None = Field(default=None, description="write a worklist .wl file per study here (Orthanc's worklist plugin folder)")
    hl7_mllp: str | None = Field(default=None, description="send an HL7 v2.5 ORU^R01 per result to this host:port (MLLP)")
    hl7_receiving_application: str = Field(default="RIS", max_length=20, description="MSH-5 of those messages")
    hl7_receiving_facility: str = Field(default="", max_length=20, description="MSH-6 of those messages")
    hl7_listen: str | None = Field(
        default=None, description="receive final reports (HL7 ORU^R01 over MLLP) on this host:port, e.g. 127.0.0.1:2575")
    drift_psi: float = Field(
        default=0.25, gt=0, le=100, description="flag a model whose week of scores or input properties reaches this "
        "population stability index against its card's reference (numeric ones also need KS p < 0.01)")
    drift_min_cases: int = Field(default=50, ge=1, le=1_000_000, description="values a week needs before it is checked for drift")
    drift_interval: float = Field(default=3600.0, gt=0, le=WEEK_S, description="seconds between drift checks of the running node")
    webhook_url: str | None = Field(default=None, description="POST a JSON notice here for results at webhook_levels")
    webhook_levels: tuple[Literal["STAT", "URGENT", "ROUTINE"], ...] = Field(
        default=("STAT",), description="priorities that notify, comma-separated")
    notify_include_patient: bool = Field(default=False, description="add PatientID, name and accession to notices")
    smtp_host: str | None = Field(default=None, description="SMTP server for e-mail notices")
    smtp_port: int = Field(default=25, ge=1, le=65535, description="its port")
    smtp_from: str = Field(default="dicom-ai@localhost", description="sender address of notices")
    smtp_to: tuple[str, ...] = Field(default=(), description="recipients, comma-separated")
    email_levels: tuple[Literal["STAT", "URGENT", "ROUTINE"], ...] = Field(
        default=("STAT",), description="priorities that send an e-mail, comma-separated")
    http_host: str = Field(default="127.0.0.1", description="address of the web console")
    http_port: int = Field(default=8089, ge=0, le=65535, description="port of the web console (0: none)")
    stow_receive: bool = Field(
        default=False, validate_default=True, description="the node's HTTP server takes studies by STOW-RS at /dicom-web/studies")
    stow_receive_user: str | None = Field(default=None, description="HTTP Basic user STOW-RS senders must give, if any")
    stow_receive_password: str | None = Field(default=None, validate_default=True, description="its password")
    stow_receive_max_mb: float = Field(
        default=2048, gt=0, le=1_048_576, description="largest STOW-RS request body taken, MB; larger ones get 413")
    turnaround_stat_minutes: float = Field(default=60, gt=0, le=YEAR_MINUTES, description="read STAT studies within (worklist aging)")
    turnaround_urgent_minutes: float = Field(default=240, gt=0, le=YEAR_MINUTES, description="read URGENT studies within")
    turnaround_routine_minutes: float = Field(default=1440, gt=0, le=YEAR_MINUTES, description="read ROUTINE studies within")
    retention_days: float | None = Field(
        default=None, gt=0, le=CENTURY_DAYS, description="delete a finished study's files this many days after processing (none: keep)")
    tls_certificate: Path | None = Field(default=None, description="our TLS certificate (PEM), for DICOM over TLS")
    tls_private_key: Path | None = Field(default=None, description="its private key (PEM, unencrypted)")
    tls_ca: Path | None = Field(
        default=None, description="CA certificate(s) (PEM) that peers' certificates must chain to; with tls_receive, "
        "clients must present one")
    tls_receive: bool = Field(default=False, description="the DICOM SCP accepts TLS associations only")
    tls_send: bool = Field(default=False, description="associations we open (results, C-FIND, echo, send) use TLS")
    http_tls: bool = Field(default=False, description="the console (http_port) serves HTTPS with tls_certificate and "
                           "tls_private_key; session cookies are then Secure")
    session_idle_minutes: float = Field(default=30, gt=0, le=YEAR_MINUTES,
                                        description="a console session unused this long is signed out")
    max_pdu: int = Field(default=131072, ge=0, description="maximum PDU we receive (0: none advertised, 64 MiB enforced)")
    negotiation_timeout: float = Field(
        default=10.0, gt=0, le=300, description="seconds a new DICOM connection has to deliver its whole A-ASSOCIATE-RQ")
    idle_timeout: float = Field(
        default=30.0, gt=0, le=3600, description="seconds an association may go without a complete PDU")
    max_associations: int = Field(default=64, ge=1, le=1000, description="DICOM connections served at once")
    reserved_associations: int = Field(
        default=16, ge=0, description="of those, kept for known senders (the PACS, trusted calling AE titles)")
    max_connections_per_ip: int = Field(
        default=8, ge=1, description="DICOM connections at once from one address that is not a known sender's")
    connection_rate_per_ip: int = Field(
        default=600, ge=0, description="new DICOM connections a minute from such an address (0: no limit)")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(default="INFO")

    @field_validator("ae")
    @classmethod
    def _ae_title(cls, value: str) -> str:
        if not _AE_TITLE.match(value) or not value.strip():
            raise ValueError(f"{value!r} is not a valid AE title (1-16 printable characters, no backslash)")
        return value.strip()

    @field_validator("home", "rules_dir", "models_dir", "mwl_dir")
    @classmethod
    def _folder(cls, value: Path | None) -> Path | None:
        """A folder setting that names a file (or lies under one) fails here, not in a traceback later."""
        if value is None:
            return value
        for path in (value, *value.parents):
            if path.exists():
                if not path.is_dir():
                    where = "is" if path == value else f"lies under {path}, which is"
                    raise ValueError(f"{str(value)!r} {where} a file, not a folder")
                break
        return value

    @field_validator("pacs", mode="before")
    @classmethod
    def _peer(cls, value: Any) -> Any:
        if isinstance(value, str):
            return Peer.parse(value) if value.strip() else None
        return value

    @field_validator("allowed_calling_aets", mode="before")
    @classmethod
    def _ae_titles(cls, value: Any) -> Any:
        titles = tuple(part.strip() for part in value.split(",") if part.strip()) if isinstance(value, str) else value
        for title in titles:
            if not _AE_TITLE.match(title):
                raise ValueError(f"{title!r} is not a valid AE title (1-16 printable characters, no backslash)")
        return titles

    @field_validator("reserved_associations")
    @classmethod
    def _reserved(cls, value: int, info: ValidationInfo) -> int:
        total = info.data.get("max_associations")
        if total is not None and value >= total:
            raise ValueError(f"must be less than max_associations ({total}), or no stranger could connect")
        return value

    @field_validator("tls_receive")
    @classmethod
    def _tls_receive(cls, value: bool, info: ValidationInfo) -> bool:
        if value:
            certificate, key = info.data.get("tls_certificate"), info.data.get("tls_private_key")
            if certificate is None or key is None:
                raise ValueError("TLS for the SCP needs tls_certificate and tls_private_key")
            try:
                server_context(certificate, key, info.data.get("tls_ca"))
            except TlsError as exc:
                raise ValueError(str(exc)) from None
        return value

    @field_validator("tls_send")
    @classmethod
    def _tls_send(cls, value: bool, info: ValidationInfo) -> bool:
        if value:
            try:
                client_tls("localhost", info.data.get("tls_certificate"), info.data.get("tls_private_key"),
                           info.data.get("tls_ca"))
            except TlsError as exc:
                raise ValueError(str(exc)) from None
        return value

    @field_validator("http_tls")
    @classmethod
    def _http_tls(cls, value: bool, info: ValidationInfo) -> bool:
        if value:
            certificate, key = info.data.get("tls_certificate"), info.data.get("tls_private_key")
            if certificate is None or key is None:
                raise ValueError("HTTPS for the console needs tls_certificate and tls_private_key")
            try:
                server_context(certificate, key, None)
            except TlsError as exc:
                raise ValueError(str(exc)) from None
        return value

    def https_context(self) -> ssl.SSLContext | None:
        """The console's TLS context (no client certificate asked: browsers sign in), or None for HTTP."""
        if not self.http_tls or self.tls_certificate is None or self.tls_private_key is None:
            return None
        return server_context(self.tls_certificate, self.tls_private_key, None)

    def scp_tls(self) -> ssl.SSLContext | None:
        """The SCP's TLS context, or None for plain DICOM."""
        if not self.tls_receive or self.tls_certificate is None or self.tls_private_key is None:
            return None
        return server_context(self.tls_certificate, self.tls_private_key, self.tls_ca)

    def client_tls(self, host: str) -> ClientTls | None:
        """TLS arguments for an association we open to `host`, or None for plain DICOM."""
        return client_tls(host, self.tls_certificate, self.tls_private_key, self.tls_ca) if self.tls_send else None

    @field_validator("webhook_levels", "email_levels", "smtp_to", mode="before")
    @classmethod
    def _levels(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("heatmap_objects", mode="before")
    @classmethod
    def _heatmap_objects(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [part.strip().lower() for part in value.split(",") if part.strip()]
        if isinstance(value, list | tuple):
            unknown = [part for part in value if part not in ("sc", "pm")]
            if unknown:
                raise ValueError(f"expected sc or sc,pm, got {unknown[0]!r}")
            if "sc" not in value:
                raise ValueError("must include sc (the heatmap picture every viewer shows), e.g. sc or sc,pm")
            return tuple(dict.fromkeys(["sc", *value]))
        return value

    @field_validator("stow_user", "stow_password", "stow_token", "stow_receive_user", "stow_receive_password",
                     mode="before")
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("stow_password", "stow_receive_password")
    @classmethod
    def _password(cls, value: str | None, info: ValidationInfo) -> str | None:
        user_key = "stow_user" if info.field_name == "stow_password" else "stow_receive_user"
        if (info.data.get(user_key) is None) != (value is None):
            raise ValueError(f"HTTP Basic needs both {user_key} and {info.field_name}, or neither")
        return value

    @field_validator("stow_token")
    @classmethod
    def _token(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and info.data.get("stow_user") is not None:
            raise ValueError("give either a bearer token or stow_user and stow_password, not both")
        return value

    @field_validator("stow_receive")
    @classmethod
    def _stow_receive(cls, value: bool, info: ValidationInfo) -> bool:
        if value and info.data.get("http_port") == 0:
            raise ValueError("STOW-RS is served by the node's HTTP server, which http_port 0 turns off")
        return value

    @field_validator("hl7_mllp", "hl7_listen")
    @classmethod
    def _host_port(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        host, _, port = value.strip().rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"expected host:port such as 127.0.0.1:2575, got {value!r}")
        return value.strip()

    @field_validator("orthanc_url", "webhook_url", "stow_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError(f"expected an http(s) URL such as http://127.0.0.1:8042, got {value!r}")
        return value.rstrip("/")

    @property
    def turnaround_targets(self) -> TurnaroundTargets:
        return TurnaroundTargets(self.turnaround_stat_minutes, self.turnaround_urgent_minutes,
                                 self.turnaround_routine_minutes)

    @property
    def send_retry_window(self) -> float:
        """Seconds from a send's first failure until it is given up (send_max_attempts attempts,
        the delay doubling from send_retry_initial up to send_retry_max)."""
        return sum(min(self.send_retry_initial * 2**n, self.send_retry_max) for n in range(self.send_max_attempts - 1))

    @property
    def hl7_listen_address(self) -> tuple[str, int] | None:
        """(host, port) of the HL7 listener, or None when it is off."""
        if not self.hl7_listen:
            return None
        host, _, port = self.hl7_listen.rpartition(":")
        return host.strip("[]"), int(port)

    @property
    def database_path(self) -> Path:
        return self.home / "dicom-ai.sqlite"

    @property
    def spool_dir(self) -> Path:
        return self.home / "spool"


def load_settings(path: Path | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Merge the file at `path` (or $DICOM_AI_CONFIG) with DICOM_AI_* variables and validate."""
    environ = os.environ if environ is None else environ
    origin: dict[str, str] = {}
    values: dict[str, Any] = {}
    path = path or (Path(environ[CONFIG_ENV]) if environ.get(CONFIG_ENV) else None)
    if path is not None:
        try:
            values = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"config file {path}: cannot read it ({exc.strerror})") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path}: not valid TOML: {exc}") from exc
        origin = {key: str(path) for key in values}
    for key in Settings.model_fields:
        env_name = ENV_PREFIX + key.upper()
        if env_name in environ:
            values[key] = environ[env_name]
            origin[key] = f"environment variable {env_name}"
    try:
        return Settings(**values)
    except ValidationError as exc:
        error = exc.errors()[0]
        key = ".".join(str(part) for part in error["loc"]) or "?"
        where = origin.get(str(error["loc"][0]) if error["loc"] else "", "defaults")
        problem = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            problem = f"unknown key (known keys: {', '.join(Settings.model_fields)})"
        raise ConfigError(f"config key '{key}' (from {where}): {problem}") from None


def describe_settings() -> list[tuple[str, str, str]]:
    """(key, environment variable, description) for every setting: used by README tests and --help."""
    return [
        (key, ENV_PREFIX + key.upper(), field.description or "")
        for key, field in Settings.model_fields.items()
    ]
