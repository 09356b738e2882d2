"""Fixtures for the infer tests (helpers live in infer_support.py, importable by the tests)."""

from __future__ import annotations

from tests.infer.infer_support import write_model

__all__ = ["write_model"]
