"""The node's secret: a key kept in its home, for pseudonyms that only this node can link back.

Exports (the seismometer export) name patients and studies by a keyed hash (HMAC-SHA256) of their
PatientID and accession number, never by the values themselves: the same patient has the same
pseudonym in every export of this node, and nobody without the key can find out who it is, even
by hashing a list of candidate IDs. The key is made once (32 random bytes, mode 0600) and must be
backed up with the database if exports are to stay linkable after a restore.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Sequence
from pathlib import Path

SECRET_FILE = "pseudonym.key"


def node_secret(home: Path) -> bytes:
    """The node's pseudonym key, made on first use (readable by the node's user only)."""
    path = home / SECRET_FILE
    try:
        return bytes.fromhex(path.read_text(encoding="ascii").strip())
    except FileNotFoundError:
        pass
    home.mkdir(parents=True, exist_ok=True)
    temporary = home / f".{SECRET_FILE}.{os.getpid()}"
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="ascii") as handle:
        handle.write(secrets.token_hex(32) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    try:
        os.link(temporary, path)  # the first writer wins; a concurrent one reads its key
    except FileExistsError:
        pass
    finally:
        temporary.unlink()
    return bytes.fromhex(path.read_text(encoding="ascii").strip())


def pseudonym(secret: bytes, kind: str, value: str) -> str:
    """A stable pseudonym for `value` (a PatientID, an accession) under the node's key, e.g. "P-3f9a..."."""
    digest = hmac.new(secret, f"{kind}\0{value}".encode(), hashlib.sha256).hexdigest()
    return f"{kind[:1].upper()}-{digest[:24]}"


def pseudonyms(secret: bytes, kind: str, values: Sequence[str]) -> list[str]:
    """pseudonym() of many values (an export's 100,000 rows): each distinct value hashed once, from a keyed
    HMAC copied rather than keyed anew."""
    keyed = hmac.new(secret, f"{kind}\0".encode(), hashlib.sha256)
    prefix = f"{kind[:1].upper()}-"
    done: dict[str, str] = {}
    for value in set(values):
        digest = keyed.copy()
        digest.update(value.encode())
        done[value] = prefix + digest.hexdigest()[:24]
    return [done[value] for value in values]
