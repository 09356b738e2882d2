"""The node's pseudonym key: made once, private to the node's user, the same on every later read."""

from __future__ import annotations

import stat
from pathlib import Path

from dicom_ai.store.secret import SECRET_FILE, node_secret, pseudonym


def test_the_key_is_made_once_and_kept_private(tmp_path: Path) -> None:
    key = node_secret(tmp_path)
    assert len(key) == 32 and node_secret(tmp_path) == key
    assert stat.S_IMODE((tmp_path / SECRET_FILE).stat().st_mode) == 0o600
    assert list(tmp_path.iterdir()) == [tmp_path / SECRET_FILE]  # no temporary left


def test_pseudonyms_are_stable_per_key_and_kind() -> None:
    key = bytes(32)
    assert pseudonym(key, "patient", "P1") == pseudonym(key, "patient", "P1") != pseudonym(key, "patient", "P2")
    assert pseudonym(key, "patient", "P1") != pseudonym(b"\1" * 32, "patient", "P1")
    assert pseudonym(key, "context", "P1").startswith("C-") and pseudonym(key, "patient", "P1").startswith("P-")
