"""Profile the real `dicom-ai serve` while storescu sends a CT corpus (py-spy, not part of `make bench`).

    .venv/bin/pip install py-spy && .venv/bin/python -m bench.profile_scp [instances]

Prints the functions where the SCP's threads spend their samples (self and inclusive, % of samples).
"""

from __future__ import annotations

import collections
import logging
import shutil
import subprocess
import sys
from pathlib import Path

from bench.corpus import FULL_SPECS, CorpusSpec, generate
from bench.procs import BenchError, OursReceiver, running, send

WORKDIR = Path(__file__).resolve().parent.parent / ".state" / "bench-profile"


def main(count: int) -> None:
    logging.basicConfig(level=logging.INFO)
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(py_spy).exists():
        raise BenchError("py-spy is not installed: .venv/bin/pip install py-spy")
    ct = FULL_SPECS[0]
    files = generate(CorpusSpec(ct.name, ct.sop_class_uid, ct.modality, ct.rows, ct.columns, count), WORKDIR / "corpus")
    raw = WORKDIR / "profile.txt"
    try:
        with running(OursReceiver(WORKDIR / "ours", nodelay=True)) as receiver:
            spy = subprocess.Popen([py_spy, "record", "--pid", str(receiver.pid), "--format", "raw", "--rate", "200",
                                    "--nonblocking", "--output", str(raw)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            try:
                seconds = send([files], receiver.port, receiver.ae, nodelay=True)
            finally:
                spy.send_signal(subprocess.signal.SIGINT)
                _, err = spy.communicate(timeout=60)
        print(f"{count} CT instances in {seconds:.1f} s ({count / seconds:.0f}/s) under py-spy")
        if not raw.exists():
            raise BenchError(f"py-spy wrote nothing: {err.decode(errors='replace')[-2000:]}")
        self_counts: collections.Counter[str] = collections.Counter()
        inclusive: collections.Counter[str] = collections.Counter()
        total = 0
        for line in raw.read_text().splitlines():
            stack, _, n = line.rpartition(" ")
            frames = stack.split(";")[1:]  # the first is the thread
            if not frames or not n.isdigit():
                continue
            total += int(n)
            self_counts[frames[-1]] += int(n)
            for frame in set(frames):
                inclusive[frame] += int(n)
        for title, counter in (("self", self_counts), ("inclusive", inclusive)):
            print(f"\ntop {title} (% of {total} samples, all threads, idle excluded):")
            for frame, n in counter.most_common(25):
                print(f"{100 * n / total:5.1f}%  {frame}")
    finally:
        shutil.rmtree(WORKDIR / "corpus", ignore_errors=True)
        shutil.rmtree(WORKDIR / "ours", ignore_errors=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 300)
