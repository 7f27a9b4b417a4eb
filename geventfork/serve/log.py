"""Log lines of ``geventfork serve``, in gunicorn's format, on stderr.

``[2026-11-30 07:00:00 +0000] [1234] [INFO] listening on http://127.0.0.1:8000``:
the same in the parent and in every worker, so one stderr reads as one log.
"""

from __future__ import annotations

import logging
import sys

__all__ = ["configure", "LOGGER", "FORMAT", "DATE_FORMAT"]

LOGGER = "geventfork.serve"
FORMAT = "[%(asctime)s] [%(process)d] [%(levelname)s] %(message)s"
DATE_FORMAT = "%Y-%m-%d %H:%M:%S %z"


def configure(level: str, name: str = LOGGER) -> logging.Logger:
    """Send logger ``name``'s records of ``level`` and above to stderr, one line each.

    Calling it again (a reload, a worker) replaces the handler it added, so
    no line is written twice.

    Args:
        level: ``debug``, ``info``, ``warning`` or ``error`` (any case).
        name: the logger; its records do not propagate to the root logger.

    Returns:
        The logger.
    """
    logger = logging.getLogger(name)
    logger.setLevel(level.upper())
    logger.propagate = False
    for old in [h for h in logger.handlers if isinstance(h, _Handler)]:
        logger.removeHandler(old)
    handler = _Handler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT, DATE_FORMAT))
    logger.addHandler(handler)
    return logger


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler ``configure`` adds: a class of its own, to find it again."""
