"""The Rules page and /api/rules: the rules files in the browser, a draft checked (file:line errors
shown next to their line), tested on a received study or an uploaded DICOM file, replayed over the
last N days, activated (written under rules_dir, kept as a version) and any version restored. The
work is route/drafts.py's; this module only shows it. Viewers read; only admins change or try."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

from anyio import to_thread
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from dicom_ai.assemble.study import StudyReadError, studies_from_paths
from dicom_ai.route.drafts import (
    DraftError,
    DraftProblem,
    activate_draft,
    check_draft,
    file_name_problem,
    replay_draft,
    restore_version,
    rule_versions,
)
from dicom_ai.route.loader import RULE_FILE_SUFFIXES, RuleSetError, load_ruleset
from dicom_ai.route.matcher import explain
from dicom_ai.store.accounts import Role
from dicom_ai.web.auth import acting
from dicom_ai.web.context import WebContext

DEFAULT_REPLAY_DAYS = 7.0
MAX_REPLAY_DAYS = 365.0
MAX_UPLOAD_BYTES = 512 * 1024 * 1024


class RulesConsole:
    def __init__(self, ctx: WebContext, pages: Any) -> None:
        self.ctx = ctx
        self.pages = pages

    # what both the page and the API use --------------------------------------------------------

    def _dir(self) -> Path:
        if self.ctx.settings is None:
            raise HTTPException(503, "this server has no rules directory configured")
        return self.ctx.settings.rules_dir

    def _known_models(self) -> list[str] | None:
        return self.ctx.models.names() if self.ctx.models is not None else None

    def files(self) -> dict[str, str]:
        folder = self._dir()
        return {path.name: path.read_text(encoding="utf-8") for path in sorted(folder.iterdir())
                if path.is_file() and path.name.endswith(RULE_FILE_SUFFIXES) and not path.name.startswith(".")} \
            if folder.is_dir() else {}

    def active(self) -> list[dict[str, Any]]:
        """The rules in force, as the node loaded them (or as on disk when no watcher is given)."""
        try:
            ruleset = self.ctx.rules.ruleset if self.ctx.rules is not None else load_ruleset(self._dir(), self._known_models())
        except RuleSetError as exc:
            return [{"name": "(the rules on disk do not load)", "error": str(exc)}]
        return [{"name": rule.name, "file": rule.source.file.name if rule.source else "", "models": list(rule.models),
                 "enabled": rule.enabled, "order": rule.order, "fallback": rule.fallback, "shadow": rule.shadow,
                 "window": str(rule.window) if rule.window is not None else None} for rule in ruleset.rules]

    def check(self, file_name: str, text: str) -> list[DraftProblem]:
        return check_draft(self._dir(), file_name, text, self._known_models())

    def replay(self, file_name: str, text: str, days: float) -> dict[str, Any]:
        if self.ctx.stores is None or self.ctx.spool is None:
            raise HTTPException(503, "replay needs the node's database and spool")
        diff = replay_draft(self.ctx.stores, self.ctx.spool, self._dir(), file_name, text, days, self._known_models())
        return {"summary": diff.summary(), "studies": diff.studies, "skipped": diff.skipped,
                "changes": [asdict(change) for change in diff.changes]}

    def test(self, file_name: str, text: str, study_uid: str = "", upload: UploadFile | None = None) -> list[str]:
        """Which rule, series and models the draft gives a received study or an uploaded file, and why."""
        ruleset = load_ruleset(self._dir(), self._known_models(), drafts={file_name: text})
        with tempfile.TemporaryDirectory() as folder:
            if upload is not None and upload.filename:
                target = Path(folder) / "upload.dcm"
                with open(target, "wb") as out:
                    shutil.copyfileobj(upload.file, out)
                paths = [target]
            elif study_uid.strip():
                if self.ctx.stores is None:
                    raise HTTPException(503, "testing a received study needs the node's database")
                paths = [i.path for i in self.ctx.stores.studies.instances_of(study_uid.strip()) if i.path.is_file()]
                if not paths:
                    raise ValueError(f"no files of study {study_uid.strip()} on this node (unknown, or deleted "
                                     "after retention_days)")
            else:
                raise ValueError("give a received study's UID or upload a DICOM file")
            studies = studies_from_paths(paths)
            if not studies:
                raise ValueError("the upload is not a DICOM file")
            lines: list[str] = []
            for study in studies:
                lines.append(f"study {study.study_instance_uid} ({len(study.series)} series)")
                verdicts = explain(study, ruleset)
                lines += [f"  {line}" for verdict in verdicts for line in str(verdict).splitlines()]
                if not any(v.matched for v in verdicts):
                    lines.append("  -> no rule matches: the study is stored and passed through without AI results")
            return lines

    # the page ----------------------------------------------------------------------------------

    def page(self, request: Request) -> Response:
        files = self.files()
        name = request.query_params.get("file") or (next(iter(files)) if files else "new.yaml")
        return self._render(request, name, files.get(name, ""), files)

    def _render(self, request: Request, name: str, text: str, files: dict[str, str] | None = None,
                **outcome: Any) -> Response:
        files = self.files() if files is None else files
        problems: list[DraftProblem] = outcome.get("problems", [])
        by_line: dict[int, list[str]] = {}
        for problem in problems:
            if problem.file == name and problem.line is not None:
                by_line.setdefault(problem.line, []).append(str(problem))
        numbered = [(n, line, by_line.get(n, [])) for n, line in enumerate(text.splitlines(), 1)]
        versions = rule_versions(self.ctx.stores) if self.ctx.stores is not None else []
        return self.pages.render(request, "rules.html", "Rules", "/rules", files=files, name=name, text=text,
                                 numbered=numbered, active=self.active(), versions=versions[:50],
                                 days=outcome.pop("days", DEFAULT_REPLAY_DAYS), **outcome)

    async def post(self, request: Request) -> Response:
        user, form = await acting(request, Role.ADMIN)
        name, text = str(form.get("file", "")).strip(), str(form.get("text", "")).replace("\r\n", "\n")
        action = str(form.get("action", "check"))
        days = _days(form.get("days"))
        problem = file_name_problem(name)
        if problem is not None:
            return self._render(request, name, text, problems=[DraftProblem(name, None, "", problem)], days=days)
        problems = await to_thread.run_sync(self.check, name, text)
        if problems:
            return self._render(request, name, text, problems=problems, days=days, status=422)
        try:
            if action == "replay":
                replay = await to_thread.run_sync(self.replay, name, text, days)
                return self._render(request, name, text, replay=replay, checked=True, days=days)
            if action == "test":
                upload = form.get("upload")
                tested = await to_thread.run_sync(lambda: self.test(name, text, str(form.get("study_uid", "")),
                                                                    upload if isinstance(upload, UploadFile) else None))
                return self._render(request, name, text, tested=tested, checked=True, days=days)
            if action == "activate":
                if self.ctx.stores is None:
                    raise HTTPException(503, "activation needs the node's database")
                stores = self.ctx.stores
                version = await to_thread.run_sync(lambda: activate_draft(stores, self._dir(), name, text, user.name,
                                                                          self._known_models()))
                return RedirectResponse(f"/rules?file={name}&done=activated+{name}+as+version+{version.id}", 303)
        except (ValueError, StudyReadError, RuleSetError) as exc:
            return self._render(request, name, text, problem=str(exc), days=days, status=400)
        return self._render(request, name, text, checked=True, days=days)

    async def restore(self, request: Request) -> Response:
        user, _ = await acting(request, Role.ADMIN)
        version_id = int(request.path_params["version"])
        if self.ctx.stores is None:
            raise HTTPException(503, "restoring needs the node's database")
        stores = self.ctx.stores
        try:
            version = await to_thread.run_sync(lambda: restore_version(stores, self._dir(), version_id, user.name,
                                                                       self._known_models()))
        except LookupError as exc:
            raise HTTPException(404, str(exc)) from None
        except DraftError as exc:
            return RedirectResponse(f"/rules?problem=version+{version_id}+no+longer+loads:+{exc}", 303)
        return RedirectResponse(f"/rules?file={version.file_name}&done=restored+version+{version_id}+as+version+"
                                f"{version.id}", 303)

    # the API -----------------------------------------------------------------------------------

    def api_get(self, _request: Request) -> Response:
        """---
        summary: The rules files, the active rules and the kept versions
        """
        versions = rule_versions(self.ctx.stores) if self.ctx.stores is not None else []
        return _json({"files": self.files(), "rules": self.active(),
                      "versions": [{k: v for k, v in asdict(ver).items() if k != "text"} for ver in versions]})

    async def api_post(self, request: Request) -> Response:
        """---
        summary: Check, replay or activate a rules draft (JSON file, text, action check|replay|activate, days)
        """
        user, body = await acting(request, Role.ADMIN)
        name, text, action = str(body.get("file", "")), str(body.get("text", "")), str(body.get("action", "check"))
        problems = await to_thread.run_sync(self.check, name, text)
        if problems:
            return _json({"ok": False, "problems": [asdict(p) | {"text": str(p)} for p in problems]}, 422)
        if action == "replay":
            return _json({"ok": True, "replay": await to_thread.run_sync(self.replay, name, text, _days(body.get("days")))})
        if action == "activate":
            stores = self.ctx.stores
            if stores is None:
                raise HTTPException(503, "activation needs the node's database")
            version = await to_thread.run_sync(lambda: activate_draft(stores, self._dir(), name, text, user.name,
                                                                      self._known_models()))
            return _json({"ok": True, "version": {k: v for k, v in asdict(version).items() if k != "text"}})
        return _json({"ok": True, "problems": []})

    def routes(self) -> list[Route]:
        return [Route("/rules", self.page, methods=["GET"]), Route("/rules", self.post, methods=["POST"]),
                Route("/rules/versions/{version:int}/restore", self.restore, methods=["POST"]),
                Route("/api/rules", self.api_get, methods=["GET"]), Route("/api/rules", self.api_post, methods=["POST"])]


def _days(value: object) -> float:
    try:
        days = float(str(value)) if value not in (None, "") else DEFAULT_REPLAY_DAYS
    except ValueError:
        raise HTTPException(400, f"days {value!r}: a number of days") from None
    if not 0 < days <= MAX_REPLAY_DAYS:
        raise HTTPException(400, f"days {days:g}: between 0 and {MAX_REPLAY_DAYS:g}")
    return days


def _json(value: Any, status: int = 200) -> Response:
    import json

    return Response(json.dumps(value, default=str), status, media_type="application/json")
