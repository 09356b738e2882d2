"""What the console's pages and API read and change, handed in by the node (or a test): the stores,
the settings, the spool and the models; nothing is read from globals."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dicom_ai.domain import TurnaroundTargets
from dicom_ai.store import Reports
from dicom_ai.store.accounts import Accounts
from dicom_ai.store.health import NodeHealth
from dicom_ai.store.model_switches import ModelSwitches

if TYPE_CHECKING:
    from dicom_ai.config import Settings
    from dicom_ai.infer.registry import ModelRegistry
    from dicom_ai.route.loader import RuleWatcher
    from dicom_ai.store import Spool, Stores

SESSION_IDLE_S = 30 * 60.0


@dataclass(frozen=True)
class WebContext:
    """The app's dependencies. Without `stores` and `settings` the console only reads (actions answer 503)."""

    reports: Reports
    targets: TurnaroundTargets
    accounts: Accounts
    status: Callable[[], NodeHealth] | None = None
    stores: Stores | None = None
    settings: Settings | None = None
    spool: Spool | None = None
    models: ModelRegistry | None = None
    rules: RuleWatcher | None = None
    session_idle_s: float = SESSION_IDLE_S
    https: bool = False
    switches: ModelSwitches | None = None  # models switched off (Models page); web_context() opens it
