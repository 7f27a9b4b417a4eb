"""Every error geventfork raises, under one base, each with Node's error code."""

from __future__ import annotations

from typing import Optional, Union

__all__ = [
    "GeventforkError",
    "ChannelClosedError",
    "InvalidHandleTypeError",
    "SerializationError",
    "ProtocolError",
    "HandleLostError",
    "ChannelBusyError",
    "WorkerStartupError",
    "ProxyProtocolError",
]


class GeventforkError(Exception):
    """Base of every geventfork error; ``code`` is Node's error code."""

    code = "ERR_GEVENTFORK"


class ChannelClosedError(GeventforkError):
    """The IPC channel is closed: the peer exited, or one side disconnected.

    Nobody's fault in particular; a message it carried was not delivered.
    """

    code = "ERR_IPC_CHANNEL_CLOSED"


class InvalidHandleTypeError(GeventforkError, TypeError):
    """``send()`` was given a handle it cannot pass: the caller's fault."""

    code = "ERR_INVALID_HANDLE_TYPE"


class SerializationError(GeventforkError, TypeError):
    """A message cannot be serialised with the channel's codec: the caller's fault."""

    code = "ERR_IPC_SERIALIZATION"


class ProtocolError(GeventforkError):
    """A malformed frame arrived: the peer's fault, never the caller's."""

    code = "ERR_IPC_PROTOCOL"

    def __init__(self, msg: str, data: bytes = b"") -> None:
        super().__init__(msg)
        self.data = bytes(data[:64])  # evidence, truncated


class HandleLostError(ProtocolError):
    """The receiver lost a handle's fds on the way (``MSG_CTRUNC``: its fd table was full).

    Nobody's fault in particular. The handle is still the sender's, open and
    untouched, so it may be sent again (a ``Pool`` tries another worker).
    """

    code = "ERR_IPC_HANDLE_LOST"


class ChannelBusyError(GeventforkError):
    """``send()`` would queue more than the channel's ``max_queued`` bytes.

    The caller's to handle: the peer reads more slowly than the caller sends.
    Nothing was queued; wait for ``send()`` to return True again (or for a
    send's callback) before sending more.
    """

    code = "ERR_IPC_BUSY"


class WorkerStartupError(GeventforkError):
    """A ``Pool``'s workers keep exiting before they are ready: the worker's fault.

    Attributes:
        exit_code: the last worker's exit status (None if a signal ended it).
        signal_code: the signal that ended it (``"SIGKILL"``), or None.
        stderr: the last lines it wrote to stderr (empty if not captured).
    """

    code = "ERR_POOL_WORKER_STARTUP"

    def __init__(
        self, exit_code: Optional[int], signal_code: Optional[str], stderr: str, count: int
    ) -> None:
        how = f"signal {signal_code}" if signal_code else f"status {exit_code}"
        summary = f"pool workers exit before they are ready ({count} in a row; last: {how})"
        super().__init__(summary + (":\n" + stderr.rstrip("\n") if stderr else ""))
        self.summary = summary
        self.exit_code = exit_code
        self.signal_code = signal_code
        self.stderr = stderr


class ProxyProtocolError(GeventforkError):
    """A PROXY protocol header is malformed or incomplete: the peer's fault.

    Either the proxy in front is broken, or a client reached a port that
    expects the PROXY protocol without going through the proxy. ``data``
    holds the header's first bytes as evidence (a whole v1 line fits).
    """

    code = "ERR_PROXY_PROTOCOL"

    def __init__(self, msg: str, data: Union[bytes, bytearray, memoryview] = b"") -> None:
        super().__init__(msg)
        self.data = bytes(data[:108])  # a whole v1 line and one byte more
