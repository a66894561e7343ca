"""The one exception every error a user (or a calling program) can cause derives from.

A service embedding sparcode catches `SparcodeError` and shows its message, a single line meant
for a person; each module's own class (ConfigError, RunError, BackendError, …) says what went
wrong, and keeps the built-in base (ValueError, RuntimeError) older callers catch it by."""
from __future__ import annotations


class SparcodeError(Exception):
    """Base of every sparcode error a caller may want to report rather than crash on."""
