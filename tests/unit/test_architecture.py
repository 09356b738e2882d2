"""The dependency rule of docs/architecture.md, checked on every import in dicom_ai/ (also the ones
inside functions and under TYPE_CHECKING): the stages depend on the domain, the settings, the store
and a few support modules only; the pipeline, the node, the web pages and the CLI wire them."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "dicom_ai"

SUPPORT = {"errors", "crashpoints", "dicom_values", "tls", "metrics"}  # small helpers with no dicom_ai dependency
FOUNDATION = {"domain", "config", "store"} | SUPPORT
STAGES = {"receive", "assemble", "route", "infer", "encode", "send", "prioritize", "feedback", "monitor"}
ALLOWED: dict[str, set[str]] = {
    "domain": set(),
    **{name: set() for name in SUPPORT},
    "config": {"domain", "tls"},
    "store": {"domain", "dicom_values"},
    **{stage: FOUNDATION for stage in STAGES},
    "train": FOUNDATION | {"infer"},  # makes models for infer to load
    # The console wires like the CLI: it reads every stage and changes things through the pipeline's
    # functions (overrides) and the validation loop's (feedback, evaluation); STOW-RS uploads are kept
    # as the SCP keeps them.
    "web": FOUNDATION | STAGES | {"pipeline", "validation"},
    "pipeline": FOUNDATION | STAGES,  # the one place where the stages meet
    "validation": FOUNDATION | STAGES,  # where ground truth meets the stages: judgements, reports, assessments, drift
    "node": FOUNDATION | STAGES | {"pipeline", "web", "validation"},  # owns the scheduler that drives the pipeline
    "procs": FOUNDATION | STAGES | {"pipeline", "web", "validation"},  # the node as processes: receiver, workers, sender
    "demo": FOUNDATION | STAGES | {"train"},  # runs Orthanc and the node (as processes) with phantom studies
    "cli": FOUNDATION | STAGES | {"pipeline", "node", "procs", "web", "train", "demo", "validation"},
}


def _imports() -> dict[str, set[str]]:
    """Top-level part of dicom_ai -> the other top-level parts it imports."""
    found: dict[str, set[str]] = defaultdict(set)
    for path in PACKAGE.rglob("*.py"):
        part = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
        if part == "__init__":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [node.module] if isinstance(node, ast.ImportFrom) and node.module else \
                [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
            for name in names:
                if name.startswith("dicom_ai."):
                    target = name.split(".")[1]
                    if target != part:
                        found[part].add(target)
        found.setdefault(part, set())
    return found


def test_every_part_of_the_package_has_a_place_in_the_rule() -> None:
    assert set(_imports()) <= set(ALLOWED), f"add {sorted(set(_imports()) - set(ALLOWED))} to ALLOWED (and the docs)"


def test_stages_depend_on_domain_config_and_store_only() -> None:
    broken = {part: sorted(targets - ALLOWED[part]) for part, targets in _imports().items() if targets - ALLOWED[part]}
    assert not broken, f"imports against the dependency rule (docs/architecture.md): {broken}"


def test_the_rule_has_no_cycle() -> None:
    graph = _imports()
    state: dict[str, int] = {}

    def visit(part: str, trail: list[str]) -> None:
        if state.get(part) == 1:
            raise AssertionError(f"import cycle: {' -> '.join([*trail, part])}")
        if state.get(part) == 2:
            return
        state[part] = 1
        for target in sorted(graph.get(part, ())):
            visit(target, [*trail, part])
        state[part] = 2

    for part in sorted(graph):
        visit(part, [])
