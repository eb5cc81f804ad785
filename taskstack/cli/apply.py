"""`dstack apply`."""

from __future__ import annotations

from taskstack.cli.app import app  # noqa: F401
