"""Run one fuzz target under atheris (libFuzzer): `python -m tests.fuzz.run_atheris TARGET [libFuzzer args]`.

The code each target drives is imported inside atheris's instrumentation, so coverage guides the
mutations (see INSTRUMENT). An input that breaks a target's contract raises, and libFuzzer
writes it to `-artifact_prefix` as crash-<sha1> and exits non-zero: commit it under
tests/fuzz/crashes/TARGET/ with the fix, so it is replayed by every test run.
"""

from __future__ import annotations

import importlib
import sys
import warnings

import atheris


# What atheris instruments for coverage feedback, per target (the code the target drives). Here
# rather than in targets.py: nothing may import these modules before the instrumentation.
INSTRUMENT = {
    "read_identity": ("pydicom", "dicom_ai.receive", "dicom_ai.store.spool"),
    "rules": ("yaml", "dicom_ai.route"),
    "hl7": ("hl7apy", "dicom_ai.send.carriers.hl7"),
}


def main() -> None:
    name, flags = sys.argv[1], sys.argv[2:]
    warnings.simplefilter("ignore")  # pydicom warns on every odd value it meets: that is the point here
    with atheris.instrument_imports(include=list(INSTRUMENT[name])):
        for module in INSTRUMENT[name]:
            importlib.import_module(module)
    from tests.fuzz.targets import TARGETS

    atheris.Setup([sys.argv[0], *flags], TARGETS[name])
    atheris.Fuzz()


if __name__ == "__main__":
    main()
