"""Crash points: places where the crash tests kill the node, to prove nothing is lost or sent twice.

Off unless the environment variable DICOM_AI_TEST_CRASH_AT names a point, optionally with the hit
that should crash ("pipeline.after_save_outcome" or "send.after_ack@3"). The process then kills
itself with SIGKILL, as a power cut or the OOM killer would: no cleanup, no flush. Only the tests
set it; a node in production never does.

The points (each a boundary between two durable steps):
- receive.mid_transfer: a C-STORE dataset is half written to incoming/;
- receive.after_rename: the instance file is in place, its row not yet committed;
- receive.after_commit: the row is committed, Success not yet answered;
- pipeline.mid_result_write: the first result file is written, the others not;
- pipeline.after_save_outcome: results and sends are committed, nothing sent yet;
- send.after_ack: the PACS acknowledged a C-STORE, the send is not yet marked sent.

In a role process of the supervised node (dicom_ai/procs/), the point kills the supervisor first, which
takes every other role with it (they die with it): the whole node goes down at once, as in a power cut.

And one where a Ray worker dies instead of the node (executor: ray): ray.actor_run, a model actor
got a prepared batch and has not answered. Its worker processes live on as many machines as the
cluster has, so DICOM_AI_TEST_CRASH_ONCE names a file that the first crash creates: the actors
started after it (and the retried pass) run normally.
"""

from __future__ import annotations

import os
import signal
import threading

CRASH_ENV = "DICOM_AI_TEST_CRASH_AT"
ROLE_ENV = "DICOM_AI_ROLE"  # set by dicom_ai/procs/supervisor.py in each role process
CRASH_ONCE_ENV = "DICOM_AI_TEST_CRASH_ONCE"
RAY_POINTS = ("ray.actor_run",)
POINTS = (
    "receive.mid_transfer",
    "receive.after_rename",
    "receive.after_commit",
    "pipeline.mid_result_write",
    "pipeline.after_save_outcome",
    "send.after_ack",
)

_hits: dict[str, int] = {}
_lock = threading.Lock()


def crash_point(name: str) -> None:
    """Kill this process here when DICOM_AI_TEST_CRASH_AT asks for it (a no-op otherwise)."""
    wanted = os.environ.get(CRASH_ENV)
    if not wanted:
        return
    point, _, nth = wanted.partition("@")
    if point != name:
        return
    with _lock:
        _hits[name] = _hits.get(name, 0) + 1
        hit = _hits[name]
    if hit < (int(nth) if nth else 1):
        return
    once = os.environ.get(CRASH_ONCE_ENV)
    if once:
        try:
            os.close(os.open(once, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:  # another process crashed here already
            return
    if os.environ.get(ROLE_ENV) and name not in RAY_POINTS:  # a role of the supervised node: cut the whole node's power
        os.kill(os.getppid(), signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)
