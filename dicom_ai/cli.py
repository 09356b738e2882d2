"""`dicom-ai`: one command per verb; the logic lives in the stage packages."""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from dicom_ai.config import ConfigError, Peer, Settings, describe_settings, load_settings
from dicom_ai.train.names import DEMO_FOLDERS, DEMO_NAMES

if TYPE_CHECKING:
    from dicom_ai.store import Stores

log = logging.getLogger("dicom_ai")


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level), format="%(asctime)s %(levelname)-7s %(name)s: %(message)s", stream=sys.stderr
    )
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
    from dicom_ai.infer.executor import ExecutorError
    from dicom_ai.node import Node
    from dicom_ai.route.loader import RuleSetError

    settings = _settings(ctx)
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
        click.echo(f"ok  {rule.name}{state}: models {', '.join(rule.models)}")
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
    from dataclasses import asdict

    store = _open_stores(_settings(ctx)).reports
    row = store.study(study_uid)
    if row is None:
        raise click.ClickException(f"no study {study_uid} in this node's database (see `dicom-ai studies`)")
    findings = store.findings_of(study_uid)
    sends = [{k: v for k, v in r.items() if k != "payload"} for r in store.outbox_rows(study_uid)]
    events = list(reversed(store.events(study_uid, limit=1000)))
    if as_json:
        click.echo(json.dumps({"study": asdict(row), "findings": findings, "sends": sends, "events": events}, indent=2))
        return

    click.echo(f"study {row.study_instance_uid}  patient {row.patient_id or '-'}  accession {row.accession_number or '-'}")
    click.echo(f"  state {row.state}, {row.instance_count} instance(s), last received {_when(row.last_received_at)}"
               + (f", files deleted {_when(row.purged_at)}" if row.purged_at else ""))
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


def _open_stores(settings: Settings) -> Stores:
    from dicom_ai.store import Stores

    if not settings.database_path.exists():
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


if __name__ == "__main__":
    main()
