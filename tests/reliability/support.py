"""Helpers shared by the reliability tests."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable


def prefix(kind: str) -> str:
    """A value prefix of this test's own (its meta prefix is ``prefix + "meta:"``)."""
    return f"{kind}{uuid.uuid4().hex[:8]}:"


def wait_until(predicate: Callable[[], object], timeout: float, interval: float = 0.02
               ) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True
