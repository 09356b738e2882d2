"""What the dashboard, the models page and their JSON show, computed once for both: summaries over
the stores (turnaround percentiles, sends per carrier, models' activity and latency)."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

from dicom_ai.domain import StudyState
from dicom_ai.store.health import duration
from dicom_ai.store.model_switches import disabled_models
from dicom_ai.web.context import WebContext

DAY_S = 24 * 3600.0


def percentile(values: list[float], fraction: float) -> float | None:
    """The nearest-rank percentile of sorted values; None when there are none."""
    if not values:
        return None
    return values[min(len(values) - 1, max(0, int(round(fraction * len(values) + 0.5)) - 1))]


def _shown(seconds: float | None) -> str:
    return "-" if seconds is None else (f"{seconds:.2f} s" if seconds < 10 else duration(seconds))


def turnaround(ctx: WebContext, now: float) -> dict[str, Any]:
    values = ctx.reports.turnarounds(now - DAY_S)
    p50, p95 = percentile(values, 0.5), percentile(values, 0.95)
    return {"n": len(values), "p50_s": p50, "p95_s": p95, "p50": _shown(p50), "p95": _shown(p95)}


def carriers(ctx: WebContext, rows: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Sends per carrier by state; `rows` (kind, state, n) when the caller counted them already (health)."""
    by_kind: dict[str, dict[str, Any]] = {}
    for row in ctx.reports.sends_by_carrier() if rows is None else rows:
        entry = by_kind.setdefault(row["kind"], {"kind": row["kind"], "pending": 0, "failed": 0, "sent": 0, "discarded": 0})
        entry[row["state"]] = row["n"]
    return list(by_kind.values())


def latencies(ctx: WebContext, since: float) -> dict[str, list[float]]:
    """Seconds per model run since `since`, from the pipeline's `model_ran` events."""
    found: dict[str, list[float]] = {}
    for row in ctx.reports.model_runs(since):
        found.setdefault(str(row["model"]), []).append(float(row["seconds"]))
    return {model: sorted(values) for model, values in found.items()}


@dataclass(frozen=True)
class ModelView:
    name: str
    version: str
    state: str  # loaded, not loaded, broken, not installed
    backend: str
    studies: int  # processed in the last 24 h
    latency: str
    latency_p50_s: float | None
    card: Any = None
    enabled: bool = True  # False: switched off in the console

    def public(self) -> dict[str, Any]:
        found = {k: v for k, v in asdict(self).items() if k != "card"}
        if self.card is not None:
            found["card"] = self.card.model_dump(mode="json")
        return found


WORKERS_LOAD = "in the workers"  # the console's process reads cards only (dicom_ai/procs/): the workers load


def models(ctx: WebContext, now: float) -> list[ModelView]:
    per_model = ctx.reports.studies_per_model(now - DAY_S)
    runs = latencies(ctx, now - DAY_S)
    found: list[ModelView] = []
    cards = ctx.models.cards() if ctx.models is not None else {}
    off = disabled_models(ctx.reports.database)
    problems = ctx.models.problems() if ctx.models is not None else {}
    for name, card in cards.items():
        assert ctx.models is not None
        loaded = ctx.models.loaded(name)
        broken = problems.get(ctx.models.folder(name).name)
        state = "broken" if broken else ("loaded" if loaded is not None else
                                         "not loaded" if ctx.models.load else WORKERS_LOAD)
        p50 = percentile(runs.get(name, []), 0.5)
        found.append(ModelView(name, card.version, state, str(getattr(loaded, "backend", "-")) if loaded else "-",
                               sum(n for key, n in per_model.items() if key.split("@")[0] == name), _shown(p50), p50,
                               card, name not in off))
    known = set(cards)
    for key, n in sorted(per_model.items()):  # models that ran but are no longer installed
        name = key.split("@")[0]
        if name not in known:
            known.add(name)
            p50 = percentile(runs.get(name, []), 0.5)
            found.append(ModelView(name, key.partition("@")[2], "not installed", "-", n, _shown(p50), p50))
    return found


def dashboard(ctx: WebContext) -> dict[str, Any]:
    now = time.time()
    health = ctx.status() if ctx.status is not None else None
    failing_rows = ctx.reports.studies(limit=50, state=StudyState.FAILED)
    failed_sends = {row["study_instance_uid"]: row["n"] for row in ctx.reports.database.query(
        "select study_instance_uid, count(*) as n from outbox where state = 'failed' group by 1 limit 200")}
    for uid in failed_sends:
        if uid not in {r.study_instance_uid for r in failing_rows}:
            row = ctx.reports.study(uid)
            if row is not None:
                failing_rows.append(row)
    counts = health.studies if health else {}
    return {
        "health": health,
        "models": models(ctx, now),
        "waiting": counts.get(StudyState.COMPLETE, 0),
        "processing": counts.get(StudyState.PROCESSING, 0),
        "turnaround": turnaround(ctx, now),
        "carriers": carriers(ctx, health.sends if health is not None else None),
        "failing": [{"row": row, "failed_sends": failed_sends.get(row.study_instance_uid, 0)} for row in failing_rows],
    }
