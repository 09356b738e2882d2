"""`dicom-ai`: one command per verb; the logic lives in the stage packages."""

from __future__ import annotations

import json
import logging
import shlex
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from dicom_ai.config import ConfigError, Peer, Settings, describe_settings, load_settings
from dicom_ai.errors import PeerErrorsOnOneLine
from dicom_ai.train.names import DEMO_FOLDERS, DEMO_NAMES

if TYPE_CHECKING:
    from dicom_ai.domain import Reference
    from dicom_ai.infer.registry import MonitoringView
    from dicom_ai.store import Stores

log = logging.getLogger("dicom_ai")


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level), format="%(asctime)s %(levelname)-7s %(name)s: %(message)s", stream=sys.stderr
    )
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, PeerErrorsOnOneLine) for f in handler.filters):
            handler.addFilter(PeerErrorsOnOneLine())
    for noisy in ("pynetdicom", "urllib3", "highdicom"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # "skipped: maximum number of running instances reached" is how a busy job is meant to behave;
    # a job that raises is still logged, by apscheduler.executors, at ERROR.
    logging.getLogger("apscheduler.scheduler").setLevel(logging.ERROR)
    logging.getLogger("apscheduler.executors").setLevel(logging.WARNING)


def _settings(ctx: click.Context) -> Settings:
    try:
        settings = load_settings(ctx.obj.get("config"))
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    _setup_logging(settings.log_level)
    return settings


def _when(t: float | None, missing: str = "-", form: str = "%Y-%m-%d %H:%M:%S") -> str:
    """A database timestamp in local time, as admins read logs."""
    return time.strftime(form, time.localtime(t)) if t else missing


def _client_settings(ctx: click.Context) -> Settings:
    """Settings for a one-shot DICOM client command: our one-line error says what failed, so
    pynetdicom's own ERROR lines are shown only at log_level DEBUG."""
    settings = _settings(ctx)
    if settings.log_level != "DEBUG":
        logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)
    return settings


def _peer(value: str) -> Peer:
    try:
        return Peer.parse(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="TOML configuration file (default: $DICOM_AI_CONFIG, else built-in defaults).")
@click.version_option(package_name="dicom-ai")
@click.pass_context
def main(ctx: click.Context, config: Path | None) -> None:
    """dicom-ai: route DICOM studies from a PACS to AI models and send the results back."""
    ctx.ensure_object(dict)
    ctx.obj["config"] = config


@main.command()
@click.pass_context
def serve(ctx: click.Context) -> None:
    """Run the node: DICOM SCP, study assembly, routing, inference, sending."""
    settings = _settings(ctx)
    if settings.workers >= 1:
        _serve_supervised(settings, ctx.obj.get("config"))
        return
    from dicom_ai.infer.executor import ExecutorError
    from dicom_ai.node import Node
    from dicom_ai.route.loader import RuleSetError

    try:
        node = Node(settings)
    except ExecutorError as exc:
        raise click.ClickException(str(exc)) from None
    except RuleSetError as exc:
        raise click.ClickException(f"rules in {settings.rules_dir} are invalid:\n{exc}") from None
    except OSError as exc:  # e.g. no permission to create the state folder
        raise click.ClickException(f"config key 'home' ({settings.home}): cannot hold the database and spool: "
                                   f"{exc.strerror or exc}") from None
    try:
        node.run_until_signalled()
    except OSError as exc:
        raise click.ClickException(f"cannot listen: {exc}") from None


def _serve_supervised(settings: Settings, config: Path | None) -> None:
    """The node as processes (dicom_ai/procs/): a receiver, `workers` workers and a sender."""
    from dicom_ai.procs.supervisor import StartError, Supervisor
    from dicom_ai.route.loader import RuleSetError, load_ruleset

    try:  # a bad rule file is refused before any process starts, as in one process
        load_ruleset(settings.rules_dir)  # the model names are checked by each worker, which loads them
    except RuleSetError as exc:
        raise click.ClickException(f"rules in {settings.rules_dir} are invalid:\n{exc}") from None
    try:
        supervisor = Supervisor(settings, config)
    except OSError as exc:  # e.g. no permission to create the state folder
        raise click.ClickException(f"config key 'home' ({settings.home}): cannot hold the database and spool: "
                                   f"{exc.strerror or exc}") from None
    try:
        supervisor.run_until_signalled()
    except StartError as exc:
        raise click.ClickException(f"cannot start: {exc}") from None


@main.command("config")
@click.pass_context
def show_config(ctx: click.Context) -> None:
    """Show the effective settings and the environment variable of each."""
    settings = _settings(ctx)
    for key, env_name, description in describe_settings():
        value = getattr(settings, key)
        shown = "***" if "password" in key and value else ("-" if value is None else value)
        click.echo(f"{key:<20} {shown!s:<40} {env_name:<28} {description}")


@main.group()
def rules() -> None:
    """Check and try routing rules."""


@rules.command("check")
@click.argument("directory", required=False, type=click.Path(file_okay=False, path_type=Path))
@click.pass_context
def rules_check(ctx: click.Context, directory: Path | None) -> None:
    """Validate every rules file (default: the configured rules_dir)."""
    from dicom_ai.infer.registry import ModelRegistry
    from dicom_ai.route.loader import RuleSetError, load_ruleset
    from dicom_ai.route.matcher import rule_tags

    settings = _settings(ctx)
    directory = directory or settings.rules_dir
    try:
        ruleset = load_ruleset(directory, known_models=ModelRegistry(settings.models_dir).names())
    except RuleSetError as exc:
        for error in exc.errors:
            click.echo(str(error), err=True)
        raise click.ClickException(f"{len(exc.errors)} error(s) in {directory}") from None
    for rule in ruleset.rules:
        state = "" if rule.enabled else " (disabled)"
        click.echo(f"ok  {rule.name}{state}{rule_tags(rule)}: models {', '.join(rule.models)}")
    click.echo(f"{len(ruleset.rules)} rule(s) in {len(ruleset.files)} file(s) are valid")


@rules.command("test")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.pass_context
def rules_test(ctx: click.Context, paths: tuple[Path, ...]) -> None:
    """Say which rule and model the study in PATHS (files or folders) would get, and why."""
    from dicom_ai.assemble.study import StudyReadError, studies_from_paths
    from dicom_ai.infer.registry import ModelRegistry
    from dicom_ai.route.loader import RuleSetError, load_ruleset
    from dicom_ai.route.matcher import explain
    from dicom_ai.route.rules import TimeWindow
    from dicom_ai.route.windows import plan_windows

    settings = _settings(ctx)
    try:
        ruleset = load_ruleset(settings.rules_dir, known_models=ModelRegistry(settings.models_dir).names())
        studies = studies_from_paths(paths)
    except RuleSetError as exc:
        raise click.ClickException(f"rules are invalid:\n{exc}") from None
    except StudyReadError as exc:
        raise click.ClickException(str(exc)) from None
    if not studies:
        raise click.ClickException("no DICOM instances found in the given paths")
    for study in studies:
        click.echo(f"study {study.study_instance_uid} ({len(study.series)} series)")
        verdicts = explain(study, ruleset)
        for verdict in verdicts:
            click.echo(f"  {verdict}")
        if not any(v.matched for v in verdicts):
            click.echo("  -> no rule matches: the study is stored and passed through without AI results")
            continue
        decisions = [v.decision for v in verdicts if v.decision is not None]
        windows: dict[str, list[TimeWindow | None]] = {}
        for decision in decisions:
            for model in decision.models:
                windows.setdefault(model, []).append(decision.rule.window)
        now = datetime.now()
        plan = plan_windows(windows, now)
        if plan.wait_until is not None:
            click.echo(f"  -> now ({now:%a %H:%M}) the study would wait until {plan.wait_until:%a %Y-%m-%d %H:%M} "
                       f"for the time window of {', '.join(plan.waiting_for)}")
        for model, why in plan.left_out.items():
            click.echo(f"  -> {model} would not run: {why}")
        shadow = sorted({m for d in decisions if d.shadow for m in d.models}
                        - {m for d in decisions if not d.shadow for m in d.models})
        if shadow:
            click.echo(f"  -> shadow: {', '.join(shadow)} would run with results kept here, nothing sent")


def _known_models(settings: Settings) -> list[str]:
    from dicom_ai.infer.registry import ModelError, ModelRegistry

    try:
        return ModelRegistry(settings.models_dir).names()
    except ModelError as exc:
        raise click.ClickException(str(exc)) from None


def _draft(path: Path, as_name: str | None) -> tuple[str, str]:
    """(file name under rules_dir, text) of a draft file given on the command line."""
    try:
        return as_name or path.name, path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise click.ClickException(f"{path}: cannot read the draft: {exc}") from None


_AS_OPTION = click.option("--as", "as_name", metavar="NAME",
                          help="The rules file the draft stands for (default: the draft's own file name).")


@rules.command("replay")
@click.argument("draft", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@_AS_OPTION
@click.option("--days", type=click.FloatRange(min=0, min_open=True), default=7.0, show_default=True,
              help="Replay the studies received in this many days.")
@click.option("--list", "show_list", is_flag=True, help="List each study whose models change.")
@click.pass_context
def rules_replay(ctx: click.Context, draft: Path, as_name: str | None, days: float, show_list: bool) -> None:
    """Route the recent studies with the active rules and with DRAFT, and say what would change."""
    from dicom_ai.route.drafts import DraftError, replay_draft
    from dicom_ai.route.loader import RuleSetError
    from dicom_ai.store import Spool

    settings = _settings(ctx)
    name, text = _draft(draft, as_name)
    stores = _open_stores(settings)
    try:
        diff = replay_draft(stores, Spool(settings.spool_dir), settings.rules_dir, name, text, days,
                            known_models=_known_models(settings))
    except DraftError as exc:
        for problem in exc.problems:
            click.echo(str(problem), err=True)
        raise click.ClickException(f"{len(exc.problems)} problem(s) in the draft; nothing replayed") from None
    except RuleSetError as exc:
        raise click.ClickException(f"the active rules in {settings.rules_dir} are invalid:\n{exc}") from None
    finally:
        stores.close()
    if show_list:
        for change in diff.changes:
            click.echo(f"{change.study_uid}: {', '.join(change.before) or '-'} -> {', '.join(change.after) or '-'}")
    skipped = f", {diff.skipped} skipped (files gone)" if diff.skipped else ""
    click.echo(f"{diff.studies} studies replayed over {days:g} day(s){skipped}: {diff.summary()}")


@rules.command("activate")
@click.argument("draft", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@_AS_OPTION
@click.option("--author", default=None, help="Who activates it (default: the login name).")
@click.pass_context
def rules_activate(ctx: click.Context, draft: Path, as_name: str | None, author: str | None) -> None:
    """Check DRAFT and write it into rules_dir (the node reloads it), keeping a version; audited."""
    import getpass

    from dicom_ai.route.drafts import DraftError, activate_draft

    settings = _settings(ctx)
    name, text = _draft(draft, as_name)
    stores = _open_stores(settings, create=True)
    try:
        version = activate_draft(stores, settings.rules_dir, name, text, author or getpass.getuser(),
                                 known_models=_known_models(settings))
    except DraftError as exc:
        for problem in exc.problems:
            click.echo(str(problem), err=True)
        raise click.ClickException(f"{len(exc.problems)} problem(s) in the draft; nothing activated") from None
    except OSError as exc:
        raise click.ClickException(f"{settings.rules_dir / name}: cannot write: {exc.strerror or exc}") from None
    finally:
        stores.close()
    click.echo(f"{settings.rules_dir / name}: version {version.id} by {version.author} is active")


@rules.command("history")
@click.argument("file_name", required=False)
@click.option("--diff", "show_diff", is_flag=True, help="Show each version's diff.")
@click.pass_context
def rules_history(ctx: click.Context, file_name: str | None, show_diff: bool) -> None:
    """The kept versions of the rules files (or of FILE_NAME), newest first."""
    from dicom_ai.route.drafts import rule_versions

    stores = _open_stores(_settings(ctx), create=True)
    try:
        versions = rule_versions(stores, file_name)
    finally:
        stores.close()
    for version in versions:
        when = datetime.fromtimestamp(version.created).astimezone().isoformat(timespec="seconds")
        changed = sum(1 for line in version.diff.splitlines() if line[:1] in "+-" and line[:3] not in ("+++", "---"))
        click.echo(f"{version.id:>5}  {when}  {version.file_name}  {version.author}  ({changed} line(s) changed)")
        if show_diff:
            click.echo(version.diff)
    if not versions:
        click.echo("no versions kept yet (`dicom-ai rules activate` keeps one per activation)")


@rules.command("restore")
@click.argument("version_id", type=int)
@click.option("--author", default=None, help="Who restores it (default: the login name).")
@click.pass_context
def rules_restore(ctx: click.Context, version_id: int, author: str | None) -> None:
    """Activate an old version's text again (as a new version); audited."""
    import getpass

    from dicom_ai.route.drafts import DraftError, restore_version

    settings = _settings(ctx)
    stores = _open_stores(settings, create=True)
    try:
        version = restore_version(stores, settings.rules_dir, version_id, author or getpass.getuser(),
                                  known_models=_known_models(settings))
    except LookupError as exc:
        raise click.ClickException(str(exc.args[0])) from None
    except DraftError as exc:
        for problem in exc.problems:
            click.echo(str(problem), err=True)
        raise click.ClickException(f"version {version_id} no longer fits the other rules files; nothing restored") \
            from None
    finally:
        stores.close()
    click.echo(f"{settings.rules_dir / version.file_name}: version {version_id} restored as version {version.id}")


@main.group()
def models() -> None:
    """Inspect, check, export and (zero-shot) embed the prompts of the models in models_dir."""


@models.command("list")
@click.pass_context
def models_list(ctx: click.Context) -> None:
    """List the models in models_dir with their card's key facts."""
    from dicom_ai.infer.registry import ModelRegistry

    settings = _settings(ctx)
    registry = ModelRegistry(settings.models_dir)
    for name, card in registry.cards().items():
        labels = ", ".join(label.describe() for label in card.labels)
        flag = "  NOT FOR CLINICAL USE" if card.not_for_clinical_use else ""
        click.echo(f"{name} {card.version}{flag}")
        size = "x".join(map(str, card.input.size))
        fast = ", ONNX copy " + card.onnx if card.onnx else ""
        click.echo(f"    {card.display_name}; {card.format}{fast}; input {size} ({card.input.dims}-D)")
        click.echo(f"    gate {json.dumps(card.gate)}; select {json.dumps(card.select)}; labels: {labels}")
    for folder, problem in registry.problems().items():
        click.echo(f"BROKEN {folder}: {problem}", err=True)
    if not registry.cards():
        click.echo(f"no models in {settings.models_dir}")


@models.command("check")
@click.argument("folders", nargs=-1, type=click.Path(path_type=Path, file_okay=False))
@click.option("--torch-only", is_flag=True, help="Ignore ONNX copies (check the torch path).")
@click.pass_context
def models_check(ctx: click.Context, folders: tuple[Path, ...], torch_only: bool) -> None:
    """Validate model folders (default: every folder in models_dir) with one synthetic forward pass.

    Exit status 1 when any folder is unusable; each problem names the file and field to fix.
    """
    from dicom_ai.infer.check import check_model_folder
    from dicom_ai.infer.registry import model_folders

    if not folders:
        models_dir = _settings(ctx).models_dir
        if not models_dir.is_dir():
            raise click.ClickException(f"models folder {models_dir} does not exist")
        folders = tuple(model_folders(models_dir))
        if not folders:
            raise click.ClickException(f"no model folders in {models_dir}")
    broken = 0
    for folder in folders:
        report = check_model_folder(folder, fast_path=not torch_only)
        name = f"{report.card.name} {report.card.version}" if report.card else folder.name
        state = "BROKEN" if not report.ok else ("ok, NOT READY" if report.pending else "ok")
        click.echo(f"{state}  {name}  ({folder})")
        for fact in report.facts:
            click.echo(f"    {fact}")
        for task in report.pending:
            click.echo(f"    to do: {task}")
        for warning in report.warnings:
            click.echo(f"    warning: {warning}")
        for problem in report.problems:
            click.echo(f"    error: {problem}", err=True)
        broken += not report.ok
    if broken:
        raise SystemExit(1)


@models.command("export")
@click.argument("model")
@click.pass_context
def models_export(ctx: click.Context, model: str) -> None:
    """Write an ONNX copy of MODEL (a name in models_dir, or a folder) for the onnxruntime fast path."""
    from dicom_ai.infer.card import ModelError
    from dicom_ai.infer.export import export_onnx

    folder = _model_folder(ctx, model)
    try:
        result = export_onnx(folder)
    except ModelError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"wrote {result.path} ({result.size_bytes / 1e6:.1f} MB); max probability difference from torch "
               f"{result.max_difference:.1g}; the card now names it in 'onnx:'")


@models.command("prompts")
@click.argument("model")
@click.pass_context
def models_prompts(ctx: click.Context, model: str) -> None:
    """Embed a zero-shot MODEL's label prompts (a name in models_dir, or a folder) with its text encoder, offline."""
    from dicom_ai.infer.card import ModelError
    from dicom_ai.infer.prompts import compute_prompt_embeddings

    folder = _model_folder(ctx, model)
    try:
        result = compute_prompt_embeddings(folder)
    except ModelError as exc:
        raise click.ClickException(str(exc)) from None
    first, second, cosine = result.closest
    click.echo(f"wrote {result.path}: {result.labels} label embeddings ({result.dim}-dim) from {result.prompts} prompts; "
               f"closest labels {first} / {second} (cosine {cosine:.3f})")


def _model_folder(ctx: click.Context, model: str) -> Path:
    """A folder holding a model.yaml, or the folder of a model named in models_dir."""
    folder = Path(model)
    if (folder / "model.yaml").is_file():
        return folder
    models_dir = _settings(ctx).models_dir
    folder = models_dir / model
    if not folder.is_dir():
        known = sorted(p.name for p in models_dir.iterdir() if (p / "model.yaml").is_file()) if models_dir.is_dir() else []
        raise click.ClickException(f"no model {model!r}: not a folder holding a model.yaml, and not a model in "
                                   f"{models_dir} (there: {', '.join(known) or 'none'})")
    return folder


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """The node's health: studies by state, sends, failures, disk; exit 1 when something needs attention."""
    from dataclasses import asdict

    from dicom_ai.store.health import duration, human_size, node_health

    settings = _settings(ctx)
    health = node_health(_open_stores(settings).reports, settings.home, settings.retention_days,
                         send_retry_window_s=settings.send_retry_window)
    if as_json:
        click.echo(json.dumps(asdict(health), indent=2))
    else:
        click.echo(f"{'OK' if health.ok else 'ATTENTION'}: "
                   f"{', '.join(f'{n} {state}' for state, n in sorted(health.studies.items())) or 'no studies'}")
        click.echo(f"  last instance received {_when(health.last_received_at, 'never')}, "
                   f"last study processed {_when(health.last_processed_at, 'never')}")
        if health.details.get("next_window_opens"):
            click.echo(f"  {health.studies.get('waiting', 0)} study(ies) wait for a model's time window; the next "
                       f"opens {_when(health.details['next_window_opens'])}")
        sends = ", ".join(f"{row['n']} {row['kind']} {row['state']}" for row in health.sends) or "none"
        click.echo(f"  sends: {sends}; a failing send is retried for about {duration(settings.send_retry_window)} "
                   f"({settings.send_max_attempts} attempts), then given up until its destination answers again")
        retention = f"{health.retention_days:g} days" if health.retention_days else "off"
        click.echo(f"  held: {health.held_files} received file(s), {human_size(health.held_bytes)}; "
                   f"disk free {human_size(health.disk_free_bytes)} of {human_size(health.disk_total_bytes)}; "
                   f"retention {retention}")
        for problem in health.attention:
            click.echo(f"  ! {problem}")
    if not health.ok:
        sys.exit(1)


@main.command("study")
@click.argument("study_uid")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def study_detail(ctx: click.Context, study_uid: str, as_json: bool) -> None:
    """Everything about one study: state, priority, findings, results and their sends, and its audit trail."""
    store = _open_stores(_settings(ctx)).reports
    row = store.study(study_uid)
    if row is None:
        raise click.ClickException(f"no study {study_uid} in this node's database (see `dicom-ai studies`)")
    detail = store.study_detail(study_uid)
    assert detail is not None
    findings, sends, events = detail["findings"], detail["sends"], detail["events"]
    if as_json:
        click.echo(json.dumps(detail, indent=2))
        return

    click.echo(f"study {row.study_instance_uid}  patient {row.patient_id or '-'}  accession {row.accession_number or '-'}")
    click.echo(f"  state {row.state}, {row.instance_count} instance(s), last received {_when(row.last_received_at)}"
               + (f", files deleted {_when(row.purged_at)}" if row.purged_at else "")
               + (f", waits for a model's time window until {_when(row.waiting_until)}" if row.waiting_until else ""))
    if row.models:
        click.echo(f"  models {', '.join(row.models)}")
    if row.priority:
        override = f" (override {row.priority_override} by {row.priority_override_by})" if row.priority_override else ""
        click.echo(f"  priority {row.priority} {row.priority_score:.2f}{override}: {'; '.join(row.priority_reasons)}")
    if row.error:
        click.echo(f"  error: {row.error}")
    for f in findings:
        state = "present" if f["images_present"] else "absent"
        click.echo(f"  finding {f['model']} {f['model_version']}: {f['label']} ({f['code_scheme']} {f['code_value']}) "
                   f"{f['probability']:.0%}, {state} on {f['images_present']} of {f['images']} image(s)")
    for r in sends:
        error = f" ({r['last_error']})" if r["last_error"] else ""
        click.echo(f"  send {r['kind']} {r['key']} to {r['destination']}: {r['state']} after {r['attempts']} attempt(s){error}")
    click.echo("  audit trail:")
    for e in events:
        detail = json.loads(e["detail"] or "{}")
        text = ", ".join(f"{k}={v}" for k, v in detail.items())
        click.echo(f"    {_when(e['at'])}  {e['kind']}{'  ' + text if text else ''}")


@main.command()
@click.option("--state", default=None, help="Only studies in this state (receiving, complete, done, ...).")
@click.option("--limit", default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def studies(ctx: click.Context, state: str | None, limit: int, as_json: bool) -> None:
    """What the node has received and done, newest first."""
    from dataclasses import asdict

    rows = _open_stores(_settings(ctx)).reports.studies(limit=limit, state=state)
    if as_json:
        click.echo(json.dumps([asdict(row) for row in rows], indent=2))
        return
    if not rows:
        click.echo("no studies")
    for row in rows:
        when = _when(row.last_received_at)
        priority = f"{row.priority} {row.priority_score:.2f}" if row.priority else "-"
        click.echo(
            f"{when}  {row.state:<10} {priority:<14} {row.instance_count:>4} inst  {row.results:>3} results"
            f"  {row.pending_sends:>2} to send  {row.study_instance_uid}  {row.patient_id}"
        )
        if row.error:
            click.echo(f"    error: {row.error}")
        if row.waiting_until:
            click.echo(f"    waits for a model's time window until {_when(row.waiting_until)}")
        if row.purged_at is not None:
            click.echo(f"    files deleted {_when(row.purged_at, form='%Y-%m-%d')} (retention_days)")
        if row.priority_reasons:
            click.echo(f"    why: {'; '.join(row.priority_reasons)}")


@main.command()
@click.option("--level", type=click.Choice(["STAT", "URGENT", "ROUTINE"]), default=None, help="Only this priority.")
@click.option("--patient", default=None, help="Only this PatientID.")
@click.option("--today", is_flag=True, help="Only studies received today: what to read first today.")
@click.option("--limit", default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def worklist(ctx: click.Context, level: str | None, patient: str | None, today: bool, limit: int, as_json: bool) -> None:
    """The reading order: most urgent first; waiting studies rise against their turnaround target."""
    from dataclasses import asdict

    from dicom_ai.prioritize.worklist import current_worklist

    settings = _settings(ctx)
    listed = current_worklist(_open_stores(settings).reports, settings.turnaround_targets, today=today, patient_id=patient)
    entries = [e for e in listed if level is None or e.priority.name == level][:limit]
    if as_json:
        click.echo(json.dumps([asdict(e) | {"priority": e.priority.name} for e in entries], indent=2))
        return
    if not entries:
        click.echo("worklist is empty")
    for rank, entry in enumerate(entries, 1):
        late = "  LATE" if entry.overdue > 1 else ""
        click.echo(f"{rank:>3}. {entry.priority.name:<8} waiting {entry.waiting_minutes:>6.0f} min{late}  "
                   f"{entry.patient_id:<12} {entry.accession_number:<12} {entry.state:<10} {entry.study_instance_uid}")
        click.echo(f"       why: {'; '.join(entry.reasons)}")


@main.command()
@click.argument("study_uid")
@click.argument("level", type=click.Choice(["STAT", "URGENT", "ROUTINE"]), required=False)
@click.option("--reason", default="", help="Why (kept in the audit trail and shown in the worklist).")
@click.option("--by", "by", default=None, help="Who (default: the login name).")
@click.option("--clear", is_flag=True, help="Remove the override: the AI priority applies again.")
@click.pass_context
def priority(ctx: click.Context, study_uid: str, level: str | None, reason: str, by: str | None, clear: bool) -> None:
    """Override a study's priority as a radiologist (audited); Orthanc and the worklist entry get it."""
    import getpass

    from dicom_ai.domain import Override, Priority
    from dicom_ai.pipeline import apply_override

    if clear == (level is not None):
        raise click.UsageError("give a LEVEL (STAT, URGENT or ROUTINE) or --clear")
    if level and not reason.strip():
        raise click.UsageError("--reason is required: the override is audited")
    settings = _settings(ctx)
    stores = _open_stores(settings)
    who = by or getpass.getuser()
    override = Override(Priority[level] if level else None, reason.strip(), who)
    if not apply_override(stores, settings, study_uid, override):
        raise click.ClickException(f"no study {study_uid} on this node")
    click.echo(f"{study_uid}: priority {override.describe()}")


@main.command()
@click.argument("study_uid")
@click.option("--model", required=True, help="The model whose result is judged (as `dicom-ai study` lists it).")
@click.option("--finding", required=True, help="The finding (label) judged, e.g. Consolidation.")
@click.option("--truth", type=click.Choice(["present", "absent", "uncertain"]), required=True,
              help="The finding as you read the study (agreement with the AI follows from it).")
@click.option("--comment", default="", help="Why, or what else (kept in the audit trail and the assessment SR).")
@click.option("--by", "by", default=None, help="Who (default: the login name).")
@click.pass_context
def feedback(ctx: click.Context, study_uid: str, model: str, finding: str, truth: str, comment: str,
             by: str | None) -> None:
    """A radiologist's judgement of one AI finding (revisable, audited); an assessment SR goes to the PACS."""
    import getpass

    from dicom_ai.domain import Judgement, Truth, TruthSource
    from dicom_ai.validation import FeedbackError, record_feedback

    settings = _settings(ctx)
    stores = _open_stores(settings)
    judgement = Judgement(study_uid, model, finding, Truth(truth), TruthSource.RADIOLOGIST, by or getpass.getuser(),
                          comment.strip())
    try:
        assessment = record_feedback(stores, settings, judgement)
    except FeedbackError as exc:
        raise click.ClickException(str(exc)) from None
    where = f"; assessment SR {assessment} queued for the PACS" if assessment else ""
    click.echo(f"{study_uid}: {model} {finding} judged {truth} by {judgement.by}{where}")


def _date(value: str | None, option: str) -> float | None:
    """YYYY-MM-DD as the epoch of that local midnight."""
    if value is None:
        return None
    try:
        return time.mktime(time.strptime(value, "%Y-%m-%d"))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a date written YYYY-MM-DD", param_hint=option) from None


def _monitoring(settings: Settings, model: str) -> MonitoringView | None:
    """The model's thresholds and drift reference from its card in models_dir (None when it has no card there)."""
    from dicom_ai.infer.card import CardError
    from dicom_ai.infer.registry import monitoring_view

    try:
        return monitoring_view(settings.models_dir, model)
    except CardError as exc:
        raise click.ClickException(str(exc)) from None


def _reference(settings: Settings, model: str) -> dict[str, Reference] | None:
    """The drift reference in the model's card, when the model is in models_dir and has one."""
    view = _monitoring(settings, model)
    return view.references if view is not None and view.references else None


@main.command()
@click.argument("model")
@click.option("--since", default=None, metavar="YYYY-MM-DD", help="Only studies processed from this day on.")
@click.option("--until", default=None, metavar="YYYY-MM-DD", help="Only studies processed before this day.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Report folder (default: HOME/reports/MODEL-<date and time>).")
@click.option("--dataset", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Evaluate on a labelled dataset folder instead of the node's studies.")
@click.option("--layout", default="auto", show_default=True, help="The dataset's layout (as `train dataset` reads).")
@click.option("--option", "options", multiple=True, metavar="KEY=VALUE", help="Layout option (repeatable).")
@click.option("--finding", default=None, help="The model label the dataset's positive class is (multi-label models).")
@click.option("--limit", type=click.IntRange(1), default=None, help="Only the dataset's first N samples.")
@click.option("--set-reference", is_flag=True, help="With --dataset: store the run as the drift reference in the card.")
@click.option("--json", "as_json", is_flag=True, help="Print the numbers as JSON instead of the table.")
@click.pass_context
def evaluate(ctx: click.Context, model: str, since: str | None, until: str | None, out: Path | None,
             dataset: Path | None, layout: str, options: tuple[str, ...], finding: str | None, limit: int | None,
             set_reference: bool, as_json: bool) -> None:
    """How MODEL does: on the judged studies the node processed, or on a labelled dataset (same inference path);
    prints the table and writes a report folder (ROC, calibration, scores over time, subgroups, index.html)."""
    from dicom_ai import validation
    from dicom_ai.monitor.report import summary_table

    settings = _settings(ctx)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    if dataset is not None:
        evaluated, title, notes = _evaluate_dataset(ctx, settings, model, dataset, layout, options, finding, limit,
                                                    set_reference)
    else:
        if set_reference:
            raise click.UsageError("--set-reference needs --dataset (the reference is validation data, not live)")
        stores = _open_stores(settings)
        evaluated = validation.evaluate_model(stores, settings, model, _reference(settings, model),
                                              since=_date(since, "--since"), until=_date(until, "--until"))
        if not evaluated.predictions:
            known = ", ".join(stores.performance.models()) or "none"
            raise click.ClickException(f"no predictions of model {model!r} in the period on this node "
                                       f"(models with predictions: {known})")
        period = f"from {since or 'the start'} to {until or 'now'}"
        title = f"{model}: live evaluation, studies processed {period}"
        notes = []
    folder = out or settings.home / "reports" / f"{model}-{stamp}"
    files = validation.report_evaluation(evaluated, folder, title, settings, notes)
    if as_json:
        click.echo(files.metrics.read_text(encoding="utf-8"))
        return
    click.echo(title)
    click.echo(summary_table(evaluated.labels))
    flagged = [c for c in evaluated.drift if c.flagged]
    if evaluated.drift:
        click.echo(f"drift: {len(flagged)} of {len(evaluated.drift)} weekly check(s) flagged"
                   + "".join(f"\n  {c.week} {c.variable}: PSI {c.psi:.2f}" + (f", KS p {c.ks_p:.1g}" if c.ks_p is not None
                                                                             else "") for c in flagged))
    click.echo(f"report: {files.html}")
    for path in files.figures.values():
        click.echo(f"  {path}")


def _evaluate_dataset(ctx: click.Context, settings: Settings, model: str, root: Path, layout: str,
                      options: tuple[str, ...], finding: str | None, limit: int | None,
                      set_reference: bool) -> tuple[Any, str, list[str]]:
    """A labelled dataset through the model's own inference path (train/dataset_eval.py)."""
    from dicom_ai import validation
    from dicom_ai.infer.card import CARD_FILENAME, ModelError, ReferenceSpec, load_card, set_card_reference
    from dicom_ai.infer.runner import LoadedModel
    from dicom_ai.train.dataset_eval import DatasetEvaluationError, evaluate_dataset
    from dicom_ai.train.layouts import LayoutError
    from dicom_ai.train.reference import reference_from_studies

    folder = _model_folder(ctx, model)
    try:
        card = load_card(folder / CARD_FILENAME)
        loaded = LoadedModel.load(folder, card, fast_path=settings.onnx_fast_path)
        run = evaluate_dataset(loaded, root, layout, tuple(_layout_option(o) for o in options), finding, limit)
    except (ModelError, LayoutError, DatasetEvaluationError) as exc:
        raise click.ClickException(str(exc)) from None
    notes = [f"{len(run.predictions)} sample(s) of the {run.dataset.layout} dataset at {root}: "
             f"{run.dataset.classes[1]} as {run.label}"]
    if set_reference:
        command = shlex.join(["dicom-ai", "evaluate", card.name, "--dataset", str(root), "--layout", run.dataset.layout,
                              *[f"--option={o}" for o in options], "--set-reference"])
        source = (f"{len(run.studies)} sample(s) of the {run.dataset.layout} dataset at {root}, through "
                  f"LoadedModel.predict ({loaded.backend})")
        set_card_reference(folder / CARD_FILENAME, ReferenceSpec.model_validate(
            reference_from_studies(run.studies, source=source, command=command)))
        notes.append(f"the drift reference in {folder / CARD_FILENAME} was replaced by this run")
    reference = card.reference.references() if card.reference is not None else None
    evaluated = validation.evaluate_predictions(card.name, run.predictions, settings, reference)
    return evaluated, f"{card.name}: evaluation on the {run.dataset.layout} dataset at {root}", notes


@main.group("export")
def export_group() -> None:
    """Export what the node knows for other tools."""


@export_group.command("seismometer")
@click.argument("model")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="Folder to write.")
@click.option("--since", default=None, metavar="YYYY-MM-DD", help="Only studies processed from this day on.")
@click.option("--until", default=None, metavar="YYYY-MM-DD", help="Only studies processed before this day.")
@click.option("--finding", default=None, help="The primary target of a multi-label model (default: the first label).")
@click.pass_context
def export_seismometer(ctx: click.Context, model: str, out: Path, since: str | None, until: str | None,
                       finding: str | None) -> None:
    """MODEL's judged studies as seismometer 0.5 loads them (pseudonymised; open with run_startup from OUT)."""
    from dicom_ai.validation import ExportError, export_for_seismometer

    settings = _settings(ctx)
    stores = _open_stores(settings)
    view = _monitoring(settings, model)
    thresholds = view.thresholds if view is not None else None
    try:
        written = export_for_seismometer(stores, settings, model, out, thresholds, since=_date(since, "--since"),
                                         until=_date(until, "--until"), primary=finding)
    except ExportError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"wrote {written.rows} judged study(ies) of {model} to {written.folder} "
               f"({written.left_out} left out: not judged present or absent for every label)")
    for path in written.files:
        click.echo(f"  {path}")
    click.echo(f"open it: cd {written.folder} && python -c \"import seismometer; seismometer.run_startup(config_path='.')\"")


def _open_stores(settings: Settings, create: bool = False) -> Stores:
    from dicom_ai.store import Stores

    if not create and not settings.database_path.exists():
        raise click.ClickException(f"no database at {settings.database_path}: nothing received yet (is DICOM_AI_HOME right?)")
    return Stores.open(settings.database_path)


@main.command()
@click.argument("study_uids", nargs=-1, required=True, metavar="STUDY_UID...")
@click.pass_context
def retry(ctx: click.Context, study_uids: tuple[str, ...]) -> None:
    """Process finished studies again (done, no_match or failed), e.g. after fixing a rule; audited."""
    import getpass

    stores = _open_stores(_settings(ctx))
    refused = 0
    for uid in study_uids:
        if stores.studies.requeue(uid, by=getpass.getuser()):
            click.echo(f"{uid}: queued; the running node processes it within seconds")
        else:
            refused += 1
            row = stores.reports.study(uid)
            if row is None:
                why = "no such study; only done, no_match or failed studies can be retried"
            elif row.purged_at is not None:
                why = (f"its files were deleted on {_when(row.purged_at, form='%Y-%m-%d')} after retention_days: "
                       "send the study again from the PACS")
            else:
                why = f"it is {row.state}; only done, no_match or failed studies can be retried"
            click.echo(f"{uid}: not queued ({why})", err=True)
    if refused:
        sys.exit(1)


@main.command()
@click.argument("study_uids", nargs=-1, metavar="[STUDY_UID...]")
@click.option("--failed", "all_failed", is_flag=True, help="Every study's given-up sends.")
@click.option("--sent", "include_sent", is_flag=True,
              help="Also send again what was already delivered (e.g. the PACS lost it in a restore).")
@click.pass_context
def resend(ctx: click.Context, study_uids: tuple[str, ...], all_failed: bool, include_sent: bool) -> None:
    """Queue results and notices again without re-running the models: given-up sends (and with --sent, delivered ones); audited."""
    import getpass

    if bool(study_uids) == all_failed:
        raise click.UsageError("name the studies (STUDY_UID...) or give --failed for every given-up send")
    queued = _open_stores(_settings(ctx)).outbox.requeue_sends(list(study_uids) or None, by=getpass.getuser(), include_sent=include_sent)
    what = "given-up or delivered" if include_sent else "given-up"
    click.echo(f"{queued} {what} send(s) queued again; the running node delivers them within seconds")
    if study_uids and not queued:
        sys.exit(1)


@main.command()
@click.argument("peer", callback=lambda _c, _p, v: _peer(v), metavar="AE@HOST:PORT")
@click.pass_context
def echo(ctx: click.Context, peer: Peer) -> None:
    """C-ECHO a DICOM peer (e.g. the PACS, or this node)."""
    from dicom_ai.send.cstore import SendError
    from dicom_ai.send.cstore import echo as c_echo

    settings = _client_settings(ctx)
    try:
        status = c_echo(settings.ae, peer, settings.client_tls(peer.host))
    except SendError as exc:
        raise click.ClickException(str(exc)) from None
    if status != 0:
        raise click.ClickException(f"{peer} answered C-ECHO with status 0x{status:04X}")
    click.echo(f"{peer}: C-ECHO Success")


@main.command()
@click.argument("peer", callback=lambda _c, _p, v: _peer(v), metavar="AE@HOST:PORT")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.pass_context
def send(ctx: click.Context, peer: Peer, paths: tuple[Path, ...]) -> None:
    """C-STORE DICOM files (folders are walked) to a peer."""
    from dicom_ai.send.cstore import SendError, send_files

    settings = _client_settings(ctx)
    files = [f for p in paths for f in (sorted(x for x in p.rglob("*") if x.is_file()) if p.is_dir() else [p])]
    try:
        outcome = send_files(settings.ae, peer, files, settings.client_tls(peer.host))
    except SendError as exc:
        raise click.ClickException(str(exc)) from None
    failed = {path: error for path, error in outcome.items() if error}
    for path, error in failed.items():
        click.echo(f"FAILED {path}: {error}", err=True)
    click.echo(f"sent {len(outcome) - len(failed)} of {len(files)} file(s) to {peer}")
    if failed:
        sys.exit(1)


@main.command()
@click.option("--home", type=click.Path(file_okay=False, path_type=Path), default=Path(".state/demo"),
              show_default=True, help="Folder for the demo's Orthanc, node and studies (emptied at start).")
@click.option("--exit-when-done", is_flag=True, help="Stop once the results are back (for scripts and tests).")
def demo(home: Path, exit_when_done: bool) -> None:
    """A local Orthanc (the PACS), the node and a handful of studies: prints where to look; Ctrl-C stops all."""
    from dicom_ai.demo.orthanc import OrthancStartError
    from dicom_ai.demo.run import DemoError, run_demo

    _setup_logging("WARNING")
    try:
        run_demo(home, click.echo, exit_when_done=exit_when_done)
    except (DemoError, OrthancStartError) as exc:
        raise click.ClickException(str(exc)) from None


@main.group()
def train() -> None:
    """Train models: demo models from synthetic data, or a classifier from a dataset folder."""


@train.command("demo")
@click.argument("name", type=click.Choice(["all", *DEMO_NAMES]))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Model folder to write (default: models_dir/<model name>; with 'all', the parent folder).")
@click.option("--seed", default=0, show_default=True)
@click.option("--quick", is_flag=True, help="A few steps on a few images: checks the recipe, not a usable model.")
@click.pass_context
def train_demo(ctx: click.Context, name: str, out: Path | None, seed: int, quick: bool) -> None:
    """Train a demo model from synthetic phantoms, reproducibly (fixed seed). NOT FOR CLINICAL USE."""
    from dicom_ai.train.demos import train_demo as run_demo

    _setup_logging("INFO")
    names = DEMO_NAMES if name == "all" else (name,)
    parent = out if (out is not None and name == "all") else _settings(ctx).models_dir
    for demo in names:
        target = out if (out is not None and name != "all") else parent / DEMO_FOLDERS[demo]
        report = run_demo(demo, target, seed=seed, quick=quick)
        click.echo(json.dumps(report, indent=2, default=str))


@train.command("reference")
@click.argument("name", type=click.Choice(["all", *DEMO_NAMES]))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Model folder whose card gets the reference (default: models_dir/<model name>; with 'all', "
                   "the parent folder).")
@click.option("--cases", type=click.IntRange(10, 100_000), default=None,
              help="Phantom studies to score (default per demo: 80-200).")
@click.option("--seed", default=900_000, show_default=True, help="First phantom seed (held out of training).")
@click.pass_context
def train_reference(ctx: click.Context, name: str, out: Path | None, cases: int | None, seed: int) -> None:
    """Store a demo model's drift reference in its card: phantom studies through the node's inference path."""
    from dicom_ai.infer.card import ModelError
    from dicom_ai.train.reference import demo_reference

    _setup_logging("INFO")
    names = DEMO_NAMES if name == "all" else (name,)
    parent = out if (out is not None and name == "all") else _settings(ctx).models_dir
    for demo in names:
        target = out if (out is not None and name != "all") else parent / DEMO_FOLDERS[demo]
        try:
            card = demo_reference(demo, target, cases=cases, seed=seed)
        except (ModelError, ValueError) as exc:
            raise click.ClickException(str(exc)) from None
        reference = card.reference
        shown = ", ".join(sorted((reference.scores if reference else {}) | (reference.properties if reference else {})))
        click.echo(f"{target}: reference of {shown}")


@train.command("dataset")
@click.argument("root", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="Model folder to write.")
@click.option("--layout", default="auto", show_default=True,
              help="pneumonia, kvasir, msd, rsna-mammo, kau, dicom-csv, folders, or auto (detect).")
@click.option("--option", "options", multiple=True, metavar="KEY=VALUE",
              help="Layout option, e.g. positive=polyps, target_label=1, views=CC,MLO, label_column=label (repeatable).")
@click.option("--name", default=None, help="Model name in the card (default from layout and class).")
@click.option("--code", default=None, metavar="SCHEME:VALUE:MEANING",
              help="Code of the positive class, e.g. SCT:233604007:Pneumonia (known for the seed datasets).")
@click.option("--size", default=None, metavar="RxC or DxRxC", help="Network input size (default 224x224, volumes 32x96x96).")
@click.option("--window", default=None, metavar="CENTER,WIDTH", help="Clip volumes to this window first (CT default 40,400).")
@click.option("--arch", "architecture", type=click.Choice(["small", "densenet121"]), default="small", show_default=True)
@click.option("--epochs", default=20, show_default=True)
@click.option("--batch-size", default=16, show_default=True)
@click.option("--lr", "learning_rate", default=1e-3, show_default=True)
@click.option("--patience", default=4, show_default=True, help="Early stopping: epochs without validation AUROC gain.")
@click.option("--seed", default=0, show_default=True)
@click.option("--max-steps-per-epoch", type=int, default=None, help="Cap each epoch (smoke runs).")
@click.option("--keep-checkpoints", is_flag=True, help="Keep <out>/checkpoints (last.pt, best.pt) after success.")
def train_dataset(root: Path, out: Path, layout: str, options: tuple[str, ...], name: str | None, code: str | None,
                  size: str | None, window: str | None, architecture: str, epochs: int, batch_size: int,
                  learning_rate: float, patience: int, seed: int, max_steps_per_epoch: int | None,
                  keep_checkpoints: bool) -> None:
    """Train a binary classifier on a dataset folder and write it as a model (card filled in).

    Interrupted runs resume from <out>/checkpoints/last.pt when rerun with the same settings.
    """
    from dicom_ai.train.from_dataset import DatasetTraining, TrainingError, train_from_dataset
    from dicom_ai.train.layouts import LayoutError

    _setup_logging("INFO")
    request = DatasetTraining(
        root=root, out=out, layout=layout, options=tuple(_layout_option(o) for o in options), name=name,
        code=_code_option(code) if code else None, size=_numbers(size, "x", int, "--size") if size else None,
        window=_numbers(window, ",", float, "--window") if window else None, architecture=architecture,
        epochs=epochs, batch_size=batch_size, learning_rate=learning_rate, patience=patience, seed=seed,
        max_steps_per_epoch=max_steps_per_epoch, progress=sys.stderr.isatty(), keep_checkpoints=keep_checkpoints,
    )
    try:
        report = train_from_dataset(request)
    except (TrainingError, LayoutError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(json.dumps(report, indent=2, default=str))


def _layout_option(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise click.BadParameter(f"{text!r}: write KEY=VALUE, e.g. positive=polyps", param_hint="--option")
    if "," in value:
        return key, tuple(v.strip() for v in value.split(",") if v.strip())
    if key == "positive":
        return key, (value,)
    return key, int(value) if value.isdigit() else value


def _code_option(text: str):  # type: ignore[no-untyped-def]
    from pydantic import ValidationError

    from dicom_ai.infer.card import CodeSpec

    scheme, _, rest = text.partition(":")
    value, _, meaning = rest.partition(":")
    try:
        return CodeSpec(value=value, scheme=scheme.upper(), meaning=meaning)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise click.BadParameter(f"{text!r}: {exc.errors()[0]['msg']} (write e.g. SCT:233604007:Pneumonia)", param_hint="--code") from None


def _numbers(text: str, separator: str, kind: type, hint: str) -> tuple[Any, ...]:
    try:
        return tuple(kind(part) for part in text.lower().split(separator))
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a list of numbers separated by {separator!r}", param_hint=hint) from None


from dicom_ai.web.users_cli import users  # noqa: E402 (a group in a module of its own)

main.add_command(users)

if __name__ == "__main__":
    main()
