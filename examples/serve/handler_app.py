"""A plain ``handle(socket, address)`` function, gevent ``StreamServer`` style.

    geventfork serve examples/serve/handler_app.py:handle --handler --bind 127.0.0.1:9001
    printf 'hello\n' | nc -q1 127.0.0.1 9001      # hello

Echoes every byte back until the client closes its side.
"""

from __future__ import annotations

import socket as _socket
from typing import Any


def handle(socket: _socket.socket, address: Any) -> None:
    """Send back what the client sends, until it closes."""
    while True:
        data = socket.recv(65536)
        if not data:
            break
        socket.sendall(data)
