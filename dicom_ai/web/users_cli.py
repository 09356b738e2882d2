"""`dicom-ai users ...`: the console's accounts, managed from the node's terminal (the first admin too:
no account or password exists until one is added here)."""

from __future__ import annotations

import getpass
import sys

import click

from dicom_ai.config import ConfigError, load_settings
from dicom_ai.store.accounts import AccountError, Accounts, Role
from dicom_ai.store.database import Database


def _accounts(ctx: click.Context) -> Accounts:
    try:
        settings = load_settings((ctx.find_root().obj or {}).get("config"))
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    return Accounts(Database(settings.database_path))


def _password(password_stdin: bool) -> str:
    if password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    first = click.prompt("password", hide_input=True)
    if click.prompt("again", hide_input=True) != first:
        raise click.ClickException("the two passwords differ")
    return str(first)


@click.group()
def users() -> None:
    """Accounts of the web console: admin, radiologist or viewer."""


@users.command("add")
@click.argument("name")
@click.option("--role", type=click.Choice([r.value for r in Role]), required=True,
              help="viewer reads; radiologist also overrides priorities; admin also rules, models, retries, users.")
@click.option("--password-stdin", is_flag=True, help="Read the password from the first line of stdin (scripts).")
@click.pass_context
def users_add(ctx: click.Context, name: str, role: str, password_stdin: bool) -> None:
    """Add an account (audited)."""
    try:
        _accounts(ctx).add_user(name, Role(role), _password(password_stdin), by=getpass.getuser())
    except AccountError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"added {name} ({role})")


@users.command("list")
@click.pass_context
def users_list(ctx: click.Context) -> None:
    """The accounts and their roles."""
    import time

    found = _accounts(ctx).users()
    if not found:
        click.echo("no users: add the first admin with `dicom-ai users add NAME --role admin`")
    for user in found:
        changed = time.strftime("%Y-%m-%d", time.localtime(user.password_changed_at))
        click.echo(f"{user.name:<24} {user.role.value:<12} password set {changed}")


@users.command("passwd")
@click.argument("name")
@click.option("--password-stdin", is_flag=True, help="Read the password from the first line of stdin (scripts).")
@click.pass_context
def users_passwd(ctx: click.Context, name: str, password_stdin: bool) -> None:
    """Set a new password; the user's sessions end (audited)."""
    try:
        _accounts(ctx).set_password(name, _password(password_stdin), by=getpass.getuser())
    except AccountError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"password of {name} changed; signed out everywhere")


@users.command("remove")
@click.argument("name")
@click.pass_context
def users_remove(ctx: click.Context, name: str) -> None:
    """Remove an account and its sessions (audited); the last admin stays."""
    try:
        _accounts(ctx).remove_user(name, by=getpass.getuser())
    except AccountError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"removed {name}")
