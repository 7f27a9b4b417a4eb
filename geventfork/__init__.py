"""geventfork: accept connections in one process, serve them in gevent workers.

Node's ``child_process.fork`` / ``subprocess.send(message, socket)`` and
``net`` API, snake_cased, on gevent. Names load lazily: ``python -m
geventfork`` imports this package before it patches with gevent, so importing
it must not import gevent's networking.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "fork",
    "ChildProcess",
    "Pool",
    "process",
    "Process",
    "net",
    "run",
    "EventEmitter",
    "errors",
    "GeventforkError",
    "ChannelClosedError",
    "InvalidHandleTypeError",
    "SerializationError",
    "ProtocolError",
    "HandleLostError",
    "ChannelBusyError",
    "WorkerStartupError",
]

# name -> the module that holds it ("" when the name is the module itself)
_WHERE = {
    "fork": "child_process",
    "ChildProcess": "child_process",
    "Pool": "_pool",
    "process": "_process",
    "Process": "_process",
    "net": "",
    "errors": "",
    "run": "_main",
    "EventEmitter": "events",
    "GeventforkError": "errors",
    "ChannelClosedError": "errors",
    "InvalidHandleTypeError": "errors",
    "SerializationError": "errors",
    "ProtocolError": "errors",
    "HandleLostError": "errors",
    "ChannelBusyError": "errors",
    "WorkerStartupError": "errors",
}

if TYPE_CHECKING:  # pragma: no cover
    from . import errors, net
    from ._main import run
    from ._pool import Pool
    from .child_process import ChildProcess, fork
    from .errors import (
        ChannelBusyError,
        ChannelClosedError,
        GeventforkError,
        HandleLostError,
        InvalidHandleTypeError,
        ProtocolError,
        SerializationError,
        WorkerStartupError,
    )
    from .events import EventEmitter
    from ._process import Process, process


def __getattr__(name: str) -> Any:
    try:
        where = _WHERE[name]
    except KeyError:
        raise AttributeError(f"module 'geventfork' has no attribute {name!r}") from None
    value = import_module(f".{where or name}", __name__)
    if where:
        value = getattr(value, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
