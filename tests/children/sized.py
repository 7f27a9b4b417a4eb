"""Sends messages of the sizes the parent asks for, and says what went wrong.

Messages:
    {"send": n}: send a message of exactly n bytes as JSON (a string of n - 2
        "x"), then reply {"sent": n}; if ``send()`` raises, reply
        {"raised": [class name, code, message]} instead.
    {"raw": n}: write a frame announcing n bytes of payload straight on the
        channel, as a peer with a larger limit would.
    anything else: echo it back.

An ``'error'`` on the channel (a bad frame from the parent) is printed on
stdout as ``error CLASS CODE MESSAGE``.
"""

import os
import struct

from geventfork import process

#: geventfork's frame header (``_wire.HEADER``); kind 1 is MESSAGE, codec 1 JSON.
HEADER = struct.Struct("!IBBBBHI")


def send_sized(size):
    try:
        process.send("x" * (size - 2))
    except Exception as exc:
        process.send({"raised": [type(exc).__name__, getattr(exc, "code", None), str(exc)]})
    else:
        process.send({"sent": size})


def write_raw(size):
    frame = HEADER.pack(size, 1, 1, 0, 0, 0, 0) + b'"' + b"x" * (size - 2) + b'"'
    os.write(process.channel.fileno(), frame)  # small: the socket takes it whole


@process.on("message")
def on_message(message, handle):
    if isinstance(message, dict) and "send" in message:
        send_sized(message["send"])
    elif isinstance(message, dict) and "raw" in message:
        write_raw(message["raw"])
    else:
        process.send(message)


@process.on("error")
def on_error(err):
    print("error", type(err).__name__, err.code, err, flush=True)
