"""Helpers shared by the reliability tests (the suite's own are in tests/support.py)."""

from __future__ import annotations

import uuid


def prefix(kind: str) -> str:
    """A value prefix of this test's own (its meta prefix is ``prefix + "meta:"``)."""
    return f"{kind}{uuid.uuid4().hex[:8]}:"
