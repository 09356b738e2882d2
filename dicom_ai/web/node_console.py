"""The console as a node serves it: the web app over the node's stores, with STOW-RS receive when
configured. One function for both ways a node runs (node.py in one process, procs/receiver.py)."""

from __future__ import annotations

from dicom_ai.config import Settings
from dicom_ai.infer.registry import ModelRegistry
from dicom_ai.route.loader import RuleWatcher
from dicom_ai.store import Spool, Stores
from dicom_ai.store.health import node_health
from dicom_ai.web.app import start_web, web_context
from dicom_ai.web.server import WebServer
from dicom_ai.web.stow import StowReceive


def start_node_console(s: Settings, stores: Stores, spool: Spool, models: ModelRegistry | None,
                       rules: RuleWatcher | None) -> WebServer:
    """Listen on http_host:http_port; an OSError names the port and the setting that turns it off."""
    try:
        stow = StowReceive(spool, stores.studies, int(s.stow_receive_max_mb * 1e6),
                           s.stow_receive_user, s.stow_receive_password) if s.stow_receive else None
        console = web_context(stores.reports, s.turnaround_targets,
                              lambda: node_health(stores.reports, s.home, s.retention_days,
                                                  send_retry_window_s=s.send_retry_window),
                              stores=stores, settings=s, spool=spool, models=models, rules=rules,
                              session_idle_s=s.session_idle_minutes * 60, https=s.http_tls)
        return start_web(s.http_host, s.http_port, console, stow_receive=stow, tls=s.https_context(), home=s.home)
    except OSError as exc:
        raise OSError(f"console {s.http_host}:{s.http_port} (DICOM_AI_HTTP_PORT, 0 turns it off): "
                      f"{exc.strerror or exc}") from exc
