"""The validation loop in the console: radiologists' judgements on a study's page, and a model's page
with its live performance (validation.evaluate_model over the judged studies, the numbers
`dicom-ai evaluate` prints), the report figures and the drift the node recorded.

The figures are drawn by validation.report_evaluation off the request path: a model page evaluates
(the request pays for that only) and, when the figures are older than FIGURES_MAX_AGE_S or someone
asks for new ones, hands the evaluation to a thread that writes a new folder under
HOME/console-reports/MODEL/; the page shows the newest complete folder meanwhile.
"""

from __future__ import annotations

import logging
import re
import shutil
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from anyio import to_thread
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from dicom_ai.domain import DriftCheck, Reference
from dicom_ai.errors import one_line
from dicom_ai.infer.card import CardError
from dicom_ai.infer.registry import monitoring_view
from dicom_ai.store.accounts import Role
from dicom_ai.store.feedback import Effective, fold_truths
from dicom_ai.validation import Evaluated, evaluate_model, report_evaluation
from dicom_ai.web.auth import acting
from dicom_ai.web.context import WebContext

if TYPE_CHECKING:
    from dicom_ai.web.pages import Pages

log = logging.getLogger(__name__)

FIGURES_MAX_AGE_S = 300.0  # a model page redraws its figures when they are older than this
REPORTS_FOLDER = "console-reports"  # under the node's home
COMPLETE = "index.html"  # report_evaluation writes it last: a folder with it is complete
FIGURE_NAME = re.compile(r"^[A-Za-z0-9._-]+\.png$")
SEE_OTHER = 303
FIGURE_ORDER = ("roc-", "calibration-", "scores-", "subgroups-", "drift")  # as the report's index.html shows them


@dataclass(frozen=True)
class FindingJudgements:
    """One model's finding on a study: the truth that counts now and every judgement given, oldest first."""

    model: str
    label: str
    current: Effective | None
    history: list[dict[str, Any]] = field(default_factory=list)

    def public(self) -> dict[str, Any]:
        return {"model": self.model, "label": self.label,
                "current": asdict(self.current) if self.current is not None else None, "history": self.history}


def judgements(ctx: WebContext, study_uid: str, findings: list[dict[str, Any]]) -> list[FindingJudgements]:
    """Per model and label found on the study (and any judged), the current judgement and its history."""
    rows = ctx.reports.database.query(
        "select id, study_instance_uid, model, label, truth, source, by, comment, at, report_id from feedback"
        " where study_instance_uid = ? order by id", [study_uid])
    keys = sorted({(f["model"], f["label"]) for f in findings} | {(r["model"], r["label"]) for r in rows})
    found = []
    for model, label in keys:
        mine = [r for r in rows if r["model"] == model and r["label"] == label]
        current = fold_truths(mine).get((study_uid, label))
        found.append(FindingJudgements(model, label, current, mine))
    return found


def latest_drift(ctx: WebContext, model: str) -> list[DriftCheck]:
    """The node's drift checks of the model's latest checked week (empty: never checked)."""
    rows = ctx.reports.database.query(
        "select * from drift_checks where model = ? and week = (select max(week) from drift_checks where model = ?)"
        " order by flagged desc, variable", [model, model])
    return [DriftCheck(r["model"], r["week"], r["variable"], r["cases"], r["psi"], r["ks_p"], bool(r["flagged"]))
            for r in rows]


def drift_summary(ctx: WebContext, model: str) -> str:
    """One line for a model card: "2026-W48: drifted (rows, manufacturer)", "2026-W48: no drift", "not checked"."""
    checks = latest_drift(ctx, model)
    if not checks:
        return "not checked (no reference in the card, or too few cases yet)"
    flagged = [c.variable for c in checks if c.flagged]
    return f"{checks[0].week}: " + (f"drifted ({', '.join(flagged)})" if flagged else
                                    f"no drift over {len(checks)} variable(s)")


@dataclass(frozen=True)
class Figures:
    """The newest complete report folder of a model (None: none drawn yet) and whether one is being drawn."""

    folder: Path | None
    drawn_at: float | None
    names: list[str]
    drawing: bool


class ReportFigures:
    """Report folders per model under HOME/console-reports, each drawn by one background thread at a time."""

    def __init__(self, root: Path, max_age_s: float = FIGURES_MAX_AGE_S) -> None:
        self.root = root
        self.max_age_s = max_age_s
        self._drawing: set[str] = set()
        self._lock = threading.Lock()

    def _model_root(self, model: str) -> Path:
        return self.root / re.sub(r"[^A-Za-z0-9._-]", "_", model)

    def current(self, model: str) -> Figures:
        folders = sorted((p for p in self._model_root(model).glob("*") if (p / COMPLETE).is_file()),
                         key=lambda p: p.name) if self._model_root(model).is_dir() else []
        with self._lock:
            drawing = model in self._drawing
        if not folders:
            return Figures(None, None, [], drawing)
        newest = folders[-1]
        names = sorted((p.name for p in newest.glob("*.png")),
                       key=lambda n: (next((i for i, k in enumerate(FIGURE_ORDER) if n.startswith(k)), len(FIGURE_ORDER)), n))
        return Figures(newest, (newest / COMPLETE).stat().st_mtime, names, drawing)

    def file(self, model: str, name: str) -> Path:
        figures = self.current(model)
        if not FIGURE_NAME.match(name) or figures.folder is None or name not in figures.names:
            raise HTTPException(404, f"no figure {name} of model {model} (drawn: {', '.join(figures.names) or 'none yet'})")
        return figures.folder / name

    def refresh(self, evaluated: Evaluated, ctx: WebContext, force: bool = False, wait: bool = False) -> bool:
        """Draw new figures in a thread when they are stale (or `force`); True when a drawing started."""
        if not evaluated.predictions:
            return False  # nothing to draw: the page says no predictions yet
        figures = self.current(evaluated.model)
        stale = figures.drawn_at is None or time.time() - figures.drawn_at > self.max_age_s
        if not (stale or force) or ctx.settings is None:
            return False
        with self._lock:
            if evaluated.model in self._drawing:
                return False
            self._drawing.add(evaluated.model)
        # Not a daemon: a drawing killed at exit aborts the process inside matplotlib; it ends within seconds.
        thread = threading.Thread(target=self._draw, args=(evaluated, ctx), name=f"figures-{evaluated.model}")
        thread.start()
        if wait:
            thread.join()
        return True

    def _draw(self, evaluated: Evaluated, ctx: WebContext) -> None:
        assert ctx.settings is not None
        model_root = self._model_root(evaluated.model)
        folder = model_root / f"{time.time_ns():020d}"
        try:
            report_evaluation(evaluated, folder, f"{evaluated.model}: live evaluation (console)", ctx.settings)
            for old in model_root.glob("*"):
                if old.is_dir() and old.name < folder.name:
                    shutil.rmtree(old, ignore_errors=True)
        except Exception as exc:  # noqa: BLE001: a failed drawing is logged; the page keeps the last figures
            log.error("console: figures of model %s not drawn in %s: %s", evaluated.model, folder, one_line(exc))
            shutil.rmtree(folder, ignore_errors=True)
        finally:
            with self._lock:
                self._drawing.discard(evaluated.model)


def _reference(ctx: WebContext, model: str) -> tuple[dict[str, Reference] | None, str]:
    """The card's drift reference (as `dicom-ai evaluate` reads it) and a note when the card cannot be read."""
    if ctx.settings is None:
        return None, ""
    try:
        view = monitoring_view(ctx.settings.models_dir, model)
    except CardError as exc:
        return None, f"the card's drift reference was not read: {exc}"
    return (view.references if view is not None and view.references else None), ""


def evaluate(ctx: WebContext, model: str) -> Evaluated:
    """evaluate_model over every study the node processed with the model, as `dicom-ai evaluate MODEL`."""
    if ctx.stores is None or ctx.settings is None:
        raise HTTPException(503, "this server only reads: the evaluation runs on the running node")
    known = ctx.stores.performance.models()
    if model not in known and (ctx.models is None or model not in ctx.models.names()):
        raise HTTPException(404, f"no model {model!r} on this node (models with predictions: {', '.join(known) or 'none'})")
    reference, _ = _reference(ctx, model)
    return evaluate_model(ctx.stores, ctx.settings, model, reference)


class ValidationConsole:
    """A model's page (`/models/{name}`), its figures and their JSON (`/api/models/{name}/performance`)."""

    def __init__(self, ctx: WebContext, pages: Pages, home: Path) -> None:
        self.ctx = ctx
        self.pages = pages
        self.figures = ReportFigures(home / REPORTS_FOLDER)

    def model_page(self, request: Request) -> Response:
        name = str(request.path_params["name"])
        evaluated = evaluate(self.ctx, name)
        self.figures.refresh(evaluated, self.ctx)
        _, note = _reference(self.ctx, name)
        card = self.ctx.models.cards().get(name) if self.ctx.models is not None else None
        return self.pages.render(request, "model.html", f"Model {name}", "/models", name=name, card=card,
                                 evaluated=evaluated, figures=self.figures.current(name), drift=latest_drift(self.ctx, name),
                                 drift_note=note, max_age=FIGURES_MAX_AGE_S)

    def figure(self, request: Request) -> Response:
        path = self.figures.file(str(request.path_params["name"]), str(request.path_params["file"]))
        return FileResponse(path, media_type="image/png", headers={"Cache-Control": "private, max-age=60"})

    async def redraw(self, request: Request) -> Response:
        await acting(request, Role.VIEWER)  # redrawing changes nothing but the cache: any signed-in user, with CSRF
        name = str(request.path_params["name"])
        evaluated = await to_thread.run_sync(evaluate, self.ctx, name)
        started = self.figures.refresh(evaluated, self.ctx, force=True)
        done = "drawing new figures: reload in a few seconds" if started else "figures are being drawn already"
        return RedirectResponse(f"/models/{name}?{urlencode({'done': done})}", SEE_OTHER)

    def performance_json(self, request: Request) -> Response:
        """The live evaluation of a model (as `dicom-ai evaluate MODEL --json`), its drift and figures.
        ---
        summary: A model's live performance per label, drift and report figures.
        """
        name = str(request.path_params["name"])
        evaluated = evaluate(self.ctx, name)
        self.figures.refresh(evaluated, self.ctx)
        figures = self.figures.current(name)
        return JSONResponse({
            "model": name, "predictions": len(evaluated.predictions),
            "labels": {label: e.as_dict() for label, e in evaluated.labels.items()},
            "drift": [asdict(c) for c in latest_drift(self.ctx, name)],
            "figures": [f"/models/{name}/figures/{n}" for n in figures.names], "figures_drawn_at": figures.drawn_at,
        })

    def routes(self) -> list[Route]:
        return [
            Route("/models/{name}", self.model_page, methods=["GET"]),
            Route("/models/{name}/figures/{file}", self.figure, methods=["GET"]),
            Route("/models/{name}/figures", self.redraw, methods=["POST"]),
            Route("/api/models/{name}/performance", self.performance_json, methods=["GET"]),
        ]
