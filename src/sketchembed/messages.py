"""Message helpers shared by every part of the package (errors and logs name things; lists of them
stay short: an error about 335 classes is one readable line, not 20 KB), and the error of a bad
config value, which the entries turn into that one line and exit code 2 (sketchembed.entry)."""

from __future__ import annotations

from collections.abc import Iterable


class ConfigError(ValueError):
    """A misconfiguration caught before training; its message names the offending config keys."""


def short_list(items: Iterable, n: int = 12) -> str:
    """``a, b, c, … (335 in all)``: at most ``n`` names of a list, for a message."""
    items = [str(i) for i in items]
    head = ", ".join(items[:n])
    return head if len(items) <= n else f"{head}, … ({len(items)} in all)"
