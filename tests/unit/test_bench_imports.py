"""`make bench` is part of the product: every benchmark module must at least import (a moved helper
broke all of them once without any test noticing)."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.mark.parametrize("module", sorted(p.stem for p in BENCH.glob("*.py") if p.stem != "__init__"))
def test_benchmark_module_imports(module: str) -> None:
    importlib.import_module(f"bench.{module}")
