"""Print, as JSON, whether the script sees gevent's patched modules."""

import json
import socket
import threading

import gevent.socket
from gevent import monkey

print(
    json.dumps(
        {
            "socket": monkey.is_module_patched("socket"),
            "threading": monkey.is_module_patched("threading"),
            "select": monkey.is_module_patched("select"),
            "ssl": monkey.is_module_patched("ssl"),
            "socket_class": socket.socket is gevent.socket.socket,
            "main_thread": threading.current_thread() is threading.main_thread(),
        }
    )
)
