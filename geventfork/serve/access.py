"""The access log of ``geventfork serve``: one line per request (WSGI) or connection.

The two formats (README, "Serving an existing app"; the first is one line)::

    127.0.0.1 - - [30/Nov/2026:07:00:00 +0000] "GET /path HTTP/1.1" 200 12 0.0031 \\
        pool=default pid=1234
    127.0.0.1:52044 pool=default pid=1234 in=40 out=12 0.0031

The first is gunicorn's (Apache's common log format) plus the seconds taken,
the pool and the worker's pid; the second is a handler target's connection:
the peer, bytes read and written, and its seconds.
"""

from __future__ import annotations

import os
import time
from typing import Any, Optional

__all__ = ["AccessLog", "open_access_log", "client_host", "client_label", "wsgi_line"]
__all__ += ["handler_line", "timestamp"]

# English month names whatever the locale, as in Apache's and gunicorn's logs.
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


class AccessLog:
    """Where access lines go: a file opened for appending, or stderr.

    Each line is one ``os.write``: lines of several workers appending to one
    file (``O_APPEND``) or writing to one stderr pipe never interleave.
    """

    def __init__(self, fd: int, owned: bool) -> None:
        self.fd = fd
        self._owned = owned

    def write(self, line: str) -> None:
        """Write ``line`` and a newline; a failed write is dropped (a full disk
        must not stop the serving)."""
        try:
            os.write(self.fd, (line + "\n").encode("utf-8", "backslashreplace"))
        except OSError:
            pass

    def close(self) -> None:
        if self._owned and self.fd >= 0:
            os.close(self.fd)
        self.fd = -1


def open_access_log(where: Optional[str]) -> Optional[AccessLog]:
    """The ``AccessLog`` for ``--access-log``: None when off, ``-`` for stderr.

    Raises:
        OSError: the file cannot be opened.
    """
    if where is None:
        return None
    if where == "-":
        return AccessLog(2, owned=False)
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
    return AccessLog(os.open(where, flags, 0o644), owned=True)


def timestamp(when: float) -> str:
    """``30/Nov/2026:07:00:00 +0000``: local time and its offset, as gunicorn writes it."""
    tm = time.localtime(when)
    offset = tm.tm_gmtoff // 60
    sign = "-" if offset < 0 else "+"
    hours, minutes = divmod(abs(offset), 60)
    return (
        f"{tm.tm_mday:02d}/{_MONTHS[tm.tm_mon - 1]}/{tm.tm_year}:"
        f"{tm.tm_hour:02d}:{tm.tm_min:02d}:{tm.tm_sec:02d} {sign}{hours:02d}{minutes:02d}"
    )


def client_host(address: Any) -> str:
    """The client's host for a WSGI line: its IP address, ``-`` for a Unix socket's."""
    if isinstance(address, tuple) and address:
        return str(address[0])
    return "-"


def client_label(address: Any) -> str:
    """``host:port`` (``[host]:port`` for IPv6), ``-`` for a Unix socket's client."""
    if not (isinstance(address, tuple) and len(address) >= 2):
        return "-"
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


#: The longest request line logged, in characters (gunicorn's ``limit_request_line``);
#: a longer one is cut and ends with ``...``.
MAX_REQUEST_LINE = 4094


def wsgi_line(
    address: Any,
    request: str,
    status: str,
    length: int,
    seconds: float,
    pool: str,
    pid: int,
    when: Optional[float] = None,
) -> str:
    """One request's line.

    Args:
        address: the client's address as ``getpeername`` gives it.
        request: the request line (``GET /path HTTP/1.1``).
        status: the status code (``200``).
        length: the response body's bytes (``-`` when none, as gunicorn).
        seconds: from reading the request to the end of the response.
        pool: the worker's pool.
        pid: the worker's pid.
        when: the time the request ended (default: now).
    """
    stamp = timestamp(time.time() if when is None else when)
    if len(request) > MAX_REQUEST_LINE:  # a client's bytes: bounded, as gunicorn bounds them
        request = request[:MAX_REQUEST_LINE] + "..."
    return (
        f'{client_host(address)} - - [{stamp}] "{_escape(request)}" {status} {length or "-"} '
        f"{seconds:.4f} pool={pool} pid={pid}"
    )


def _escape(text: str) -> str:
    """``text`` with quotes and unprintable characters escaped: the request
    line is the client's, and must neither end a line nor fake a field."""
    if text.isprintable() and '"' not in text:
        return text
    return text.encode("unicode_escape").decode("ascii").replace('"', '\\"')


def handler_line(
    address: Any,
    received: Optional[int],
    sent: Optional[int],
    seconds: float,
    pool: str,
    pid: int,
) -> str:
    """One connection's line for a handler target; unknown byte counts are ``-``.

    Args:
        address: the client's address as ``getpeername`` gives it.
        received: bytes read from the client.
        sent: bytes written to the client.
        seconds: how long the handler had the connection.
        pool: the worker's pool.
        pid: the worker's pid.
    """
    counts = f"in={'-' if received is None else received} out={'-' if sent is None else sent}"
    return f"{client_label(address)} pool={pool} pid={pid} {counts} {seconds:.4f}"
