"""A schema field: its default, numeric bounds (checked on every number, list items too) and
help text, kept in the dataclass field's metadata (read by :mod:`sslkit.config.loading`)."""
from __future__ import annotations

from dataclasses import field
from typing import Any


def _f(default: Any = None, *, gt: float | None = None, ge: float | None = None,
       lt: float | None = None, le: float | None = None, length: int | None = None,
       help: str = "") -> Any:
    """A schema field with optional numeric bounds (checked on every number, list items too)."""
    meta = {"gt": gt, "ge": ge, "lt": lt, "le": le, "length": length, "help": help}
    if isinstance(default, list):
        return field(default_factory=lambda d=tuple(default): list(d), metadata=meta)
    return field(default=default, metadata=meta)
