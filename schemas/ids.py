"""Event ids, with the standard library only (the supervisor names its facts without msgspec)."""

from __future__ import annotations

import os
import time

__all__ = ["new_id"]


def new_id() -> str:
    """Time-ordered unique id: 12 hex digits of milliseconds + 12 random hex digits."""
    return f"{int(time.time() * 1000):012x}{os.urandom(6).hex()}"
