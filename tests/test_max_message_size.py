"""``fork(..., max_message_size=N)``, end to end: a clear error on both sides.

A sender whose message encodes to more than N bytes gets a
``SerializationError`` naming both sizes, from ``send()`` itself, and nothing
else is lost: what was queued before still arrives, and so does what is sent
after. A receiver that gets a frame announcing more than N bytes (written by
hand here, as a peer with a larger limit would) emits a ``ProtocolError``
naming the limit and closes the channel; the other end sees a clean
``'disconnect'``.
"""

import os
import socket
import struct

import pytest

from geventfork import fork
from geventfork.errors import ChannelClosedError, ProtocolError, SerializationError
from helpers import TIMEOUT, inbox, next_event, take

#: The limit the tests fork with.
LIMIT = 4096
#: geventfork's frame header: a MESSAGE (kind 1) in JSON (codec 1) of ``size`` bytes.
HEADER = struct.Struct("!IBBBBHI")


def sized(size):
    """A message that is exactly ``size`` bytes as JSON."""
    return "x" * (size - 2)


def oversized_frame():
    return HEADER.pack(LIMIT + 1, 1, 1, 0, 0, 0, 0) + b'"' + b"x" * (LIMIT - 1) + b'"'


@pytest.fixture
def child(spawn_child):
    return spawn_child("sized.py", max_message_size=LIMIT, silent=True)


def test_parent_send_over_the_limit_raises_and_loses_nothing(child):
    replies = inbox(child)
    calls = []
    ours, theirs = socket.socketpair()
    with ours, theirs:
        child.send("before")
        with pytest.raises(SerializationError) as info:
            child.send(sized(LIMIT + 1), theirs, callback=calls.append)
        assert f"{LIMIT + 1} bytes" in str(info.value)
        assert f"{LIMIT}-byte limit" in str(info.value)
        assert info.value.code == "ERR_IPC_SERIALIZATION"
        child.send(sized(LIMIT))  # exactly the limit
        child.send("after")
        assert take(replies, 3) == ["before", sized(LIMIT), "after"]
        assert calls == []  # a send that raised never calls back
        theirs.sendall(b"still mine")  # the handle was not taken
        ours.settimeout(TIMEOUT)
        assert ours.recv(16) == b"still mine"
    assert child.connected


def test_child_send_over_the_limit_raises_in_the_child(child):
    replies = inbox(child)
    child.send({"send": LIMIT + 1})
    ((name, code, message),) = take(replies)[0].values()
    assert (name, code) == ("SerializationError", "ERR_IPC_SERIALIZATION")
    assert f"{LIMIT + 1} bytes" in message and f"{LIMIT}-byte limit" in message
    child.send({"send": LIMIT})
    assert take(replies, 2) == [sized(LIMIT), {"sent": LIMIT}]
    assert child.connected


def test_oversized_frame_from_the_child_is_a_protocol_error_and_closes(child):
    failed = next_event(child, "error")
    disconnected = next_event(child, "disconnect")
    closed = []
    child.send({"raw": LIMIT + 1})
    (err,) = failed.get(timeout=TIMEOUT)
    assert isinstance(err, ProtocolError) and err.code == "ERR_IPC_PROTOCOL"
    assert f"{LIMIT + 1} bytes" in str(err) and f"{LIMIT}-byte limit" in str(err)
    assert err.data == oversized_frame()[:64]
    assert disconnected.get(timeout=TIMEOUT) == ()
    assert not child.connected
    with pytest.raises(ChannelClosedError):  # known to be closed: raised at once
        child.send("too late", callback=closed.append)
    assert closed == []
    assert child.wait(timeout=TIMEOUT) == 0  # its channel closed: nothing kept it


def test_oversized_frame_to_the_child_is_a_protocol_error_and_closes(child):
    replies = inbox(child)
    errors = []
    child.on("error", errors.append)
    disconnected = next_event(child, "disconnect")
    child.send("ready?")
    assert take(replies) == ["ready?"]  # and nothing of ours is left to write
    os.write(child.channel.fileno(), oversized_frame())
    assert disconnected.get(timeout=TIMEOUT) == ()
    assert child.wait(timeout=TIMEOUT) == 0
    assert errors == []  # the child closed cleanly, between frames
    out = child.stdout.read().decode()
    assert out.startswith("error ProtocolError ERR_IPC_PROTOCOL "), out
    assert f"{LIMIT + 1} bytes" in out and f"{LIMIT}-byte limit" in out, out


def test_max_message_size_must_fit_a_frame(children):
    for bad in (0, -1, 2**32):
        with pytest.raises(ValueError, match="max_message_size"):
            children.append(fork("unused.py", max_message_size=bad))
