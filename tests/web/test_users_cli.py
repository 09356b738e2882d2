"""`dicom-ai users ...`: accounts made from the node's terminal, hashed, audited; the last admin stays."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from dicom_ai.cli import main
from dicom_ai.store import Stores
from dicom_ai.store.accounts import Accounts


def _run(home: Path, *args: str, stdin: str | None = None) -> tuple[int, str]:
    outcome = CliRunner().invoke(main, list(args), input=stdin, env={"DICOM_AI_HOME": str(home)})
    return outcome.exit_code, outcome.output


def test_users_add_list_passwd_remove(tmp_path: Path) -> None:
    assert _run(tmp_path, "users", "list")[1].startswith("no users: add the first admin")
    assert _run(tmp_path, "users", "add", "ada", "--role", "admin", "--password-stdin", stdin="first password\n") == (0, "added ada (admin)\n")
    assert _run(tmp_path, "users", "add", "rita", "--role", "radiologist", "--password-stdin", stdin="rita's password\n")[0] == 0
    code, output = _run(tmp_path, "users", "add", "ada", "--role", "viewer", "--password-stdin", stdin="another one!\n")
    assert code == 1 and "exists already" in output
    code, output = _run(tmp_path, "users", "add", "bob", "--role", "viewer", "--password-stdin", stdin="short\n")
    assert code == 1 and "too short" in output
    listed = _run(tmp_path, "users", "list")[1]
    assert "ada" in listed and "admin" in listed and "rita" in listed and "bob" not in listed

    store = Stores.open(tmp_path / "dicom-ai.sqlite")
    accounts = Accounts(store.database)
    hashes = store.database.query("select password_hash from users")
    assert all(row["password_hash"].startswith("$argon2id$") and "first password" not in row["password_hash"] for row in hashes)
    ada = accounts.verify("ada", "first password")
    assert ada is not None and accounts.verify("ada", "wrong password") is None
    token = accounts.open_session(ada, "127.0.0.1")
    assert accounts.session(token, 60) is not None

    assert _run(tmp_path, "users", "passwd", "ada", "--password-stdin", stdin="second password\n")[0] == 0
    assert accounts.session(token, 60) is None  # signed out everywhere
    assert accounts.verify("ada", "second password") is not None
    code, output = _run(tmp_path, "users", "remove", "ada")
    assert code == 1 and "last admin" in output
    assert _run(tmp_path, "users", "remove", "rita") == (0, "removed rita\n")
    assert _run(tmp_path, "users", "passwd", "rita", "--password-stdin", stdin="whatever12345\n")[0] == 1
    kinds = [row["kind"] for row in store.reports.audit()]
    assert kinds.count("user_added") == 2 and "user_password_changed" in kinds and "user_removed" in kinds
    store.close()


def test_unknown_name_is_verified_against_a_hash_of_the_same_cost(tmp_path: Path) -> None:
    """The constant dummy hash must cost what a real one costs (same argon2 parameters), and never match."""
    from argon2 import extract_parameters

    store = Stores.open(tmp_path / "dicom-ai.sqlite")
    accounts = Accounts(store.database)
    assert extract_parameters(Accounts._dummy_hash) == Accounts._hasher._parameters
    assert _run(tmp_path, "users", "add", "ada", "--role", "admin", "--password-stdin", stdin="first password\n")[0] == 0
    assert accounts.verify("ada", "first password") is not None
    assert accounts.verify("nobody", "first password") is None
    assert accounts.verify("nobody", "no such user: verified anyway, so timing tells no names") is None
    store.close()
